"""The model's kernels: the pieces of BertForPreTraining that are about speed and memory, not
about what is computed (bertpt.model.bert composes them; each matches the plain PyTorch it
replaces, which the tests check against Hugging Face).

* :class:`DecoderCrossEntropy`: the vocabulary projection and the MLM loss fused, gradients
  computed in forward into a workspace that lives across steps;
* :class:`Unpadding`: the index of a batch's real tokens, for the unpadded path (``model.unpad``),
  and :func:`jagged_attention`, SDPA over jagged nested tensors (FlashAttention's varlen kernel);
* :class:`Dropout`: nn.Dropout with a mask drawn 4x faster on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # label of a position that is not predicted (HF and PyTorch convention)


def _matmul_dtype(device: torch.device, weight: torch.Tensor) -> torch.dtype | None:
    """The precision nn.Linear would use for the projection: autocast's, a half-precision
    model's own (bf16-true), or None for fp32."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    if weight.dtype in (torch.float16, torch.bfloat16):
        return weight.dtype
    return None


# On a CPU, oneDNN runs bf16 matrix products with a kernel made for each shape and cached. The
# masked rows that the last layer and the vocabulary projection compute number differently in
# every batch (~15% of the tokens), so each step would make new kernels. Rounded up to a multiple
# of ROW_BUCKET (repeating the last row; the copies are never scored), a few shapes serve a run:
# a mini step in bf16 with a fresh mask every step, 125 seq/s unrounded, 175 rounded to 32.
ROW_BUCKET = 32


def padded_rows(rows: torch.Tensor, decoder: nn.Linear) -> torch.Tensor:
    """`rows`, its last index repeated up to a multiple of ROW_BUCKET where the projection runs
    in low precision on a CPU (see ROW_BUCKET); unchanged elsewhere."""
    pad = -len(rows) % ROW_BUCKET
    if not pad or rows.device.type != "cpu" or _matmul_dtype(rows.device, decoder.weight) is None:
        return rows
    return torch.cat((rows, rows[-1:].expand(pad)))


