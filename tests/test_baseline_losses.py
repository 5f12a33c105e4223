"""baseline_losses.py (DFT, GEM) against naive float64 references written from their papers'
definitions, their gradients against closed forms, DFT's chunked path against the full one, and the
one-line errors of their flags (--keep_best itself: tests/test_keep_best.py)."""
import pytest
import torch
import torch.nn.functional as F

from baseline_losses import dft_loss, gem_loss
from chunked_head import chunked_irl_loss
from irl_loss import q_and_v
from tests.helpers import TINY, demonstration_masks, run_script


def batch(B=4, T=7, V=11, seed=0):
    """float64 logits and targets with every mask case (EOS, truncated, padding); a full-length row
    is moved first, so that no fixture hides a bug behind the padded row coming last."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    targets = torch.randint(V, (B, T), generator=g)
    loss_mask, done = demonstration_masks(targets)
    order = [1, 0, 2] + list(range(3, B))  # the truncated (full-length) row first
    return logits[order], targets[order], loss_mask[order], done[order]


def naive_dft(logits, targets, mask):
    """(1/N) sum_t mask_t sg(p_t) (-log p_t), position by position; returns (loss, its value as a float)."""
    terms, n = [], 0
    for b in range(logits.size(0)):
        for t in range(logits.size(1)):
            if mask[b, t]:
                p = torch.softmax(logits[b, t], -1)[targets[b, t]]
                terms.append(p.detach() * -torch.log(p))
                n += 1
    return sum(terms) / n


def naive_gem(logits, targets, mask, beta):
    """(1/N) sum_t mask_t [-log p_t(y_t) + sum_a q_t(a) log p_t(a)], q_t = sg(softmax(logits_t / beta)),
    position by position."""
    terms, n = [], 0
    for b in range(logits.size(0)):
        for t in range(logits.size(1)):
            if mask[b, t]:
                log_p = torch.log(torch.softmax(logits[b, t], -1))
                q = torch.softmax(logits[b, t].detach() / beta, -1)
                terms.append(-log_p[targets[b, t]] + sum(q[a] * log_p[a] for a in range(log_p.numel())))
                n += 1
    return sum(terms) / n


def value_and_grad(fn, logits):
    logits = logits.clone().requires_grad_(True)
    loss = fn(logits)
    loss.backward()
    return loss.detach(), logits.grad


def test_dft_matches_its_definition_and_closed_form_gradient():
    logits, targets, mask, _ = batch()
    got, grad = value_and_grad(lambda x: dft_loss(*q_and_v(x, targets), mask), logits)
    want, want_grad = value_and_grad(lambda x: naive_dft(x, targets, mask), logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    # closed form: (mask_t / N) p_t (softmax_t - onehot(y_t)), p_t held constant
    probs = torch.softmax(logits, -1)
    onehot = F.one_hot(targets.clamp(min=0), logits.size(-1)).double()
    p_target = (probs * onehot).sum(-1, keepdim=True)
    closed = (mask / mask.sum())[..., None] * p_target * (probs - onehot)
    torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.3, 0.7])
def test_gem_matches_its_definition_and_closed_form_gradient(beta):
    logits, targets, mask, _ = batch(seed=1)
    got, grad = value_and_grad(lambda x: gem_loss(x, targets, mask, beta), logits)
    want, want_grad = value_and_grad(lambda x: naive_gem(x, targets, mask, beta), logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)  # gem_loss works in float32, as on a GPU
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
    onehot = F.one_hot(targets.clamp(min=0), logits.size(-1)).double()
    closed = (mask / mask.sum())[..., None] * (torch.softmax(logits / beta, -1) - onehot)  # (q_t - onehot) / N
    torch.testing.assert_close(grad, closed, rtol=1e-5, atol=1e-7)


def test_gem_at_beta_one_has_the_gradient_of_cross_entropy():
    logits, targets, mask, _ = batch(seed=2)
    _, grad = value_and_grad(lambda x: gem_loss(x, targets, mask, 1.0), logits)
    keep = mask.bool()
    _, ce_grad = value_and_grad(lambda x: F.cross_entropy(x[keep], targets[keep]), logits)
    torch.testing.assert_close(grad, ce_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 100])  # 28 positions: dividing, not dividing, one chunk
def test_dft_chunk_by_chunk_equals_the_full_logits(chunk_size):
    g = torch.Generator().manual_seed(3)
    B, T, C, V = 4, 7, 5, 13
    hidden = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, C, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(V, (B, T), generator=g)
    mask, done = demonstration_masks(targets)
    for order in ([1, 0, 2, 3], [0, 2, 3, 1], [3, 1, 0, 2]):  # the full-length row first, last, in the middle
        args = (targets[order], mask[order], done[order])
        full = dft_loss(*q_and_v(hidden[order] @ weight.T, args[0]), args[1])
        full_grads = torch.autograd.grad(full, (hidden, weight))
        chunked, _ = chunked_irl_loss(hidden[order], weight, *args, td_coef=0.0, chunk_size=chunk_size, dft=True)
        chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
        assert chunked.item() == pytest.approx(full.item(), rel=1e-12)
        for a, b in zip(chunked_grads, full_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_new_loss_flags_fail_in_one_line(tmp_path):
    for flags, expected in ((["--loss=gem", "--loss_chunk=16"], "needs the full logits"),
                            (["--keep_best=val/acc"], "use val/accuracy, val/rougeL, val/nll, val/loss"),
                            (["--keep_best=val/rougeL"], "a text task (this one has a verifier)"),
                            (["--gem_beta=0"], "gem_beta"),
                            (["--keep_best=val/accuracy", "--eval_prompts=0"], "--eval_prompts > 0")):
        result = run_script(TINY + [f"--out_dir={tmp_path / 'x'}"] + flags, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert expected in result.stderr.strip().splitlines()[-1], result.stderr
