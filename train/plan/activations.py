"""Activation memory of one micro-batch: what autograd keeps for the backward pass.

`gobig plan` predicts a run's memory before any GPU is rented, so this module
counts bytes from the config alone and never imports torch. The count starts
from Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models": s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit with
dropout, and 2*s*b*h per layer (the layer input) under full recomputation.
It is adapted to what gobig's blocks actually save (model/blocks.py,
model/attention.py, model/losses.py):

- attention runs on SDPA's fused kernels, which keep q, k, v, the output and
  an fp32 logsumexp [b, a, s] (the dropout pattern is regenerated from the
  RNG state) instead of the paper's 5*a*s^2*b bytes of scores, softmax and
  dropout mask; a padding mask [b, 1, s, s] is kept once per forward, shared
  by every layer;
- a block keeps 4 hidden-state tensors (the inputs and outputs of its two
  LayerNorms, pre- or post-LN alike), q, k, v and the attention output, the
  MLP's GELU input and output (2 * mlp_ratio), a bool dropout mask per residual
  branch, and the LayerNorms' fp32 mean and rstd: 34*s*b*h + 4*s*b*a + 16*s*b
  bytes in bf16 with dropout for mlp_ratio 4, the paper's 34*s*b*h without
  its 5*a*s^2*b;
- the loss keeps the fp32 log-probabilities [b*s, V] (losses.py upcasts);
- activation checkpointing (non-reentrant, per block) keeps each block's
  input, and one block is recomputed at a time during the backward.

Bytes are predicted for CUDA, where the plan's GPUs run: there SDPA takes its
flash / memory-efficient kernels in any precision (also with a padding mask or
a learned relative bias, whose gradient the memory-efficient kernel computes;
a padding mask is assumed kept once, which holds for lengths a multiple of 8),
their output is laid out [b, s, a, h/a] so the output projection reads a view
of it, and dropout keeps 1-byte masks. `cpu_activation_estimate` counts the
same for gobig's CPU runs, which differ: dropout keeps a noise tensor in the
activation dtype; SDPA with attention dropout, or with a relative bias, takes
its math path (q, k, v copies, the [s, s] probabilities and, training, their
dropout noise and dropped copy); half precision attention runs in fp32
(model/attention.py `_attend_and_project`); LayerNorm statistics take the
activation dtype.

`saved` counts exact softmax attention tensor by tensor; the Performer and
block-sparse kernels are counted from the tensors their code keeps (random
features, chunk sums, gathered key blocks) leaving small index tensors out.
`temporary` is modelled, not counted: the logits the trainer holds plus the
larger of the loss's fp32 gradients and one block's backward (its
recomputation under checkpointing, and its MLP and residual gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from model.config import ModelConfig

_ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_FP32 = 4  # LayerNorm statistics on CUDA, logsumexp, log-probabilities, Performer features
_INDEX = 8  # int64 token ids, positions and labels that embeddings and the loss keep
_SOURCE = (
    "Korthikanti et al. 2022 (34sbh+5as^2b per layer) adapted to gobig's SDPA blocks "
    "(q,k,v,out + fp32 logsumexp instead of [s,s] scores)"
)


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes per device for one micro-batch.

    saved: tensors autograd saves for backward over the whole forward pass.
    temporary: the largest transient buffers beyond them (the logits and their
        gradient, one block's recomputation under activation checkpointing, ...).
    formula: the formula used, in one line, with its source.
    """

    saved: int
    temporary: int
    formula: str

    @property
    def total(self) -> int:
        return self.saved + self.temporary


