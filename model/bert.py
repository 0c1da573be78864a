"""BERT: a bidirectional encoder with MLM, sentence-pair and classification heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.accounting import TokenFlops, count_params, training_flops_per_token
from model.attention import build_attention_context
from model.blocks import TransformerStack, activation, layer_norm
from model.config import ModelConfig
from model.init import init_transformer_weights
from model.losses import cross_entropy_with_stats
from model.output import ModelOutput
from model.positions import PositionEncoding


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    Args:
        config: model shape.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = PositionEncoding.for_model(config)
        self.token_type = nn.Embedding(config.type_vocab_size, config.d_model)
        self.ln = layer_norm(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.positions(self.word(input_ids), positions) + self.token_type(token_type_ids)
        return self.drop(self.ln(x))


class MaskedLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then a decoder tied to the word embeddings.

    Args:
        config: model shape.
        word_embeddings: the embedding whose weight the decoder shares.
    """

    def __init__(self, config: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.act = activation(config)
        self.ln = layer_norm(config)
        # The decoder has its own output bias (when config.bias) but no own weight.
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=config.bias)
        self.decoder.weight = word_embeddings.weight

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.ln(self.act(self.dense(hidden))))


class Pooler(nn.Module):
    """tanh(dense(h)), h the hidden state at the first ([CLS]) position
    (pooling=cls, as the original BERT) or the mean over the real tokens
    (pooling=mean; padding, per the attention mask, is left out).

    Args:
        config: model shape and pooling.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mean = config.pooling == "mean"
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if not self.mean:
            summary = hidden[:, 0]
        elif attention_mask is None:
            summary = hidden.mean(dim=1)
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            summary = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return torch.tanh(self.dense(summary))


class BERT(TokenFlops, nn.Module):
    """Bidirectional encoder with a masked-LM head and optional pooled heads.

    Heads: the MLM head always; a pooler when config.pair_head != "none" or
    config.num_labels > 0; a 2-way pair head (NSP or SOP, same shape) on the
    pooled [CLS]; a dropout + linear sequence classifier when num_labels > 0.
    Blocks are pre-LN by default (the encoder then ends with a final
    LayerNorm); model.norm=post gives the original BERT's post-LN blocks.

    Args:
        config: model shape; family should be "bert".
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.transformer = TransformerStack(config)
        self.mlm_head = MaskedLMHead(config, self.embeddings.word)
        pooled = config.pair_head != "none" or config.num_labels > 0
        self.pooler = Pooler(config) if pooled else None
        self.pair_head = (
            nn.Linear(config.d_model, 2, bias=config.bias) if config.pair_head != "none" else None
        )
        self.classifier = (
            nn.Sequential(
                nn.Dropout(config.dropout),
                nn.Linear(config.d_model, config.num_labels, bias=config.bias),
            )
            if config.num_labels > 0
            else None
        )
        init_transformer_weights(self, config.init_std, config.n_layer)

    def encode(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states [B, T, d_model].

        Args:
            input_ids: [B, T] token ids; position 0 should be [CLS] for pooling.
            token_type_ids: [B, T] segment ids; zeros when omitted.
            attention_mask: [B, T], 1 = token, 0 = padding (never attended to).
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got {list(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {input_ids.shape[1]} tokens exceeds "
                f"model.max_seq_len={self.config.max_seq_len}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        ctx = build_attention_context(
            self.embeddings.positions,
            input_ids.shape[1],
            causal=False,
            device=input_ids.device,
            attention_mask=attention_mask,
            dense=self.config.attention == "softmax",
        )
        return self.transformer(self.embeddings(input_ids, token_type_ids), ctx)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Masked-LM logits [B, T, vocab_size]; arguments as in `encode`."""
        return self.mlm_head(self.encode(input_ids, token_type_ids, attention_mask))

    def pooled_output(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Pooled representation [B, d_model] (model.pooling); arguments as in `encode`."""
        return self._pool(self.encode(input_ids, token_type_ids, attention_mask), attention_mask)

    def pair_logits(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """NSP/SOP logits [B, 2] (1 = "not next" / "swapped"); arguments as in `encode`."""
        if self.pair_head is None:
            raise ValueError("pair_logits needs model.pair_head = nsp or sop")
        return self.pair_head(self.pooled_output(input_ids, token_type_ids, attention_mask))

    def classify(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Sequence-classification logits [B, num_labels]; arguments as in `encode`."""
        if self.classifier is None:
            raise ValueError("classify needs model.num_labels > 0")
        return self.classifier(self.pooled_output(input_ids, token_type_ids, attention_mask))

    def _pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        if self.pooler is None:
            raise ValueError("no pooler: set model.pair_head or model.num_labels")
        return self.pooler(hidden, attention_mask)

    def compute_loss(self, batch: dict[str, Tensor], accuracy: bool = True) -> ModelOutput:
        """Sum of the losses whose targets the batch carries (encoding runs once).

        Args:
            batch: "input_ids" [B, T]; optional "token_type_ids", "attention_mask";
                "labels" [B, T] MLM targets (-100 on unselected tokens);
                "pair_labels" [B] NSP/SOP targets (with a pair head);
                "class_labels" [B] classification targets (with num_labels > 0).
            accuracy: also compute the accuracies (an argmax per target).

        Returns:
            ModelOutput whose logits are the MLM logits when "labels" is given,
            else the classification or pair logits. Metrics: mlm_loss,
            masked_accuracy, num_masked; pair_loss, pair_accuracy;
            class_loss, class_accuracy (each when computed).
        """
        hidden = self.encode(
            batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask")
        )
        losses: list[Tensor] = []
        metrics: dict[str, Tensor] = {}
        logits = None
        if "labels" in batch:
            logits = self.mlm_head(hidden)
            loss, count, correct = cross_entropy_with_stats(logits, batch["labels"], accuracy)
            losses.append(loss)
            metrics.update(mlm_loss=loss.detach(), num_masked=count)
            if correct is not None:
                metrics["masked_accuracy"] = correct / count.clamp(min=1)
        pooled = None
        for key, head, name in (
            ("class_labels", self.classifier, "class"),
            ("pair_labels", self.pair_head, "pair"),
        ):
            if key not in batch or head is None:
                continue
            if pooled is None:
                pooled = self._pool(hidden, batch.get("attention_mask"))
            head_logits = head(pooled)
            loss, count, correct = cross_entropy_with_stats(head_logits, batch[key], accuracy)
            losses.append(loss)
            metrics[f"{name}_loss"] = loss.detach()
            if correct is not None:
                metrics[f"{name}_accuracy"] = correct / count.clamp(min=1)
            logits = head_logits if logits is None else logits
        if logits is None:
            raise ValueError(
                "batch has no targets this BERT can use: give labels, pair_labels "
                "(with model.pair_head) or class_labels (with model.num_labels)"
            )
        return ModelOutput(loss=torch.stack(losses).sum(), logits=logits, metrics=metrics)

    def training_flops_per_unit(self) -> float:
        """Training FLOPs per token (TokenFlops). A classifier (num_labels > 0) trains on
        class labels: its masked-LM head never runs (its dense layer, and the decoder
        that is the word embedding's only matmul, are left out), and the pooler and
        classifier run once per text, not per token."""
        if self.classifier is None:
            return super().training_flops_per_unit()
        c = self.config
        not_per_token = sum(map(count_params, (self.mlm_head, self.pooler, self.classifier)))
        n = self.num_params(non_embedding=True) - not_per_token
        return training_flops_per_token(n, c.n_layer, c.d_model, c.max_seq_len)

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; non_embedding leaves out position and token-type tables.

        Args:
            non_embedding: exclude lookup-only tables (the word embedding stays:
                it is the MLM decoder's matmul weight).
        """
        exclude: list[Tensor] = []
        if non_embedding:
            exclude = [
                *self.embeddings.positions.embedding_params,
                self.embeddings.token_type.weight,
            ]
        return count_params(self, exclude)
