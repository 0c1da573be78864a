"""`gobig export`: a checkpoint's weights as one safetensors file plus the model config.

    gobig export RUN_OR_CHECKPOINT --out DIR [--format gobig|hf]

--format hf writes a Hugging Face directory instead (train/hf_format.py): GPT as
GPT2LMHeadModel, BERT as BertForMaskedLM, BertForPreTraining or
BertForSequenceClassification, ViT as ViTForImageClassification, loadable by
`transformers` with no gobig installed; a model with no faithful equivalent is
refused with the reason. The default format

writes DIR/model.safetensors (consolidated fp32 weights, named as `model/`
names them), DIR/config.json (the ModelConfig) and, for a text model whose
tokenizer is still where the run found it, DIR/tokenizer.model; loadable with
`load_exported(DIR)` or by hand with `model.build_model` and safetensors, with
no DeepSpeed. A run directory exports its newest complete checkpoint.

Weights are the fp32 masters whatever the training precision: under ZeRO 1-3
DeepSpeed's zero_to_fp32 gathers them from every rank's optimizer shard; at
stage 0 they are the module itself (fp32) or the fp16/bf16 optimizer's fp32
copies. Every file is read with `torch.load(weights_only=True)`: nothing in a
checkpoint is unpickled.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import GobigError, report_error
from model import ModelConfig, build_model
from train import checkpoint as ckpt_io
from train.families import family_of

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"


class ExportError(GobigError, ValueError):
    """A path that cannot be exported; str() is a one-line message naming it."""


def resolve_checkpoint(run_or_checkpoint: Path) -> Path:
    """The checkpoint directory `run_or_checkpoint` names (a run: its newest complete one)."""
    path = Path(run_or_checkpoint)
    if not path.is_dir():
        raise ExportError(f"{path}: no such run or checkpoint directory")
    if (path / ckpt_io.META).is_file() or (path / ckpt_io.ENGINE_TAG).is_dir():
        reason = ckpt_io.verify(path)
        if reason is not None:
            raise ExportError(f"{path}: checkpoint is not usable ({reason})")
        return path
    if not (path / ckpt_io.CHECKPOINTS).is_dir():
        raise ExportError(f"{path}: neither a gobig run directory nor a checkpoint")
    ckpt = ckpt_io.newest_complete(path)
    if ckpt is None:
        raise ExportError(f"{path}: no complete checkpoint to export")
    return ckpt


def consolidated_model(ckpt: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model of checkpoint `ckpt` with its fp32 weights, and the checkpoint's meta.

    Works for a checkpoint of any world size and ZeRO stage; no DeepSpeed engine.
    """
    meta = ckpt_io.read_meta(ckpt)
    try:
        model_config = ModelConfig(**meta["config"]["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{ckpt}: {ckpt_io.META} holds no usable model config ({exc})") from None
    stage = int(meta.get("zero_stage", 0))
    state = _stage0_state_dict(ckpt, model_config) if stage == 0 else _zero_state_dict(ckpt)

    model = build_model(model_config)
    state = _strip_wrapper(state)
    try:
        _tie_aliases(model, state)
        # strict: a missing or extra tensor means the checkpoint is not this model.
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ExportError(f"{ckpt}: weights do not fit its model config ({first_line})") from None
    return model, meta


def export_checkpoint(run_or_checkpoint: Path, out_dir: Path, fmt: str = "gobig") -> Path:
    """Write `model.safetensors` and `config.json` for a checkpoint into `out_dir`,
    and the run's tokenizer beside them when it can be found (run_tokenizer).

    Args:
        run_or_checkpoint: a run directory (its newest complete checkpoint is
            used) or one checkpoint directory.
        out_dir: created if needed; the files in it are replaced.
        fmt: "gobig" (gobig's names and config) or "hf" (a transformers directory).

    Returns:
        The checkpoint directory that was exported.
    """
    ckpt = resolve_checkpoint(run_or_checkpoint)
    model, meta = consolidated_model(ckpt)
    model_config = model.config
    if fmt == "hf":
        # refuse before anything is written: nothing half-exported is left behind
        from model.hf import HfConversionError, converter_for_family

        try:
            converter = converter_for_family(model_config.family)
        except HfConversionError as exc:
            raise ExportError(f"{ckpt}: {exc}") from None
        reason = converter.why_not(model_config)
        if reason is not None:
            raise ExportError(
                f"{ckpt}: cannot export as {converter.architecture(model_config)}: {reason}"
            )
    info = {
        "step": str(meta.get("step", "")),
        "tokenizer_hash": str(meta.get("tokenizer_hash") or ""),
        "checkpoint": str(ckpt),
        "task": family_of(model_config).task,
    }
    try:
        tokenizer = run_tokenizer(meta, ckpt)
    except ExportError as exc:  # the weights are still worth having
        print(f"gobig: warning: export without a tokenizer: {exc}", file=sys.stderr)
        tokenizer = None
    out_dir = Path(out_dir)
    if fmt == "hf":
        from train.hf_format import write_hf

        write_hf(model, out_dir, tokenizer, info)
        return ckpt

    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    # save_model stores a tied weight (GPT's LM head, BERT's decoder) once.
    save_model(model, str(out_dir / WEIGHTS_FILE), metadata=info)
    (out_dir / CONFIG_FILE).write_text(json.dumps(model_config.to_dict(), indent=1) + "\n")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / TOKENIZER_FILE)
    return ckpt


