"""`gobig data ...`: train a tokenizer, write text, image or parallel-text shards.

    gobig data tokenizer --input PATH... --vocab-size N --model-type bpe --out DIR
    gobig data text --input PATH_OR_GLOB... --tokenizer MODEL --out DIR [--val-fraction F]
                    [--val-split spread|tail] [--seed N | --no-shuffle]
    gobig data text --labels [A,B,...] --input FILE... [--val FILE... | --val-fraction F]
                    [--header] --tokenizer MODEL --out DIR      (text<TAB>label or .jsonl)
    gobig data images --input FOLDER_OR_TAR --out DIR [--image-size N] [--val-fraction F]
                      [--store auto|raw|encoded] [--seed N | --no-shuffle]
    gobig data pairs --source FILE --target FILE --tokenizer MODEL --out DIR
                     [--val-source FILE --val-target FILE | --val-fraction F]
                     [--seed N | --no-shuffle]       (line-aligned parallel text)

The writers write each split in a seeded random order (the seed is recorded in the
manifest); `--no-shuffle` keeps the input order, for data whose order means something.

Bad input prints one line on stderr naming the file and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from data_pipeline.errors import DataError, GobigError, report_error


def _add_order_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the written order and validation choice"
    )
    parser.add_argument(
        "--no-shuffle",
        action="store_true",
        help="write records in input order (validation: evenly spread over it)",
    )


def _shuffle_seed(args: argparse.Namespace) -> int | None:
    return None if args.no_shuffle else args.seed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gobig data", description="Prepare tokenizers and WebDataset shards."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer")
    tok.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="text files, globs or directories"
    )
    tok.add_argument("--vocab-size", type=int, required=True)
    tok.add_argument("--model-type", choices=("bpe", "unigram", "char"), default="bpe")
    tok.add_argument("--out", required=True, help="directory for tokenizer.model/.json")
    tok.add_argument(
        "--max-sentences", type=int, default=300_000, help="cap on sampled training lines"
    )

    text = sub.add_parser("text", help="tokenize documents into WebDataset shards")
    text.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB")
    text.add_argument("--tokenizer", required=True, help="tokenizer.model (or its directory)")
    text.add_argument("--out", required=True)
    text.add_argument("--val-fraction", type=float, default=0.0)
    text.add_argument("--shard-size", default="64MB", help="bytes per shard, e.g. 64MB")
    text.add_argument(
        "--split-docs",
        choices=("file", "paragraph", "line"),
        default=None,
        help="what one document is (default: file; .jsonl: always one per line)",
    )
    text.add_argument(
        "--val-split",
        choices=("spread", "tail"),
        default=None,
        help="validation = every 1/F-th document (spread, the default) or the last F of "
        "the text (tail)",
    )
    text.add_argument(
        "--labels",
        nargs="?",
        const="",
        default=None,
        metavar="A,B,...",
        help="labelled text for sequence classification: one sample per line, "
        "text<TAB>label (.jsonl: {'text', 'label'}); label ids follow the names given, "
        "else the training labels sorted (numerically when all are integers)",
    )
    text.add_argument(
        "--val", nargs="+", default=None, metavar="FILE", help="with --labels: validation files"
    )
    text.add_argument(
        "--header", action="store_true", help="with --labels: skip each TSV file's first line"
    )
    _add_order_options(text)
    text.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    text.add_argument("--overwrite", action="store_true")
    text.add_argument("--quiet", action="store_true", help="no progress bar")

    pairs = sub.add_parser("pairs", help="tokenize line-aligned parallel text (translation)")
    pairs.add_argument("--source", required=True, metavar="FILE", help="source sentences")
    pairs.add_argument(
        "--target", required=True, metavar="FILE", help="their translations, line by line"
    )
    pairs.add_argument(
        "--tokenizer", required=True, help="one tokenizer.model (or its directory) for both"
    )
    pairs.add_argument("--out", required=True)
    pairs.add_argument("--val-source", metavar="FILE", help="validation source sentences")
    pairs.add_argument("--val-target", metavar="FILE", help="validation target sentences")
    pairs.add_argument("--val-fraction", type=float, default=0.0)
    pairs.add_argument("--shard-size", default="64MB", help="bytes per shard, e.g. 64MB")
    _add_order_options(pairs)
    pairs.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    pairs.add_argument("--overwrite", action="store_true")
    pairs.add_argument("--quiet", action="store_true", help="no progress bar")

    img = sub.add_parser("images", help="write an ImageFolder (dir or .tar) as shards")
    img.add_argument("--input", required=True, metavar="FOLDER_OR_TAR")
    img.add_argument("--out", required=True)
    img.add_argument("--image-size", type=int, default=None, help="resize to N x N")
    img.add_argument("--val-fraction", type=float, default=0.0)
    img.add_argument("--shard-size", default="64MB")
    img.add_argument(
        "--max-per-class", type=int, default=None, help="keep the first N images of each class"
    )
    img.add_argument(
        "--store",
        choices=("auto", "raw", "encoded"),
        default="auto",
        help="raw uint8 pixel arrays, encoded JPEG/PNG, or auto (raw up to 64x64 pixels)",
    )
    _add_order_options(img)
    img.add_argument("--workers", type=int, default=None)
    img.add_argument("--overwrite", action="store_true")
    img.add_argument("--quiet", action="store_true")
    return parser


def _run(args: argparse.Namespace) -> str:
    if args.command == "tokenizer":
        from data_pipeline.text_shards import expand_inputs
        from data_pipeline.tokenizer import train_tokenizer

        tok = train_tokenizer(
            expand_inputs(args.input),
            args.out,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            max_sentences=args.max_sentences,
        )
        return f"tokenizer {tok.path}: vocab {tok.vocab_size}, hash {tok.hash}"
    if args.command == "text" and args.labels is not None:
        return _write_labelled(args)
    if args.command == "pairs":
        return _write_pairs(args)
    if args.command == "text":
        from data_pipeline.text_shards import write_text_shards

        if args.val or args.header:
            raise DataError(f"{'--val' if args.val else '--header'} needs --labels")
        man = write_text_shards(
            args.input,
            args.tokenizer,
            args.out,
            val_fraction=args.val_fraction,
            shard_size=args.shard_size,
            doc_split=args.split_docs or "file",
            val_split=args.val_split or "spread",
            shuffle_seed=_shuffle_seed(args),
            workers=args.workers,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
        splits = man.to_json()["splits"]
        return f"{args.out}: " + ", ".join(
            f"{s} {v['shards']} shards {v['samples']} docs {v['tokens']} tokens"
            for s, v in splits.items()
        )
    from data_pipeline.image_shards import write_image_shards

    man = write_image_shards(
        args.input,
        args.out,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        shard_size=args.shard_size,
        max_per_class=args.max_per_class,
        store=args.store,
        shuffle_seed=_shuffle_seed(args),
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    splits = man.to_json()["splits"]
    return f"{args.out}: {len(man.classes)} classes, " + ", ".join(
        f"{s} {v['shards']} shards {v['samples']} images" for s, v in splits.items()
    )


def _write_labelled(args: argparse.Namespace) -> str:
    from data_pipeline.labelled_text import parse_label_list, write_labelled_shards

    for flag, value in (("--split-docs", args.split_docs), ("--val-split", args.val_split)):
        if value is not None:
            raise DataError(f"{flag} does not apply to --labels (one sample per line)")
    man = write_labelled_shards(
        args.input,
        args.tokenizer,
        args.out,
        labels=parse_label_list(args.labels) if args.labels else None,
        val_inputs=args.val,
        val_fraction=args.val_fraction,
        header=args.header,
        shard_size=args.shard_size,
        shuffle_seed=_shuffle_seed(args),
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    doc = man.to_json()
    return f"{args.out}: {len(man.classes)} labels ({', '.join(man.classes)}), " + ", ".join(
        f"{s} {v['shards']} shards {v['samples']} samples {v['tokens']} tokens"
        for s, v in doc["splits"].items()
    )


def _write_pairs(args: argparse.Namespace) -> str:
    from data_pipeline.pair_shards import write_pair_shards

    man = write_pair_shards(
        args.source,
        args.target,
        args.tokenizer,
        args.out,
        val_source=args.val_source,
        val_target=args.val_target,
        val_fraction=args.val_fraction,
        shard_size=args.shard_size,
        shuffle_seed=_shuffle_seed(args),
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    return f"{args.out}: " + ", ".join(
        f"{s} {v['shards']} shards {v['samples']} pairs {v['tokens']} tokens"
        for s, v in man.to_json()["splits"].items()
    )


def main(argv: list[str] | None = None) -> int:
    """Run `gobig data` with `argv` (default: sys.argv[1:]); the exit status.

    Args:
        argv: arguments after `gobig data`.
    """
    args = _parser().parse_args(argv)
    try:
        print(_run(args))
    # OSError: e.g. an output directory that cannot be written.
    except (GobigError, OSError) as exn:
        return report_error(f"gobig data {args.command}", exn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
