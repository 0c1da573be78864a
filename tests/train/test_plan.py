"""`gobig plan` and `gobig train --dry-run`: memory per device against the ZeRO paper and
DeepSpeed's own estimators, published parameter counts, FLOPs as the training loop counts
them, the JSON round trip, plans that cannot fit, and one-line errors. Nothing trains."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.presets import get_preset
from model.registry import build_model
from train.config import load_config
from train.families import family_of
from train.plan import Plan, PlanRequest, make_plan, render_plan
from train.plan.memory import (
    Devices,
    ParamCounts,
    deepspeed_device_bytes,
    deepspeed_host_bytes,
    paper_device_bytes,
)
from train.plan.schema import Setting
from train.plan.shapes import model_shape

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "gpt-tiny.yaml"
# A 70B-class GPT (gobig's GPT blocks: 64.7B parameters) in bf16 on GPUs.
GPT_70B = [
    "model.n_layer=80", "model.d_model=8192", "model.n_head=64", "model.vocab_size=32000",
    "model.max_seq_len=4096", "train.precision=bf16", "cluster.use_gpu=true",
]  # fmt: skip


def gobig(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gobig: error: "), proc.stderr
    for word in words:
        assert word in lines[0]


# --- model states: the ZeRO paper and DeepSpeed's estimators ---------------------------------


def test_zero_paper_figure_1_for_7_5b_parameters_on_64_devices():
    # Figure 1: Ψ = 7.5B, N_d = 64, K = 12: 120 / 31.4 / 16.6 / 1.88 GB (1 GB = 1e9 bytes).
    expected = {0: "120", 1: "31.4", 2: "16.6", 3: "1.88"}
    for stage, figure in expected.items():
        per_device = paper_device_bytes(7_500_000_000, Setting(stage=stage), "bf16", 64)
        assert f"{per_device / 1e9:.3g}" == figure


# (Ψ, largest layer): a GPT-2-small-sized, a 6.7B and a 65B model.
COLD_SIZES = [(124_439_808, 38_597_376), (6_658_404_352, 205_852_672), (64.7e9, 268_435_456)]
NODES = [(1, 1), (8, 1), (8, 4)]  # (devices per node, nodes)
ROW = re.compile(r"^\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.*)$")


def deepspeed_table(estimate, *args, **kwargs) -> list[tuple[str, str, str]]:
    """(per CPU, per GPU, options) rows that a DeepSpeed estimator prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        estimate(*args, **kwargs)
    return [m.groups() for m in map(ROW.match, out.getvalue().splitlines()) if m]


def offloaded(options: str, key: str) -> bool:
    return not re.search(rf"{key}=none\b", options)


def plan_rows(stage: int, options: str) -> tuple[Setting, bool]:
    """The plan's setting (and zero_init) a printed DeepSpeed row stands for."""
    opt = offloaded(options, "offload_optimizer")
    params = stage == 3 and offloaded(options, "offload_param")
    device = "cpu" if opt or params else "none"
    setting = Setting(stage=stage, offload_optimizer=opt, offload_params=params,
                      offload_device=device)  # fmt: skip
    return setting, "zero_init=1" in options


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


