"""
The tied output head and the IRL loss of irl_loss.py, computed a chunk of positions at a time, so
that the (B, T, V) logits never exist at once, with no more matmuls than the full path.

The loss needs two numbers per position, q_t = logits_t[y_t] and v_t = logsumexp(logits_t)
(docs/method.md section 3), but the full path builds all of logits = hidden @ W^T first: at GPT-2
size, 8 x 1024 positions x 50 304 tokens is 1.6 GB in float32, and its gradient as much again. Here
the positions (B*T of them, flattened row by row) are cut into chunks of `chunk_size`, and the
gradient is computed in the forward pass, as Cut Cross-Entropy and Liger's fused linear
cross-entropy do for MLE. The gradient of the loss with respect to the logits has the closed form
of irl_loss.py's docstring,

    dL/dlogits_t = c_t softmax(logits_t) + d_t onehot(y_t)
    c_t = dL/dv_t =  mask_t / N - 2 td_coef gamma td_mask_{t-1} (1 - done_{t-1}) r_{t-1} / M
    d_t = dL/dq_t = -mask_t / N + 2 td_coef td_mask_t r_t / M,
    r_t = q_t - gamma (1 - done_t) v_{t+1}

and the one thing that makes IRL harder than cross-entropy (whose c_t = 1/N is known in advance)
is that c_t depends on r_{t-1}, i.e. on q_{t-1} and v_t. Both are known once the chunk holding
position t is done, because chunks go in order along each row: q_{t-1} sits in this chunk or an
earlier one. So, for each chunk:

    logits = h @ W^T;  q, v = logits[y], logsumexp(logits)          matmul 1
    G = c * softmax(logits)                                          the part that needs the logits
    dL/dh += G @ W;  dL/dW += G^T @ h                                matmuls 2 and 3

and d_t, which needs v_{t+1} (perhaps in the next chunk), multiplies only onehot(y_t): its part,
dL/dh_t += d_t W[y_t] and dL/dW[y_t] += d_t h_t, is a gather and a scatter of rows after the last
chunk. Three head matmuls, like the full path, and at most two (chunk_size, V) tensors alive:
the logits, and one float32 copy of them in which q_v_and_exp computes the softmax in place.
backward() only scales the stored gradients by the incoming one (the loss is a scalar).

The price of computing the gradient inside forward: it is for this loss only (MLE = td_coef 0 and
offline IRL share it; online IQ-Learn's and GAIL's extra terms need the full logits), and the
gradient is computed even when no backward follows (evaluation runs it under no_grad, where it
is skipped).
"""
import torch
import torch.nn.functional as F

from baseline_losses import dft_loss
from irl_loss import implied_reward, irl_loss, policy_stats, td_mask_of
from model import matmul_dtype


def chunks(n, chunk_size):
    """slice objects covering range(n) in pieces of chunk_size (the last one may be shorter)."""
    return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def q_v_and_exp(logits, targets):
    """irl_loss.soft_q_v for one chunk, keeping what its gradient needs: q_t = logits_t[y_t] and
    v_t = logsumexp(logits_t) in float32, and exps_t = exp(logits_t - max_t) with their sums, so
    that softmax_t = exps_t / sums_t. exps is made in place of a float32 copy of the logits (of the
    logits themselves when they are float32), where torch.logsumexp on a float32 copy and then a
    separate softmax allocate two or three (chunk_size, V) float32 tensors and pass over more."""
    exps = logits.to(torch.promote_types(logits.dtype, torch.float32))
    q = exps.gather(-1, targets[:, None]).squeeze(-1)  # a copy, taken before exps is overwritten
    row_max = exps.amax(dim=-1, keepdim=True)
    sums = exps.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
    v = (row_max + sums.log()).squeeze(-1)  # logsumexp = max + log sum exp(logits - max)
    return q, v, exps, sums.squeeze(-1)


def accumulate_matmul(out, a, b):
    """out += a @ b, out in float32 also when a, b are bf16: on CUDA the matmul adds into out itself
    (out_dtype); elsewhere through a bf16 temporary. (out is (V, C): an extra pass over it per chunk
    costs as much as the chunk's matmul.)"""
    if out.dtype == a.dtype:
        out.addmm_(a, b)
    elif out.is_cuda:
        torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
    else:
        out += a @ b


