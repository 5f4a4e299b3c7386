"""Hand-written backward passes for the model's memory-bound pieces.

Autograd records every elementwise step of RMSNorm, RoPE or the loss and replays each one backwards,
allocating a fresh activation-sized tensor per step. On a CPU (and for large vocabularies anywhere)
that traffic, not the matrix multiplications, is what a hand-derived backward saves: each function
here computes the same values as the plain PyTorch expression it replaces (tests compare them), in
fewer passes over memory.

- `rms_norm`: the gradient in five passes instead of about fifteen.
- `split_heads`: queries, keys and values out of the fused projection, RoPE applied; the gradient of a
  rotation is the inverse rotation, written straight into the projection's gradient.
- `swiglu`: both halves of the gradient written into one buffer, no concatenation.
- `cross_entropy`: the gradient is softmax - onehot, written over the saved log-probabilities.
- `linear_cross_entropy`: the output head and the loss in row chunks, gradients computed on the way,
  so the (tokens x vocabulary) logits never exist at once and ignored positions skip the head.
"""

from __future__ import annotations

import torch


def _rms_scale(xf: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) per row, from one pass over x."""
    return torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(xf.size(-1)).add_(eps).rsqrt_()


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will want a backward pass; if not (inference), skip building the node."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rms_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    xf = _at_least_fp32(x)
    r = _rms_scale(xf, eps)
    y = (xf * r).to(x.dtype).mul_(weight) if weight.dtype == x.dtype else weight * (xf * r).to(x.dtype)
    return y, r


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, r = _rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad):
        # y = w * xhat with xhat = x * r: dw = sum_rows(g * xhat), dx = r * (g w - xhat * mean(g w xhat)).
        x, weight, r = ctx.saved_tensors
        xhat = _at_least_fp32(x) * r
        gf, wf = _at_least_fp32(grad), _at_least_fp32(weight)
        g_xhat = gf * xhat
        dw = g_xhat.reshape(-1, g_xhat.size(-1)).sum(0).to(weight.dtype)
        mean = (g_xhat @ wf).unsqueeze_(-1).div_(x.size(-1))
        dx = torch.mul(gf, wf).addcmul_(xhat, mean, value=-1.0).mul_(r)
        return dx.to(x.dtype), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / sqrt(mean(x^2) + eps)), normalised in fp32 and cast back to x's dtype as Llama does."""
    return _RMSNorm.apply(x, weight, eps) if _needs_grad(x, weight) else _rms_forward(x, weight, eps)[0]


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on the two halves of the last dim; -angle if `inverse`.

    Written into one output buffer (no concatenation): two multiplies and two fused multiply-adds."""
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    o1, o2 = out.chunk(2, dim=-1)
    sign = 1.0 if inverse else -1.0
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=-sign)
    return out


def _split(qkv, n_heads, n_kv_heads, cos, sin):
    heads = qkv.transpose(1, 2)  # (B, H + 2K, T, D), a view
    H, K = n_heads, n_kv_heads
    if cos is None:
        q, k = heads[:, :H], heads[:, H : H + K]
    else:  # queries and keys rotated in one pass, into a (B, T, heads, D) buffer like the projection's:
        # attention then returns (B, T, H, D) memory, and merging the heads back is a view, not a copy.
        qk = heads[:, : H + K]
        out = qk.new_empty(qk.size(0), qk.size(2), H + K, qk.size(3)).transpose(1, 2)
        q, k = _rotate(qk, cos, sin, out=out).split([H, K], dim=1)
    return q, k, heads[:, H + K :]


class _SplitHeads(torch.autograd.Function):
    """The backward pass writes the three gradients straight into one (B, T, heads, D) buffer, laid
    out as the fused projection's output, instead of concatenating them and copying the result; the
    gradient of a rotation is the inverse rotation."""

    @staticmethod
    def forward(ctx, qkv, n_heads, n_kv_heads, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.split = (n_heads, n_kv_heads)
        return _split(qkv, n_heads, n_kv_heads, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        H, K = ctx.split
        B, _, T, D = dv.shape
        dqkv = dv.new_empty(B, T, H + 2 * K, D)
        heads = dqkv.transpose(1, 2)
        for grad, part in ((dq, heads[:, :H]), (dk, heads[:, H : H + K])):
            if grad is None:
                part.zero_()
            elif cos is None:
                part.copy_(grad)
            else:
                _rotate(grad, cos, sin, inverse=True, out=part)
        heads[:, H + K :].copy_(dv)
        return dqkv, None, None, None, None


def split_heads(
    qkv: torch.Tensor, n_heads: int, n_kv_heads: int, rope: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (B, H, T, D), keys and values (B, K, T, D) from the fused projection's (B, T, H + 2K, D).

    With `rope` = (cos, sin) of the angles (T or (B, 1, T), D / 2), each (x_i, x_{i+D/2}) pair of every
    query and key is rotated by its position's angle (RoPE, Su et al. 2021, in Llama's half-split layout)."""
    cos, sin = (None, None) if rope is None else rope
    if not _needs_grad(qkv):
        return _split(qkv, n_heads, n_kv_heads, cos, sin)
    return _SplitHeads.apply(qkv, n_heads, n_kv_heads, cos, sin)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        gate, up = h.chunk(2, dim=-1)
        activated = torch.nn.functional.silu(gate)
        ctx.save_for_backward(h, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad):
        # d/d gate = grad * up * silu'(gate), d/d up = grad * silu(gate): both halves of one buffer.
        h, activated = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        d_gate, d_up = dh.chunk(2, dim=-1)
        torch.mul(grad, up, out=d_gate)
        torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)
        torch.mul(grad, activated, out=d_up)
        return dh


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for h = [gate; up] on the last dim (Shazeer, 2020)."""
    if not _needs_grad(h):
        gate, up = h.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate).mul_(up)
    return _SwiGLU.apply(h)


def _first_backward(ctx) -> None:
    """The losses' backward passes overwrite what they saved: a second backward would be wrong, so refuse it."""
    if getattr(ctx, "used", False):
        raise RuntimeError("backward through llmlab's loss twice: recompute the forward pass instead")
    ctx.used = True


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        logp = torch.log_softmax(logits, dim=-1)
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)[:, None]
        n = valid.sum()
        loss = -(logp.gather(1, safe).squeeze(1) * valid).sum() / n
        ctx.save_for_backward(logp, safe, valid, n)
        return loss

    @staticmethod
    def backward(ctx, grad):
        _first_backward(ctx)
        logp, safe, valid, n = ctx.saved_tensors
        g = logp.exp_()  # softmax, in the saved buffer
        g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
        g.mul_(valid[:, None] * (grad / n))
        return g, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """F.cross_entropy(logits, targets, ignore_index=...) (mean over kept targets) with a leaner backward:
    no one-hot gradient and no third vocabulary-sized tensor. logits: (N, V) float; targets: (N,) int64."""
    return _CrossEntropy.apply(logits, targets, ignore_index)


