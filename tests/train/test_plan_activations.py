"""The activation estimate of `gobig plan` (train/plan/activations.py) against what
autograd really keeps.

Each case builds a small gobig model, runs one training forward of
`compute_loss` under `torch.autograd.graph.saved_tensors_hooks` and adds up the
bytes of every storage a saved tensor lives in, once per storage (views and
repeated saves share it) and leaving out parameters and buffers: the weights
are the planner's other line, not activations. Under activation checkpointing
the hooks see what the non-reentrant checkpoint keeps (each block's input); the
estimate also counts what the checkpointed blocks' attention context keeps alive
for the recomputation without saving it (the padding mask), so BERT and seq2seq
read about 1% high there.

The estimate predicts CUDA. Measured here on CPU in fp32, the two agree without
dropout, so those cases hold `activation_estimate` itself to the measurement;
with dropout CPU kernels keep other tensors (float noise masks, SDPA's math path
with its [s, s] probabilities), so those cases check `cpu_activation_estimate`,
the same count under CPU rules. Run with -s for the table.

Batches are shaped as gobig's data pipeline shapes them: BERT and the seq2seq
source carry an attention_mask with padding in the first row (the estimate
assumes a padding mask for both), GPT and ViT none.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from model import build_model
from model.config import ModelConfig
from model.presets import get_preset
from train.plan.activations import (
    ActivationEstimate,
    activation_estimate,
    cpu_activation_estimate,
)

BATCH = 2
TOLERANCE = 0.10

# preset -> overrides that keep one forward well under a second on a CPU core
PRESETS = {
    "gpt-tiny": dict(max_seq_len=64),
    "bert-tiny": dict(max_seq_len=64),
    "vit-tiny": {},
    "transformer-tiny": dict(max_seq_len=32),
}

ROWS: list[tuple[str, ...]] = []  # the table printed at the end of the module


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny shapes on a shared machine: one intra-op thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def print_table() -> Iterator[None]:
    yield
    if not ROWS:
        return
    header = ("case", "ckpt", "dropout", "model", "predicted", "measured", "ratio")
    widths = [max(len(row[i]) for row in [header, *ROWS]) for i in range(len(header))]
    print()
    for row in [header, *ROWS]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def make_batch(config: ModelConfig, seq_len: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A compute_loss batch of BATCH samples, every sequence seq_len long."""
    gen = torch.Generator().manual_seed(0)
    if config.family == "vit":
        size = (BATCH, config.in_channels, config.image_size, config.image_size)
        return {
            "images": torch.randn(size, generator=gen).to(dtype),
            "labels": torch.randint(config.num_classes, (BATCH,), generator=gen),
        }
    ids = torch.randint(config.vocab_size, (BATCH, seq_len), generator=gen)
    padding = torch.ones_like(ids)
    padding[0, -seq_len // 4 :] = 0
    if config.family == "seq2seq":
        target = torch.randint(config.vocab_size, (BATCH, seq_len), generator=gen)
        labels = torch.roll(target, -1, dims=1)
        labels[:, -1] = -100
        return {
            "input_ids": ids,
            "attention_mask": padding,
            "decoder_input_ids": target,
            "labels": labels,
        }
    if config.family == "bert":
        labels = torch.full_like(ids, -100)
        labels[:, 1::3] = ids[:, 1::3]
        segments = (torch.arange(seq_len) >= seq_len // 2).long().repeat(BATCH, 1)
        batch = {"input_ids": ids, "token_type_ids": segments, "attention_mask": padding}
        if config.num_labels > 0:  # a classifier trains on class labels alone
            batch["class_labels"] = torch.randint(config.num_labels, (BATCH,), generator=gen)
        else:
            batch["labels"] = labels
        if config.pair_head != "none":
            batch["pair_labels"] = torch.randint(2, (BATCH,), generator=gen)
        return batch
    return {"input_ids": ids, "labels": torch.roll(ids, -1, dims=1)}


class Packed:
    """What the pack hook hands autograd instead of the tensor: only the graph refers to
    it, so it lives exactly as long as the graph keeps the tensor for backward. It holds
    a detached alias: the tensor itself would hold its grad_fn, which for a node's own
    output would close a reference cycle and keep alive a node the forward dropped."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def measure_saved(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the storages autograd keeps for backward after one training forward.

    Only what the graph still holds when the forward ends counts: a node that drops
    out of the graph during the forward (behind a detach) frees what it saved. Keyed
    by storage: a tensor saved twice, or several views of one storage (q, k and v of
    the fused projection), count the storage once and whole, which is what stays
    allocated. Parameters and buffers (and views of them, such as a transposed
    weight) are left out.
    """
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    packed: list[weakref.ref[Packed]] = []

    def pack(tensor: torch.Tensor) -> Packed:
        box = Packed(tensor.detach())
        packed.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        out = model.compute_loss(batch, accuracy=False)
    storages = (box.tensor.untyped_storage() for ref in packed if (box := ref()) is not None)
    kept = {st.data_ptr(): st.nbytes() for st in storages if st.data_ptr() not in own}
    out.loss.backward()  # the hooks left a working graph behind
    return sum(kept.values())


def run_case(
    name: str, dtype: torch.dtype = torch.float32, **overrides: object
) -> tuple[ActivationEstimate, ActivationEstimate, int, ModelConfig]:
    """(CUDA estimate, CPU estimate, measured bytes, config) of one training forward."""
    torch.manual_seed(0)
    model = build_model(name, **{**PRESETS.get(name, {}), **overrides}).to(dtype).train()
    config = model.config
    seq = config.image_seq_len if config.family == "vit" else config.max_seq_len
    measured = measure_saved(model, make_batch(config, seq, dtype))
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    args = (config, BATCH, None if config.family == "vit" else seq, precision)
    return activation_estimate(*args), cpu_activation_estimate(*args), measured, config


def record(case: str, config: ModelConfig, label: str, predicted: int, measured: int) -> float:
    ratio = predicted / measured
    checkpointed = "yes" if config.activation_checkpointing else "no"
    row = (case, checkpointed, f"{config.dropout:g}", label, str(predicted), str(measured))
    ROWS.append((*row, f"{ratio:.3f}"))
    return ratio


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name", list(PRESETS))
def test_estimate_matches_what_autograd_saves(name: str, checkpointing: bool, dropout: float):
    cuda, cpu, measured, config = run_case(
        name, activation_checkpointing=checkpointing, dropout=dropout
    )
    if dropout == 0.0:
        # CPU and CUDA keep the same tensors here, so the CUDA prediction itself is measured.
        assert (cuda.saved, cuda.temporary) == (cpu.saved, cpu.temporary)
        predicted, label = cuda.saved, "cuda"
    else:
        predicted, label = cpu.saved, "cpu"
    ratio = record(name, config, label, predicted, measured)
    assert abs(ratio - 1) <= TOLERANCE, (ratio, cpu.formula)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_half_precision_on_cpu(dropout: float):
    """bf16 on CPU: attention in fp32 (`_attend_and_project`), the rest in bf16."""
    _, cpu, measured, config = run_case("gpt-tiny", torch.bfloat16, dropout=dropout)
    ratio = record("gpt-tiny bf16", config, "cpu", cpu.saved, measured)
    assert abs(ratio - 1) <= TOLERANCE, (ratio, cpu.formula)


@pytest.mark.parametrize(
    ("case", "name", "overrides"),
    [
        ("gpt rotary", "gpt-tiny", dict(position="rotary")),
        ("gpt alibi", "gpt-tiny", dict(position="alibi")),
        ("gpt relative", "gpt-tiny", dict(position="relative")),
        ("gpt relative", "gpt-tiny", dict(position="relative", dropout=0.1)),
        ("seq2seq rotary pre-LN", "transformer-tiny", dict(position="rotary", norm="pre")),
        ("bert post-LN", "bert-tiny", dict(norm="post", dropout=0.1)),
        ("bert classifier", "bert-tiny", dict(num_labels=3, dropout=0.1)),
        ("bert mean classifier", "bert-tiny", dict(num_labels=3, pooling="mean", dropout=0.1)),
        ("bert sop", "bert-tiny", dict(pair_head="sop", pooling="mean")),
        ("vit mean-pool", "vit-tiny", dict(pooling="mean", dropout=0.1)),
    ],
)
def test_other_shapes(case: str, name: str, overrides: dict[str, object]):
    _, cpu, measured, config = run_case(name, **overrides)
    ratio = record(case, config, "cpu", cpu.saved, measured)
    assert abs(ratio - 1) <= TOLERANCE, (ratio, cpu.formula)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("name", ["gpt-tiny", "bert-tiny", "transformer-tiny"])
@pytest.mark.parametrize("kind", ["performer", "sparse"])
def test_other_attention_kinds(kind: str, name: str, dropout: float):
    """The Performer's and block-sparse formulas leave small index tensors out; they are
    held to the same bound all the same. Causal and bidirectional, padded or not."""
    overrides = dict(attention=kind, dropout=dropout, max_seq_len=64)
    if kind == "sparse":
        overrides["sparse"] = dict(block_size=8, window=2, stride=3)
    else:
        overrides["performer"] = dict(chunk_size=16)
    _, cpu, measured, config = run_case(name, **overrides)
    ratio = record(f"{name} {kind}", config, "cpu", cpu.saved, measured)
    assert abs(ratio - 1) <= TOLERANCE, (ratio, cpu.formula)


@pytest.mark.parametrize("name", ["gpt2-small", "bert-base", "vit-b16", "transformer-base"])
def test_grows_linearly_in_micro_batch(name: str):
    config = get_preset(name)
    one, two, three = (activation_estimate(config, b).saved for b in (1, 2, 3))
    assert three - two == two - one > 0
    # What does not scale with the batch (position ids) is negligible.
    assert two == pytest.approx(2 * one, rel=1e-3)


@pytest.mark.parametrize("name", ["gpt2-small", "bert-base", "vit-b16", "transformer-base"])
def test_checkpointing_reduces_saved(name: str):
    config = get_preset(name)
    full = activation_estimate(config, 8, checkpointing=False)
    recomputed = activation_estimate(config, 8, checkpointing=True)
    assert recomputed.saved < full.saved / 2
    # One block is recomputed at a time during the backward: a transient, not saved.
    assert recomputed.temporary >= full.temporary
    assert "checkpointed" in recomputed.formula and "Korthikanti" in recomputed.formula


def test_half_precision_and_eval_keep_less():
    config = get_preset("gpt2-small")
    bf16 = activation_estimate(config, 4, precision="bf16")
    fp32 = activation_estimate(config, 4, precision="fp32")
    assert bf16.saved < fp32.saved
    # Without dropout no masks are kept: 2 bytes per residual branch and token per layer.
    no_dropout = activation_estimate(config, 4, training=False)
    assert bf16.saved - no_dropout.saved == 4 * 1024 * 768 * (2 * config.n_layer + 1)
    assert bf16.total == bf16.saved + bf16.temporary


def test_korthikanti_layer_term():
    """A GPT layer in bf16 with dropout keeps 34*s*b*h + 4*s*b*a + 16*s*b bytes: the
    paper's 34*s*b*h, with SDPA's logsumexp and the LayerNorm statistics in place of
    its 5*a*s^2*b."""
    config = get_preset("gpt2-small")
    s, b, h, a = 1024, 4, config.d_model, config.n_head
    deeper = config.replace(n_layer=config.n_layer + 1)
    layer = activation_estimate(deeper, b).saved - activation_estimate(config, b).saved
    assert layer == 34 * s * b * h + 4 * s * b * a + 16 * s * b


def test_rejects_impossible_requests():
    config = get_preset("gpt-tiny")
    with pytest.raises(ValueError, match="precision"):
        activation_estimate(config, 1, precision="int8")
    with pytest.raises(ValueError, match="micro_batch"):
        activation_estimate(config, 0)
    with pytest.raises(ValueError, match="seq_len"):
        activation_estimate(config, 1, seq_len=config.max_seq_len + 1)
