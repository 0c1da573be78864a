"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.accounting import attended_keys, count_params, training_flops_per_token
from model.attention import AttentionContext, build_attention_context
from model.blocks import DecoderBlock, TransformerStack
from model.config import ModelConfig
from model.init import init_transformer_weights
from model.losses import label_smoothed_cross_entropy
from model.output import ModelOutput
from model.positions import PositionEncoding
from model.seq2seq_decode import DecoderCache, beam_search, greedy


class Seq2Seq(nn.Module):
    """Encoder (bidirectional blocks over the source) and decoder (causal
    self-attention, cross-attention over the encoder output, MLP), with token
    embeddings scaled by sqrt(d_model) and an output projection tied to the
    target embedding.

    Blocks are post-LN as in the paper with model.norm=post (the presets);
    with norm=pre each stack ends with a final LayerNorm. Positions: absolute
    ones (learned, sinusoidal) are added to each side's embeddings, each side
    with its own learned table; relative ones (rotary, ALiBi) act in the two
    self-attentions only, never across the two sequences.

    Args:
        config: model shape; family should be "seq2seq".
    """

    flops_unit = "target_token"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)  # target side (and source when shared)
        self.source_embed = None if config.share_embeddings else nn.Embedding(config.vocab_size, d)
        self.encoder_positions = PositionEncoding.for_model(config)
        self.decoder_positions = PositionEncoding.for_model(config)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = TransformerStack(config)
        decoder_blocks = (DecoderBlock(config, i) for i in range(config.decoder_layers))
        self.decoder = TransformerStack(config, decoder_blocks)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight
        self.embed_scale = math.sqrt(d)
        init_transformer_weights(self, config.init_std, config.n_layer)

    def _embed(
        self, table: nn.Embedding, positions: PositionEncoding, ids: Tensor, past: int
    ) -> Tensor:
        """Dropout(table(ids) * sqrt(d) + positions) for ids [B, T] at past, past + 1, ..."""
        self._check_length(ids, past)
        where = torch.arange(past, past + ids.shape[1], device=ids.device)
        return self.drop(positions(table(ids) * self.embed_scale, where))

    def _check_length(self, ids: Tensor, past: int) -> None:
        if ids.ndim != 2:
            raise ValueError(f"token ids must be [batch, seq], got {list(ids.shape)}")
        if past + ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {past + ids.shape[1]} tokens exceeds "
                f"model.max_seq_len={self.config.max_seq_len}"
            )

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encoder output ("memory") [B, S, d_model].

        Args:
            input_ids: [B, S] source token ids.
            attention_mask: [B, S], 1 = token, 0 = padding (never attended to).
        """
        table = self.embed if self.source_embed is None else self.source_embed
        x = self._embed(table, self.encoder_positions, input_ids, 0)
        ctx = build_attention_context(
            self.encoder_positions,
            input_ids.shape[1],
            causal=False,
            device=input_ids.device,
            attention_mask=attention_mask,
            dense=self.config.attention == "softmax",
        )
        return self.encoder(x, ctx)

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Next-token logits [B, T, vocab_size] of the target given the memory.

        Args:
            decoder_input_ids: [B, T] target ids (BOS first; the new tokens
                only when decoding with a cache).
            memory: encoder output [B, S, d_model].
            attention_mask: source padding mask [B, S] (1 = token).
            decoder_attention_mask: [B, cached + T] target padding mask; with
                right padding the causal mask already hides the padding.
            cache: decoding cache; read and extended in place.
        """
        past = 0 if cache is None else cache.self_attn.seq_len
        x = self._embed(self.embed, self.decoder_positions, decoder_input_ids, past)
        ctx = build_attention_context(
            self.decoder_positions,
            decoder_input_ids.shape[1],
            causal=True,
            device=decoder_input_ids.device,
            attention_mask=decoder_attention_mask,
            kv_cache=None if cache is None else cache.self_attn,
            dense=self.config.attention == "softmax",
        )
        key_keep = None
        if attention_mask is not None:
            key_keep = attention_mask.to(device=memory.device, dtype=torch.bool)
        memory_ctx = AttentionContext(
            keep=None if key_keep is None else key_keep[:, None, None, :],
            key_keep=key_keep,
            kv_cache=None if cache is None else cache.cross_attn,
        )
        return self.lm_head(self.decoder(x, ctx, memory, memory_ctx))

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits [B, T, vocab_size]; arguments as in `encode` and `decode`."""
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)

    def compute_loss(self, batch: dict[str, Tensor], accuracy: bool = True) -> ModelOutput:
        """Label-smoothed cross entropy of the target tokens.

        Args:
            batch: "input_ids" [B, S] source; "attention_mask" [B, S] (1 =
                token); "decoder_input_ids" [B, T] (BOS + target); "labels"
                [B, T] (target + EOS, -100 = ignore); optional
                "decoder_attention_mask" [B, T].
            accuracy: also compute the token accuracy (an argmax per target).

        Returns:
            ModelOutput whose loss is smoothed by model.label_smoothing; metrics
            nll_loss (the unsmoothed mean NLL, for perplexity), num_tokens
            (targets counted) and accuracy.
        """
        logits = self(
            batch["input_ids"],
            batch["decoder_input_ids"],
            batch.get("attention_mask"),
            batch.get("decoder_attention_mask"),
        )
        loss, nll, count, correct = label_smoothed_cross_entropy(
            logits, batch["labels"], self.config.label_smoothing, accuracy
        )
        metrics = {"nll_loss": nll, "num_tokens": count}
        if correct is not None:
            metrics["accuracy"] = correct / count.clamp(min=1)
        return ModelOutput(loss=loss, logits=logits, metrics=metrics)

    # Decoding lives in seq2seq_decode.py; these make it model.greedy(...) and
    # model.beam_search(...).
    greedy = greedy
    beam_search = beam_search

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; non_embedding leaves out lookup-only tables: the
        learned position tables and an unshared source embedding (the target
        embedding stays: it is the output projection's matmul weight).

        Args:
            non_embedding: exclude lookup-only tables.
        """
        exclude: list[Tensor] = []
        if non_embedding:
            exclude = [
                *self.encoder_positions.embedding_params,
                *self.decoder_positions.embedding_params,
            ]
            if self.source_embed is not None:
                exclude.append(self.source_embed.weight)
        return count_params(self, exclude)

    def training_flops_per_unit(self) -> float:
        """Training FLOPs per target token, for a source as long as the target.

        6 * N for the weight matmuls (N = num_params(non_embedding=True):
        encoder weights once per source token, decoder and output weights once
        per target token), plus 12 * d_model * max_seq_len per attention layer:
        the encoder's self-attention, and the decoder's self- and
        cross-attention (see `training_flops_per_token`).
        """
        c = self.config
        # Self-attention in both stacks, then cross-attention in the decoder.
        keys = c.n_layer * attended_keys(c, c.max_seq_len, causal=False)
        keys += c.decoder_layers * attended_keys(c, c.max_seq_len, causal=True)
        keys += c.decoder_layers * attended_keys(c, c.max_seq_len, causal=False, cross=True)
        return training_flops_per_token(self.num_params(non_embedding=True), 1, c.d_model, keys)
