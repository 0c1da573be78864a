"""GPT: a decoder-only causal language model."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from model.accounting import TokenFlops, count_params
from model.attention import KVCache, build_attention_context
from model.blocks import TransformerStack
from model.config import ModelConfig
from model.init import init_transformer_weights
from model.losses import cross_entropy_with_stats
from model.output import ModelOutput
from model.positions import PositionEncoding
from model.sampling import sample_next_token


class GPT(TokenFlops, nn.Module):
    """Token embedding, positions, pre-LN blocks, final LN, tied LM head.

    Every parameter lives in a submodule whose forward uses it (the LM head
    shares the embedding's weight), so ZeRO-3's per-module gather hooks see
    every use, including from `compute_loss` and `generate`.

    Args:
        config: model shape; family should be "gpt".
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = PositionEncoding.for_model(config)
        self.drop = nn.Dropout(config.dropout)
        self.transformer = TransformerStack(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        init_transformer_weights(self, config.init_std, config.n_layer)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Next-token logits.

        Args:
            input_ids: [B, T] token ids (the new tokens when decoding with a cache).
            attention_mask: [B, cached + T], 1 = token, 0 = padding to ignore.
            kv_cache: decoding cache; read and extended in place.

        Returns:
            logits [B, T, vocab_size].
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got {list(input_ids.shape)}")
        past = 0 if kv_cache is None else kv_cache.seq_len
        t = input_ids.shape[1]
        if past + t > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {past + t} tokens exceeds model.max_seq_len={self.config.max_seq_len}"
            )
        ctx = build_attention_context(
            self.positions,
            t,
            causal=True,
            device=input_ids.device,
            attention_mask=attention_mask,
            kv_cache=kv_cache,
            dense=self.config.attention == "softmax",
        )
        positions = torch.arange(past, past + t, device=input_ids.device)
        x = self.drop(self.positions(self.wte(input_ids), positions))
        return self.lm_head(self.transformer(x, ctx))

    def compute_loss(self, batch: dict[str, Tensor], accuracy: bool = True) -> ModelOutput:
        """Language-modelling loss.

        Args:
            batch: "input_ids" [B, T]; "labels" [B, T], already shifted so
                labels[:, i] is the token after input_ids[:, i], -100 = ignore;
                optional "attention_mask" [B, T].
            accuracy: also compute next-token accuracy (an argmax per position).

        Returns:
            ModelOutput with metrics num_tokens (targets counted) and accuracy.
        """
        logits = self(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        loss, count, correct = cross_entropy_with_stats(logits, batch["labels"], accuracy)
        metrics = {"num_tokens": count}
        if correct is not None:
            metrics["accuracy"] = correct / count.clamp(min=1)
        return ModelOutput(loss=loss, logits=logits, metrics=metrics)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Extend each prompt by sampling, in eval mode (restored afterwards).

        Args:
            input_ids: [B, T] prompts of equal length (no padding).
            max_new_tokens: number of tokens to append.
            temperature: logit divisor; 0 means greedy.
            top_k: sample only among the k most likely tokens.
            top_p: sample only from the nucleus of probability top_p.
            use_cache: reuse past keys/values instead of recomputing them.
            generator: random source, for reproducible sampling.
            return_logits: also return each step's next-token logits.

        Returns:
            tokens [B, T + max_new_tokens], and with return_logits the float32
            logits [B, max_new_tokens, vocab_size] each token was drawn from.
        """
        steps = self.stream(
            input_ids, max_new_tokens, temperature, top_k, top_p, use_cache, generator
        )
        drawn = list(steps)
        tokens = torch.cat([input_ids, *(t.to(input_ids.dtype) for t, _ in drawn)], dim=1)
        if not return_logits:
            return tokens
        if not drawn:
            shape = (input_ids.shape[0], 0, self.config.vocab_size)
            return tokens, input_ids.new_zeros(shape, dtype=torch.float32)
        return tokens, torch.stack([logits for _, logits in drawn], dim=1)

    @torch.no_grad()
    def stream(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """`generate` one token at a time: yields (next tokens [B, 1], the float32
        logits [B, vocab_size] they were drawn from), so a caller can show text
        as it is made and stop early.

        Without a cache every step recomputes the last max_seq_len tokens. With
        one, each step feeds only the newest token; when the context would
        outgrow max_seq_len the cache is rebuilt from the cropped context, so
        both paths always condition on the same tokens and agree.
        """
        was_training = self.training
        self.eval()
        try:
            tokens = input_ids
            limit = self.config.max_seq_len
            cache = KVCache(self.config.n_layer) if use_cache else None
            for _ in range(max_new_tokens):
                if cache is not None and 0 < cache.seq_len < limit:
                    logits = self(tokens[:, -1:], kv_cache=cache)
                else:
                    if cache is not None:
                        cache = KVCache(self.config.n_layer)
                    logits = self(tokens[:, -limit:], kv_cache=cache)
                next_logits = logits[:, -1, :].float()
                next_token = sample_next_token(next_logits, temperature, top_k, top_p, generator)
                tokens = torch.cat((tokens, next_token.to(tokens.dtype)), dim=1)
                yield next_token, next_logits
        finally:
            self.train(was_training)

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; non_embedding leaves out the position table.

        Args:
            non_embedding: exclude lookup-only tables (the tied token embedding
                stays: it is the LM head's matmul weight).
        """
        exclude = self.positions.embedding_params if non_embedding else ()
        return count_params(self, exclude)
