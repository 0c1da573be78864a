"""Architecture description shared by every model family.

One flat dataclass covers GPT, BERT, ViT and the encoder-decoder (seq2seq)
so that the experiment schema can embed it as its `model` section unchanged;
fields a family does not use are ignored by it. Validation raises ValueError naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

Family = Literal["gpt", "bert", "vit", "seq2seq"]
Position = Literal["learned", "sinusoidal", "rotary", "alibi", "relative", "none"]
Attention = Literal["softmax", "performer", "sparse"]
SparseKind = Literal["local", "strided"]
PairHead = Literal["none", "nsp", "sop"]
Pooling = Literal["cls", "mean"]
Norm = Literal["pre", "post"]
Activation = Literal["gelu", "gelu_tanh"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "family": get_args(Family),
    "position": get_args(Position),
    "attention": get_args(Attention),
    "pair_head": get_args(PairHead),
    "pooling": get_args(Pooling),
    "norm": get_args(Norm),
    "activation": get_args(Activation),
}


@dataclass
class PerformerOptions:
    """FAVOR+ attention (model.attention=performer).

    Args:
        features: random features per head; 0 means the paper's d * ln(d) for
            head size d.
        redraw_every: draw new random features every this many training steps
            (0 = never); the draw is a function of train.seed and the step.
        chunk_size: causal attention runs its prefix sums over chunks of this
            many tokens: memory O(T * features + chunk^2) instead of O(T^2).
    """

    __pydantic_config__ = {"extra": "forbid"}

    features: int = 0
    redraw_every: int = 1000
    chunk_size: int = 128


@dataclass
class SparseOptions:
    """Block-sparse attention (model.attention=sparse), the Sparse Transformer's
    fixed patterns over blocks of tokens.

    Args:
        pattern: local (each block sees the `window` blocks up to itself; both
            sides in an encoder) or strided (local plus the last block of every
            group of `stride` blocks, which summarise the sequence so far).
        block_size: tokens per block.
        window: blocks in the local window, the own block included.
        stride: strided: blocks per group.
    """

    __pydantic_config__ = {"extra": "forbid"}

    pattern: SparseKind = "strided"
    block_size: int = 64
    window: int = 4
    stride: int = 4


@dataclass
class ModelConfig:
    """Shape and options of one transformer.

    Args:
        name: registry name this config came from (or "custom").
        family: which model class to build: gpt, bert, vit or seq2seq (the
            encoder-decoder Transformer of "Attention Is All You Need").
        n_layer: number of transformer blocks (seq2seq: encoder blocks).
        n_head: attention heads per block; must divide d_model.
        d_model: residual stream width.
        max_seq_len: longest sequence (tokens) the model accepts; for ViT it is
            derived from image and patch size; for seq2seq it bounds the source
            and the target each.
        vocab_size: token vocabulary size (GPT, BERT, seq2seq).
        position: learned | sinusoidal | rotary | alibi | relative | none.
            relative: learned per-head score biases of bucketed query-key
            distances (relative_buckets buckets, log-spaced up to
            relative_max_distance; exact below half of it).
        relative_buckets: relative: buckets (half for each direction).
        relative_max_distance: relative: distances beyond this share a bucket.
        attention: softmax (exact), performer (FAVOR+ random-feature
            attention, linear in the length) or sparse (block-sparse local or
            strided patterns). Cross-attention stays exact under sparse.
        performer: options of model.attention=performer.
        sparse: options of model.attention=sparse.
        dropout: dropout probability on embeddings, attention and MLP outputs.
        bias: whether linear layers and LayerNorms carry biases.
        mlp_ratio: hidden width of the MLP as a multiple of d_model.
        norm: where each block's LayerNorms sit: pre (before attention and
            MLP, with a final LayerNorm after the last block; GPT-2, ViT) or
            post (after each residual add, no final LayerNorm; the original
            BERT, which a Hugging Face BERT export needs).
        activation: the MLP's GELU: gelu (exact, erf) or gelu_tanh (the tanh
            approximation GPT-2 was trained with).
        layer_norm_eps: LayerNorm epsilon.
        init_std: standard deviation of the GPT-2 style normal initialisation.
        type_vocab_size: BERT segment (token type) vocabulary.
        pair_head: BERT sentence-pair head: none, nsp (next sentence) or sop
            (sentence order).
        num_labels: BERT sequence-classification labels; 0 means no such head.
        image_size: ViT input height and width in pixels.
        patch_size: ViT patch height and width; must divide image_size.
        in_channels: ViT image channels.
        num_classes: ViT classification classes.
        pooling: what a classifier reads: the cls token, or the mean of the
            tokens (ViT: the patch tokens; BERT: the unpadded tokens).
        n_decoder_layer: seq2seq decoder blocks; 0 means as many as n_layer.
        label_smoothing: seq2seq training targets put this much probability
            mass uniformly over the vocabulary (0 = plain cross entropy).
        share_embeddings: seq2seq source and target share one token embedding
            (a joint vocabulary, as the paper's WMT En-De); otherwise the
            source has its own table of vocab_size rows. The output projection
            is always tied to the target embedding.
        activation_checkpointing: recompute block activations in backward.
        init_from: weights a new run starts from (a run, a checkpoint or an
            export); the training side loads them, the model itself ignores it.
    """

    # Pydantic reads this when the experiment schema validates the section:
    # unknown keys are errors, not silently dropped.
    __pydantic_config__ = {"extra": "forbid"}

    name: str = "custom"
    family: Family = "gpt"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    max_seq_len: int = 128
    vocab_size: int = 4096
    position: Position = "learned"
    relative_buckets: int = 32
    relative_max_distance: int = 128
    attention: Attention = "softmax"
    performer: PerformerOptions = dataclasses.field(default_factory=PerformerOptions)
    sparse: SparseOptions = dataclasses.field(default_factory=SparseOptions)
    dropout: float = 0.0
    bias: bool = True
    mlp_ratio: int = 4
    norm: Norm = "pre"
    activation: Activation = "gelu"
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    type_vocab_size: int = 2
    pair_head: PairHead = "none"
    num_labels: int = 0
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    pooling: Pooling = "cls"
    n_decoder_layer: int = 0
    label_smoothing: float = 0.1
    share_embeddings: bool = True
    activation_checkpointing: bool = False
    init_from: str | None = None

    def __post_init__(self) -> None:
        # Built from a plain dict (a checkpoint's or an export's config.json),
        # the option sections arrive as dicts.
        if isinstance(self.performer, dict):
            self.performer = PerformerOptions(**self.performer)
        if isinstance(self.sparse, dict):
            self.sparse = SparseOptions(**self.sparse)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        for field in ("n_layer", "n_head", "d_model", "max_seq_len", "vocab_size", "mlp_ratio"):
            if getattr(self, field) < 1:
                raise ValueError(f"model.{field} must be >= 1, got {getattr(self, field)}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(f"model.position=rotary needs an even head size, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        # Literal annotations are not enforced at runtime; a typo would otherwise
        # silently fall through to some default branch in the model code.
        for field, allowed in _CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(
                    f"model.{field} must be one of {', '.join(allowed)}, got {value!r}"
                )
        for field in ("type_vocab_size", "image_size", "patch_size", "in_channels"):
            if getattr(self, field) < 1:
                raise ValueError(f"model.{field} must be >= 1, got {getattr(self, field)}")
        self._validate_attention()
        if self.n_decoder_layer < 0:
            raise ValueError(f"model.n_decoder_layer must be >= 0, got {self.n_decoder_layer}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.num_labels < 0:
            raise ValueError(f"model.num_labels must be >= 0, got {self.num_labels}")
        if self.family == "vit":
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"model.patch_size ({self.patch_size}) must divide "
                    f"model.image_size ({self.image_size})"
                )
            if self.num_classes < 1:
                raise ValueError(f"model.num_classes must be >= 1, got {self.num_classes}")

    def _validate_attention(self) -> None:
        for field in ("relative_buckets", "relative_max_distance"):
            if getattr(self, field) < 2:
                raise ValueError(f"model.{field} must be >= 2, got {getattr(self, field)}")
        perf, sparse = self.performer, self.sparse
        for name, value in (
            ("performer.features", perf.features),
            ("performer.redraw_every", perf.redraw_every),
        ):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        for name, value in (
            ("performer.chunk_size", perf.chunk_size),
            ("sparse.block_size", sparse.block_size),
            ("sparse.window", sparse.window),
            ("sparse.stride", sparse.stride),
        ):
            if value < 1:
                raise ValueError(f"model.{name} must be >= 1, got {value}")
        if sparse.pattern not in get_args(SparseKind):
            raise ValueError(
                f"model.sparse.pattern must be one of {', '.join(get_args(SparseKind))}, "
                f"got {sparse.pattern!r}"
            )
        if self.attention == "performer" and self.position in ("alibi", "relative"):
            # FAVOR+ never forms the score matrix a score bias would be added to.
            raise ValueError(
                f"model.attention=performer cannot use model.position={self.position} (a bias "
                "on attention scores, which the Performer never forms); use rotary, learned, "
                "sinusoidal or none"
            )

    @property
    def performer_features(self) -> int:
        """Random features per head: performer.features, or d * ln(d) when it is 0."""
        d = self.head_dim
        return self.performer.features or max(1, round(d * math.log(d)))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def decoder_layers(self) -> int:
        """seq2seq decoder depth: n_decoder_layer, or n_layer when that is 0."""
        return self.n_decoder_layer or self.n_layer

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_seq_len(self) -> int:
        """ViT sequence length: the patches plus the CLS token when pooling=cls.

        ViT uses this instead of max_seq_len, so overriding image or patch size
        never leaves a stale max_seq_len behind.
        """
        return self.num_patches + (1 if self.pooling == "cls" else 0)

    def replace(self, **overrides: Any) -> ModelConfig:
        """Copy with fields replaced; unknown field names raise ValueError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown model field(s): {', '.join('model.' + k for k in unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