def run_tokenizer(meta: dict[str, Any], ckpt: Path | None = None) -> Path | None:
    """The tokenizer a checkpoint was trained with: the run directory's copy, or
    the configured `data.tokenizer` or the dataset's own if it is still where the
    run found it; in each case only with the hash the checkpoint recorded. None
    for a run without a tokenizer (images)."""
    want = meta.get("tokenizer_hash")
    if not want:
        return None
    data = meta.get("config", {}).get("data", {})
    from data_pipeline import resolve_source
    from data_pipeline.errors import DataError
    from data_pipeline.tokenizer import file_hash
    from train.run_dir import TOKENIZER_COPY

    # a checkpoint lives in RUN/checkpoints/NAME
    candidates = [ckpt.parent.parent / TOKENIZER_COPY if ckpt else None, data.get("tokenizer")]
    with contextlib.suppress(DataError, OSError, ValueError):
        candidates.append(resolve_source(data.get("source", ""), "train").tokenizer_path)
    for path in filter(None, candidates):
        if Path(path).is_file() and file_hash(path) == want:
            return Path(path)
    where = data.get("tokenizer") or data.get("source")
    raise ExportError(f"the run's tokenizer (hash {want}) is no longer at {where}")


def is_export(path: Path) -> bool:
    """A directory of model weights and config: a gobig export, or a Hugging Face
    model directory (`gobig export --format hf`'s, or any transformers GPT-2,
    BERT or ViT)."""
    from train.hf_format import is_hf_dir

    path = Path(path)
    gobig = (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()
    return gobig or is_hf_dir(path)


def load_exported(export_dir: Path) -> nn.Module:
    """The model an export describes, weights loaded, in eval mode (no DeepSpeed needed).

    Args:
        export_dir: a directory written by `export_checkpoint` (either format),
            or a transformers GPT-2, BERT or ViT directory.
    """
    from safetensors.torch import load_model

    from model.hf import HfConversionError
    from train.hf_format import is_hf_dir, load_hf_model

    export_dir = Path(export_dir)
    if is_hf_dir(export_dir):
        try:
            return load_hf_model(export_dir)
        except HfConversionError as exc:
            raise ExportError(f"{export_dir}: {exc}") from None
    config = ModelConfig(**json.loads((export_dir / CONFIG_FILE).read_text()))
    model = build_model(config)
    load_model(model, export_dir / WEIGHTS_FILE, strict=True)
    return model.eval()


def _strip_wrapper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from train.task import strip_wrapper_prefix

    return {k: v.float() for k, v in strip_wrapper_prefix(state).items()}


def _tie_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    # A tied weight has two names; both must carry the value of the first one
    # (the one the optimizer updated), or loading would overwrite it.
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            state[name] = state[first[id(param)]]
        else:
            first[id(param)] = name


def _zero_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a ZeRO 1-3 checkpoint, gathered from every rank's shard."""
    from deepspeed.utils import zero_to_fp32

    # zero_to_fp32 calls torch.load(weights_only=False); route it through the
    # weights-only loader instead, and keep its progress prints to itself.
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with _weights_only_torch_load(zero_to_fp32), quiet[0], quiet[1]:
        return zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
            str(ckpt), tag=ckpt_io.ENGINE_TAG
        )


@contextlib.contextmanager
def _weights_only_torch_load(module: Any):
    from train.checkpoint.weights import safe_load

    real = module.torch

    class _Torch:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def load(f: Any, map_location: Any = None, **_: Any) -> Any:
            return safe_load(f, map_location=map_location)

    module.torch = _Torch()
    try:
        yield
    finally:
        module.torch = real


def _stage0_state_dict(ckpt: Path, model_config: ModelConfig) -> dict[str, torch.Tensor]:
    """Weights of a stage-0 checkpoint: the module, or the fp32 masters under bf16/fp16."""
    from train.checkpoint.weights import safe_load

    path = ckpt / ckpt_io.ENGINE_TAG / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise ExportError(f"{ckpt}: missing {path.relative_to(ckpt)}")
    saved = safe_load(path, map_location="cpu")
    state = dict(saved["module"])
    fp32_groups = (saved.get("optimizer") or {}).get("fp32_groups")
    if fp32_groups is not None:
        order, masters = _optimizer_order(model_config), _flat(fp32_groups)
        if len(order) != len(masters):
            raise ExportError(f"{ckpt}: {len(masters)} fp32 masters for {len(order)} parameters")
        for name, master in zip(order, masters, strict=True):
            if master.shape != state[name].shape:
                raise ExportError(f"{ckpt}: fp32 master of {name} does not match its shape")
            state[name] = master
    return state


def _flat(groups: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [t for group in groups for t in group]


def _optimizer_order(model_config: ModelConfig) -> list[str]:
    # The fp16/bf16 optimizer keeps one fp32 copy per parameter, in the order of
    # train/optim.py's groups (empty groups dropped): rebuild that order by name.
    from train.optim import param_groups
    from train.task import TrainingModule

    module = TrainingModule(build_model(model_config))
    names = {id(p): n for n, p in module.named_parameters()}
    groups = param_groups(module, weight_decay=0.0)  # the split does not depend on it
    return [names[id(p)] for group in groups for p in group["params"]]


def main(argv: list[str] | None = None) -> int:
    """`gobig export RUN_OR_CHECKPOINT --out DIR`; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(
        prog="gobig export", description="consolidated safetensors weights + model config"
    )
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run or checkpoint dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--format",
        choices=("gobig", "hf"),
        default="gobig",
        help="gobig: safetensors + gobig config; hf: a Hugging Face transformers directory",
    )
    ns = parser.parse_args(argv)
    try:
        ckpt = export_checkpoint(Path(ns.path), Path(ns.out), ns.format)
    except GobigError as exc:  # ExportError, CheckpointError
        return report_error("gobig", exc)
    print(f"exported {ckpt} to {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
