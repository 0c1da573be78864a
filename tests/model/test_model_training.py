"""Models can learn: each overfits a fixed batch; checkpointing and init behave."""

from __future__ import annotations

import math

import pytest
import torch

from model import GPT, build_model

OVERFIT = {
    "gpt": dict(n_layer=2, n_head=4, d_model=64, vocab_size=32, max_seq_len=16),
    "bert": dict(n_layer=2, n_head=4, d_model=64, vocab_size=32, max_seq_len=16, pair_head="nsp"),
    "vit": dict(n_layer=2, n_head=4, d_model=64, image_size=8, patch_size=2, num_classes=10),
}


def _overfit_batch(family: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if family == "vit":
        return {
            "images": torch.randn(8, 3, 8, 8, generator=gen),
            "labels": torch.randint(10, (8,), generator=gen),
        }
    ids = torch.randint(1, 32, (4, 16), generator=gen)
    if family == "gpt":
        labels = torch.roll(ids, -1, dims=1)
        labels[:, -1] = -100
        return {"input_ids": ids, "labels": labels}
    selected = torch.rand(4, 16, generator=gen) < 0.3
    return {
        "input_ids": ids.masked_fill(selected, 0),  # 0 plays [MASK]
        "labels": ids.masked_fill(~selected, -100),
        "pair_labels": torch.tensor([0, 1, 1, 0]),
    }


@pytest.mark.parametrize("family", ["gpt", "bert", "vit"])
def test_overfits_a_fixed_batch(family):
    torch.manual_seed(0)
    model = build_model(f"{family}-tiny", **OVERFIT[family]).train()
    batch = _overfit_batch(family)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(150):
        out = model.compute_loss(batch)
        first = out.loss.item() if first is None else first
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    final = model.compute_loss(batch)
    assert first > 1.0
    assert final.loss.item() < 0.05, f"{family} loss {first:.3f} -> {final.loss.item():.4f}"
    accuracy = {"gpt": "accuracy", "bert": "masked_accuracy", "vit": "accuracy"}[family]
    assert final.metrics[accuracy].item() == 1.0


def test_activation_checkpointing_gives_identical_gradients(small_config, make_batch):
    config = small_config("gpt", dropout=0.1)
    torch.manual_seed(0)
    plain = GPT(config).train()
    recomputed = GPT(config.replace(activation_checkpointing=True)).train()
    recomputed.load_state_dict(plain.state_dict())
    batch = make_batch(config)
    for model in (plain, recomputed):
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state
        model.compute_loss(batch).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_gpt2_style_initialisation():
    torch.manual_seed(0)
    model = build_model("gpt-tiny", n_layer=8, d_model=256, n_head=4, vocab_size=512)
    std = 0.02
    assert model.wte.weight.std().item() == pytest.approx(std, rel=0.05)
    block = model.transformer.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(std, rel=0.05)
    assert block.mlp.fc.weight.std().item() == pytest.approx(std, rel=0.05)
    residual = std / math.sqrt(2 * 8)
    assert block.attn.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    assert torch.equal(block.ln_1.weight, torch.ones(256))


@pytest.mark.parametrize("family", ["gpt", "bert", "vit", "seq2seq"])
def test_loss_without_accuracy_is_the_same_loss(small_config, make_batch, family):
    """Training steps skip the accuracy's argmax; the loss and its gradient stay put."""
    from train.task import TrainingModule

    torch.manual_seed(0)
    config = small_config(family, **({"pair_head": "sop"} if family == "bert" else {}))
    module = TrainingModule(build_model(config))
    batch = make_batch(config)
    if family == "bert":
        batch["pair_labels"] = torch.randint(2, (batch["input_ids"].shape[0],))
    full = module.eval()(batch)
    lean = module.train()(batch)  # dropout is 0 in the small configs: same numbers
    assert torch.equal(full.loss, lean.loss)
    accuracies = {k for k in full.metrics if k.endswith("accuracy")}
    assert accuracies and not accuracies & set(lean.metrics)
    assert set(full.metrics) - accuracies == set(lean.metrics)
