"""
Offline IQ-Learn for language models, written as maximum likelihood plus a TD regulariser
(Wulfmeier et al. 2024, "Imitating Language via Scalable Inverse Reinforcement Learning").

Read the model's logits as soft Q-values (entropy temperature 1). For position t with target y_t:
    q_t = logits_t[y_t]                 Q(s_t, a_t)
    v_t = logsumexp(logits_t)           V(s_t), the soft value; the policy is softmax(Q)
    log pi_t = q_t - v_t                the usual log-likelihood: no extra value head
    r_t = q_t - gamma (1 - done_t) v_{t+1}   the reward IQ-Learn implies (V after EOS is 0)

IQ-Learn (Garg et al. 2021) maximises over Q
    J(Q) = E_expert[ phi(Q - gamma V') ] - E_rho[ V - gamma V' ]
With the chi^2 choice phi(x) = x - x^2 / (4 alpha), and the value term estimated on the expert's
own transitions (offline, IQ-Learn's "value_expert"):
    J = E_E[Q - gamma V'] - E_E[(Q - gamma V')^2] / (4 alpha) - E_E[V - gamma V']
      = E_E[Q - V] - E_E[r^2] / (4 alpha)           (the gamma V' parts cancel)
      = E_E[log pi] - td_coef * E_E[r^2],           td_coef = 1 / (4 alpha)
so the loss we minimise is
    L = mean_mask(-log pi_t) + td_coef * mean_td_mask(r_t^2)
and td_coef = 0 is exactly MLE. Softmax ignores a per-state shift of the logits, which MLE leaves
free; the TD term spends that freedom on making v_t = gamma v_{t+1} - log pi_t, i.e. v_t tracks the
surprisal still to come. q and v are what cross-entropy computes anyway: one logsumexp serves both.

Gradient (the chunked head in chunked_head.py uses it): with N = sum(mask), M = sum(td_mask),
    d_t = dL/dq_t = -mask_t / N + 2 td_coef td_mask_t r_t / M
    c_t = dL/dv_t =  mask_t / N - 2 td_coef gamma td_mask_{t-1} (1 - done_{t-1}) r_{t-1} / M
and since dq_t/dlogits_t = onehot(y_t), dv_t/dlogits_t = softmax(logits_t):
    dL/dlogits_t = c_t softmax(logits_t) + d_t onehot(y_t).

Masks (docs/method.md section 2): mask_t marks completion tokens, EOS included; done_t marks the EOS
target. A completion cut by the window has no next state for its last token, so
    td_mask_t = mask_t * (done_t OR mask_{t+1}),   mask beyond the last column = 0.

Online IQ-Learn (online_irl_loss, docs/method.md section 4) moves a share mix_in of the value term
E[V - gamma V'] from the expert's transitions to the policy's own samples.
"""
import torch
import torch.nn.functional as F


class SoftQV(torch.autograd.Function):
    """(q, v) from logits in one pass over the vocabulary each way. Backward is the closed form
        dL/dlogits_t = dL/dv_t * softmax(logits_t) + dL/dq_t * onehot(y_t)
    written out, so it allocates one (B, T, V) tensor, as cross-entropy does; autograd through
    logsumexp + gather would build three."""

    @staticmethod
    def forward(ctx, logits, targets):
        q, v = soft_q_v(logits, targets)
        ctx.save_for_backward(logits, targets, v)
        return q, v

    @staticmethod
    def backward(ctx, grad_q, grad_v):
        logits, targets, v = ctx.saved_tensors
        return soft_q_v_grad(logits, targets, v, grad_q, grad_v).to(logits.dtype), None


# the two halves of SoftQV, shared with the chunked head (chunked_head.py), which calls them per chunk
def soft_q_v(logits, targets):
    """q_t = logits_t[y_t], v_t = logsumexp(logits_t), both in at least float32 (v in float32 under bf16!)."""
    logits32 = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits32.gather(-1, targets.unsqueeze(-1)).squeeze(-1), torch.logsumexp(logits32, dim=-1)


def soft_q_v_grad(logits, targets, v, grad_q, grad_v):
    """dL/dlogits_t = grad_v_t softmax(logits_t) + grad_q_t onehot(y_t), in v's dtype."""
    grad = (logits - v.unsqueeze(-1)).exp_().mul_(grad_v.unsqueeze(-1))  # c_t softmax_t (bf16 - f32 is f32)
    grad.scatter_add_(-1, targets.unsqueeze(-1), grad_q.unsqueeze(-1))               # + d_t onehot(y_t)
    return grad


def q_and_v(logits, targets):
    """q_t = logits_t[y_t] and v_t = logsumexp(logits_t), at least float32, shape (B, T).
    Padding targets (-1) read index 0; the masks remove them."""
    return SoftQV.apply(logits, targets.clamp(min=0))


def td_mask_of(loss_mask, done):
    """td_mask_t = mask_t * (done_t OR mask_{t+1}): drop the last TD term of a truncated episode."""
    next_mask = F.pad(loss_mask[:, 1:], (0, 1))
    return loss_mask * torch.maximum(done, next_mask)


