"""`gobig eval`: the family's metrics over every sample of a split, for a run, its
export, or a model of another family, checked against a plain recomputation; and
`--as-logged`, which reproduces the evaluations a 2-rank run logged."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from data_pipeline import build_loader
from model import ModelConfig, build_model
from tests.train.conftest import HALF, ROOT, STEPS, base_env
from train.checkpoint import read_meta, step_dir
from train.eval_command import evaluate_dataset, main
from train.export import CONFIG_FILE, WEIGHTS_FILE, export_checkpoint, load_exported


def _token_mean_loss(model, dataset, seq_len: int) -> tuple[float, int]:
    """Mean next-token cross-entropy over every target of the val split, by hand."""
    loader = build_loader("gpt", str(dataset), split="val", batch_size=8, seq_len=seq_len,
                          shuffle=False, infinite=False)  # fmt: skip
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            logits = model.eval()(batch["input_ids"])
            labels = batch["labels"]
            keep = labels != -100
            losses = torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep],
                                                       reduction="sum")  # fmt: skip
            total, count = total + losses.item(), count + int(keep.sum())
    return total / count, count


def test_eval_of_a_run_and_its_export_is_the_loss_over_every_target(runs, tmp_path):
    run_dir = runs.straight(1, 0).run_dir
    out = tmp_path / "export"
    export_checkpoint(run_dir, out)
    model = load_exported(out)
    want, targets = _token_mean_loss(model, runs.text, model.config.max_seq_len)
    assert targets > 1000  # the whole split, not training's few evaluation batches

    result_json = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "eval", str(run_dir), "--data", str(runs.text),
         "--json", str(result_json)],
        cwd=ROOT, env=base_env(tmp_path), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(result_json.read_text())
    assert math.isclose(result["loss"], want, rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(want), rel_tol=1e-5)
    (line,) = proc.stdout.splitlines()  # one line; the progress bar is on stderr
    assert line.startswith(f"loss {result['loss']:.4f} | perplexity ")
    assert "eval: 100%" in proc.stderr

    from_export = evaluate_dataset(out, str(runs.text))
    assert math.isclose(from_export["loss"], result["loss"], rel_tol=1e-6)


def test_eval_of_a_vit_reports_top1_accuracy(image_dataset, tmp_path):
    config = ModelConfig(family="vit", n_layer=1, n_head=2, d_model=16, image_size=32,
                         patch_size=8, num_classes=10)  # fmt: skip
    out = tmp_path / "vit"
    out.mkdir()
    from safetensors.torch import save_model

    save_model(build_model(config), str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    result = evaluate_dataset(out, str(image_dataset), batch_size=4)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["batches"] == math.ceil(30 / 4)


def test_bad_data_is_one_line(runs, tmp_path, capsys):
    run_dir = runs.straight(1, 0).run_dir
    assert main([str(run_dir), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gobig: error: ") and "missing" in err[-1]


def test_as_logged_reproduces_the_evaluations_of_a_two_rank_run(runs, tmp_path, capsys):
    run = runs.straight(2, 2)  # evaluations and checkpoints at steps HALF and STEPS
    logged = {r["step"]: r for r in run.records("eval")}
    assert sorted(logged) == [HALF, STEPS]
    ckpt = step_dir(run.run_dir, HALF)
    assert read_meta(ckpt)["world_size"] == 2
    for path, step in ((ckpt, HALF), (run.run_dir, STEPS)):  # a run: its newest checkpoint
        out = tmp_path / f"as-logged-{step}.json"
        assert main([str(path), "--as-logged", "--json", str(out), "--device", "cpu"]) == 0
        result = json.loads(out.read_text())
        assert (result["step"], result["ranks"], result["batches"]) == (step, 2, 2 * 2)
        assert result["data"] == str(runs.text)
        for name in ("loss", "perplexity"):
            assert math.isclose(result[name], logged[step][f"val_{name}"], rel_tol=1e-5), name
        assert capsys.readouterr().out.startswith(f"loss {result['loss']:.4f} | perplexity ")

    # The whole split is another figure; a run's own settings are not to be overridden.
    whole = evaluate_dataset(ckpt, str(runs.text))["loss"]
    assert not math.isclose(whole, logged[HALF]["val_loss"], rel_tol=1e-5)
    assert main([str(ckpt), "--as-logged", "--batch-size", "2"]) == 2
    assert "--as-logged takes the run's own settings: drop --batch-size" in capsys.readouterr().err
