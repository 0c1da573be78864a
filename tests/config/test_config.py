"""The experiment schema: precedence, validation, and the shipped configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.cli import main as gobig
from train.config import ConfigError, ExperimentConfig, build_config, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
REQUIRED = {"gpt-tiny", "gpt2-small", "bert-tiny", "bert-base", "vit-tiny", "vit-b16",
            "shakespeare-char"}  # fmt: skip

USER_FACING_KEYS = [
    "model.name",
    "model.n_layer",
    "model.n_head",
    "model.d_model",
    "model.max_seq_len",
    "model.vocab_size",
    "model.position",
    "model.dropout",
    "data.source",
    "optim.lr",
    "optim.warmup_steps",
    "optim.weight_decay",
    "optim.grad_clip",
    "zero.stage",
    "zero.offload_optimizer",
    "zero.offload_params",
    "train.precision",
    "train.max_steps",
    "train.micro_batch_size",
    "train.grad_accum_steps",
    "train.seed",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "cluster.num_workers",
    "cluster.cpus_per_worker",
    "cluster.use_gpu",
    "cluster.max_failures",
    "cluster.address",
    "run.name",
    "run.dir",
    "checkpoint.keep",
    "logging.wandb.mode",
    "logging.wandb.project",
]


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_required_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= REQUIRED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    config = load_config(path, check_paths=False)
    raw = yaml.safe_load(path.read_text())
    # What the file says is what the config holds.
    for section, values in raw.items():
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            got = getattr(getattr(config, section), key)
            assert got == (tuple(value) if isinstance(value, list) else value), f"{section}.{key}"
    # Round trip through the plain dict that crosses to workers.
    assert build_config(config.to_dict()) == config


def test_user_facing_keys_exist():
    tree = ExperimentConfig().to_dict()
    for key in USER_FACING_KEYS:
        _lookup(tree, key)


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\n  warmup_steps: 7\ntrain:\n  max_steps: 50\n")
    config = load_config(path, ["optim.lr=3e-4", "cluster.num_workers=2"])
    assert config.optim.lr == pytest.approx(3e-4)  # override beats YAML
    assert config.optim.warmup_steps == 7  # YAML beats default
    assert config.train.max_steps == 50
    assert config.cluster.num_workers == 2
    assert config.optim.weight_decay == ExperimentConfig().optim.weight_decay  # default


def test_model_preset_with_overrides():
    config = load_config(None, ["model.name=gpt2-small", "model.n_layer=2"])
    assert (config.model.n_layer, config.model.d_model, config.model.vocab_size) == (2, 768, 50257)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.n_head=3"], "model.d_model (128) must be divisible by model.n_head (3)"),
        (["optim.lr=fast"], "optim.lr:"),
        (["optim.bogus=1"], "optim.bogus: unknown key"),
        (["model.bogus=1"], "model.bogus: unknown key"),
        (["zero.stage=4"], "zero.stage:"),
        (["model.position=spiral"], "model.position:"),
        (["model.name=gpt-huge"], "model.name: unknown model 'gpt-huge'"),
        (
            ["train.global_batch_size=20", "train.micro_batch_size=4", "cluster.num_workers=3"],
            "train.global_batch_size (20) must be divisible",
        ),
        (["data.source=/no/such/shards"], "data.source: no such file or directory"),
        (["zero.offload_params=true", "zero.stage=2"], "zero.offload_params needs zero.stage 3"),
        (["lonely"], "expected dotted.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_global_batch_derives_grad_accum():
    config = load_config(
        None, ["train.global_batch_size=32", "train.micro_batch_size=4", "cluster.num_workers=2"]
    )
    assert config.train.grad_accum_steps == 4
    assert config.global_batch_size == 32


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)
    path.write_text("train:\n  max_steps: -5\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: train.max_steps"):
        load_config(path)


def test_cli_error_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "missing.yaml: no such config file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_config_prints_resolved_yaml(capsys):
    assert gobig(["config", str(CONFIGS[0].parent / "bert-tiny.yaml"), "optim.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.01
    assert printed["model"]["family"] == "bert"