@pytest.mark.parametrize(("total", "largest"), COLD_SIZES)
@pytest.mark.parametrize(("per_node", "nodes"), NODES)
def test_model_states_equal_deepspeeds_cold_estimates(total, largest, per_node, nodes):
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs,
        estimate_zero3_model_states_mem_needs_all_cold,
    )
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    total = int(total)
    params, devices = ParamCounts(total, largest), Devices(per_node, nodes)
    printed = {
        2: deepspeed_table(estimate_zero2_model_states_mem_needs_all_cold, total, per_node, nodes),
        3: deepspeed_table(
            estimate_zero3_model_states_mem_needs_all_cold, total, largest, per_node, nodes
        ),
    }
    assert len(printed[2]) == 2 and len(printed[3]) == 6
    for stage, rows in printed.items():
        for cpu, gpu, options in rows:
            setting, zero_init = plan_rows(stage, options)
            assert gib(deepspeed_device_bytes(params, setting, "bf16", devices)) == gpu, options
            assert gib(deepspeed_host_bytes(params, setting, devices, zero_init)) == cpu, options
    # The functions behind the tables, to the byte.
    for offload in (True, False):
        setting = Setting(stage=2, offload_optimizer=offload, offload_device="cpu")
        assert estimate_zero2_model_states_mem_needs(total, per_node, nodes, offload) == (
            deepspeed_host_bytes(params, setting, devices),
            deepspeed_device_bytes(params, setting, "bf16", devices),
        )
    for opt, par, zero_init in [(1, 1, 1), (1, 1, 0), (1, 0, 1), (1, 0, 0), (0, 0, 1), (0, 0, 0)]:
        setting = Setting(stage=3, offload_optimizer=opt, offload_params=par,
                          offload_device="cpu" if opt or par else "none")  # fmt: skip
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, per_node, nodes, bool(opt), bool(par), bool(zero_init)
        )
        assert cpu == deepspeed_host_bytes(params, setting, devices, bool(zero_init))
        assert gpu == deepspeed_device_bytes(params, setting, "bf16", devices)


LIVE_MODELS = {
    "gpt-tiny": [],
    "gpt-6x512": ["model.n_layer=6", "model.d_model=512", "model.n_head=8"],
    "gpt2-small": ["model.name=gpt2-small"],
}


@pytest.mark.parametrize("name", list(LIVE_MODELS))
@pytest.mark.parametrize(("per_node", "nodes"), [(1, 1), (4, 2)])
def test_the_plan_equals_deepspeeds_live_estimates(name, per_node, nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_live
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_live

    overrides = [*LIVE_MODELS[name], "train.precision=bf16", "cluster.use_gpu=true"]
    config = load_config(TINY, overrides, check_paths=False)
    devices = per_node * nodes
    plan = make_plan(config, PlanRequest(devices, per_node, device_memory=80 * 10**9))
    rows = {row.setting: row.states for row in plan.rows}
    # DeepSpeed counts a live model's storage (data_ptr): a real model, tied weights tied.
    model = build_model(config.model)
    printed = {
        2: deepspeed_table(estimate_zero2_model_states_mem_needs_all_live, model, per_node, nodes),
        3: deepspeed_table(estimate_zero3_model_states_mem_needs_all_live, model, per_node, nodes),
    }
    compared = 0
    for stage, table in printed.items():
        for cpu, gpu, options in table:
            setting, zero_init = plan_rows(stage, options)
            if zero_init:
                continue  # gobig builds the whole model in each worker (zero_init=0)
            assert gib(rows[setting].device) == gpu, options
            assert gib(rows[setting].host) == cpu, options
            compared += 1
    assert compared == 5


def test_fits_are_judged_by_deepspeeds_accounting_not_the_papers():
    config = load_config(TINY, ["model.name=gpt2-small", "train.precision=bf16",
                                "cluster.use_gpu=true", "train.micro_batch_size=1"],
                         check_paths=False)  # fmt: skip
    probe = make_plan(config, PlanRequest(devices=8, device_memory=80 * 10**9))
    row = next(r for r in probe.rows if r.setting == Setting(stage=2))
    assert row.states.paper_device < row.states.device
    fixed = probe.as_configured.activations + probe.hardware.runtime_allowance
    between = (row.states.paper_device + row.states.device) // 2 + fixed
    plan = make_plan(config, PlanRequest(devices=8, device_memory=between))
    assert not plan.as_configured.fits


# --- parameter counts and FLOPs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "overrides", "published", "unit"),
    [
        ("gpt2-small", {}, 124_000_000, 10**6),  # GPT-2 small: 124M
        ("bert-base", {}, 110_000_000, 10**6),  # BERT-base: 110M
        ("vit-b16", {}, 86_000_000, 10**6),  # ViT-B/16: 86M
        # GPT-3 6.7B (Brown et al. 2020, table 2.1): 32 layers, d 4096, 32 heads, 2048 tokens.
        ("gpt2-small", dict(n_layer=32, d_model=4096, n_head=32, max_seq_len=2048),
         6_700_000_000, 10**8),
    ],
)  # fmt: skip
def test_parameter_counts_match_the_published_ones(preset, overrides, published, unit):
    shape = model_shape(get_preset(preset).replace(**overrides))
    # Equal to the stated precision: within one unit of the last digit given.
    assert abs(shape.params - published) < unit, shape.params


