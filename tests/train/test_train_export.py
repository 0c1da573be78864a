"""`gobig export`: consolidated safetensors weights + config, loadable without DeepSpeed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model import ModelConfig, build_model
from tests.train.conftest import ROOT, gpt_args, run_train
from train.checkpoint import newest_complete, read_meta
from train.checkpoint.weights import safe_load
from train.export import CONFIG_FILE, WEIGHTS_FILE, export_checkpoint, load_exported, main
from train.task import strip_wrapper_prefix

pytestmark = pytest.mark.timeout(600)


def _batch() -> torch.Tensor:
    return torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model.eval()(_batch())


def _module_weights_model(ckpt) -> torch.nn.Module:
    """The model from the engine's own saved module (full weights at ZeRO 0-2)."""
    saved = safe_load(ckpt / "deepspeed" / "mp_rank_00_model_states.pt", map_location="cpu")
    model = build_model(ModelConfig(**read_meta(ckpt)["config"]["model"]))
    model.load_state_dict(strip_wrapper_prefix(saved["module"]))
    return model


@pytest.mark.parametrize(("nproc", "stage"), [(1, 0), (2, 2)])
def test_export_equals_the_trained_fp32_weights(runs, tmp_path, nproc, stage):
    run = runs.straight(nproc, stage)
    exported = export_checkpoint(run.run_dir, tmp_path / "out")  # a run: its newest checkpoint
    assert exported == newest_complete(run.run_dir)
    config = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert config == read_meta(exported)["config"]["model"]
    model = load_exported(tmp_path / "out")
    assert torch.equal(_logits(model), _logits(_module_weights_model(exported)))
    assert model.lm_head.weight is model.wte.weight  # still tied after loading


def test_export_gathers_zero3_shards(runs, tmp_path):
    run = runs.straight(2, 3)
    ckpt = newest_complete(run.run_dir)
    # At ZeRO-3 the saved module holds no weights: they live in the rank shards.
    saved = safe_load(ckpt / "deepspeed" / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    assert all(t.numel() == 0 for t in saved["module"].values())
    export_checkpoint(ckpt, tmp_path / "z3")
    export_checkpoint(runs.straight(2, 0).run_dir, tmp_path / "z0")
    # Stage 3 follows stage 0's trajectory, so its gathered weights match stage 0's.
    torch.testing.assert_close(
        _logits(load_exported(tmp_path / "z3")), _logits(load_exported(tmp_path / "z0")),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


def test_export_keeps_fp32_masters_of_a_bf16_run(runs, tmp_path):
    args = gpt_args(runs.text, 1, 0, "train.precision=bf16", "train.max_steps=2")
    run = run_train(args, tmp_path / "bf16").check()
    ckpt = export_checkpoint(run.run_dir, tmp_path / "out")
    exported = load_exported(tmp_path / "out").state_dict()
    working = _module_weights_model(ckpt).state_dict()  # the bf16 weights, as saved
    assert all(v.dtype == torch.float32 for v in exported.values())
    for name, value in exported.items():
        # Every fp32 master rounds to its own bf16 working copy (so the order
        # of the masters was mapped to the right names) ...
        assert torch.equal(value.bfloat16(), working[name].bfloat16()), name
    # ... and carries more precision than that copy (training moved every tensor).
    for name, value in exported.items():
        assert not torch.equal(value, working[name].float()), name


def test_exported_model_loads_without_deepspeed(runs, tmp_path):
    export_checkpoint(runs.straight(1, 0).run_dir, tmp_path / "out")
    script = f"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_model
from model import ModelConfig, build_model
out = Path({str(tmp_path / "out")!r})
by_hand = build_model(ModelConfig(**json.loads((out / "config.json").read_text())))
load_model(by_hand, out / "model.safetensors")
from train.export import load_exported
model = load_exported(out)
for (k, a), (_, b) in zip(by_hand.state_dict().items(), model.state_dict().items()):
    assert torch.equal(a, b), k
assert "deepspeed" not in sys.modules, "loading an export imported deepspeed"
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.filterwarnings("ignore:skipping checkpoint")
def test_cli_exports_and_reports_bad_input(runs, tmp_path, capsys):
    run = runs.straight(1, 0)
    assert main([str(run.run_dir), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / WEIGHTS_FILE).is_file()
    assert (tmp_path / "cli" / CONFIG_FILE).is_file()
    capsys.readouterr()

    missing = tmp_path / "no-such-run"
    half_done = tmp_path / "half-done"
    (half_done / "checkpoints" / "step_00000001" / "deepspeed").mkdir(parents=True)
    not_a_run = tmp_path / "plain-dir"
    not_a_run.mkdir()
    for bad, why in (
        (missing, "no such"),
        (half_done, "no complete checkpoint"),
        (half_done / "checkpoints" / "step_00000001", "not marked complete"),
        (not_a_run, "neither a gobig run"),
    ):
        assert main([str(bad), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("gobig: error:")]
        assert len(lines) == 1 and str(bad) in lines[0] and why in lines[0], err
    assert not (tmp_path / "never").exists()
