"""One object per model family: what differs between GPT, BERT, ViT and the
encoder-decoder (seq2seq) in training.

The Trainer, the loaders, evaluation and export ask the family; nothing in
train/ branches on the family's name. A new family is a new class here and
an entry in FAMILIES (its model lives in model/). A family whose models can
carry another task's head hands that task to its own object (`for_model`): a
BERT with `model.num_labels > 0` is a sequence classifier
(`BertClassifierFamily`), trained on labelled text, not a masked-LM.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from train.config.load import ConfigError
from train.config.schema import ExperimentConfig

if TYPE_CHECKING:
    from model.config import ModelConfig

IGNORE = -100  # label of a position that has no target


class Family:
    """A text family trained on next-token targets (GPT); the base of the others."""

    name = "gpt"
    unit = "tokens"  # what throughput, MFU and the run's counter count
    rate_key = "tokens_per_s"
    task = "causal-lm"  # recorded with an export
    generates_text = True  # `gobig generate` can sample from it; its runs write samples
    translates = False  # `gobig translate` can translate with it; its runs report BLEU

    def for_model(self, model: ModelConfig) -> Family:
        """The object for this model of the family (another head: another task)."""
        return self

    def count_units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].numel())

    def loader_options(self, config: ExperimentConfig) -> dict[str, Any]:
        """What the family adds to the loader options every family shares."""
        _no_token_budget(config)
        return {"seq_len": config.model.max_seq_len, "shuffle_buffer": config.data.shuffle_buffer}

    def val_loader_options(self) -> dict[str, Any]:
        """How the validation loader differs from the training one."""
        return {}

    def check_fits_data(self, config: ExperimentConfig, loader: Any) -> None:
        """Raise ConfigError if the model cannot take what the loader yields."""
        if loader.vocab_size is not None and loader.vocab_size > config.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size ({config.model.vocab_size}) is smaller than the tokenizer's "
                f"vocabulary ({loader.vocab_size}) of {config.data.source}"
            )

    def eval_counts(self, out: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        """(loss x targets, targets, correct targets) of one validation batch."""
        n = int((batch["labels"] != IGNORE).sum().item())
        return out.loss.float().item() * n, n, 0.0

    def eval_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}


class BertFamily(Family):
    """Masked-LM (plus an optional sentence-order head) on text."""

    name = "bert"
    task = "masked-lm"
    generates_text = False

    def for_model(self, model: ModelConfig) -> Family:
        return BERT_CLASSIFIER if model.num_labels > 0 else self

    def check_fits_data(self, config: ExperimentConfig, loader: Any) -> None:
        super().check_fits_data(config, loader)
        labels, wanted = loader.classes, config.model.num_labels
        if labels and wanted > 0:  # a caller that chose the family by its name alone
            raise ConfigError(
                f"{config.data.source}: a BERT with model.num_labels={wanted} is a sequence "
                "classifier; its family is family_of(config.model), not the masked-LM one"
            )
        if labels:  # most likely a fine-tuning run that forgot model.num_labels
            raise ConfigError(
                f"{config.data.source} holds labelled text ({len(labels)} labels: "
                f"{_labels(labels)}) for sequence classification, but model.num_labels is 0 "
                f"(a masked-LM BERT): set model.num_labels={len(labels)} to train a classifier "
                "on it, or write the text without --labels to pretrain on it"
            )

    def loader_options(self, config: ExperimentConfig) -> dict[str, Any]:
        if config.model.pair_head == "nsp":
            raise ConfigError(
                "model.pair_head: the text loader builds sentence-order pairs; use sop, or none"
            )
        return {
            **super().loader_options(config),
            "pairs": config.model.pair_head != "none",
            "mask_prob": config.data.mlm_probability,
        }

    def eval_counts(self, out: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        labels = batch["labels"]
        mask = labels != IGNORE
        n = int(mask.sum().item())
        correct = (out.logits.argmax(-1)[mask] == labels[mask]).sum().item()
        # The loss adds the pair head's (SOP/NSP); val_loss is the masked-LM part.
        loss = out.metrics.get("mlm_loss", out.loss)
        return loss.float().item() * n, n, float(correct)

    def eval_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"val_loss": loss, "val_masked_accuracy": accuracy}


class BertClassifierFamily(Family):
    """Sequence classification with a BERT (`model.num_labels > 0`) on labelled text:
    one sample per text, [CLS] tokens [SEP] padded per batch, `class_labels` [B]. Its
    evaluations report the loss and the accuracy over the texts."""

    name = "bert-cls"  # the loader kind (data_pipeline/classify.py)
    task = "sequence-classification"
    generates_text = False

    def check_fits_data(self, config: ExperimentConfig, loader: Any) -> None:
        super().check_fits_data(config, loader)
        labels, wanted = loader.classes, config.model.num_labels
        if len(labels) != wanted:
            raise ConfigError(
                f"model.num_labels ({wanted}) differs from the {len(labels)} labels "
                f"({_labels(labels)}) of {config.data.source}"
            )

    def eval_counts(self, out: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        labels = batch["class_labels"]
        n = labels.numel()
        correct = (out.logits.argmax(-1) == labels).sum().item()
        return out.loss.float().item() * n, n, float(correct)

    def eval_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"val_loss": loss, "val_accuracy": accuracy}


def _no_token_budget(config: ExperimentConfig) -> None:
    if config.data.max_tokens is not None:
        raise ConfigError(
            "data.max_tokens: batches by token count are for translation (seq2seq), "
            f"not {config.model.family}; leave it unset"
        )


def _labels(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


class VitFamily(Family):
    """Image classification; counts images, not tokens."""

    name = "vit"
    unit = "images"
    rate_key = "samples_per_s"
    task = "image-classification"
    generates_text = False

    def count_units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["images"].shape[0])

    def loader_options(self, config: ExperimentConfig) -> dict[str, Any]:
        _no_token_budget(config)
        return {"image_size": config.model.image_size, "augment": config.data.augment}

    def val_loader_options(self) -> dict[str, Any]:
        return {"augment": False}

    def check_fits_data(self, config: ExperimentConfig, loader: Any) -> None:
        classes = len(loader.classes)
        if classes > config.model.num_classes:
            raise ConfigError(
                f"model.num_classes ({config.model.num_classes}) is smaller than the "
                f"{classes} classes in {config.data.source}"
            )

    def eval_counts(self, out: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        labels = batch["labels"]
        n = labels.numel()
        correct = (out.logits.argmax(-1) == labels).sum().item()
        return out.loss.float().item() * n, n, float(correct)

    def eval_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"val_loss": loss, "val_accuracy": accuracy}


class Seq2SeqFamily(Family):
    """Translation with the encoder-decoder Transformer on parallel text: batches of
    source ids and target ids (`input_ids`, `attention_mask`, `decoder_input_ids`,
    `labels`). It counts target tokens, the model's FLOPs unit; evaluations report the
    unsmoothed loss and perplexity (the training loss is label-smoothed) and the token
    accuracy; as a family that translates, its runs also report BLEU with a few
    translations (train/callbacks/translations.py), and `gobig eval` BLEU."""

    name = "seq2seq"  # the loader kind too
    task = "translation"
    generates_text = False
    translates = True

    def count_units(self, batch: dict[str, torch.Tensor]) -> int:
        # The targets (EOS included), not the padding: what a target token's FLOPs pay for.
        return int((batch["labels"] != IGNORE).sum().item())

    def loader_options(self, config: ExperimentConfig) -> dict[str, Any]:
        # Each side (source + EOS, BOS + target) is cut to the model's positions.
        return {
            "seq_len": config.model.max_seq_len,
            "shuffle_buffer": config.data.shuffle_buffer,
            "max_tokens": config.data.max_tokens,
        }

    def check_fits_data(self, config: ExperimentConfig, loader: Any) -> None:
        super().check_fits_data(config, loader)
        tok = loader.tokenizer
        ids = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id}
        if min(ids.values()) < 0 or tok.pad_id == tok.eos_id:
            raise ConfigError(
                f"{config.data.source}: tokenizer {tok.path} has pad/BOS/EOS ids {ids}; "
                "translation needs all three, pad distinct from EOS"
            )

    def eval_counts(self, out: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        n = int((batch["labels"] != IGNORE).sum().item())
        # The unsmoothed NLL: val_loss and perplexity compare across label smoothing.
        nll = out.metrics["nll_loss"].float().item()
        accuracy = out.metrics.get("accuracy")
        correct = float(accuracy.float().item()) * n if accuracy is not None else 0.0
        return nll * n, n, correct

    def eval_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {**super().eval_metrics(loss, accuracy), "val_token_accuracy": accuracy}


FAMILIES: dict[str, Family] = {
    f.name: f for f in (Family(), BertFamily(), VitFamily(), Seq2SeqFamily())
}
BERT_CLASSIFIER = BertClassifierFamily()


def family_of(model: ModelConfig | str) -> Family:
    """The family object of a model: its `model.family`'s, as its heads make it (a BERT
    with num_labels > 0 gets the sequence-classification family). A bare family name
    gives that family's own (pretraining) object.

    Args:
        model: the `model` section, or a `model.family` name.
    """
    name = model if isinstance(model, str) else model.family
    try:
        family = FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"model.family: unknown family {name!r}; use one of {sorted(FAMILIES)}"
        ) from None
    return family if isinstance(model, str) else family.for_model(model)
