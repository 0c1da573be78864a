"""The bare single-process PyTorch loop gobig is measured against.

What a careful hand-written script does: the whole token array in memory, a
random window batch per step, the same GPT (gobig's `model` package), AdamW
with the same parameter groups and learning-rate schedule, gradient clipping,
fp32 eager on every core. No DeepSpeed, no Ray, no data pipeline, no
checkpoints, no logging beyond a line every `--log-every` steps.

    python bench/bare_loop.py configs/shakespeare-char.yaml [--steps N] [--json OUT]

Reads the config's dataset directory (train and val shards, written by `gobig data
text`) and prints tokens/s over the training steps after the first log window
(warm-up, as gobig's figures are) and the validation loss after the last step, over
the same non-overlapping windows gobig evaluates on.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import build_model  # noqa: E402
from train.config.load import load_config  # noqa: E402
from train.optim import lr_at, param_groups  # noqa: E402


def read_tokens(dataset: Path, split: str) -> torch.Tensor:
    """Every document of `split`, joined (each followed by EOS), as one int64 tensor."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    eos = json.loads((dataset / "tokenizer.json").read_text())["special_ids"]["eos"]
    parts = []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        with tarfile.open(dataset / shard["name"]) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                parts += [np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64), [eos]]
    return torch.from_numpy(np.concatenate(parts))


@torch.no_grad()
def val_loss(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, batch: int) -> float:
    """Mean loss over every non-overlapping (seq_len + 1)-token window of `tokens`."""
    model.eval()
    n = (len(tokens) - 1) // seq_len
    windows = tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)
    total = count = 0.0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]
        loss = F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
        total += loss.item() * w[:, 1:].numel()
        count += w[:, 1:].numel()
    model.train()
    return total / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=None, help="default: train.max_steps")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    steps = args.steps or config.train.max_steps
    dataset = Path(config.data.source)
    train_tokens = read_tokens(dataset, "train")
    val_tokens = read_tokens(dataset, "val")
    T, B = config.model.max_seq_len, config.train.micro_batch_size

    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    o = config.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps
    )
    gen = torch.Generator().manual_seed(config.train.seed)

    losses = []
    t0 = t_warm = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o, config.train.max_steps)
        starts = torch.randint(len(train_tokens) - T - 1, (B,), generator=gen)
        w = torch.stack([train_tokens[s : s + T + 1] for s in starts.tolist()])
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step + 1 == args.log_every:
            t_warm = time.perf_counter()
        if (step + 1) % args.log_every == 0:
            mean = sum(losses[-args.log_every :]) / args.log_every
            print(f"step {step + 1}: loss {mean:.4f}", flush=True)
    elapsed = time.perf_counter() - t0

    steady = steps - args.log_every
    result = {
        "steps": steps,
        # after the first log window (warm-up), as gobig's figures are
        "tokens_per_s": steady * B * T / (t0 + elapsed - t_warm) if steady > 0 else 0.0,
        "tokens_per_s_all_steps": steps * B * T / elapsed,
        "train_seconds": elapsed,
        "final_train_loss": sum(losses[-100:]) / len(losses[-100:]),
        "val_loss": val_loss(model, val_tokens, T, B),
        "threads": torch.get_num_threads(),
    }
    result["val_perplexity"] = math.exp(result["val_loss"])
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
