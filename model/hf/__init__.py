"""Conversion between gobig models and Hugging Face `transformers` classes
(GPT-2, BERT, ViT), weight for weight; see `model/hf/base.py`."""

from model.hf.base import HfConversionError, HfConverter
from model.hf.bert import BertConverter
from model.hf.gpt2 import Gpt2Converter
from model.hf.vit import VitConverter

CONVERTERS: tuple[HfConverter, ...] = (Gpt2Converter(), BertConverter(), VitConverter())


def converter_for_family(family: str) -> HfConverter:
    """The converter of a gobig family; HfConversionError when it has none."""
    for converter in CONVERTERS:
        if converter.family == family:
            return converter
    raise HfConversionError(f"a {family} model has no Hugging Face export")


def converter_for_model_type(model_type: str) -> HfConverter:
    """The converter of an HF config.json's model_type; HfConversionError when none."""
    for converter in CONVERTERS:
        if converter.model_type == model_type:
            return converter
    known = ", ".join(c.model_type for c in CONVERTERS)
    raise HfConversionError(f"model_type {model_type!r} is not supported (gobig reads {known})")


__all__ = [
    "CONVERTERS",
    "HfConversionError",
    "HfConverter",
    "converter_for_family",
    "converter_for_model_type",
]