def test_gpt2_small_has_exactly_its_tied_count():
    assert model_shape(get_preset("gpt2-small")).params == 124_439_808


def _loop_units(config, family) -> int:
    """Units of one step the way Trainer.train_step counts them: family.count_units of
    each micro-batch, over the accumulation steps, times the world size."""
    m, seq = config.model, config.model.max_seq_len
    micro = config.train.micro_batch_size
    batch = {
        "input_ids": torch.zeros(micro, seq, dtype=torch.long),
        "labels": torch.zeros(micro, seq, dtype=torch.long),  # every target real
        "images": torch.zeros(micro, m.in_channels, m.image_size, m.image_size),
    }
    per_micro = family.count_units(batch)
    return per_micro * config.train.grad_accum_steps * config.cluster.num_workers


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.grad_accum_steps=3"],
        ["model.name=bert-tiny"],
        ["model.name=vit-tiny", "train.micro_batch_size=16"],
        ["model.name=transformer-tiny", "cluster.num_workers=3"],
    ],
    ids=["gpt", "bert", "vit", "seq2seq"],
)
def test_step_flops_are_the_models_own_times_the_loops_units(overrides):
    config = load_config(TINY, overrides, check_paths=False)
    plan = make_plan(config, PlanRequest(device_memory=80 * 10**9, peak_tflops=100.0))
    model = build_model(config.model)
    units = _loop_units(config, family_of(config.model))
    assert plan.compute.units_per_step == units
    assert plan.compute.step_flops == model.training_flops_per_unit() * units
    expected_time = plan.compute.step_flops / (config.cluster.num_workers * 100e12 * 0.4)
    assert plan.compute.step_time_s == pytest.approx(expected_time, rel=1e-12)