class ChunkedIRLLoss(torch.autograd.Function):
    """irl_loss(q_and_v(hidden @ weight^T, targets), ...) and its gradient, chunk by chunk. Returns
    the loss; irl_loss's statistics go into the dict `stats` (an autograd Function returns tensors
    only)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, loss_mask, done, td_coef, gamma, chunk_size,
                grad_needed, stats, dft):
        # the matmuls in bf16 under autocast, as the full path's lm_head
        dtype = matmul_dtype(hidden)
        h, w, y = hidden.flatten(0, 1).to(dtype), weight.to(dtype), targets.flatten()
        float_type = torch.promote_types(dtype, torch.float32)
        mask, done = loss_mask.to(float_type), done.to(float_type)
        td_mask = td_mask_of(mask, done)
        n_mask, n_td = mask.sum().clamp(min=1.0), td_mask.sum().clamp(min=1.0)  # N, M
        # c_t = mask_t / N - prev_coef_t r_{t-1}; prev_coef is 0 at a row's first position
        prev_coef = F.pad(2 * td_coef * gamma * td_mask * (1 - done) / n_td, (1, 0))[:, :-1]
        mask_f, done_f, prev_coef = mask.flatten(), done.flatten(), prev_coef.flatten()
        # zeros: q[-1] is read (times 0)
        q = torch.zeros(h.size(0), dtype=float_type, device=h.device)
        v = torch.zeros_like(q)
        grad_h = torch.zeros(h.shape, dtype=float_type, device=h.device) if grad_needed else None
        grad_w = torch.zeros(w.shape, dtype=float_type, device=h.device) if grad_needed else None
        for rows in chunks(h.size(0), chunk_size):
            logits = h[rows] @ w.T                                        # matmul 1
            q[rows], v[rows], exps, sums = q_v_and_exp(logits, y[rows])
            del logits  # under bf16; in float32 exps is the logits, overwritten
            if not grad_needed:
                continue
            prev = (torch.arange(rows.start, rows.stop, device=h.device) - 1).clamp(min=0)
            r_prev = q[prev] - gamma * (1 - done_f[prev]) * v[rows]  # r_{t-1} = q_{t-1} - g' v_t
            nll_weight = (q[rows] - v[rows]).exp() if dft else 1.0  # DFT: sg(p_t); MLE, IRL: 1
            c = mask_f[rows] * nll_weight / n_mask - prev_coef[rows] * r_prev  # dL/dv_t
            G = exps.mul_((c / sums)[:, None]).to(dtype)                  # c_t softmax_t, in place
            del exps
            grad_h[rows] = G @ w                                          # matmul 2: dL/dh = G W
            accumulate_matmul(grad_w, G.T, h[rows])                       # matmul 3: dL/dW += G^T h
            del G
        q, v = q.view_as(targets), v.view_as(targets)
        # the loss and its statistics, once
        loss, loss_stats = irl_loss(q, v, mask, done, td_coef, gamma)
        stats.update(loss_stats)
        nll_weight = (q - v).exp() if dft else 1.0
        if dft:
            loss = dft_loss(q, v, mask)
        if grad_needed:
            reward = implied_reward(q, v, done, gamma)                   # r_t = q_t - g' v_{t+1}
            # the onehot part: d_t onehot(y_t) through the matmul is a gather and a scatter
            d = (-mask * nll_weight / n_mask
                 + 2 * td_coef * td_mask * reward / n_td).flatten()       # dL/dq_t
            grad_h += d[:, None] * w[y].to(float_type)                    # dL/dh_t += d_t W[y_t]
            grad_w.index_add_(0, y, d[:, None] * h.to(float_type))        # dL/dW[y_t] += d_t h_t
            ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_shape, ctx.dtypes = hidden.shape, (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return ((grad_h * grad_loss).to(hidden_dtype).view(ctx.hidden_shape),
                (grad_w * grad_loss).to(weight_dtype),
                None, None, None, None, None, None, None, None, None)


def chunked_irl_loss(hidden, weight, targets, loss_mask, done, td_coef, gamma=1.0, chunk_size=1024,
                     dft=False):
    """(loss, stats) of irl_loss.irl_loss on the logits hidden @ weight^T, chunk_size positions at
    a time, with the same value, statistics and gradient as the full path. dft=True: the loss is
    baseline_losses.dft_loss instead (each nll term weighted by sg(p_t), so its c_t and d_t too).
    hidden (B, T, C) final hidden states, weight (V, C) the tied head; padding targets (-1) read
    index 0, the masks remove them. Call it inside the autocast context the model ran in."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    # not in eval
    grad_needed = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    stats = {}
    loss = ChunkedIRLLoss.apply(hidden, weight, targets.clamp(min=0), loss_mask, done, td_coef,
                                gamma, chunk_size, grad_needed, stats, dft)
    return loss, stats


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
        for key, value in policy_stats((h[rows] @ weight.T)[None], y[rows][None],
                                       mask[rows][None]).items():
            stats[key] = stats.get(key, 0.0) + value * share
    return stats
