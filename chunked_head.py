"""
The tied output head and the soft (q, v) of irl_loss.py, computed a chunk of positions at a time,
so that the (B, T, V) logits never exist at once.

The loss needs two numbers per position, q_t = logits_t[y_t] and v_t = logsumexp(logits_t)
(SPEC.md section 3), but the full path builds all of logits = hidden @ W^T first: at GPT-2 size,
8 x 1024 positions x 50 304 tokens is 1.6 GB in float32, and its gradient as much again. Here the
positions (B*T of them, flattened) are cut into chunks of `chunk_size`:

    forward   for each chunk: logits = h_chunk @ W^T; keep only q and v (two floats per position)
    backward  for each chunk: recompute logits, then the closed form of irl_loss.py,
                  G = dL/dlogits = c * softmax(logits) + d * onehot(y)   (c = dL/dv, d = dL/dq)
              and push it through the matmul:  dL/dh_chunk = G @ W,  dL/dW += G^T @ h_chunk

Peak memory of the head is then a few (chunk_size, V) tensors instead of a few (B*T, V) ones, at
the price of one more (chunk_size x C x V) matmul per chunk (the recompute): four head matmuls
instead of three. The output (q, v) goes into irl_loss.irl_loss unchanged, so MLE and IRL share
this path, as they share the full one. This is the idea of Cut Cross-Entropy and Liger's fused
linear cross-entropy, for an IRL loss. Those compute the gradient in the forward pass, as they
know the loss (for cross-entropy c = 1/N). Here c and d come from whatever loss consumes (q, v)
(irl_loss, or the online variant's extra value term) and arrive only in backward, hence the
recompute; a head fused with one fixed loss formula could save it, at the price of that coupling.
"""
import torch

from irl_loss import policy_stats, soft_q_v, soft_q_v_grad


def matmul_dtype(tensor):
    """The dtype autocast would run a matmul in (bf16 under bf16 autocast), else the tensor's own."""
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else tensor.dtype


class ChunkedSoftQV(torch.autograd.Function):
    """(q, v) of logits = hidden @ weight^T, shape (B, T) each, float32 at least, never holding
    more than chunk_size rows of logits. Gradients flow to hidden and to weight."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        dtype = matmul_dtype(hidden)  # the matmul in bf16 under autocast, as the full path's lm_head
        h, w, y = hidden.flatten(0, 1).to(dtype), weight.to(dtype), targets.flatten()
        out_dtype = torch.promote_types(dtype, torch.float32)
        q = torch.empty(h.size(0), dtype=out_dtype, device=h.device)
        v = torch.empty_like(q)
        for rows in chunks(h.size(0), chunk_size):
            q[rows], v[rows] = soft_q_v(h[rows] @ w.T, y[rows])
        ctx.save_for_backward(hidden, weight, targets, v)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return q.view_as(targets), v.view_as(targets)

    @staticmethod
    def backward(ctx, grad_q, grad_v):
        hidden, weight, targets, v = ctx.saved_tensors
        h, w, y = hidden.flatten(0, 1).to(ctx.dtype), weight.to(ctx.dtype), targets.flatten()
        grad_q, grad_v = grad_q.flatten(), grad_v.flatten()
        grad_h = torch.empty(h.shape, dtype=hidden.dtype, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                             device=weight.device)  # summed over chunks in float32, also under bf16
        for rows in chunks(h.size(0), ctx.chunk_size):
            logits = h[rows] @ w.T  # recomputed: the forward kept only q and v
            grad_logits = soft_q_v_grad(logits, y[rows], v[rows], grad_q[rows], grad_v[rows]).to(ctx.dtype)
            del logits  # at most two (chunk_size, V) tensors alive at once, not three
            grad_h[rows] = grad_logits @ w                # dL/dh = G W
            if grad_w.dtype == grad_logits.dtype:         # dL/dW = sum over chunks of G^T h
                grad_w.addmm_(grad_logits.T, h[rows])     # in place: no (V, C) temporary
            else:                                         # bf16 product, summed in float32
                grad_w += grad_logits.T @ h[rows]
            del grad_logits
        return grad_h.view_as(hidden), grad_w.to(weight.dtype), None, None


def chunks(n, chunk_size):
    """slice objects covering range(n) in pieces of chunk_size (the last one may be shorter)."""
    return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def chunked_q_and_v(hidden, weight, targets, chunk_size):
    """q_and_v(hidden @ weight^T, targets) of irl_loss.py, chunk_size positions at a time.
    hidden (B, T, C) final hidden states, weight (V, C) the tied head; padding targets (-1) read
    index 0, the masks remove them. Call it inside the autocast context the model ran in."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    return ChunkedSoftQV.apply(hidden, weight, targets.clamp(min=0), chunk_size)


@torch.no_grad()
def chunked_policy_stats(hidden, weight, targets, loss_mask, chunk_size):
    """policy_stats of irl_loss.py (entropy, token accuracy, ...) without the full logits. Each is
    a masked mean, so the mean over all positions is the chunks' means weighted by their share of
    the mask: sum_k mean_k * mask_k / mask_total."""
    h, y, mask = hidden.flatten(0, 1), targets.flatten(), loss_mask.flatten()
    total_mask = mask.sum().clamp(min=1.0)
    stats = {}
    for rows in chunks(h.size(0), chunk_size):
        share = (mask[rows].sum() / total_mask).item()
        for key, value in policy_stats((h[rows] @ weight.T)[None], y[rows][None], mask[rows][None]).items():
            stats[key] = stats.get(key, 0.0) + value * share
    return stats