def activation_estimate(
    config: ModelConfig,
    micro_batch: int,
    seq_len: int | None = None,
    precision: str = "bf16",
    checkpointing: bool | None = None,
    training: bool = True,
) -> ActivationEstimate:
    """Activation memory of one micro-batch of `micro_batch` samples, on a CUDA device.

    Assumptions, from gobig's data pipeline and trainer: BERT and the seq2seq
    source carry a padding mask (their batches always have attention_mask), GPT
    and ViT none; BERT trains its masked-LM head (its classifier when
    num_labels > 0); the trainer holds the logits until the backward is done;
    checkpointing, as in TransformerStack, only acts while training.

    Args:
        config: the model.
        micro_batch: samples per micro-batch (sequences, images, sentence pairs).
        seq_len: tokens per sequence (default config.max_seq_len; ViT: its patches;
            seq2seq: source and target each).
        precision: fp32 | bf16 | fp16: the activations' dtype.
        checkpointing: activation checkpointing on (default config.activation_checkpointing).
        training: dropout active (its masks are saved) as in a training step.
    """
    counter = _Counter.of(config, micro_batch, precision, training, cuda=True)
    return counter.estimate(seq_len, checkpointing, training)


def cpu_activation_estimate(
    config: ModelConfig,
    micro_batch: int,
    seq_len: int | None = None,
    precision: str = "bf16",
    checkpointing: bool | None = None,
    training: bool = True,
) -> ActivationEstimate:
    """`activation_estimate` for a CPU run (gobig's tests, CPU training): the same
    count where CPU kernels keep other tensors (see the module docstring)."""
    counter = _Counter.of(config, micro_batch, precision, training, cuda=False)
    return counter.estimate(seq_len, checkpointing, training)


@dataclass(frozen=True)
class _Count:
    """One family's count: bytes saved and transient, the formula's terms, the tokens."""

    saved: int
    temporary: int
    terms: str
    seq: int


