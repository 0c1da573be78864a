"""The `gobig` command: one entry point for data, training, runs and jobs.

    gobig train  [CONFIG] [key=value ...] [--address ADDR]   train on Ray (local by default)
                 (--dry-run: print the plan and stop; exit 2 if it says the run will not fit)
    gobig resume RUN_DIR  [key=value ...] [--address ADDR]   continue a run
                 (both: --verbose shows Ray's own output too; it is always in RUN_DIR/ray.log)
    gobig verify RUN_DIR                                     check a run's checkpoints
    gobig submit --address http://HEAD:8265 [CONFIG] [key=value ...] [--no-wait]
    gobig jobs   list|status|logs|stop [JOB_ID] --address http://HEAD:8265
    gobig check-resume [CONFIG] [key=value ...] [--steps N] [--kills K]   exact resume, checked
    gobig export RUN_OR_CHECKPOINT --out DIR [--format hf]   safetensors + config
    gobig generate RUN_OR_CHECKPOINT_OR_EXPORT --prompt TEXT  sample text from a GPT
    gobig translate RUN_OR_CHECKPOINT_OR_EXPORT [--input FILE]  translate (a seq2seq model)
    gobig eval RUN_OR_CHECKPOINT_OR_EXPORT --data SOURCE     metrics over a whole dataset
    gobig report RUN [RUN ...] --out DIR                     plots and an HTML page of runs
    gobig data   tokenizer|text|images|pairs ...             prepare data
    gobig config [CONFIG] [key=value ...]                    print the resolved config
    gobig plan   [CONFIG] [key=value ...] --devices N --device-memory 80GB   memory, fit, cost

Every user error (a GobigError: data_pipeline/errors.py) ends as one line on
stderr and exit code 2, never a traceback; heavy imports (torch, DeepSpeed,
Ray) happen only in the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.errors import UsageError
from data_pipeline.errors import GobigError, report_error
from train.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "gpt-tiny.yaml"


def pop_option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Take `--name VALUE` or `--name=VALUE` out of `args` (anywhere in it)."""
    rest, value, i = [], None, 0
    while i < len(args):
        arg = args[i]
        if arg == name:
            if i + 1 >= len(args):
                raise UsageError(f"{name} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def pop_flag(args: list[str], name: str) -> tuple[bool, list[str]]:
    return name in args, [a for a in args if a != name]


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


def pop_options(args: list[str], names: tuple[str, ...]) -> tuple[dict[str, str | None], list[str]]:
    """Take each `--name VALUE` of `names` out of `args`: {name: value or None}, the rest."""
    values = {}
    for name in names:
        values[name], args = pop_option(args, name)
    return values, args


def _cmd_plan(ns: argparse.Namespace) -> int:
    from train.plan.command import PLAN_OPTIONS, plan_command

    options, args = pop_options(ns.args, PLAN_OPTIONS)
    path, overrides = split_config_and_overrides(args)
    return plan_command(load_config(path, overrides, check_paths=False), options)


def _dry_run(args: list[str]) -> int:
    """`gobig train --dry-run ...`: the plan of the run as configured; nothing starts."""
    from train.plan.command import DRY_RUN_OPTIONS, dry_run_command

    force, args = pop_flag(args, "--force")
    options, args = pop_options(args, DRY_RUN_OPTIONS)
    _, args = pop_option(args, "--address")  # a dry run reaches no cluster
    _, args = pop_flag(args, "--verbose")
    path, overrides = split_config_and_overrides(args)
    return dry_run_command(load_config(path, overrides), options, force=force)


def _cmd_train(ns: argparse.Namespace) -> int:
    dry_run, args = pop_flag(ns.args, "--dry-run")
    if dry_run:
        return _dry_run(args)
    from cluster.ray_session import cluster_address
    from train.run_dir import default_run_name, new_run_dir

    address, args = pop_option(ns.args, "--address")
    verbose, args = pop_flag(args, "--verbose")
    path, overrides = split_config_and_overrides(args)
    config = load_config(path, overrides)
    run_dir = new_run_dir(config, default_run_name(config))
    from cluster.launch import run_training

    return run_training(config, run_dir, cluster_address(config, address), verbose=verbose)


def _cmd_resume(ns: argparse.Namespace) -> int:
    from cluster.ray_session import cluster_address
    from train.run_dir import load_run_config

    address, args = pop_option(ns.args, "--address")
    verbose, args = pop_flag(args, "--verbose")
    if not args or "=" in args[0]:
        raise UsageError("usage: gobig resume RUN_DIR [dotted.key=value ...]")
    from train.checkpoint.location import is_uri

    run_dir, overrides = (args[0] if is_uri(args[0]) else Path(args[0])), args[1:]
    config = load_run_config(run_dir, overrides)
    from cluster.launch import run_training

    return run_training(
        config, run_dir, cluster_address(config, address), resuming=True, verbose=verbose
    )


def _cmd_verify(ns: argparse.Namespace) -> int:
    if len(ns.args) != 1 or ns.args[0].startswith("-"):
        raise UsageError("usage: gobig verify RUN_DIR")
    from train.checkpoint.verify_run import verify_command

    return verify_command(ns.args[0])


def _cmd_submit(ns: argparse.Namespace) -> int:
    from cluster.jobs import submit

    address, args = pop_option(ns.args, "--address")
    no_wait, args = pop_flag(args, "--no-wait")
    no_requirements, args = pop_flag(args, "--no-requirements")
    if not address:
        raise UsageError("gobig submit needs --address http://HEAD:8265")
    path, overrides = split_config_and_overrides(args)
    load_config(path, overrides)  # fail here, not on the cluster
    return submit(
        address, path, overrides, wait=not no_wait, repo_root=REPO_ROOT,
        with_requirements=not no_requirements,
    )  # fmt: skip


def _cmd_jobs(ns: argparse.Namespace) -> int:
    from cluster.jobs import jobs_command

    address, args = pop_option(ns.args, "--address")
    if not address:
        raise UsageError("gobig jobs needs --address http://HEAD:8265")
    return jobs_command(address, args)


def _cmd_check_resume(ns: argparse.Namespace) -> int:
    from cluster.check_resume import check_resume
    from cluster.ray_session import cluster_address

    address, args = pop_option(ns.args, "--address")
    options = {}
    for name in ("--steps", "--kills", "--seed"):
        value, args = pop_option(args, name)
        if value is not None:
            if not value.isdigit():
                raise UsageError(f"{name} needs a whole number, got {value!r}")
            options[name[2:]] = int(value)
    keep, args = pop_option(args, "--keep")
    path, overrides = split_config_and_overrides(args)
    config = load_config(path or DEFAULT_CONFIG, overrides)
    keep_dir = Path(keep) if keep else None
    return check_resume(config, cluster_address(config, address), keep=keep_dir, **options)


def _cmd_export(ns: argparse.Namespace) -> int:
    from train.export import main as export_main

    return export_main(ns.args)


def _cmd_generate(ns: argparse.Namespace) -> int:
    from train.generate import main as generate_main

    return generate_main(ns.args)


def _cmd_translate(ns: argparse.Namespace) -> int:
    from train.translate import main as translate_main

    return translate_main(ns.args)


def _cmd_eval(ns: argparse.Namespace) -> int:
    from train.eval_command import main as eval_main

    return eval_main(ns.args)


def _cmd_report(ns: argparse.Namespace) -> int:
    from train.report import main as report_main

    return report_main(ns.args)


def _cmd_data(ns: argparse.Namespace) -> int:
    from data_pipeline.cli import main as data_main

    return data_main(ns.args)


CONFIG_ARGS = "[CONFIG.yaml] [dotted.key=value ...] [--address ADDR]"
# --verbose: Ray's own output on the console too (it always goes to RUN_DIR/ray.log).
RUN_ARGS = CONFIG_ARGS + " [--verbose]"
# --dry-run: print the plan (gobig plan) for cluster.num_workers devices and start nothing;
# exit 2 if it says the run will not fit, unless --force.
TRAIN_ARGS = RUN_ARGS + (
    " [--dry-run [--device-memory 80GB] [--tokens 300B] [--mfu 0.4] [--peak-tflops 989] "
    "[--json FILE|-] [--force]]"
)
COMMANDS = {
    "train": ("train a model (default config: configs/gpt-tiny.yaml)", _cmd_train, TRAIN_ARGS),
    "resume": ("continue a run from its newest complete checkpoint", _cmd_resume,
               "RUN_DIR [dotted.key=value ...] [--address ADDR] [--verbose]"),
    "verify": ("check every checkpoint of a run: intact, incomplete or corrupt (exit 1 "
               "if the newest is not usable)", _cmd_verify, "RUN_DIR"),
    "submit": ("submit a training job to a Ray cluster", _cmd_submit,
               "--address http://HEAD:8265 [CONFIG.yaml] [key=value ...] [--no-wait] "
               "[--no-requirements]"),
    "jobs": ("list, inspect, follow or stop submitted jobs", _cmd_jobs,
             "list | status JOB_ID | logs JOB_ID | stop JOB_ID  --address http://HEAD:8265"),
    "check-resume": ("train a short horizon straight and with workers killed; compare "
                     "every loss", _cmd_check_resume,
                     "[CONFIG.yaml] [key=value ...] [--steps N] [--kills K] [--seed S] "
                     "[--keep DIR] [--address ADDR]"),
    "export": ("write a checkpoint's weights as safetensors (or a Hugging Face directory)",
               _cmd_export, "RUN_OR_CHECKPOINT --out DIR [--format gobig|hf]"),
    "generate": ("sample text from a trained GPT, printed as it is made", _cmd_generate,
                 "RUN_OR_CHECKPOINT_OR_EXPORT --prompt TEXT | --prompt-file FILE "
                 "[--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] "
                 "[--num-samples N] [--device DEV]"),
    "translate": ("translate sentences, one per line, with a trained seq2seq model",
                  _cmd_translate,
                  "RUN_OR_CHECKPOINT_OR_EXPORT [--input FILE] [--beam-size K] "
                  "[--length-penalty A] [--max-len-a A] [--max-len-b B] [--batch-size N] "
                  "[--device DEV]"),
    "eval": ("a trained model's metrics over a whole dataset split", _cmd_eval,
             "RUN_OR_CHECKPOINT_OR_EXPORT --data SOURCE [--split val|train] [--batch-size N] "
             "[--max-batches N] [--json FILE] [--device DEV] | RUN_OR_CHECKPOINT --as-logged "
             "[--data SOURCE] [--json FILE] [--device DEV]"),
    "report": ("plots of runs' metrics.jsonl and one self-contained HTML page", _cmd_report,
               "RUN [RUN ...] --out DIR"),
    "data": (
        "prepare data: tokenizer | text | images | pairs",
        _cmd_data,
        "tokenizer|text|images|pairs ...",
    ),
    "config": ("print the resolved config as YAML", _cmd_config, "[CONFIG.yaml] [key=value ...]"),
    "plan": ("memory per device for each ZeRO stage, the largest micro-batch that fits, a "
             "recommended setting, and FLOPs and time", _cmd_plan,
             "[CONFIG.yaml] [key=value ...] [--devices N] [--device-memory 80GB] "
             "[--devices-per-node K] [--tokens 300B] [--mfu 0.4] [--peak-tflops 989] "
             "[--json FILE|-]"),
}  # fmt: skip


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = [f"  {name:<{width}}  {help_text}" for name, (help_text, _, _) in COMMANDS.items()]
    return (
        "usage: gobig COMMAND [ARGS ...]\n\n"
        "Train GPT, BERT, ViT and encoder-decoder models with DeepSpeed ZeRO workers on Ray.\n\n"
        "commands:\n" + "\n".join(rows) + "\n\nRun `gobig COMMAND --help` for its arguments."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"gobig: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    help_text, func, args_help = COMMANDS[command]
    if rest in (["-h"], ["--help"]) and command != "data":
        print(f"usage: gobig {command} {args_help}\n\n{help_text}")
        return 0
    try:
        return func(argparse.Namespace(args=rest))
    except GobigError as exc:  # ConfigError, DataError, CheckpointError, ClusterError, ...
        return report_error("gobig", exc)
    except KeyboardInterrupt:
        print("gobig: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
