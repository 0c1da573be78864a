"""Named model shapes: the registry's entries.

The `-tiny` shapes train in minutes on two CPU cores; the others reproduce the
published shapes (GPT-2 small, BERT-base, ViT-B/16, the base Transformer of
"Attention Is All You Need").
"""

from __future__ import annotations

from model.config import ModelConfig

# fmt: off
# Compact rows read as a table; the formatter would put every field on its own line.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "gpt-tiny": ModelConfig(
        name="gpt-tiny", family="gpt", n_layer=4, n_head=4, d_model=128,
        max_seq_len=128, vocab_size=4096, position="learned",
    ),
    "gpt2-small": ModelConfig(
        name="gpt2-small", family="gpt", n_layer=12, n_head=12, d_model=768,
        max_seq_len=1024, vocab_size=50257, position="learned", dropout=0.1,
    ),
    "bert-tiny": ModelConfig(
        name="bert-tiny", family="bert", n_layer=2, n_head=2, d_model=128,
        max_seq_len=128, vocab_size=4096, position="learned", layer_norm_eps=1e-12,
    ),
    "bert-base": ModelConfig(
        name="bert-base", family="bert", n_layer=12, n_head=12, d_model=768,
        max_seq_len=512, vocab_size=30522, position="learned", dropout=0.1,
        layer_norm_eps=1e-12,
    ),
    "vit-tiny": ModelConfig(
        name="vit-tiny", family="vit", n_layer=4, n_head=4, d_model=128,
        image_size=32, patch_size=4, num_classes=10, max_seq_len=65,
        layer_norm_eps=1e-6,
    ),
    "vit-b16": ModelConfig(
        name="vit-b16", family="vit", n_layer=12, n_head=12, d_model=768,
        image_size=224, patch_size=16, num_classes=1000, max_seq_len=197,
        layer_norm_eps=1e-6,
    ),
    # A Multi30k-sized translation model: a joint sentencepiece vocabulary of
    # 8000, sentences of a few dozen tokens.
    "transformer-tiny": ModelConfig(
        name="transformer-tiny", family="seq2seq", n_layer=3, n_decoder_layer=3, n_head=4,
        d_model=256, max_seq_len=128, vocab_size=8000, position="sinusoidal", norm="post",
        dropout=0.1, label_smoothing=0.1, share_embeddings=True,
    ),
    # The paper's base model (table 3): 6 + 6 post-LN layers, d 512, 8 heads,
    # FFN 2048, sinusoidal positions, dropout and label smoothing 0.1, one
    # embedding for source, target and output over the WMT En-De joint BPE
    # vocabulary of 37,000 tokens: 63,082,496 parameters (the paper says 65M).
    "transformer-base": ModelConfig(
        name="transformer-base", family="seq2seq", n_layer=6, n_decoder_layer=6, n_head=8,
        d_model=512, max_seq_len=1024, vocab_size=37000, position="sinusoidal", norm="post",
        dropout=0.1, label_smoothing=0.1, share_embeddings=True,
    ),
}
# fmt: on


def get_preset(name: str) -> ModelConfig:
    """A copy of the registered config `name`; ValueError lists the known names."""
    try:
        # A copy: callers often tweak the config, which must not leak into the registry.
        return MODEL_PRESETS[name].replace()
    except KeyError:
        known = ", ".join(sorted(MODEL_PRESETS))
        raise ValueError(f"model.name: unknown model {name!r} (known: {known})") from None