@dataclass(frozen=True)
class _Counter:
    """Bytes of one micro-batch, by family (`_FAMILIES`), as an `ActivationEstimate`.

    c: the model; b: micro-batch; e: bytes per activation element; cuda: the
    device (else CPU); dropout: dropout active (training with config.dropout > 0).
    """

    c: ModelConfig
    b: int
    e: int
    cuda: bool
    dropout: bool

    # -- small parts ------------------------------------------------------------------------

    @property
    def mask_bytes(self) -> int:
        """Bytes per element of a dropout mask: CUDA's fused dropout keeps a bool mask,
        the CPU one multiplies by a kept noise tensor of the input's dtype."""
        return 1 if self.cuda else self.e

    @property
    def stat_bytes(self) -> int:
        """Bytes of one LayerNorm's mean and rstd per token: fp32 on CUDA, the input's
        dtype on CPU."""
        return 2 * (_FP32 if self.cuda else self.e)

    @property
    def kernel_bytes(self) -> int:
        """Bytes per element inside the attention kernel: CPU attends in fp32 under half
        precision (model/attention.py `_attend_and_project`)."""
        return self.e if self.cuda else _FP32

    def math_path(self, cross: bool) -> bool:
        """Whether SDPA takes its math path, which keeps [s, s] tensors: on CPU, which has
        no fused kernel for attention dropout nor for a mask that needs a gradient (the
        relative positions' learned bias; cross-attention has none)."""
        relative = self.c.position == "relative" and not cross
        return not self.cuda and (self.dropout or relative)

    def hidden(self, tokens: int, width: int | None = None) -> int:
        """One [b, tokens, width (default d_model)] activation."""
        return self.b * tokens * (width or self.c.d_model) * self.e

    def dropout_mask(self, tokens: int, width: int | None = None) -> int:
        if not self.dropout:
            return 0
        return self.b * tokens * (width or self.c.d_model) * self.mask_bytes

    # -- attention --------------------------------------------------------------------------

    def attention(self, tq: int, tk: int, *, cross: bool, causal: bool, padded: bool) -> int:
        """What one attention layer keeps from its projections' outputs up to its output
        projection's input (that input included; the q/kv projections' inputs are the
        block's). Cross-attention is softmax under model.attention=sparse."""
        c = self.c
        if c.attention == "performer":
            return self.performer(tq, tk, cross=cross, causal=causal)
        if c.attention == "sparse" and not cross:
            return self.sparse(tq, causal=causal, padded=padded)
        b, a, h = self.b, c.n_head, c.d_model
        if self.math_path(cross):
            # In fp32: q and k scaled and v reshaped for bmm (three copies), the softmax
            # output [b, a, tq, tk] (training: also its dropout noise and the dropped
            # probabilities), and the output made contiguous for the projection. The mask
            # is added, not kept.
            probs = (3 if self.dropout else 1) * b * a * tq * tk * _FP32
            return b * h * (tq + 2 * tk) * _FP32 + probs + self.hidden(tq)
        logsumexp = b * a * tq * _FP32
        if self.cuda or self.e == _FP32:
            # SDPA keeps views of the projections' outputs: the whole fused qkv (cross: q,
            # and kv over the memory) storage; rotary keeps the rotated q and k besides (v
            # still views qkv). Its output is laid out [b, s, a, h/a], so the projection's
            # input is a view of it.
            rotary = 2 * self.hidden(tq) if c.position == "rotary" and not cross else 0
            return self.hidden(tq) + 2 * self.hidden(tk) + rotary + self.hidden(tq) + logsumexp
        # CPU in half precision attends in fp32: copies of q, k, v, the fp32 output, and
        # that output cast back for the projection.
        return b * h * (2 * tq + 2 * tk) * _FP32 + logsumexp + self.hidden(tq)

    def performer(self, tq: int, tk: int, *, cross: bool, causal: bool) -> int:
        """FAVOR+ (model/performer.py), computed in fp32: the scaled q and k; the random
        features (queries: exp and its rescaled copy; keys: the exponent before its cap,
        exp and the copy); v copied into the matmuls' layout; the quotient and the
        output for the projection; the key sums and normalisers and the denominators,
        per chunk of queries when causal, with each chunk's masked [chunk, chunk] product.
        Approximate: small index and padding tensors are left out."""
        c = self.c
        b, a, dh, m = self.b, c.n_head, c.head_dim, c.performer_features
        fp32_hidden = b * c.d_model * _FP32  # per token
        scaled_qk = fp32_hidden * (tq + tk)
        features = b * a * m * (2 * tq + 3 * tk) * _FP32
        scan = causal and not cross
        # fp32 v is a strided view of the projection: each matmul copies it (two per chunk:
        # the local product and the sums); a half v is copied once, contiguous, by .float().
        values = fp32_hidden * tk * (2 if scan and self.e == _FP32 else 1)
        quotient = fp32_hidden * tq
        if scan:
            chunk = min(c.performer.chunk_size, tq)
            per_chunk = b * a * (m * dh + m + chunk * chunk + 2 * chunk) * _FP32 + chunk * chunk
            sums = math.ceil(tq / chunk) * per_chunk
        else:
            sums = b * a * (m * dh + m + 2 * tq) * _FP32
        return scaled_qk + features + values + quotient + sums + self.hidden(tq)

    def sparse(self, t: int, *, causal: bool, padded: bool) -> int:
        """Block-sparse attention (model/sparse_attention.py): the padded queries and the
        gathered key blocks in fp32 (the scores' dtype), the gathered value blocks, the
        fp32 probabilities over the gathered keys, the element mask, while training a
        dropout mask, the probabilities cast to the values' dtype for their matmul, and
        the output. Approximate: the small block tables are left out."""
        c = self.c
        bs = c.sparse.block_size
        blocks = max(1, math.ceil(t / bs))
        gathered = blocks * _sparse_width(c, blocks, causal) * bs  # keys scored, all rows
        b, a, h = self.b, c.n_head, c.d_model
        queries = b * blocks * bs * h * _FP32
        keys = b * gathered * h * _FP32
        values = b * gathered * h * self.kernel_bytes
        scores = b * a * gathered * bs  # elements of the [b, a, blocks, bs, width * bs] scores
        probs = scores * _FP32
        if self.dropout:
            # CUDA keeps a bool mask, CPU an fp32 noise tensor (the probabilities' dtype).
            probs += scores * (1 if self.cuda else _FP32)
        if self.dropout or self.kernel_bytes != _FP32:
            # dropped or cast: a new tensor for the values' matmul
            probs += scores * self.kernel_bytes
        element_mask = (b if padded else 1) * gathered * bs  # bool, shared by the heads
        return queries + keys + values + probs + element_mask + self.hidden(t)

    def dense_mask(self, context: _Context, recompute: bool) -> int:
        """What a dense (softmax) self-attention context keeps once per forward, shared by
        every layer (model/attention_context.py): SDPA's additive mask, [b, 1, tq, tk]
        with padding or [1 or b, a, tq, tk] with a score bias (ALiBi, relative), none for
        a plain causal or unpadded stack. The CPU math path adds the mask without keeping
        it (checkpointing keeps it alive in the context all the same). A relative bias is
        learned: its table lookup keeps the [tq, tk] bucket ids, and building the mask
        keeps the bool keep-mask its gradient is routed through."""
        c = self.c
        if c.attention != "softmax":
            return 0  # the other kernels read key_keep and positions, no [tq, tk] mask
        biased = c.position in ("alibi", "relative")
        if not context.padded and not biased:
            return 0
        rows = self.b if context.padded else 1
        mask = rows * (c.n_head if biased else 1) * context.tq * context.tk * self.e
        if self.math_path(cross=False) and not recompute:
            mask = 0
        if c.position != "relative":
            return mask
        keep = rows * context.tq * context.tk if context.padded or context.causal else 0
        return mask + context.tq * context.tk * _INDEX + keep

    # -- blocks and stacks ------------------------------------------------------------------

    def block(self, t: int, memory: int | None, *, causal: bool, padded: bool) -> int:
        """One Block (memory None) or DecoderBlock (cross-attention over `memory` source
        tokens) without recomputation. Pre- and post-LN keep the same: the input and
        output of each branch's LayerNorm, the attention, the MLP's GELU input and output,
        and per branch a dropout mask and the LayerNorm's statistics."""
        c = self.c
        branches = 2 if memory is None else 3
        total = 2 * branches * self.hidden(t) + 2 * self.hidden(t, c.mlp_ratio * c.d_model)
        total += branches * (self.dropout_mask(t) + self.b * t * self.stat_bytes)
        total += self.attention(t, t, cross=False, causal=causal, padded=padded)
        if memory is not None:
            # The memory itself is kept once per forward (see `seq2seq`), not per block.
            total += self.attention(t, memory, cross=True, causal=False, padded=True)
        return total

    def stack(
        self, t: int, memory: int | None, *, causal: bool, padded: bool, recompute: bool
    ) -> tuple[int, int]:
        """(saved, one block's recomputation) of a TransformerStack: its blocks, their
        rotary tables and, pre-LN, the final LayerNorm's input and statistics. Its output
        is kept by what reads it."""
        c = self.c
        layers = c.n_layer if memory is None else c.decoder_layers
        block = self.block(t, memory, causal=causal, padded=padded)
        final_ln = self.hidden(t) + self.b * t * self.stat_bytes if c.norm == "pre" else 0
        final_ln += self.rotary_tables(t, layers, recompute)
        if recompute:
            # Checkpoint keeps each block's input; its recomputation re-saves the rest.
            return layers * self.hidden(t) + final_ln, block - self.hidden(t)
        return layers * block + final_ln, 0

    def rotary_tables(self, t: int, layers: int, recompute: bool) -> int:
        """Rotary cos and sin [t, h/a]: in fp32 the context's tables, shared by every
        layer (and kept alive for a recomputation); in half precision each rotation of
        q and of k keeps its own cast of both."""
        if self.c.position != "rotary":
            return 0
        table = t * self.c.head_dim
        if self.e == _FP32 or recompute:
            return 2 * table * _FP32
        return layers * 4 * table * self.e

    # -- construction and families ---------------------------------------------------------

    @classmethod
    def of(
        cls, config: ModelConfig, micro_batch: int, precision: str, training: bool, cuda: bool
    ) -> _Counter:
        if precision not in _ACTIVATION_BYTES:
            names = ", ".join(_ACTIVATION_BYTES)
            raise ValueError(f"precision must be one of {names}, got {precision!r}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        return cls(
            c=config,
            b=micro_batch,
            e=_ACTIVATION_BYTES[precision],
            cuda=cuda,
            dropout=training and config.dropout > 0.0,
        )

    def estimate(
        self, seq_len: int | None, checkpointing: bool | None, training: bool
    ) -> ActivationEstimate:
        c = self.c
        if checkpointing is None:
            checkpointing = c.activation_checkpointing
        recompute = checkpointing and training
        count = _FAMILIES[c.family](self, seq_len, recompute)
        mode = "checkpointed" if recompute else "no recompute"
        dropout = f"dropout {c.dropout:g}" if self.dropout else "no dropout"
        precision = {4: "fp32", 2: "16-bit"}[self.e]
        formula = (
            f"{c.family} ({'cuda' if self.cuda else 'cpu'}, {precision}, {mode}, {dropout}; "
            f"s={count.seq}, b={self.b}, h={c.d_model}, a={c.n_head}): {count.terms}; "
            f"source: {_SOURCE}"
        )
        return ActivationEstimate(saved=count.saved, temporary=count.temporary, formula=formula)

    def text_seq(self, seq_len: int | None) -> int:
        """Tokens per sequence of a text family: seq_len, or max_seq_len by default."""
        limit = self.c.max_seq_len
        seq = limit if seq_len is None else seq_len
        if not 1 <= seq <= limit:
            raise ValueError(f"seq_len must be in [1, model.max_seq_len={limit}], got {seq}")
        return seq

    def gpt(self, seq_len: int | None, recompute: bool) -> _Count:
        """Token ids, the input dropout, causal blocks, the LM head's input, the loss."""
        s = self.text_seq(seq_len)
        embed = self.b * s * _INDEX + self.positions(s) + self.dropout_mask(s)
        head = self.hidden(s)
        ends = _Ends(embed, head, self.b * s, self.c.vocab_size, causal=True)
        return self.single_stack(s, recompute, ends)

    def bert(self, seq_len: int | None, recompute: bool) -> _Count:
        """Word and token-type ids, the embedding LayerNorm and dropout, padded blocks,
        then the masked-LM head (or, with num_labels, the pooled classifier)."""
        c, b, e = self.c, self.b, self.e
        s = self.text_seq(seq_len)
        tokens, h = b * s, c.d_model
        embed = 2 * tokens * _INDEX + self.positions(s) + self.hidden(s)
        embed += tokens * self.stat_bytes + self.dropout_mask(s)
        mean = c.pooling == "mean"
        # The pooler: a cls view keeps the whole output, a masked mean its token weights
        # [b, s, 1] and the mean; then its tanh output.
        pooler = (b * s * e + b * h * e if mean else 0) + b * h * e
        if c.num_labels > 0:
            # The pooler reads the encoder output directly (nothing else keeps it, cls);
            # while training the classifier keeps its dropout mask and dropped input.
            head = pooler + (0 if mean else self.hidden(s))
            head += self.dropout_mask(1) + (b * h * e if self.dropout else 0)
            ends = _Ends(embed, head, b, c.num_labels, padded=True)
        else:
            # MLM head: dense input, GELU input, LayerNorm input and statistics, decoder
            # input; a pair head adds the pooler and its [b, 2] log-probabilities.
            head = 4 * self.hidden(s) + tokens * self.stat_bytes
            if c.pair_head != "none":
                head += pooler + b * (2 * _FP32 + _INDEX)
            ends = _Ends(embed, head, tokens, c.vocab_size, padded=True)
        return self.single_stack(s, recompute, ends)

    def vit(self, seq_len: int | None, recompute: bool) -> _Count:
        """The images (the patch convolution's input), the input dropout, the blocks, the
        classifier's input: a view of the whole output (cls) or the patches' mean."""
        c, b = self.c, self.b
        s = c.image_seq_len  # the image and patch sizes fix it; seq_len has no say
        embed = b * c.in_channels * c.image_size**2 * self.e + self.positions(s)
        embed += self.dropout_mask(s)
        head = self.hidden(s) if c.pooling == "cls" else b * c.d_model * self.e
        return self.single_stack(s, recompute, _Ends(embed, head, b, c.num_classes))

    def positions(self, s: int) -> int:
        """The learned position table's lookup ids, when there is one."""
        return s * _INDEX if self.c.position == "learned" else 0

    def single_stack(self, s: int, recompute: bool, ends: _Ends) -> _Count:
        """One stack between a family's embedding and head (`ends`), then the loss."""
        context = _Context(s, s, padded=ends.padded, causal=ends.causal)
        stack, recomputed = self.stack(
            s, None, causal=ends.causal, padded=ends.padded, recompute=recompute
        )
        mask = self.dense_mask(context, recompute)
        rows, classes = ends.rows, ends.classes
        loss = rows * classes * _FP32 + rows * _INDEX
        saved = ends.embed + stack + mask + ends.head + loss
        temporary = self.temporary(rows, classes, s, recomputed)
        terms = (
            f"saved = embed {ends.embed} + {self.stack_terms(s, None, context, recompute)}"
            f" + mask {mask} + head {ends.head} + log-probs 4*{rows}*{classes} + labels"
            f" 8*{rows} = {saved}; temporary = {self.temporary_terms(recompute)} = {temporary}"
        )
        return _Count(saved, temporary, terms, s)

    def seq2seq(self, seq_len: int | None, recompute: bool) -> _Count:
        """Encoder over a padded source of s tokens, decoder over s target tokens."""
        c, b = self.c, self.b
        s = self.text_seq(seq_len)
        # source and target ids, the two embedding dropouts
        embed = 2 * (b * s * _INDEX + self.positions(s) + self.dropout_mask(s))
        encoder, _ = self.stack(s, None, causal=False, padded=True, recompute=recompute)
        decoder, recomputed = self.stack(s, s, causal=True, padded=False, recompute=recompute)
        # Encoder self-attention: padded source; decoder: causal (a mask only with a score
        # bias); cross-attention: the source padding, [b, 1, 1, s] (softmax unless performer).
        source = _Context(s, s, padded=True, causal=False)
        target = _Context(s, s, padded=False, causal=True)
        mask = self.dense_mask(source, recompute) + self.dense_mask(target, recompute)
        if c.attention != "performer" and not (self.math_path(cross=True) and not recompute):
            mask += b * s * self.e
        memory = self.hidden(s)  # the encoder output, which every cross-attention projects
        head = self.hidden(s)  # the output projection's input
        rows = b * s
        counted = rows if c.label_smoothing > 0 else 0  # bool mask of the counted targets
        loss = rows * c.vocab_size * _FP32 + rows * _INDEX + counted
        saved = embed + encoder + decoder + mask + memory + head + loss
        temporary = self.temporary(rows, c.vocab_size, s, recomputed)
        terms = (
            f"saved = embed {embed} + encoder {self.stack_terms(s, None, source, recompute)}"
            f" + decoder {self.stack_terms(s, s, target, recompute)} + masks {mask}"
            f" + memory {memory} + head {head} + log-probs 4*{rows}*{c.vocab_size}"
            f" + labels 8*{rows} = {saved}; temporary = {self.temporary_terms(recompute)}"
            f" = {temporary}"
        )
        return _Count(saved, temporary, terms, s)

    # -- transients and the formula ---------------------------------------------------------

    def temporary(self, rows: int, classes: int, s: int, recomputed: int) -> int:
        """The logits the trainer holds (activation dtype) until the backward is done,
        plus the larger of: the fp32 gradients of the log-probabilities and of the upcast
        logits (both live in log_softmax's backward), and one block's backward: its
        recomputation under checkpointing plus the gradients of the MLP's hidden and of
        the residual stream."""
        logits = rows * classes * self.e
        loss_grads = 2 * rows * classes * _FP32
        block_grads = 2 * (self.hidden(s, self.c.mlp_ratio * self.c.d_model) + self.hidden(s))
        return logits + max(loss_grads, recomputed + block_grads)

    def temporary_terms(self, recompute: bool) -> str:
        block = "one block's recomputation + " if recompute else ""
        return f"logits e*rows*V + max(2 fp32 grads 8*rows*V, {block}MLP/residual grads)"

    def stack_terms(self, s: int, memory: int | None, context: _Context, recompute: bool) -> str:
        """One stack's share of the formula: the per-block expression and the stack's total."""
        c = self.c
        layers = c.n_layer if memory is None else c.decoder_layers
        final = " + ln_f input+stats" if c.norm == "pre" else ""
        flags = dict(causal=context.causal, padded=context.padded)
        total, _ = self.stack(s, memory, recompute=recompute, **flags)
        if recompute:
            return f"{layers} x block input sbh*e{final} ({total})"
        block = self.block(s, memory, **flags)
        branches = 2 if memory is None else 3
        attentions = branches - 1
        if c.attention == "performer":
            attention = f"FAVOR+ with {c.performer_features} random features"
        elif c.attention == "sparse":
            attention = f"block-sparse over blocks of {c.sparse.block_size}"
        elif self.math_path(cross=False):
            probs = 3 if self.dropout else 1
            attention = f"SDPA math path: 4 q,k,v,out copies + {probs}*4as^2b [s,s] tensors"
        else:
            attention = f"{4 * attentions} sbh*e q,k,v,out + {attentions}*4sba logsumexp"
        masks = f" + {branches} dropout masks sbh*{self.mask_bytes}" if self.dropout else ""
        return (
            f"{layers} x block {block} [sbh*e*({2 * branches} LN in/out + 2*{c.mlp_ratio} "
            f"GELU in/out) + {attention}{masks} + {branches} LN stats {self.stat_bytes}sb]"
            f"{final} ({total})"
        )


