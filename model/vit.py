"""ViT: a vision transformer classifying images from non-overlapping patches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.accounting import attended_keys, count_params, training_flops_per_token
from model.attention import build_attention_context
from model.blocks import TransformerStack
from model.config import ModelConfig
from model.init import init_transformer_weights
from model.losses import cross_entropy_with_stats
from model.output import ModelOutput
from model.positions import PositionEncoding


class PatchEmbedding(nn.Module):
    """Patches -> tokens (+ CLS token) -> positions -> dropout.

    A Conv2d with kernel = stride = patch_size is exactly a shared linear map
    of each flattened patch, computed without an explicit unfold.

    Args:
        config: model shape.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Conv2d(
            config.in_channels,
            config.d_model,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.bias,
        )
        self.cls_token = (
            nn.Parameter(torch.zeros(1, 1, config.d_model)) if config.pooling == "cls" else None
        )
        # The patch grid is treated as a 1-D sequence (row-major) for every scheme.
        self.positions = PositionEncoding.for_model(config, config.image_seq_len)
        self.drop = nn.Dropout(config.dropout)

    def reset_parameters(self, init_std: float) -> None:
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, mean=0.0, std=init_std)

    def forward(self, images: Tensor) -> Tensor:
        """Images [B, C, H, W] -> tokens [B, image_seq_len, d_model]."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise ValueError(
                f"images must be [batch, model.in_channels={c.in_channels}, H, W], "
                f"got {list(images.shape)}"
            )
        if tuple(images.shape[2:]) != (c.image_size, c.image_size):
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[3]} but "
                f"model.image_size={c.image_size}"
            )
        x = self.proj(images).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x), dim=1)
        positions = torch.arange(x.shape[1], device=x.device)
        return self.drop(self.positions(x, positions))


class ViT(nn.Module):
    """Patch embedding, bidirectional pre-LN blocks, final LN, pooling, linear head.

    The sequence length is config.image_seq_len (patches, plus one for the
    CLS token); config.max_seq_len is not used.

    Args:
        config: model shape; family should be "vit".
    """

    flops_unit = "image"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = PatchEmbedding(config)
        self.transformer = TransformerStack(config)
        self.head = nn.Linear(config.d_model, config.num_classes, bias=config.bias)
        init_transformer_weights(self, config.init_std, config.n_layer)
        self.embeddings.reset_parameters(config.init_std)

    def features(self, images: Tensor) -> Tensor:
        """Pooled image representation [B, d_model]: the CLS token or the patch mean.

        Args:
            images: [B, in_channels, image_size, image_size].
        """
        x = self.embeddings(images)
        ctx = build_attention_context(
            self.embeddings.positions,
            x.shape[1],
            causal=False,
            device=x.device,
            dense=self.config.attention == "softmax",
        )
        x = self.transformer(x, ctx)
        return x[:, 0] if self.config.pooling == "cls" else x.mean(dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits [B, num_classes] for images [B, C, H, W]."""
        return self.head(self.features(images))

    def compute_loss(self, batch: dict[str, Tensor], accuracy: bool = True) -> ModelOutput:
        """Classification loss.

        Args:
            batch: "images" [B, C, H, W]; "labels" [B] class ids (-100 = ignore).
            accuracy: also compute top-1 accuracy.

        Returns:
            ModelOutput with metrics accuracy and num_images.
        """
        logits = self(batch["images"])
        loss, count, correct = cross_entropy_with_stats(logits, batch["labels"], accuracy)
        metrics = {"num_images": count}
        if correct is not None:
            metrics["accuracy"] = correct / count.clamp(min=1)
        return ModelOutput(loss=loss, logits=logits, metrics=metrics)

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; non_embedding leaves out position table and CLS token.

        Args:
            non_embedding: exclude lookup-only parameters (the patch projection
                stays: it is a matmul).
        """
        exclude: list[Tensor] = []
        if non_embedding:
            exclude = list(self.embeddings.positions.embedding_params)
            if self.embeddings.cls_token is not None:
                exclude.append(self.embeddings.cls_token)
        return count_params(self, exclude)

    def training_flops_per_unit(self) -> float:
        """Training FLOPs per image: (6 * N + 12 * L * d_model * S) * S.

        S = image_seq_len tokens per image, N = `num_params(non_embedding=True)`;
        see `model.accounting.training_flops_per_token`.
        """
        c = self.config
        seq = c.image_seq_len
        keys = attended_keys(c, seq, causal=False)
        per_token = training_flops_per_token(
            self.num_params(non_embedding=True), c.n_layer, c.d_model, keys
        )
        return per_token * seq

    def training_flops_per_image(self) -> float:
        """Alias of `training_flops_per_unit` (the unit is an image)."""
        return self.training_flops_per_unit()