# Rows of logits per chunk: about this many elements, so a chunk stays in a CPU's last-level cache; on
# a GPU, large enough that each chunk is still a big matrix multiplication.
_CHUNK_ELEMENTS = {"cpu": 1 << 22}
_DEFAULT_CHUNK_ELEMENTS = 1 << 27


def _head_and_loss(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor | None,
    n: torch.Tensor, with_grad: bool, weight_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """sum_i row_weight_i * -log softmax(x_i W^T)[target_i] / n, chunk by chunk; with `with_grad`, also
    its gradients with respect to x and (if `weight_grad`: a frozen head, as under LoRA, needs none) W
    (softmax - onehot through the head, scaled the same way)."""
    device = x.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
    acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: fp32 at least
    xc, w = x.to(dtype), weight.to(dtype)
    rows = max(1, _CHUNK_ELEMENTS.get(device.type, _DEFAULT_CHUNK_ELEMENTS) // weight.size(0))
    loss = torch.zeros((), device=device, dtype=acc)
    dx = torch.empty_like(xc) if with_grad else None
    # dw is written by the first chunk's product, accumulated by the others (zeros if there are none).
    dw = None
    if with_grad and weight_grad:
        dw = (torch.empty if x.size(0) else torch.zeros)(weight.shape, device=device, dtype=acc)
    buffer = None
    with torch.autocast(device.type, enabled=False):
        for start in range(0, x.size(0), rows):
            end = min(start + rows, x.size(0))
            # Each chunk's logits are computed transposed, (V, rows): MKL writes that shape up to 1.4x
            # faster than (rows, V), and the softmax then runs down the columns.
            xs, t = xc[start:end], targets[start:end][None]
            rw = None if row_weight is None else row_weight[start:end][None]
            if dtype == acc:  # one reused buffer: no fresh (V x rows) allocation per chunk
                buffer = torch.empty(w.size(0) * rows, device=device, dtype=dtype) if buffer is None else buffer
                logits = torch.mm(w, xs.t(), out=buffer[: w.size(0) * (end - start)].view(w.size(0), end - start))
            else:
                logits = torch.mm(w, xs.t()).to(acc)
            # log-sum-exp with a single exp pass, left in the buffer: p = exp(logits - max).
            target_logit = logits.gather(0, t)
            top = logits.amax(dim=0, keepdim=True)
            p = logits.sub_(top).exp_()
            total = p.sum(dim=0, keepdim=True)
            nll = top + total.log() - target_logit
            loss += (nll if rw is None else nll * rw).sum()
            if not with_grad:
                continue
            # Column i's gradient is (p_i - total_i * onehot_i) / total_i; the column scale (with 1/n and
            # the row weight) goes on the small operands: dx rows after the product, x rows before dW's.
            p.scatter_add_(0, t, -total)
            scale = (total.reciprocal_() if rw is None else rw / total).t()
            g, scale = p.to(dtype), scale.to(dtype)
            if dtype == acc:
                torch.mm(g.t(), w, out=dx[start:end])
                if dw is not None:
                    torch.addmm(dw, g, xs * scale, beta=0 if start == 0 else 1, out=dw)
            else:
                dx[start:end] = g.t() @ w
                if dw is not None:
                    part = (g @ (xs * scale)).to(acc)
                    if start == 0:
                        dw.copy_(part)
                    else:
                        dw.add_(part)
            dx[start:end] *= scale
    if with_grad:
        n_grad = n.clamp(min=1)  # no kept target: a NaN loss, as F.cross_entropy gives, but zero gradients
        dx = dx.div_(n_grad).to(x.dtype)
        dw = None if dw is None else dw.div_(n_grad).to(weight.dtype)
    return loss / n, dx, dw


class _LinearCrossEntropy(torch.autograd.Function):
    """The loss is the last node of the graph, so its gradient is known in the forward pass up to the
    scalar that backward brings: compute it there, chunk by chunk, and keep only (N x d) and (V x d)."""

    @staticmethod
    def forward(ctx, x, weight, targets, row_weight, n):
        loss, dx, dw = _head_and_loss(x, weight, targets, row_weight, n, with_grad=True,
                                      weight_grad=ctx.needs_input_grad[1])
        ctx.save_for_backward(dx, dw)
        return loss

    @staticmethod
    def backward(ctx, grad):
        _first_backward(ctx)
        dx, dw = ctx.saved_tensors
        return dx.mul_(grad), None if dw is None else dw.mul_(grad), None, None, None


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets, ignore_index=...) without materialising the logits.

    x: (N, d) hidden states; weight: (V, d) output head; targets: (N,) int64. In eager mode, rows whose
    target is `ignore_index` (prompt tokens, padding) are dropped before the head and cost nothing;
    under torch.compile (static shapes) they are weighted by zero instead."""
    valid = targets != ignore_index
    n = valid.sum()
    row_weight = None
    if torch.compiler.is_compiling():
        targets, row_weight = torch.where(valid, targets, 0), valid.float()
    elif int(n) < targets.numel():
        keep = valid.nonzero().squeeze(1)
        x, targets = x.index_select(0, keep), targets.index_select(0, keep)
    if _needs_grad(x, weight):
        return _LinearCrossEntropy.apply(x, weight, targets, row_weight, n)
    return _head_and_loss(x, weight, targets, row_weight, n, with_grad=False)[0]
