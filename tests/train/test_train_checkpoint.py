"""What a checkpoint holds, how it loads, and how many are kept."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from data_pipeline import Tokenizer
from tests.train.conftest import STEPS, gpt_args, run_train
from train.checkpoint import MARKER, list_checkpoints, newest_complete, rank_file, read_meta
from train.checkpoint.weights import safe_load

pytestmark = pytest.mark.timeout(600)


def test_checkpoint_contents_two_ranks_zero2(runs, text_dataset):
    run = runs.straight(2, 2)
    ckpt = newest_complete(run.run_dir)
    assert ckpt is not None and ckpt.name == f"step_{STEPS:08d}"
    meta = read_meta(ckpt)
    assert meta["step"] == STEPS
    assert meta["tokens"] == STEPS * 2 * 4 * 32  # steps x ranks x micro batch x seq_len
    assert (meta["world_size"], meta["zero_stage"]) == (2, 2)
    assert meta["config"] == yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert meta["tokenizer_hash"] == Tokenizer(text_dataset / "tokenizer.model").hash
    assert meta["wandb_run_id"] == json.loads((run.run_dir / "run.json").read_text())["wandb_id"]

    # Every rank's own state, loadable without unpickling anything.
    states = [torch.load(rank_file(ckpt, r), weights_only=True) for r in (0, 1)]
    for state in states:
        assert set(state) == {"data", "rng", "components"}  # components: e.g. the anomaly guard
        assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert states[0]["data"] == states[1]["data"]  # a global position, the same everywhere
    assert not torch.equal(states[0]["rng"]["torch"], states[1]["rng"]["torch"])  # per rank

    # The engine state is sharded per rank and loads weights-only.
    engine_files = sorted(p.name for p in (ckpt / "deepspeed").iterdir())
    assert engine_files == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    for name in engine_files:
        assert safe_load(ckpt / "deepspeed" / name, map_location="cpu")

    # The marker, written last, names every other file with its size.
    listed = json.loads((ckpt / MARKER).read_text())["files"]
    on_disk = {
        str(p.relative_to(ckpt)): p.stat().st_size
        for p in ckpt.rglob("*")
        if p.is_file() and p.name != MARKER
    }
    assert listed == on_disk
    assert {"meta.json", "rank_00000.pt", "rank_00001.pt"} <= set(listed)


def test_keep_prunes_to_the_newest_k(runs, tmp_path):
    args = gpt_args(
        runs.text, 1, 1, "train.max_steps=4", "train.checkpoint_every=1", "checkpoint.keep=2"
    )
    run = run_train(args, tmp_path / "keep").check()
    assert [c.name for c in list_checkpoints(run.run_dir)] == ["step_00000003", "step_00000004"]
    assert newest_complete(run.run_dir).name == "step_00000004"
    assert read_meta(newest_complete(run.run_dir))["zero_stage"] == 1
