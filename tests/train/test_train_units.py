"""Fast unit tests (no subprocess, no engine): optimizer groups, lr schedule, the
derived DeepSpeed JSON, checkpoint bookkeeping, metrics rewind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from model import build_model, get_preset
from train import checkpoint as ckpt_io
from train.checkpoint.elastic import needs_elastic_load
from train.config import ConfigError, load_config
from train.deepspeed_config import deepspeed_config
from train.metrics_log import MetricsLog, read_metrics
from train.optim import WarmupDecaySchedule, lr_at, param_groups
from train.task import TrainingModule

# -- optimizer groups ---------------------------------------------------------------


def _groups_by_name(model: nn.Module) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


EMBEDDINGS = {
    "gpt-tiny": {"wte.weight", "positions.embedding.weight"},
    "bert-tiny": {"embeddings.word.weight", "embeddings.positions.embedding.weight",
                  "embeddings.token_type.weight"},
    "vit-tiny": {"embeddings.cls_token", "embeddings.positions.embedding.weight"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EMBEDDINGS))
def test_no_weight_decay_on_norms_biases_and_embeddings(name):
    config = get_preset(name).replace(n_layer=1, pair_head="sop" if name == "bert-tiny" else "none")
    model = TrainingModule(build_model(config))
    decay, no_decay = _groups_by_name(model)
    # Every trainable tensor is in exactly one group, tied ones once.
    assert decay.isdisjoint(no_decay)
    assert len(decay) + len(no_decay) == len({id(p) for p in model.parameters()})
    vectors = {n for n, p in model.named_parameters() if p.ndim < 2}  # biases, norm gains
    assert no_decay == vectors | {f"model.{n}" for n in EMBEDDINGS[name]}
    # What is decayed: the weight matrices (attention, MLP, heads, ViT's patch projection).
    assert "model.transformer.blocks.0.attn.qkv.weight" in decay
    assert "model.transformer.blocks.0.mlp.fc.weight" in decay
    assert "model.transformer.blocks.0.ln_1.weight" in no_decay
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n in decay)
    if name == "vit-tiny":
        assert {"model.embeddings.proj.weight", "model.head.weight"} <= decay


def test_tied_embedding_is_exempt_once():
    model = TrainingModule(build_model(get_preset("gpt-tiny").replace(n_layer=1)))
    decay, no_decay = _groups_by_name(model)
    assert "model.wte.weight" in no_decay and "model.lm_head.weight" not in decay | no_decay
    assert "model.positions.embedding.weight" in no_decay


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_is_fused_on_request_and_steps_like_the_loop_version(fused):
    from train.optim import build_optimizer

    config = load_config(None, ["model.n_layer=1", f"optim.fused={str(fused).lower()}"])
    torch.manual_seed(0)
    model = TrainingModule(build_model(config.model))
    optimizer = build_optimizer(model, config)
    assert bool(optimizer.defaults["fused"]) is fused
    # Same update as the per-parameter loop, to float rounding.
    torch.manual_seed(0)
    reference = TrainingModule(build_model(config.model))
    loop = build_optimizer(reference, load_config(None, ["model.n_layer=1", "optim.fused=false"]))
    for m in (model, reference):
        for i, p in enumerate(m.parameters()):
            p.grad = torch.full_like(p, 0.01 * (i + 1))
    optimizer.step()
    loop.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)


# -- learning-rate schedule ---------------------------------------------------------


def _optim(**fields):
    return load_config(None, [f"optim.{k}={v}" for k, v in fields.items()]).optim


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_warmup_then_decay_endpoints(schedule):
    o = _optim(lr=1.0, min_lr=0.1, warmup_steps=10, schedule=schedule, decay_steps=110)
    assert lr_at(0, o, 1000) == pytest.approx(0.1)  # first step already moves
    assert lr_at(4, o, 1000) == pytest.approx(0.5)
    assert lr_at(9, o, 1000) == pytest.approx(1.0)  # warmup ends at the peak
    assert lr_at(10, o, 1000) == pytest.approx(1.0)  # decay starts at the peak
    assert lr_at(60, o, 1000) == pytest.approx(0.55)  # halfway: both schedules meet
    assert lr_at(110, o, 1000) == pytest.approx(0.1)  # ends at min_lr at decay_steps
    assert lr_at(500, o, 1000) == pytest.approx(0.1)  # and stays there
    quarter = lr_at(35, o, 1000)
    expected = 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if schedule == "cosine" else 0.75)
    assert quarter == pytest.approx(expected)


def test_lr_decay_defaults_to_max_steps_and_constant_stays():
    o = _optim(lr=1.0, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, o, 100) == pytest.approx(1.0)
    assert lr_at(100, o, 100) == pytest.approx(0.0)
    c = _optim(lr=1.0, min_lr=0.0, warmup_steps=2, schedule="constant")
    assert [lr_at(s, c, 100) for s in (0, 1, 2, 99)] == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_schedule_state_is_its_position():
    o = _optim(lr=1.0, min_lr=0.1, warmup_steps=2, decay_steps=10)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = WarmupDecaySchedule(opt, o, max_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state == {"last_epoch": 5}
    fresh_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
    fresh = WarmupDecaySchedule(fresh_opt, o, max_steps=10)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(lr_at(5, o, 10))
    assert fresh.get_last_lr() == sched.get_last_lr()


# -- the derived DeepSpeed JSON ---------------------------------------------------------


def _ds(*overrides: str, world_size: int = 1) -> dict:
    return deepspeed_config(load_config(None, list(overrides)), world_size)


def test_batch_sizes_multiply_over_world_size():
    ds = _ds("train.micro_batch_size=4", "train.grad_accum_steps=3", world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2
    # global_batch_size derives the accumulation for the configured workers.
    ds = _ds("train.micro_batch_size=4", "train.global_batch_size=32", "cluster.num_workers=2",
             world_size=2)  # fmt: skip
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 32


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_clipping(stage):
    ds = _ds(f"zero.stage={stage}", "optim.grad_clip=0.5")
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_clipping"] == 0.5
    assert "offload_optimizer" not in ds["zero_optimization"]
    assert "optimizer" not in ds and "scheduler" not in ds  # passed as objects


def test_offload_mapping():
    ds = _ds("zero.stage=2", "zero.offload_optimizer=true")
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_force_ds_cpu_optimizer"] is True
    assert "offload_param" not in ds["zero_optimization"]
    ds = _ds("zero.stage=3", "zero.offload_optimizer=true", "zero.offload_params=true",
             "zero.nvme_path=/local/nvme")  # fmt: skip
    for key in ("offload_optimizer", "offload_param"):
        assert ds["zero_optimization"][key]["device"] == "nvme"
        assert ds["zero_optimization"][key]["nvme_path"] == "/local/nvme"


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"),
    [("fp32", False, False), ("bf16", True, False)],
)
def test_precision_mapping(precision, bf16, fp16):
    ds = _ds(f"train.precision={precision}")
    assert ds["bf16"]["enabled"] is bf16 and ds["fp16"]["enabled"] is fp16
    ds = _ds("train.precision=fp16", "cluster.use_gpu=true")
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False


def test_pass_through_section_merges_deeply():
    ds = _ds("zero.stage=2", "deepspeed.zero_optimization.reduce_bucket_size=1000",
             "deepspeed.steps_per_print=7", "deepspeed.communication_data_type=fp32")  # fmt: skip
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000
    assert ds["zero_optimization"]["stage"] == 2  # derived keys beside it survive
    assert ds["zero_optimization"]["contiguous_gradients"] is True
    assert ds["steps_per_print"] == 7 and ds["communication_data_type"] == "fp32"


@pytest.mark.parametrize(
    "overrides",
    [
        ["zero.stage=2", "zero.offload_params=true"],
        ["zero.stage=0", "zero.offload_optimizer=true"],
        ["train.precision=fp16"],
        ["train.micro_batch_size=3", "train.global_batch_size=32"],
    ],
)
def test_impossible_engine_settings_are_config_errors(overrides):
    with pytest.raises(ConfigError):
        load_config(None, overrides)


# -- checkpoint bookkeeping ------------------------------------------------------------


def _fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    ckpt = ckpt_io.step_dir(run_dir, step)
    (ckpt / "deepspeed").mkdir(parents=True)
    (ckpt / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)
    ckpt_io.save_rank_state(ckpt, 0, {"data": {"index": step}, "rng": {"torch": torch.ones(3)}})
    if complete:
        ckpt_io.mark_complete(ckpt, {"step": step})
    return ckpt


def test_verify_detects_missing_marker_truncation_and_missing_files(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, 1)
    assert ckpt_io.verify(ckpt) is None
    assert ckpt_io.read_meta(ckpt) == {"step": 1}
    assert ckpt_io.load_rank_state(ckpt, 0)["data"] == {"index": 1}
    engine_file = ckpt / "deepspeed" / "mp_rank_00_model_states.pt"
    engine_file.write_bytes(b"x" * 50)
    assert "deepspeed/mp_rank_00_model_states.pt" in ckpt_io.verify(ckpt)
    assert "truncated" in ckpt_io.verify(ckpt)
    engine_file.unlink()
    assert ckpt_io.verify(ckpt) == "missing deepspeed/mp_rank_00_model_states.pt"
    assert ckpt_io.verify(_fake_checkpoint(tmp_path, 2, complete=False)) == "not marked complete"
    (ckpt / ckpt_io.MARKER).write_text("{not json")
    assert "unreadable" in ckpt_io.verify(ckpt)


def test_newest_complete_skips_broken_newer_ones_with_a_warning(tmp_path):
    assert ckpt_io.newest_complete(tmp_path) is None
    _fake_checkpoint(tmp_path, 10)
    good = _fake_checkpoint(tmp_path, 20)
    truncated = _fake_checkpoint(tmp_path, 30)
    (truncated / "rank_00000.pt").write_bytes(b"")
    unmarked = _fake_checkpoint(tmp_path, 40, complete=False)
    with pytest.warns(UserWarning) as caught:
        assert ckpt_io.newest_complete(tmp_path) == good
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert str(unmarked) in messages[0] and "not marked complete" in messages[0]
    assert str(truncated) in messages[1] and "rank_00000.pt" in messages[1]


def test_prune_keeps_the_newest_k_complete(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step)
    broken_old = ckpt_io.step_dir(tmp_path, 2)
    (broken_old / ckpt_io.MARKER).unlink()
    in_flight = _fake_checkpoint(tmp_path, 5, complete=False)  # another rank still writing
    removed = ckpt_io.prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step_00000001", "step_00000002"]
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == [
        "step_00000003", "step_00000004", in_flight.name,
    ]  # fmt: skip
    assert ckpt_io.prune(tmp_path, keep=2) == []


def test_elastic_load_only_when_layout_changes():
    z0 = {"world_size": 2, "zero_stage": 0}
    z2 = {"world_size": 2, "zero_stage": 2}
    assert not needs_elastic_load(z0, 1, 0)  # replicated: any world size
    assert not needs_elastic_load(z2, 2, 2)
    assert needs_elastic_load(z2, 1, 2)
    assert needs_elastic_load(z2, 2, 3)
    assert needs_elastic_load(z0, 2, 2)


def test_metrics_rewind_drops_records_past_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, max_steps=10)
    for step in (1, 2, 3):
        log.log({"kind": "train", "step": step, "loss": 1.0, "lr": 0.1, "grad_norm": 1.0,
                 "tokens_per_s": 1.0, "mfu": 0.1, "data_wait_frac": 0.0, "step_time_s": 0.1,
                 "peak_mem_gb": 0.1})  # fmt: skip
    log.log({"kind": "eval", "step": 2, "val_loss": 1.0})
    resumed = MetricsLog(tmp_path, max_steps=10)
    resumed.rewind_to(2)
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [
        ("train", 1), ("train", 2), ("eval", 2),
    ]  # fmt: skip
    assert resumed.wandb_last_step == 3  # W&B already has step 3: it is not sent again


def test_measuring_peak_flops_leaves_the_training_rng_alone():
    # The first run on a machine measures the peak after seeding; dropout must
    # not depend on whether that measurement was cached.
    from train.peak_flops import measure_matmul_flops

    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert measure_matmul_flops(torch.device("cpu"), torch.float32, 64, 1, 0.001) > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_peak_is_never_below_what_was_achieved(tmp_path, monkeypatch):
    import json

    import torch

    import train.peak_flops as pf

    monkeypatch.setattr(pf, "CACHE", tmp_path / "peak_flops.json")
    cpu = torch.device("cpu")
    # A reading taken on a busy machine, cached: far too low.
    pf.CACHE.write_text(json.dumps({pf._key(cpu, "fp32"): 1e9}))
    peak = pf.PeakFlops(cpu, "fp32", None)
    assert peak.value == 1e9
    peak.raise_to(5e9)  # the model itself ran at 5 GFLOP/s
    assert peak.value == 5e9
    assert json.loads(pf.CACHE.read_text())[pf._key(cpu, "fp32")] == 5e9
    peak.raise_to(2e9)  # lower figures never lower it
    assert peak.value == 5e9
    configured = pf.PeakFlops(cpu, "fp32", 0.001)  # train.peak_tflops wins as given
    configured.raise_to(5e12)
    assert configured.value == 1e9


def test_training_env_defaults_and_user_values_win(monkeypatch):
    from cluster.ray_session import WORKER_ENV
    from train.process_env import apply_training_env, training_env

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert training_env() == {"THP_MEM_ALLOC_ENABLE": "1"}
    assert WORKER_ENV["THP_MEM_ALLOC_ENABLE"] == "1"  # Ray workers start with it
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    apply_training_env()
    assert training_env() == {"THP_MEM_ALLOC_ENABLE": "0"}
