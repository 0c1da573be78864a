"""Streaming loaders for GPT, BERT, ViT, sequence-classification and translation batches
with exact, elastic resume.

    loader = build_loader("gpt", "builtin:stdlib", split="train", batch_size=16,
                          seq_len=128, rank=rank, world_size=world, seed=0, num_workers=2)
    for batch in loader:            # {"input_ids": [B, T], "labels": [B, T]}
        ...
        checkpoint["data"] = loader.state_dict()
    loader.load_state_dict(checkpoint["data"])   # any world size, any worker count

How the order, the split across ranks/workers and the state work: see order.py, items.py
and producer.py. The state is the same dict on every rank.
"""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields

from torch.utils.data import DataLoader

from data_pipeline.classify import CLASSIFY_KIND, ClassifySpec
from data_pipeline.errors import DataError, ShardError
from data_pipeline.items import start_cursor
from data_pipeline.label_mix import check_label_mix
from data_pipeline.producer import DEFAULT_BLOCK, RECORD_KINDS, Plan, Producer
from data_pipeline.seq2seq_batches import SEQ2SEQ_KIND, Seq2SeqSpec, check_pair_tokenizer
from data_pipeline.sources import check_tokenizer, resolve_source
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD, BertSpec, VitSpec, to_tensors

KINDS = ("gpt", "bert", "vit", CLASSIFY_KIND, SEQ2SEQ_KIND)
STATE_VERSION = 1


@dataclass
class LoaderConfig:
    """Loader settings (field names match the `data.*` config keys).

    `shuffle`, `infinite` and `augment` default to True for split "train", else False.
    seq2seq: `seq_len` bounds each side (source + EOS, BOS + target); `max_tokens` set
    makes batches of at most that many padded source + target tokens (and `batch_size`
    is ignored), else of `batch_size` pairs; either way length-bucketed.
    """

    kind: str
    source: str
    split: str = "train"
    batch_size: int = 8
    seq_len: int = 128
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    num_workers: int = 0
    tokenizer: str | None = None
    on_error: str = "raise"
    shuffle: bool | None = None
    shuffle_buffer: int = 1024
    infinite: bool | None = None
    image_size: int | None = None
    augment: bool | None = None
    pairs: bool = False
    max_tokens: int | None = None
    mask_prob: float = 0.15
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    manifest: str | None = None
    cache_dir: str | None = None
    prefetch_factor: int = 2

    def validate(self) -> None:
        """ValueError naming the field for any bad setting."""
        if self.kind not in KINDS:
            raise ValueError(f"data.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("batch_size", "world_size", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be at least 1, got {getattr(self, name)}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"data.rank must be in [0, {self.world_size}), got {self.rank}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")
        min_len = {"gpt": 1, "bert": 5 if self.pairs else 3, "vit": 0, CLASSIFY_KIND: 3}
        min_len = {**min_len, SEQ2SEQ_KIND: 2}[self.kind]
        if self.seq_len < min_len:
            raise ValueError(
                f"data.seq_len must be at least {min_len} for {self.kind}, got {self.seq_len}"
            )
        if self.max_tokens is not None:
            if self.kind != SEQ2SEQ_KIND:
                raise ValueError(f"data.max_tokens applies to seq2seq only, not {self.kind}")
            if self.max_tokens < 2 * self.seq_len:  # the longest pair must fit alone
                raise ValueError(
                    f"data.max_tokens must be at least 2 * seq_len = {2 * self.seq_len} "
                    f"(one pair of the longest sentences), got {self.max_tokens}"
                )
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"data.mask_prob must be in (0, 1), got {self.mask_prob}")


def _keep(item):  # DataLoader collate: batches are built by the producer
    return item


