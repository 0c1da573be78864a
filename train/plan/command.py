"""`gobig plan` and `gobig train --dry-run`: options in, the plan out (table and JSON).

cluster/cli.py takes the options off the command line as strings; they are checked
here, each bad one a one-line PlanError naming its option.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from data_pipeline.errors import DataError
from train.config.schema import ExperimentConfig
from train.plan.build import PlanRequest, make_plan
from train.plan.errors import PlanError
from train.plan.report import describe_choice, render_plan
from train.plan.schema import Plan
from train.plan.units import parse_count

PLAN_OPTIONS = (
    "--devices", "--devices-per-node", "--device-memory", "--tokens", "--mfu", "--peak-tflops",
    "--json",
)  # fmt: skip
DRY_RUN_OPTIONS = ("--device-memory", "--tokens", "--mfu", "--peak-tflops", "--json")


def parse_whole(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise PlanError(f"{option} needs a whole number of at least 1, got {text!r}")
    return int(text)


def parse_memory(text: str, option: str) -> int:
    """Bytes in `80GB` (1e9), `80GiB` (2**30), `81920MiB`, ... (data_pipeline's size syntax)."""
    from data_pipeline.shard_writer import parse_size

    try:
        return parse_size(text)
    except DataError:
        raise PlanError(f"{option}: expected a size such as 80GB or 80GiB, got {text!r}") from None


def parse_fraction(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise PlanError(f"{option} must be a fraction in (0, 1], such as 0.4; got {text!r}")
    return value


def parse_positive(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0.0 or value == float("inf"):
        raise PlanError(f"{option} must be a positive number, got {text!r}")
    return value


def plan_request(options: dict[str, str | None]) -> PlanRequest:
    """The PlanRequest of the raw option values (None: the option was not given).

    Args:
        options: option name (e.g. `--devices`) -> its value as typed, or None.
    """

    def given(name: str, parse):
        text = options.get(name)
        return None if text is None else parse(text, name)

    mfu = given("--mfu", parse_fraction)
    return PlanRequest(
        devices=given("--devices", parse_whole),
        devices_per_node=given("--devices-per-node", parse_whole),
        device_memory=given("--device-memory", parse_memory),
        total_units=given("--tokens", parse_count),
        mfu=0.4 if mfu is None else mfu,
        peak_tflops=given("--peak-tflops", parse_positive),
    )


def write_json(plan: Plan, dest: str) -> None:
    """The plan as JSON into `dest`, or onto stdout for `-`."""
    text = json.dumps(plan.model_dump(mode="json"), indent=1) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        return
    try:
        Path(dest).write_text(text)
    except OSError as exc:
        raise PlanError(f"--json {dest}: {exc.strerror or exc}") from None


def show(plan: Plan, json_dest: str | None) -> None:
    """The table on stdout, and the JSON where asked (`-`: the JSON alone on stdout)."""
    if json_dest != "-":
        sys.stdout.write(render_plan(plan))
    if json_dest is not None:
        write_json(plan, json_dest)


def plan_command(config: ExperimentConfig, options: dict[str, str | None]) -> int:
    """`gobig plan`: print the plan; exit status 0.

    Args:
        config: the resolved experiment config.
        options: the raw values of PLAN_OPTIONS.
    """
    show(make_plan(config, plan_request(options)), options.get("--json"))
    return 0


def dry_run_command(
    config: ExperimentConfig, options: dict[str, str | None], force: bool = False
) -> int:
    """`gobig train --dry-run`: the plan for the run as configured, on cluster.num_workers
    devices. A run the plan says will not fit is refused (PlanError, exit 2) unless `force`.

    Args:
        config: the resolved experiment config.
        options: the raw values of DRY_RUN_OPTIONS.
        force: report a run that will not fit, but exit 0.
    """
    plan = make_plan(config, plan_request({**options, "--devices": None}))
    show(plan, options.get("--json"))
    configured = plan.as_configured
    if configured.fits:
        return 0
    rec = plan.recommendation.choice
    advice = (
        f"recommended: {rec.setting.label}, micro-batch {rec.micro_batch} x "
        f"{rec.grad_accum} accumulation steps, checkpointing {'on' if rec.checkpointing else 'off'}"
        if rec is not None
        else "nothing fits on this hardware"
    )
    message = f"the plan says this run will not fit: {describe_choice(configured)}; {advice}; "
    if not force:
        raise PlanError(f"{message}; --force to ignore")
    print(f"gobig: warning: {message}", file=sys.stderr)
    return 0
