"""Weight-for-weight conversion between gobig models and Hugging Face
`transformers` classes: the shared machinery.

A converter describes one family as a list of `Pair`s (a gobig tensor name, the
Hugging Face name or names it maps to, and how the values change on the way:
a copy, a transpose for GPT-2's Conv1D layers, or a fused QKV projection
split into query, key and value). Both directions are read off that one list,
so export and import cannot drift apart. Only torch is imported: reading and
writing the files is `train/hf_format.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from model.config import ModelConfig

Kind = Literal["copy", "transpose", "split3", "unsqueeze"]


class HfConversionError(ValueError):
    """A model or a Hugging Face directory that cannot be converted faithfully;
    str() is the one-line reason."""


@dataclass(frozen=True)
class Pair:
    """One gobig tensor and the Hugging Face tensor(s) it is.

    kind: copy (same values), transpose (GPT-2's Conv1D stores [in, out]),
    split3 (a fused [3d, ...] QKV tensor is three HF tensors, in q, k, v order),
    unsqueeze (HF keeps a leading batch axis of 1).
    """

    gobig: str
    hf: tuple[str, ...]
    kind: Kind = "copy"


def layer_pairs(n_layer: int, template: list[Pair]) -> list[Pair]:
    """`template` with "{i}" filled in for each block."""
    return [
        Pair(p.gobig.format(i=i), tuple(h.format(i=i) for h in p.hf), p.kind)
        for i in range(n_layer)
        for p in template
    ]


def weight_bias(gobig: str, hf: str) -> list[Pair]:
    """The weight and bias of one module, copied."""
    return [Pair(f"{gobig}.{p}", (f"{hf}.{p}",)) for p in ("weight", "bias")]


def fused_qkv(hf_prefix: str) -> list[Pair]:
    """A block's fused QKV projection (weight and bias) as query, key and value."""
    return [
        Pair(
            f"transformer.blocks.{{i}}.attn.qkv.{p}",
            tuple(f"{hf_prefix}{n}.{p}" for n in ("query", "key", "value")),
            "split3",
        )
        for p in ("weight", "bias")
    ]


def _zeros_for_bias(name: str, state: dict[str, Tensor]) -> Tensor:
    # A model trained with model.bias=false has no bias tensors; the HF classes
    # always have them, and a zero bias is the same function.
    weight = state[name[: -len("bias")] + "weight"]
    return torch.zeros(weight.shape[0], dtype=weight.dtype)


def pairs_to_hf(pairs: list[Pair], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face tensors of a gobig state dict (new, contiguous tensors)."""
    out: dict[str, Tensor] = {}
    for pair in pairs:
        value = state.get(pair.gobig)
        if value is None:
            if not pair.gobig.endswith("bias"):
                raise HfConversionError(f"the model has no tensor {pair.gobig}")
            value = _zeros_for_bias(pair.gobig, state)
        if pair.kind == "transpose":
            out[pair.hf[0]] = value.t().contiguous()
        elif pair.kind == "split3":
            for name, part in zip(pair.hf, value.chunk(3, dim=0), strict=True):
                out[name] = part.clone()
        elif pair.kind == "unsqueeze":
            out[pair.hf[0]] = value.unsqueeze(0).clone()
        else:
            out[pair.hf[0]] = value.clone()
    return out


def pairs_from_hf(pairs: list[Pair], hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """gobig tensors of a Hugging Face state dict; a missing HF bias reads as zeros
    (ViT without QKV biases), any other missing tensor is an error naming it."""

    def get(name: str, like: Tensor | None = None) -> Tensor:
        if name in hf:
            return hf[name]
        if name.endswith("bias") and like is not None:
            return torch.zeros(like.shape[0], dtype=like.dtype)
        raise HfConversionError(f"the checkpoint has no tensor {name}")

    out: dict[str, Tensor] = {}
    for pair in pairs:
        if pair.kind == "split3":
            weights = [hf.get(h[: -len("bias")] + "weight") for h in pair.hf]
            parts = [get(h, w) for h, w in zip(pair.hf, weights, strict=True)]
            out[pair.gobig] = torch.cat(parts, dim=0)
        elif pair.kind == "transpose":
            out[pair.gobig] = get(pair.hf[0]).t().contiguous()
        elif pair.kind == "unsqueeze":
            out[pair.gobig] = get(pair.hf[0]).squeeze(0)
        else:
            weight = hf.get(pair.hf[0][: -len("bias")] + "weight")
            out[pair.gobig] = get(pair.hf[0], weight)
    return out


def mlp_ratio_of(hidden: int, inner: int | None, name: str) -> int:
    """gobig's integer mlp_ratio for an HF intermediate size (None: 4 x hidden)."""
    inner = inner or 4 * hidden
    if inner % hidden:
        raise HfConversionError(f"{name}={inner} is not a whole multiple of the width {hidden}")
    return inner // hidden


def activation_of(hf_act: Any, key: str) -> str:
    """gobig's model.activation for an HF activation name."""
    if hf_act == "gelu":
        return "gelu"
    if hf_act in ("gelu_new", "gelu_pytorch_tanh"):
        return "gelu_tanh"
    raise HfConversionError(f"{key}={hf_act!r} has no gobig equivalent (gelu, gelu_new)")


def refuse_unless(checks: list[tuple[bool, str]]) -> str | None:
    """The first reason whose condition fails, or None when all hold."""
    for ok, reason in checks:
        if not ok:
            return reason
    return None


class HfConverter:
    """What one family needs to trade weights with a transformers class.

    Subclasses set `family` and `model_type` and implement the methods.
    """

    family: str = ""
    model_type: str = ""
    # The export carries an image processor config (images in, not text).
    takes_images: bool = False
    # The tokenizer adds [CLS] before and [SEP] after a text (BERT's inputs).
    cls_sep_inputs: bool = False

    def why_not(self, config: ModelConfig) -> str | None:
        """Why `config` cannot be exported faithfully, or None: what no transformers
        class of these families has, then the family's own `refusal`."""
        if config.attention != "softmax":
            return (
                f"transformers' {self.model_type} attends with exact softmax; this model has "
                f"model.attention={config.attention}"
            )
        return self.refusal(config)

    def refusal(self, config: ModelConfig) -> str | None:
        """Why `config` cannot be exported faithfully by this family, or None."""
        raise NotImplementedError

    def architecture(self, config: ModelConfig) -> str:
        """The transformers class an export of `config` loads as."""
        raise NotImplementedError

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        """config.json of the export (without token ids and architectures)."""
        raise NotImplementedError

    def pairs(self, config: ModelConfig, architecture: str) -> list[Pair]:
        raise NotImplementedError

    def model_config(self, hf: dict[str, Any]) -> ModelConfig:
        """The gobig ModelConfig of an HF config.json."""
        raise NotImplementedError

    def architecture_of(self, hf: dict[str, Any]) -> str:
        """The transformers class an HF config.json names."""
        return (hf.get("architectures") or [""])[0]

    def canonical(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        """HF names as the pairs spell them (checkpoints differ in prefixes)."""
        return hf

    def to_hf(self, config: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return pairs_to_hf(self.pairs(config, self.architecture(config)), state)

    def from_hf(
        self, config: ModelConfig, architecture: str, hf: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        return pairs_from_hf(self.pairs(config, architecture), self.canonical(hf))


def with_prefix(hf: dict[str, Tensor], prefix: str, heads: tuple[str, ...]) -> dict[str, Tensor]:
    """Names with the base model's `prefix` (a bare base-model checkpoint lacks
    it); names starting with one of `heads` are left as they are."""
    if any(k.startswith(prefix) for k in hf):
        return hf
    return {k if k.startswith(heads) else prefix + k: v for k, v in hf.items()}
