"""`python -m train`: the worker loop without Ray.

    python -m train CONFIG [dotted.key=value ...]        a fresh run
    python -m train --resume RUN_DIR [dotted.key=value]  continue a run

RUN_DIR (and run.dir) may be a path or a URI (s3://, gs://, file://; train/checkpoint/location.py).

One process, or one process per rank under torchrun. User errors (a bad
config, bad data, a checkpoint that cannot be resumed: every GobigError) are
one line on stderr and exit code 2.
"""

from __future__ import annotations

from train.process_env import apply_training_env

apply_training_env()  # before torch is imported (train.config imports it)

import argparse
import os
import sys
from pathlib import Path

from data_pipeline.errors import GobigError, report_error
from train.checkpoint.location import is_uri
from train.config import load_config
from train.run_dir import default_run_name, load_run_config, new_run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run")
    parser.add_argument("args", nargs="*", help="[CONFIG.yaml] [dotted.key=value ...]")
    ns = parser.parse_args(argv)
    try:
        if ns.resume:
            run_dir = ns.resume if is_uri(ns.resume) else Path(ns.resume)
            config = load_run_config(run_dir, ns.args)
        else:
            path = ns.args[0] if ns.args and "=" not in ns.args[0] else None
            overrides = ns.args[1:] if path else ns.args
            config = load_config(path, overrides)
            run_dir = new_run_dir(config, _agreed_run_name(config))
    except GobigError as exc:
        return report_error("gobig", exc)

    from train.summary import print_summary
    from train.trainer import fit

    try:
        result = fit(config, run_dir, resume=bool(ns.resume))
    except GobigError as exc:  # ConfigError, DataError, CheckpointError
        return report_error("gobig", exc)
    if result.is_main:
        print_summary(run_dir)
    return 0


def _agreed_run_name(config) -> str:
    # Under torchrun every rank must pick the same default name: rank 0's.
    import os

    name = default_run_name(config)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from train.distributed import broadcast_text, init_distributed

        init_distributed()
        name = broadcast_text(name)
    return name


def _exit(code: int) -> None:
    # Under torchrun, interpreter teardown can abort a finished rank ("terminate
    # called without an active exception": a communication thread still joinable
    # while its objects are destroyed), turning a completed run into a failure.
    # Everything is written by now; flush and leave without the teardown.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