def test_time_for_a_token_budget():
    config = load_config(TINY, check_paths=False)
    request = PlanRequest(8, None, 80 * 10**9, total_units=10**10, mfu=0.5, peak_tflops=989.0)
    plan = make_plan(config, request)
    c = plan.compute
    assert c.steps == -(-(10**10) // c.units_per_step)
    assert c.wall_clock_s == pytest.approx(c.steps * c.step_time_s)
    assert c.gpu_hours == pytest.approx(c.wall_clock_s * 8 / 3600)


# --- the command: JSON, plans that cannot fit, errors ----------------------------------------

PLAN_ARGS = ["plan", str(TINY), "--devices", "8", "--device-memory", "80GB", "--tokens", "10B"]


def test_json_round_trips_to_the_plan_the_table_was_made_from(tmp_path):
    proc = gobig(*PLAN_ARGS, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    from_json = Plan.model_validate(json.loads(proc.stdout))
    config = load_config(TINY, check_paths=False)
    request = PlanRequest(devices=8, device_memory=80 * 10**9, total_units=10**10)
    assert from_json == make_plan(config, request)

    out = tmp_path / "plan.json"
    proc = gobig(*PLAN_ARGS, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_plan(Plan.model_validate_json(out.read_text()))
    assert "recommended: ZeRO-" in proc.stdout and "GPU-hours" in proc.stdout


def test_a_70b_model_plans_in_seconds_without_memory():
    start = time.monotonic()
    proc = gobig("plan", str(TINY), *GPT_70B, "--devices", "64", "--device-memory", "80GiB",
                 "--json", "-")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60
    # The slowest child so far, this one included: far below 260 GB of fp32 weights.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 4 * 2**20  # KiB
    plan = Plan.model_validate(json.loads(proc.stdout))
    assert 64e9 < plan.model.params < 65e9
    assert plan.recommendation.choice is not None and plan.recommendation.choice.fits


def test_a_model_too_large_for_its_devices_is_told_to_offload_or_add_devices():
    config = load_config(TINY, GPT_70B, check_paths=False)
    plan = make_plan(config, PlanRequest(devices=1, device_memory=24 * 10**9))
    assert not plan.as_configured.fits
    rec = plan.recommendation
    assert rec.choice is not None and rec.choice.fits
    assert rec.choice.setting.offload_optimizer and rec.choice.setting.offload_params
    assert rec.devices_needed is not None and rec.devices_needed > 1
    assert any(f"{rec.devices_needed} devices would fit" in r for r in rec.reasons)
    assert rec.host_memory and rec.host_memory > 64e9 * 16  # states in host memory
    assert "offload optimizer+params to cpu" in render_plan(plan)


def test_cpu_workers_are_never_told_to_offload():
    # On CPU workers "device" memory and host memory are the same RAM.
    overrides = ["model.name=gpt2-small", "cluster.use_gpu=false", "train.precision=fp32"]
    config = load_config(TINY, overrides, check_paths=False)
    plan = make_plan(config, PlanRequest(devices=2, device_memory=3 * 10**9))
    choice = plan.recommendation.choice
    assert choice is None or choice.setting.offload_device == "none"
    gpu = load_config(TINY, [*overrides, "cluster.use_gpu=true"], check_paths=False)
    offloaded = make_plan(gpu, PlanRequest(devices=2, device_memory=3 * 10**9))
    assert offloaded.recommendation.choice.setting.offload_device == "cpu"


def test_a_plan_where_nothing_fits_says_so():
    overrides = [*GPT_70B, "model.max_seq_len=262144"]  # one sample's activations alone
    plan = make_plan(load_config(TINY, overrides, check_paths=False),
                     PlanRequest(devices=1, device_memory=24 * 10**9))  # fmt: skip
    assert plan.recommendation.choice is None
    assert plan.recommendation.devices_needed is None
    assert plan.recommendation.reasons[0].startswith("nothing fits")
    assert "recommended: nothing fits" in render_plan(plan)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--device-memory", "banana"], ["--device-memory", "banana"]),
        (["--devices", "0"], ["--devices"]),
        (["--mfu", "2"], ["--mfu"]),
        (["--tokens", "lots"], ["--tokens"]),
        (["--tokens", "1e400"], ["--tokens", "too large"]),
        (["--peak-tflops", "-5"], ["--peak-tflops"]),
        (["--devices", "8", "--devices-per-node", "3"], ["--devices-per-node"]),
        (["model.n_layers=2"], ["model.n_layers"]),
    ],
    ids=["memory", "devices", "mfu", "tokens", "huge", "peak", "per-node", "config"],
)
def test_bad_plan_input_is_one_line(args, words):
    assert_one_line_error(gobig("plan", str(TINY), *args), *words)


# --- gobig train --dry-run ----------------------------------------------------------------

PROBE = """
import json, sys
import cluster.cli
code = cluster.cli.main(json.loads(sys.argv[1]))
sys.stdout.flush()
print("\\nPROBE " + json.dumps({"code": code, "ray": "ray" in sys.modules}))
"""


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    argv = ["train", "--dry-run", str(TINY), f"run.dir={tmp_path / 'runs'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    out, _, result = proc.stdout.rpartition("\nPROBE ")
    assert json.loads(result) == {"code": 0, "ray": False}, proc.stderr
    assert "gobig plan: gpt-tiny" in out and "as configured: ZeRO-2" in out
    assert "devices: 2 x" in out  # cluster.num_workers
    assert not (tmp_path / "runs").exists()


def test_dry_run_refuses_a_run_that_will_not_fit_in_one_line():
    args = ["train", "--dry-run", str(TINY), *GPT_70B, "--device-memory", "24GB"]
    proc = gobig(*args)
    assert_one_line_error(proc, "will not fit", "--force")
    assert "gobig plan:" in proc.stdout  # the plan itself is still shown
    forced = gobig(*args, "--force")
    assert forced.returncode == 0
    assert "will not fit" in forced.stderr and "Traceback" not in forced.stderr


def test_dry_run_bad_memory_is_one_line():
    assert_one_line_error(gobig("train", "--dry-run", "--device-memory", "lots"), "--device-memory")
