"""At each evaluation a GPT run writes a few short samples from fixed prompts
(metrics.jsonl, the console, a W&B table) without changing its training."""

from __future__ import annotations

import json

from tests.train.conftest import HALF, STEPS, gpt_args, run_train, wandb_records

PROMPTS = ["The", "First"]  # the defaults


def test_samples_at_each_evaluation_under_zero3_leave_the_losses_alone(runs, tmp_path):
    sampled = runs.straight(2, 3)  # samples are on by default
    plain = run_train(gpt_args(runs.text, 2, 3, "logging.sample_tokens=0"),
                      tmp_path / "plain", nproc=2).check()  # fmt: skip
    assert sampled.losses() == plain.losses()  # own generator, eval mode: nothing drawn
    records = sampled.records("samples")
    assert [r["step"] for r in records] == [HALF, STEPS]  # train.eval_every and the last
    for record in records:
        assert [s["prompt"] for s in record["samples"]] == PROMPTS
        for sample in record["samples"]:
            assert sample["text"].startswith(sample["prompt"])
            assert len(sample["text"]) > len(sample["prompt"])
    assert f"sample @ step {HALF}: " in sampled.stdout
    assert plain.records("samples") == []


def test_samples_reach_the_wandb_run_as_a_table(runs):
    run = runs.straight(1, 0)  # W&B offline
    tables = {
        rec.history.step.num: {
            item.nested_key[1]: json.loads(item.value_json)
            for item in rec.history.item
            if list(item.nested_key[:1]) == ["samples"]
        }
        for _, rec in wandb_records(run.run_dir)
        if rec.WhichOneof("record_type") == "history"
    }
    tables = {step: table for step, table in tables.items() if table}
    assert sorted(tables) == [HALF, STEPS]
    for table in tables.values():
        assert table["_type"] == "table-file" and table["nrows"] == len(PROMPTS)
