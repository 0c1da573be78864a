"""The `gobig` command: one entry point for data preparation, training and jobs.

Every user error ends as one line on stderr and exit code 2, never a
traceback; heavy imports (torch, DeepSpeed, Ray) happen only in the
subcommand that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "gpt-tiny.yaml"


class UsageError(ValueError):
    """Bad command-line input; printed as one line, exit code 2."""


def split_config_and_overrides(args: list[str]) -> tuple[Path | None, list[str]]:
    """The optional leading CONFIG path and the `key=value` overrides after it."""
    if args and "=" not in args[0]:
        config, rest = Path(args[0]), args[1:]
    else:
        config, rest = (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None), args
    stray = [a for a in rest if "=" not in a]
    if stray:
        raise UsageError(f"expected dotted.key=value overrides after the config, got {stray[0]!r}")
    return config, rest


def _cmd_config(ns: argparse.Namespace) -> int:
    import yaml

    path, overrides = split_config_and_overrides(ns.args)
    config = load_config(path, overrides, check_paths=False)
    sys.stdout.write(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    path, overrides = split_config_and_overrides(ns.args)
    config = load_config(path, overrides)
    from cluster.launch import run_training

    return run_training(config, config_path=path)


def _cmd_data(ns: argparse.Namespace) -> int:
    from data_pipeline.cli import main as data_main

    return data_main(ns.args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gobig",
        description="Train GPT, BERT and ViT models with DeepSpeed ZeRO workers on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func, args_help: str) -> None:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("args", nargs=argparse.REMAINDER, help=args_help)
        p.set_defaults(func=func)

    cfg_help = "[CONFIG.yaml] [dotted.key=value ...]"
    add("train", "train a model (default: configs/gpt-tiny.yaml)", _cmd_train, cfg_help)
    add("config", "print the resolved config as YAML", _cmd_config, cfg_help)
    add("data", "prepare data: tokenizer | text | images", _cmd_data, "see `gobig data --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except (ConfigError, UsageError) as exc:
        print(f"gobig: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gobig: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
