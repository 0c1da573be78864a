"""Bad configs and bad data end a run with exit code 2 and one `gobig: error:` line."""

from __future__ import annotations

import pytest

from tests.train.conftest import gpt_args, run_train, vocab_size

pytestmark = pytest.mark.timeout(300)


def _one_error_line(run, *fragments: str) -> str:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("gobig: error:")]
    assert len(errors) == 1, run.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.source={tmp}/no-such-dataset", ["data.source", "no-such-dataset"]),
        ("model.n_layers=2", ["model.n_layers", "unknown key"]),
        ("zero.offload_params=true", ["zero.offload_params"]),
    ],
    ids=["missing-source", "unknown-key", "offload-params-needs-stage-3"],
)
def test_config_errors_fail_before_training(runs, tmp_path, override, fragments):
    args = gpt_args(runs.text, 1, 2, override.format(tmp=tmp_path))
    run = run_train(args, tmp_path / "run")
    _one_error_line(run, *fragments)
    assert run.stderr.strip().count("\n") == 0  # nothing else was printed
    assert not (tmp_path / "run").exists()


def test_vocab_smaller_than_the_tokenizer(runs, tmp_path):
    vocab = vocab_size(runs.text)
    run = run_train(gpt_args(runs.text, 1, 2, f"model.vocab_size={vocab - 1}"), tmp_path / "run")
    _one_error_line(run, f"model.vocab_size ({vocab - 1})", f"vocabulary ({vocab})")


def test_source_that_is_not_a_dataset(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    run = run_train(gpt_args(runs.text, 1, 2, f"data.source={tmp_path}/empty"), tmp_path / "run")
    _one_error_line(run, str(tmp_path / "empty"))


def test_resume_without_a_complete_checkpoint(tmp_path):
    run = run_train([], tmp_path / "nothing-here", resume=True)
    _one_error_line(run, str(tmp_path / "nothing-here"), "not a gobig run directory")
    started = tmp_path / "started"
    (started / "checkpoints" / "step_00000001").mkdir(parents=True)  # never marked complete
    (started / "config.yaml").write_text("{}\n")
    run = run_train([], started, resume=True)
    _one_error_line(run, str(started), "no complete checkpoint")