class DecoderCrossEntropy(torch.autograd.Function):
    """Vocabulary projection + mean cross-entropy of the predicted rows, gradients included.

    The (N, V) logits are the largest tensor of a small model's step (567 x 30522 in fp32 is
    69 MB at batch 32); allocating it, and a log-softmax of the same size, afresh every step
    costs page faults on a CPU, and keeping them for backward costs memory on any device. Here
    the logits go into a workspace that lives across steps; forward takes the loss from it and,
    when gradients are wanted, turns the same buffer into softmax - one-hot and finishes the
    three gradients (hidden, decoder weight, bias) on the spot. Backward only scales them by
    the incoming gradient. Returns (loss, argmax ids of the N rows). `want_grad` is decided by
    the caller: inside forward, grad mode is always off.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, workspace, want_grad: bool):
        # hidden may have rows past the N targets (padded_rows): projected, never scored, and
        # their gradient is zero.
        N, R, V = len(targets), len(hidden), weight.shape[0]
        all_logits = workspace[: R * V].view(R, V)
        logits = all_logits[:N]
        low = _matmul_dtype(hidden.device, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            # Under autocast the projection runs in its precision, as nn.Linear would; the
            # weight and hidden states are cast once and serve the gradients too.
            h = hidden.float() if low is None else hidden.to(low)
            w = weight.float() if low is None else weight.to(low)
            if low is None:
                torch.addmm(bias.float(), h, w.t(), out=all_logits)
            else:
                all_logits.copy_(F.linear(h, w)).add_(bias.float())
            top, predictions = logits.max(dim=-1)  # (N,)
            target_logit = logits.gather(1, targets[:, None]).squeeze(1)
            probs = logits.sub_(top[:, None]).exp_()  # unnormalised, in place
            total = probs.sum(dim=-1)
            loss = (top + total.log() - target_logit).mean()
            ctx.grads = None
            if want_grad:
                probs.div_(total[:, None])
                probs[torch.arange(N, device=probs.device), targets] -= 1.0  # d(sum of CE)/dlogits
                all_logits[N:].zero_()
                mm = all_logits if low is None else all_logits.to(low)
                grad_hidden = (mm @ w).to(hidden.dtype)
                grad_weight = (mm.t() @ h).to(weight.dtype)
                grad_bias = probs.sum(0).to(bias.dtype)
                ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.n = N
        ctx.mark_non_differentiable(predictions)
        return loss, predictions

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_predictions):
        if ctx.grads is None:
            raise RuntimeError("the MLM loss was backpropagated twice; run the forward again")
        grads, ctx.grads = ctx.grads, None  # scaled in place and handed over: no copies
        scale = grad_loss / ctx.n
        return *(g.mul_(scale) for g in grads), None, None, None


@dataclass
class Unpadding:
    """Where the real tokens of a right-padded (B, T) batch are: the index of the unpadded path.

    Pairs shorter than the batch's longest are padded, and the padding costs as much compute as
    real tokens: 6-19% of a batch at 128 tokens, 20-61% at 512. The unpadded path runs the
    embeddings, feed-forward and LayerNorms on the K real tokens only, as one (K, H) matrix, and
    attention as a nested (jagged) tensor, which PyTorch's SDPA runs with FlashAttention's
    variable-length kernel on a GPU (and with its math fallback on a CPU). Built by `of` from the
    attention mask, on the host before a batch is copied to the GPU: finding the tokens then
    needs no device sync.
    """

    tokens: torch.Tensor  # (K,) flat indices of the real tokens in B * T, row-major
    offsets: torch.Tensor  # (B + 1,) where each sequence starts in the K tokens; its [CLS] row
    max_len: int  # T: a bound on the sequence lengths that needs no sync and rarely changes
    min_len: int  # the shortest sequence, counted on the host: SDPA's kernel choice reads it
    predicted: torch.Tensor | None = None  # (N,) rows of the K tokens with a label, row-major

    @classmethod
    def of(cls, attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> Unpadding:
        T = attention_mask.shape[1]
        real = attention_mask.flatten().bool()  # (B*T,)
        tokens = real.nonzero().squeeze(1)
        lengths = attention_mask.bool().sum(1)
        offsets = F.pad(lengths.cumsum(0), (1, 0))
        predicted = None
        if labels is not None:
            predicted = (labels.flatten()[tokens] != IGNORE_INDEX).nonzero().squeeze(1)
            if len(predicted) != int((labels != IGNORE_INDEX).sum()):
                raise ValueError("labels at padded positions: a padded token cannot be predicted")
        return cls(tokens, offsets, T, int(lengths.min()), predicted)

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> Unpadding:
        """A copy on `device` (Lightning moves a batch's objects with a `to` method, without
        arguments); non-blocking by default, as Lightning copies tensors, except to a CPU."""
        if non_blocking is None:
            non_blocking = torch.device(device).type != "cpu"
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Unpadding(
            move(self.tokens), move(self.offsets), self.max_len, self.min_len, move(self.predicted)
        )

    def pin_memory(self) -> Unpadding:
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Unpadding(
            pin(self.tokens), pin(self.offsets), self.max_len, self.min_len, pin(self.predicted)
        )

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> the real tokens' rows (K, ...)."""
        return x.flatten(0, 1)[self.tokens]

    def scatter(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(K, ...) -> (B, T, ...), with zeros at the padded positions."""
        out = x.new_zeros(batch_size * self.max_len, *x.shape[1:])
        return out.index_copy(0, self.tokens, x).unflatten(0, (batch_size, self.max_len))

    def nested(self, x: torch.Tensor) -> torch.Tensor:
        """(K, nh, hs) -> a jagged (B, nh, j, hs) nested tensor for SDPA."""
        # Both bounds given: SDPA would otherwise compute them from the offsets on the GPU and
        # wait for the result, three times a layer.
        nt = torch.nested.nested_tensor_from_jagged(
            x, self.offsets, min_seqlen=self.min_len, max_seqlen=self.max_len
        )
        return nt.transpose(1, 2)


class Dropout(nn.Dropout):
    """nn.Dropout, with the mask drawn 4x faster on a CPU.

    torch draws a CPU dropout mask one element at a time from its Mersenne Twister: ~17 ns per
    element, a fifth of a small model's training step on a CPU. Here 64 random bits give four
    elements 16 bits each, and an element is kept when its 16 bits are at or above p's threshold,
    so p is rounded to a multiple of 1/65536 (0.1 -> 0.100006). Same global generator, so seeds,
    exact resume and checkpointing's replay hold as they do for nn.Dropout. GPUs and compiled code
    use F.dropout, which is fast there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        if not self.training or p == 0.0:
            return x
        dropped = round(p * 65536)  # of the 65536 values of 16 bits
        if x.device.type != "cpu" or torch.compiler.is_compiling() or dropped == 65536:
            return F.dropout(x, p, True)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        bits = words.view(torch.int16)[:n].view(x.shape)
        mask = (bits >= dropped - 32768).to(x.dtype).mul_(65536 / (65536 - dropped))
        return x * mask


@torch.compiler.disable
def jagged_attention(qkv: torch.Tensor, unpadding: Unpadding, dropout_p: float) -> torch.Tensor:
    """(3, K, nh, hs) unpadded queries, keys and values -> (K, nh * hs): SDPA over jagged nested
    tensors, FlashAttention's variable-length kernel on a GPU.

    Always eager, also in compiled layers (trainer.compile): torch.compile's support for nested
    tensors has open bugs on this very pattern (compiled SDPA on jagged tensors fails in backward,
    pytorch#155421, and under DDP, pytorch#152068), while eager jagged SDPA is the supported path.
    The kernel is already fused, so compiling it gains nothing; the projections, dropout, bias,
    GELU and LayerNorms around it stay compiled.
    """
    q, k, v = map(unpadding.nested, qkv.unbind(0))  # each (B, nh, j, hs)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # (B, nh, j, hs)
    y = y.transpose(1, 2).values().flatten(1)  # (K, nh, hs) -> (K, H)
    if y.device.type == "cpu":
        # torch's CPU fallback returns a view of an older (strided) nested tensor, which
        # torch.compile cannot take: a copy lets the rest of the layer compile, as on a GPU.
        y = y.clone()
    torch._dynamo.maybe_mark_dynamic(y, 0)  # the rest of the compiled layer takes K symbolic
    return y