class StreamingLoader:
    """Iterable of batch dicts with `state_dict()`, `load_state_dict()` and `stats`.

    Batch keys: gpt {"input_ids", "labels"} (LongTensor [B, T], labels = inputs shifted by
    one); bert {"input_ids", "token_type_ids", "attention_mask", "labels" (-100 where not
    selected)} plus "pair_labels" [B] when `pairs`; vit {"images" FloatTensor [B, 3, H, W]
    normalised, "labels" LongTensor [B]}; bert-cls {"input_ids", "attention_mask",
    "token_type_ids" [B, T] padded to the batch's longest row, "class_labels" [B]}
    (classify.py); seq2seq {"input_ids", "attention_mask" [B, S], "decoder_input_ids",
    "labels" [B, T]}, B varying with `max_tokens` (seq2seq_batches.py).

    Each `iter()` continues from the current state. In infinite mode it never ends; in
    finite mode it yields the rest of the current epoch and the state moves to the next.
    """

    def __init__(self, config: LoaderConfig) -> None:
        config.validate()
        self.config = cfg = config
        train = cfg.split == "train"
        resolved = resolve_source(
            cfg.source, cfg.split, manifest=cfg.manifest, cache_dir=cfg.cache_dir
        )
        self.manifest = man = resolved.manifest
        want = {"vit": "image", SEQ2SEQ_KIND: "pairs"}.get(cfg.kind, "text")
        if man.kind != want:
            hint = " (parallel text, written by `gobig data pairs`)" if want == "pairs" else ""
            raise DataError(
                f"manifest {man.url} describes {man.kind} shards; "
                f"data.kind {cfg.kind!r} needs {want} shards{hint}"
            )
        if cfg.kind == CLASSIFY_KIND and not man.classes:
            raise DataError(
                f"manifest {man.url} describes text shards without labels; data.kind "
                f"{cfg.kind!r} (sequence classification: a BERT with model.num_labels > 0) "
                "needs labelled text, written by `gobig data text --labels`"
            )
        self._skip_keys: set[tuple[int, str]] = set()
        self.stats = {
            "batches": 0,
            "samples": 0,
            "skipped_shards": 0,
            "skip_events": 0,
            "skipped": [],
            "bad_samples": 0,
            "epoch": 0,
        }
        shards = list(resolved.shards)
        self.tokenizer: Tokenizer | None = None
        plan_extra: dict = {}
        batch_size = cfg.batch_size
        if want != "image":
            path = cfg.tokenizer or resolved.tokenizer_path
            if path is None:
                raise DataError(
                    f"data.tokenizer is not set and {man.url} has no tokenizer.model beside it"
                )
            self.tokenizer = tok = Tokenizer(path)
            for ref, reason in check_tokenizer(resolved, tok.hash, str(tok.path)):
                if cfg.on_error != "skip":
                    raise DataError(f"shard {ref.name}: {reason}")
                warnings.warn(
                    f"skipping shard {ref.name}: {reason} (data.on_error=skip)", stacklevel=2
                )
                shards.remove(ref)
                self._count_skip(-1, ref.name)
            plan_extra = dict(
                dtype=man.dtype or "uint16", vocab_size=tok.vocab_size, eos_id=tok.eos_id
            )
            if cfg.kind == "bert":
                if None in (tok.mask_id, tok.cls_id, tok.sep_id):
                    raise DataError(f"tokenizer {tok.path} lacks [MASK]/[CLS]/[SEP] pieces")
                plan_extra["bert"] = BertSpec(
                    tok.cls_id,
                    tok.sep_id,
                    tok.mask_id,
                    tok.first_normal_id,
                    tok.vocab_size,
                    cfg.mask_prob,
                    cfg.pairs,
                )
            if cfg.kind == CLASSIFY_KIND:
                if None in (tok.cls_id, tok.sep_id):
                    raise DataError(f"tokenizer {tok.path} lacks [CLS]/[SEP] pieces")
                pad = tok.pad_id if tok.pad_id >= 0 else 0  # padding is masked: any id does
                plan_extra["classify"] = ClassifySpec(tok.cls_id, tok.sep_id, pad, len(man.classes))
            if cfg.kind == SEQ2SEQ_KIND:
                check_pair_tokenizer(tok)
                plan_extra["seq2seq"] = Seq2SeqSpec(
                    tok.bos_id, tok.eos_id, tok.pad_id, cfg.batch_size, cfg.max_tokens or 0
                )
                batch_size = 1  # an item is a whole batch of pairs
        else:
            size = cfg.image_size or man.image_size
            augment = train if cfg.augment is None else cfg.augment
            plan_extra = dict(
                num_classes=len(man.classes),
                vit=VitSpec(size, augment, tuple(cfg.mean), tuple(cfg.std)),
            )
        if not shards:
            raise DataError(f"no usable shards in {cfg.source} (split {cfg.split})")
        self.plan = Plan(
            kind=cfg.kind,
            shards=shards,
            rank=cfg.rank,
            world_size=cfg.world_size,
            batch_size=batch_size,
            seq_len=cfg.seq_len,
            seed=cfg.seed,
            shuffle=train if cfg.shuffle is None else cfg.shuffle,
            shuffle_buffer=cfg.shuffle_buffer,
            infinite=train if cfg.infinite is None else cfg.infinite,
            on_error=cfg.on_error,
            **plan_extra,
        )
        self.fingerprint = self._fingerprint()
        self._state = {"epoch": 0, "cursor": start_cursor()}
        self._batches: dict[int, int] = {}  # seq2seq: global batches per epoch
        if cfg.kind == "vit" and cfg.rank == 0:
            self._warn_if_unmixed()

    def _warn_if_unmixed(self) -> None:
        p = self.plan
        counts = self.manifest.class_counts.get(self.config.split) or None
        problem = check_label_mix(
            p.shards, counts, p.seed, p.shuffle, p.shuffle_buffer or DEFAULT_BLOCK
        )
        if problem:
            warnings.warn(
                f"data source {self.config.source} (split {self.config.split}): {problem}; "
                "shards written in class order cannot be mixed by the shuffle buffer: "
                "rewrite them with `gobig data images` (it shuffles) or raise "
                f"data.shuffle_buffer (now {p.shuffle_buffer})",
                stacklevel=3,
            )

    # -- information the trainer needs -----------------------------------------------
    @property
    def vocab_size(self) -> int | None:
        """Tokenizer vocabulary size (text kinds)."""
        return self.tokenizer.vocab_size if self.tokenizer else None

    @property
    def classes(self) -> list[str]:
        """Class names (vit), label names (labelled text); [] for unlabelled text."""
        return list(self.manifest.classes)

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (or starts, at an epoch boundary)."""
        return self._state["epoch"]

    def items_per_epoch(self) -> int:
        """Global items (rows) per epoch from the manifest counts (no shard skipped);
        seq2seq: sentence pairs."""
        p = self.plan
        if p.kind in (*RECORD_KINDS, SEQ2SEQ_KIND):
            return sum(s.samples for s in p.shards)
        stream = sum(s.tokens + s.samples for s in p.shards)  # + one separator per document
        length = p.seq_len + 1 if p.kind == "gpt" else p.seq_len - (3 if p.bert.pairs else 2)
        stride = p.seq_len if p.kind == "gpt" else length
        return max(0, (stream - (length - stride)) // stride)

    def batches_per_epoch(self) -> int:
        """Batches each rank yields per finite pass: ceil(ceil(N / W) / B) with N from
        `items_per_epoch()` (exact unless shards are skipped). In infinite mode an epoch
        lasts N / (W * B) steps on average.

        seq2seq: ceil(G / W) for the G global batches of epoch `self.epoch`; with
        `max_tokens` G depends on the sentence lengths, so the first call for an epoch
        reads the split once (cached)."""
        p = self.plan
        if p.kind == SEQ2SEQ_KIND:
            return -(-self._global_batches(self.epoch) // p.world_size)
        per_rank = -(-self.items_per_epoch() // p.world_size)
        return -(-per_rank // p.batch_size)

    def _global_batches(self, epoch: int) -> int:
        if epoch not in self._batches:
            self._batches[epoch] = self.plan.seq2seq_batches(epoch)
        return self._batches[epoch]

    # -- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        producer = Producer(self.plan, copy.deepcopy(self._state))
        if self.config.num_workers == 0:
            source = iter(producer)
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            source = iter(
                DataLoader(
                    producer,
                    batch_size=None,
                    collate_fn=_keep,
                    num_workers=self.config.num_workers,
                    prefetch_factor=self.config.prefetch_factor,
                    multiprocessing_context=ctx,
                )
            )
        for batch, meta in source:
            if "error" in meta:
                kind, *args = meta["error"]
                raise ShardError(*args) if kind == "shard" else DataError(*args)
            for epoch, shard, _ in meta["events"]:
                self._count_skip(epoch, shard)
            self.stats["bad_samples"] += meta["bad_samples"]
            self._state = meta["state"]
            self.stats["epoch"] = self._state["epoch"]
            if batch is None:
                continue
            self.stats["batches"] += 1
            self.stats["samples"] += len(next(iter(batch.values())))
            yield to_tensors(batch)

    def _count_skip(self, epoch: int, shard: str) -> None:
        key = (epoch, shard)
        if key in self._skip_keys:  # every worker reports the same shard
            return
        self._skip_keys.add(key)
        self.stats["skip_events"] += 1
        if shard not in self.stats["skipped"]:
            self.stats["skipped"].append(shard)
            self.stats["skipped_shards"] += 1

    # -- state --------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        p = self.plan
        what = {
            "kind": p.kind,
            "shards": [(s.name, s.samples) for s in p.shards],
            "seq_len": p.seq_len if p.kind != "vit" else 0,
            "seed": p.seed,
            "shuffle": p.shuffle,
            "shuffle_buffer": p.shuffle_buffer,
            "pairs": bool(p.bert and p.bert.pairs),
        }
        if p.seq2seq:  # the batches are the items: their sizes are part of the order
            tokens = p.seq2seq.max_tokens
            what["batches"] = [tokens, 0 if tokens else p.seq2seq.batch_size]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def state_dict(self) -> dict:
        """Where the next batch starts, as a global position (identical on every rank):
        {"version", "fingerprint", "epoch", "cursor": {"index", "doc", "tok", "skip"}}."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            **copy.deepcopy(self._state),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state (saved under any world size and worker count)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"data loader state has version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                "data loader state was saved for different data or settings "
                "(shards, kind, seq_len, seed, shuffle, shuffle_buffer must match; "
                "seq2seq: also max_tokens, or batch_size without it)"
            )
        self._state = {
            "epoch": int(state["epoch"]),
            "cursor": {k: int(v) for k, v in state["cursor"].items()},
        }
        self.stats["epoch"] = self._state["epoch"]


def build_loader(kind: str, source: str, **options) -> StreamingLoader:
    """A streaming loader; see `LoaderConfig` for the options.

    Args:
        kind: "gpt", "bert", "vit", "bert-cls" (sequence classification) or "seq2seq"
            (translation).
        source: `builtin:NAME`, a dataset directory, a manifest URL or shard URLs
            (brace patterns, http(s)://, pipe:).
        **options: any `LoaderConfig` field (split, batch_size, seq_len, rank, world_size,
            seed, num_workers, tokenizer, on_error, ...).
    """
    known = {f.name for f in fields(LoaderConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown data loader option(s): {', '.join(unknown)}")
    return StreamingLoader(LoaderConfig(kind=kind, source=source, **options))