def implied_reward(q, v, done, gamma=1.0):
    """r_t = q_t - gamma (1 - done_t) v_{t+1}; v_{t+1} is read from the same row."""
    v_next = F.pad(v[:, 1:], (0, 1))  # beyond the window: 0, and td_mask drops those positions
    return q - gamma * (1.0 - done) * v_next


def masked_mean(x, mask):
    # clamp: a micro-batch whose mask is all zero gives 0 (with zero gradient), not NaN
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def irl_loss(q, v, loss_mask, done, td_coef, gamma=1.0):
    """L = mean_mask(-log pi) + td_coef * mean_td_mask(r^2). Returns (loss, stats), where stats
    are detached floats for the log: nll, td (mean r^2), reward_mean, reward_std, v_mean."""
    td_mask = td_mask_of(loss_mask, done)
    nll = masked_mean(v - q, loss_mask)                       # -log pi_t = v_t - q_t
    reward = implied_reward(q, v, done, gamma)
    td = masked_mean(reward.square(), td_mask)                # (r_t)^2, the chi^2 regulariser
    loss = nll + td_coef * td
    with torch.no_grad():
        reward_mean = masked_mean(reward, td_mask)
        reward_var = masked_mean((reward - reward_mean).square(), td_mask)
        stats = dict(nll=nll.item(), td=td.item(), reward_mean=reward_mean.item(),
                     reward_std=reward_var.sqrt().item(), v_mean=masked_mean(v, loss_mask).item())
    return loss, stats


def online_irl_loss(q, v, loss_mask, done, policy_v, policy_mask, policy_done, mix_in, td_coef, gamma=1.0):
    """Online IQ-Learn (docs/method.md section 4): IQ-Learn's value term E_rho[V - gamma V'] estimated on
    the mixture rho = (1 - mix_in) expert + mix_in policy transitions (the policy's own samples):
        L = -mean_E(q - g v') + (1 - a) mean_E(v - g v') + a mean_pi(v - g v') + td_coef mean_E(r^2)
          = irl_loss + a [mean_pi(v - g v') - mean_E(v - g v')]
    with a = mix_in, g = gamma, v' = (1 - done_t) v_{t+1} (V after EOS is 0).
    Masks: -mean_E(q - g v') + mean_E(v - g v') telescope into the nll over loss_mask (v' cancels,
    so a truncated last token keeps its likelihood term, as offline). The mix_in part needs v', so
    both its means are over td_mask (docs/method.md section 2): a truncated last transition has no next
    state in the window, on either side. mix_in = 0 adds exactly 0: the offline loss and its gradient.
    Gradient of the new part, with M = sum(td_mask) of each side: dL/dv_t = +-a (td_t - g (1 -
    done_{t-1}) td_{t-1}) / M, + on policy rows, - on expert rows, >= 0 in size wherever td_t = 1:
    minimising lowers V on the policy's states and raises it on the expert's.
    With gamma = 1 the sum along a row telescopes to the value of its first state (the prompt's,
    shared by both sides when the prompts are the same), so the term mostly reweights v_0."""
    loss, stats = irl_loss(q, v, loss_mask, done, td_coef, gamma)
    expert_value = masked_mean(implied_reward(v, v, done, gamma), td_mask_of(loss_mask, done))  # v - g v'
    policy_value = masked_mean(implied_reward(policy_v, policy_v, policy_done, gamma),
                               td_mask_of(policy_mask, policy_done))
    value_gap = policy_value - expert_value                   # mean_pi(v - g v') - mean_E(v - g v')
    stats.update(value_gap=value_gap.item(), v_policy=masked_mean(policy_v, policy_mask).item())
    return loss + mix_in * value_gap, stats


def mean_entropy(logits, loss_mask):
    """mean_mask H(pi(.|s_t)), H = -sum_a pi(a|s_t) log pi(a|s_t), with its gradient: train.py's
    --entropy_coef subtracts beta times it from any loss (MLE with an entropy bonus, the paper's
    baseline). In float32 whatever the logits' dtype."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return masked_mean(-(logp.exp() * logp).sum(-1), loss_mask)


@torch.no_grad()
def policy_stats(logits, targets, loss_mask):
    """Mean per-token entropy of softmax(logits) and argmax accuracy, over the mask."""
    correct = (logits.argmax(-1) == targets).float()
    return dict(entropy=mean_entropy(logits, loss_mask).item(),
                token_accuracy=masked_mean(correct, loss_mask).item())


@torch.no_grad()
def token_rewards(q, v, loss_mask, done, gamma=1.0):
    """Per-token rewards r_t (zero outside td_mask) and per-sequence returns
    R = sum_t gamma^k r_t, k counted from the first completion token (docs/method.md section 6).
    For a terminated completion R telescopes to sum_k gamma^k log pi_t + v_0 (v_0: value of the
    prompt); a truncated one has no reward for its last token (no next state in the window)."""
    td_mask = td_mask_of(loss_mask, done)
    rewards = implied_reward(q, v, done, gamma) * td_mask
    steps = (loss_mask.cumsum(dim=1) - 1).clamp(min=0)      # k = 0 at the first completion token
    returns = (rewards * gamma ** steps).sum(dim=1)
    return rewards, returns
