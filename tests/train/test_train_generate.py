"""`gobig generate` on real runs: what it prints is what the trained model samples,
from a run, a checkpoint written by 2 ranks at ZeRO-2, or an export."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from model import ModelConfig, build_model
from tests.train.conftest import ROOT, base_env
from train.checkpoint import step_dir
from train.export import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ExportError,
    export_checkpoint,
)
from train.generate import load_trained, main, sample_text

PROMPT = "ROMEO:"
CPU = torch.device("cpu")


def _gobig_generate(path, *args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "generate", str(path), *args],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_generate_prints_what_the_model_samples(runs, tmp_path):
    run_dir = runs.straight(1, 0).run_dir
    trained = load_trained(run_dir, CPU)
    tok = trained.tokenizer
    # Greedy: the model's own argmax continuation, decoded with the run's tokenizer.
    ids = torch.tensor([tok.encode(PROMPT)])
    greedy = trained.model.generate(ids, 24, temperature=0)[0].tolist()
    if tok.eos_id in greedy[ids.shape[1] :]:
        greedy = greedy[: greedy.index(tok.eos_id, ids.shape[1])]
    proc = _gobig_generate(run_dir, "--prompt", PROMPT, "--max-new-tokens", "24",
                           "--temperature", "0", tmp_path=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == tok.decode(greedy) + "\n"

    # Sampling is a function of the seed, and the options reach the sampler.
    options = dict(temperature=1.0, top_k=20)
    first, again, other = (
        sample_text(trained, PROMPT, 24, seed=seed, out=io.StringIO(), **options)
        for seed in (3, 3, 4)
    )
    assert first == again != other and first.startswith(PROMPT)
    proc = _gobig_generate(run_dir, "--prompt", PROMPT, "--max-new-tokens", "24", "--seed", "3",
                           "--temperature", "1", "--top-k", "20", tmp_path=tmp_path)  # fmt: skip
    assert proc.stdout == first + "\n"


def test_a_zero3_checkpoint_of_two_ranks_and_its_export_generate_alike(runs, tmp_path):
    run = runs.straight(2, 3)
    ckpt = step_dir(run.run_dir, 3)
    out = tmp_path / "export"
    export_checkpoint(ckpt, out)
    assert (out / TOKENIZER_FILE).is_file()  # the export carries the run's tokenizer
    for options in (dict(temperature=0), dict(temperature=1.0, top_k=20)):  # greedy, seeded
        texts = [
            sample_text(load_trained(path, CPU), PROMPT, 16, seed=1, out=io.StringIO(), **options)
            for path in (ckpt, out)
        ]
        assert texts[0] == texts[1]


def test_a_model_that_cannot_generate_is_one_line(runs, tmp_path, capsys):
    from safetensors.torch import save_model

    config = ModelConfig(family="bert", n_layer=1, n_head=2, d_model=16, max_seq_len=16,
                         vocab_size=512)  # fmt: skip
    out = tmp_path / "bert"
    out.mkdir()
    save_model(build_model(config), str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (out / TOKENIZER_FILE).write_bytes((runs.text / "tokenizer.model").read_bytes())
    assert main([str(out), "--prompt", PROMPT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gobig: error: ") and "\n" not in err
    assert "a bert model (masked-lm) does not generate text" in err
    assert main([str(tmp_path / "missing"), "--prompt", PROMPT]) == 2
    assert "no such run or checkpoint directory" in capsys.readouterr().err


def test_the_run_keeps_its_tokenizer_for_when_the_dataset_has_moved(runs):
    from data_pipeline.tokenizer import file_hash
    from train.checkpoint import read_meta
    from train.export import resolve_checkpoint, run_tokenizer

    run_dir = runs.straight(2, 3).run_dir
    kept = run_dir / "tokenizer.model"
    assert file_hash(kept) == file_hash(runs.text / "tokenizer.model")
    ckpt = resolve_checkpoint(run_dir)
    meta = read_meta(ckpt)
    moved = {**meta, "config": {**meta["config"], "data": {"source": "/nowhere"}}}
    assert run_tokenizer(moved, ckpt) == kept
    # a copy that is not the one the checkpoint recorded is never used
    with pytest.raises(ExportError, match="no longer at /nowhere"):
        run_tokenizer({**moved, "tokenizer_hash": "0" * 16}, ckpt)
