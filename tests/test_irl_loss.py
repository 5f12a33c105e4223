"""irl_loss.py against independent references: cross-entropy, a naive IQ-Learn written with loops,
float64 gradcheck, the closed-form gradient, the masks of docs/method.md section 2 and the telescoping
identity of section 6."""
import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import ROW_ORDERS, demonstration_masks, rows_of_kinds
from irl_loss import irl_loss, mean_entropy, q_and_v, td_mask_of, token_rewards


def random_batch(B=3, T=7, V=5, seed=0, dtype=torch.float64):
    """Random logits and a batch with a prompt, a terminated row, a truncated row and padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=dtype)
    targets = torch.randint(V, (B, T), generator=g)
    loss_mask, done = demonstration_masks(targets, dtype)
    return logits, targets, loss_mask, done


def loss_of(logits, targets, loss_mask, done, td_coef, gamma=1.0, **kw):
    q, v = q_and_v(logits, targets)
    return irl_loss(q, v, loss_mask, done, td_coef, gamma, **kw)[0]


def reference_iq_learn(logits, targets, loss_mask, done, alpha, gamma):
    """IQ-Learn's offline chi^2 loss ("value_expert"), written transition by transition:
    -E(q - gamma(1-d)v') + E(v - gamma(1-d)v') + E(r^2) / (4 alpha). Over completion tokens, the
    chi^2 term over transitions that have a next state in the window (or are terminal)."""
    expert_terms, value_terms, chi2_terms = [], [], []
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T):
            if loss_mask[b, t] == 0:
                continue
            row = logits[b, t]
            q = row[targets[b, t]]
            v = torch.log(torch.exp(row).sum())
            has_next = t + 1 < T and loss_mask[b, t + 1] == 1
            if done[b, t] == 1:
                v_next = torch.zeros((), dtype=logits.dtype)         # V(terminal) = 0
            elif has_next:
                v_next = torch.log(torch.exp(logits[b, t + 1]).sum())
            else:
                v_next = torch.zeros((), dtype=logits.dtype)         # unknown; cancels below
            expert_terms.append(q - gamma * v_next)
            value_terms.append(v - gamma * v_next)
            if done[b, t] == 1 or has_next:
                chi2_terms.append((q - gamma * v_next) ** 2)
    mean = lambda xs: torch.stack(xs).mean()
    return -mean(expert_terms) + mean(value_terms) + mean(chi2_terms) / (4 * alpha)


def test_td_coef_zero_is_cross_entropy():
    logits, targets, loss_mask, done = random_batch(dtype=torch.float32)
    ce_targets = targets.masked_fill(loss_mask == 0, -100)
    expected = F.cross_entropy(logits.flatten(0, 1), ce_targets.flatten(), ignore_index=-100)
    assert torch.allclose(loss_of(logits, targets, loss_mask, done, td_coef=0.0), expected, atol=1e-6)


@pytest.mark.parametrize("td_coef,gamma", [(0.25, 1.0), (1.0, 0.9), (3.0, 0.5)])
def test_equals_iq_learn_reference(td_coef, gamma):
    logits, targets, loss_mask, done = random_batch()
    ours_logits = logits.clone().requires_grad_(True)
    ref_logits = logits.clone().requires_grad_(True)
    ours = loss_of(ours_logits, targets, loss_mask, done, td_coef, gamma)
    ref = reference_iq_learn(ref_logits, targets, loss_mask, done, alpha=1 / (4 * td_coef), gamma=gamma)
    ours.backward(); ref.backward()
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(ours_logits.grad, ref_logits.grad, atol=1e-12)


def test_gradcheck_float64():
    # (the stop-gradient ablation is not a true gradient, so finite differences cannot check it;
    # test_gradient_closed_form covers it)
    logits, targets, loss_mask, done = random_batch(T=7, V=4)
    f = lambda x: loss_of(x, targets, loss_mask, done, 0.7, 0.9)
    assert torch.autograd.gradcheck(f, (logits.requires_grad_(True),))


def test_gradient_closed_form():
    """dL/dlogits_t = c_t softmax(logits_t) + d_t onehot(y_t), with c_t, d_t from the docstring."""
    td_coef, gamma = 0.6, 0.8
    logits, targets, loss_mask, done = random_batch()
    logits.requires_grad_(True)
    loss_of(logits, targets, loss_mask, done, td_coef, gamma).backward()
    B, T, V = logits.shape
    x = logits.detach()
    v = torch.logsumexp(x, -1)
    q = x.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    next_mask = torch.cat([loss_mask[:, 1:], torch.zeros(B, 1, dtype=x.dtype)], 1)
    td_mask = loss_mask * torch.maximum(done, next_mask)
    N, M = loss_mask.sum(), td_mask.sum()
    expected = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            v_next = v[b, t + 1] if t + 1 < T else 0.0
            r_t = q[b, t] - gamma * (1 - done[b, t]) * v_next
            d_t = -loss_mask[b, t] / N + 2 * td_coef * td_mask[b, t] * r_t / M
            c_t = loss_mask[b, t] / N
            if t > 0:
                r_prev = q[b, t - 1] - gamma * (1 - done[b, t - 1]) * v[b, t]
                c_t = c_t - 2 * td_coef * gamma * td_mask[b, t - 1] * (1 - done[b, t - 1]) * r_prev / M
            expected[b, t] = c_t * torch.softmax(x[b, t], -1)
            if targets[b, t] >= 0:
                expected[b, t, targets[b, t]] += d_t
    assert torch.allclose(logits.grad, expected, atol=1e-12)


def test_masks_by_hand():
    loss_mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0.]])
    done = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0.]])
    # row 0 terminated: every completion token has a TD term; row 1 truncated at the window's end;
    # row 2 truncated before padding: both lose exactly their last TD term
    assert td_mask_of(loss_mask, done).tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]]


def test_terminal_value_is_zero_and_padding_is_ignored():
    logits, targets, loss_mask, done = random_batch()
    logits.requires_grad_(True)
    q, v = q_and_v(logits, targets)
    rewards, _ = token_rewards(q, v, loss_mask, done)
    assert torch.allclose(rewards[0, 5], q[0, 5])  # r at EOS = q: V after EOS is 0
    loss_of(logits, targets, loss_mask, done, 0.5).backward()
    # prompt and padding positions get no gradient at all
    assert (logits.grad[loss_mask == 0] == 0).all()
    assert (logits.grad[loss_mask == 1].abs().sum(-1) > 0).all()


def test_padding_and_batch_invariance():
    """The same example padded to different lengths, or batched with others, gives the same loss."""
    logits, targets, loss_mask, done = random_batch()
    alone = loss_of(logits[:1, :6], targets[:1, :6], loss_mask[:1, :6], done[:1, :6], 0.5, 0.9)
    padded = torch.cat([logits[:1], torch.randn(1, 9, 5, dtype=logits.dtype)], 1)
    pad = lambda x, value: torch.cat([x[:1], torch.full((1, 9), value, dtype=x.dtype)], 1)
    longer = loss_of(padded, pad(targets, -1), pad(loss_mask, 0), pad(done, 0), 0.5, 0.9)
    assert torch.allclose(alone, longer, atol=1e-12)
    # changing prompt logits (positions 0, 1 of row 0) leaves the loss unchanged
    changed = logits.clone()
    changed[0, :2] += 10 * torch.randn(2, 5, dtype=logits.dtype)
    assert torch.allclose(loss_of(changed, targets, loss_mask, done, 0.5), loss_of(logits, targets, loss_mask, done, 0.5))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_telescoping_identity(gamma):
    """For a terminated completion, R = sum_k gamma^k log pi_t + v_0 (docs/method.md section 6)."""
    logits, targets, loss_mask, done = random_batch()
    q, v = q_and_v(logits, targets)
    _, returns = token_rewards(q, v, loss_mask, done, gamma)
    for b, first in [(0, 2), (2, 3)]:  # the terminated rows and their first completion position
        logp = F.log_softmax(logits[b], -1)
        positions = loss_mask[b].nonzero().flatten().tolist()
        expected = sum(gamma ** k * logp[t, targets[b, t]] for k, t in enumerate(positions))
        expected = expected + torch.logsumexp(logits[b, first], -1)
        assert math.isclose(returns[b].item(), expected.item(), rel_tol=1e-10, abs_tol=1e-10)


def test_mean_entropy_closed_forms():
    """H of a uniform policy is log V; of p = (1/2, 1/4, 1/4) it is 1.5 log 2; and its gradient is
    dH/dlogits_i = -p_i (log p_i + H) at each position, here divided by the number of masked ones."""
    V = 7
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    uniform = torch.zeros(1, 3, V, dtype=torch.float64)
    assert mean_entropy(uniform, mask).item() == pytest.approx(math.log(V), abs=1e-6)
    halves = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]], dtype=torch.float64))
    assert mean_entropy(halves, torch.ones(1, 1)).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    logits, _, loss_mask, _ = random_batch()
    logits.requires_grad_(True)
    mean_entropy(logits, loss_mask).backward()
    p = torch.softmax(logits.detach(), -1)
    H = -(p * p.log()).sum(-1, keepdim=True)
    expected = -p * (p.log() + H) * loss_mask[..., None] / loss_mask.sum()
    torch.testing.assert_close(logits.grad, expected.to(logits.grad.dtype), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", ROW_ORDERS)
def test_every_row_order_equals_iq_learn_reference(order):
    """The reference on rows in every order (tests/helpers.py ROW_ORDERS): a completion that fills the
    window and ends in EOS at the last column, or is cut there, first, in the middle or last."""
    g = torch.Generator().manual_seed(1)
    kinds = ROW_ORDERS[order]
    logits = torch.randn(len(kinds), 7, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(5, (len(kinds), 7), generator=g)
    loss_mask, done = rows_of_kinds(targets, kinds)
    ours_logits, ref_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = loss_of(ours_logits, targets, loss_mask, done, 0.6, 0.8)
    ref = reference_iq_learn(ref_logits, targets, loss_mask, done, alpha=1 / (4 * 0.6), gamma=0.8)
    ours.backward(); ref.backward()
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(ours_logits.grad, ref_logits.grad, atol=1e-12)
