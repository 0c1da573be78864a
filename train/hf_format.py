"""Hugging Face model directories: a gobig model written as one (`gobig export
--format hf`), and one read back as a gobig model (`model.init_from`,
`gobig generate`, `gobig eval`).

An export holds what `transformers.AutoModel*.from_pretrained` and
`AutoTokenizer.from_pretrained` need and nothing of gobig: config.json,
model.safetensors (fp32), the run's sentencepiece model with a
tokenizer_config.json, and for a ViT the image preprocessing. The name and
value mapping lives in `model/hf/`; this module only reads and writes files.
Weights are read from safetensors, or from a PyTorch .bin with
`weights_only=True`: nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model import ModelConfig, build_model
from model.hf import HfConversionError, converter_for_family, converter_for_model_type

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def is_hf_dir(path: Path) -> bool:
    """A directory whose config.json is a Hugging Face one (it names a model_type)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def write_hf(model: nn.Module, out_dir: Path, tokenizer: Path | None, info: dict[str, str]) -> str:
    """Write `model` into `out_dir` as a transformers model directory.

    Args:
        model: a gobig model with its weights.
        out_dir: created if needed; files in it are replaced.
        tokenizer: the run's sentencepiece model, or None (images).
        info: strings recorded in the safetensors metadata (step, checkpoint).

    Returns:
        The transformers class the directory loads as.

    Raises:
        HfConversionError: the model has no faithful transformers equivalent.
    """
    from safetensors.torch import save_file

    config: ModelConfig = model.config
    converter = converter_for_family(config.family)
    architecture = converter.architecture(config)
    reason = converter.why_not(config)
    if reason is not None:
        raise HfConversionError(f"cannot export as {architecture}: {reason}")
    hf_config = {**converter.hf_config(config), "architectures": [architecture]}
    hf_config["torch_dtype"] = "float32"
    if tokenizer is not None:
        hf_config.update(_token_ids(tokenizer))
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    tensors = converter.to_hf(config, state)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt", **info})
    _write_json(out_dir / CONFIG_FILE, hf_config)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / TOKENIZER_MODEL)
        tokenizer_config = _tokenizer_config(config, tokenizer, converter.cls_sep_inputs)
        _write_json(out_dir / TOKENIZER_CONFIG, tokenizer_config)
    if converter.takes_images:
        _write_json(out_dir / PREPROCESSOR_CONFIG, _image_processor(config))
    return architecture


def read_hf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The gobig ModelConfig and state dict of a transformers model directory.

    Raises:
        HfConversionError: an unsupported model type or architecture, or weights
            that do not fit it; the message names what.
    """
    path = Path(path)
    try:
        hf = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise HfConversionError(f"{path / CONFIG_FILE} is unreadable ({exc})") from None
    converter = converter_for_model_type(str(hf.get("model_type")))
    config = converter.model_config(hf)
    architecture = converter.architecture_of(hf)
    return config, converter.from_hf(config, architecture, _read_weights(path))


def load_hf_model(path: Path) -> nn.Module:
    """A gobig model built from a transformers directory, weights loaded, in eval mode.
    A bare BertModel has no MLM head: that head stays freshly initialised."""
    config, state = read_hf(path)
    model = build_model(config)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("mlm_head.")]
    if missing or result.unexpected_keys:
        name = (missing or result.unexpected_keys)[0]
        raise HfConversionError(
            f"{path}: weights do not fit the model its config describes ({name})"
        )
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / WEIGHTS_FILE).is_file():
        return load_file(str(path / WEIGHTS_FILE))
    if (path / WEIGHTS_INDEX).is_file():
        index = json.loads((path / WEIGHTS_INDEX).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    if (path / TORCH_WEIGHTS).is_file():
        return torch.load(path / TORCH_WEIGHTS, map_location="cpu", weights_only=True)
    raise HfConversionError(f"{path}: no {WEIGHTS_FILE}, {WEIGHTS_INDEX} or {TORCH_WEIGHTS}")


def _pieces(tokenizer: Path) -> tuple[Any, dict[str, int]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    ids = {"pad": sp.pad_id(), "unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
    for name, piece in (("mask", "[MASK]"), ("cls", "[CLS]"), ("sep", "[SEP]")):
        idx = sp.PieceToId(piece)
        ids[name] = -1 if idx == sp.unk_id() else idx
    return sp, {k: int(v) for k, v in ids.items() if v >= 0}


def _token_ids(tokenizer: Path) -> dict[str, int]:
    _, ids = _pieces(tokenizer)
    return {f"{k}_token_id": ids[k] for k in ("pad", "bos", "eos") if k in ids}


def _tokenizer_config(config: ModelConfig, tokenizer: Path, cls_sep: bool) -> dict[str, Any]:
    # transformers builds a fast tokenizer from the sentencepiece model itself,
    # following its normaliser, pieces and merges, so it encodes as gobig does.
    sp, ids = _pieces(tokenizer)
    tokens = {f"{k}_token": sp.IdToPiece(i) for k, i in ids.items()}
    out: dict[str, Any] = {
        "tokenizer_class": "TokenizersBackend",
        # sentencepiece puts its dummy "▁" before the text's first piece only,
        # not again after each special token inside it (legacy=true would)
        "legacy": False,
        **tokens,
        "model_max_length": config.max_seq_len,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if cls_sep and "cls" in ids and "sep" in ids:
        # BERT's inputs are [CLS] text [SEP]: let the tokenizer add them.
        out.update(bos_token=tokens["cls_token"], eos_token=tokens["sep_token"])
        out.update(add_bos_token=True, add_eos_token=True)
    return out


def _image_processor(config: ModelConfig) -> dict[str, Any]:
    from data_pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD  # what training used

    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": config.image_size, "width": config.image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