@dataclass(frozen=True)
class _Context:
    """An attention context's shape: query and key tokens, key padding, causality."""

    tq: int
    tk: int
    padded: bool
    causal: bool


@dataclass(frozen=True)
class _Ends:
    """What a single-stack family adds around its stack: the embedding's and the head's
    saved bytes, the loss's rows and classes, and how the stack attends."""

    embed: int
    head: int
    rows: int
    classes: int
    padded: bool = False
    causal: bool = False


_FAMILIES: dict[str, Callable[[_Counter, int | None, bool], _Count]] = {
    "gpt": _Counter.gpt,
    "bert": _Counter.bert,
    "vit": _Counter.vit,
    "seq2seq": _Counter.seq2seq,
}


def _sparse_width(c: ModelConfig, blocks: int, causal: bool) -> int:
    """Key blocks per query block in the widest row of the sparse pattern's table
    (SparsePattern.block_table): the local window plus, strided, the summary blocks
    (the last of each group of `stride`) outside it."""
    window, stride = c.sparse.window, c.sparse.stride
    strided = c.sparse.pattern == "strided"

    def summaries_upto(last: int) -> int:
        """Summary blocks with an index in [0, last]."""
        return 0 if last < stride - 1 else (last - (stride - 1)) // stride + 1

    if causal:
        # The window and the summaries behind it both grow with the row: the last is widest.
        width = min(window, blocks)
        if strided:
            width += summaries_upto(blocks - 1 - window)
        return width
    widest = 0
    for row in range(blocks):
        lo, hi = max(row - window + 1, 0), min(row + window - 1, blocks - 1)
        width = hi - lo + 1
        if strided:
            width += summaries_upto(blocks - 1) - (summaries_upto(hi) - summaries_upto(lo - 1))
        widest = max(widest, width)
    return widest
