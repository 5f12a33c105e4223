"""chunked_head.py against the full-logits path (itself checked against IQ-Learn written out in
test_irl_loss.py), a float64 gradcheck, and a record of every tensor it makes: the (B, T, V)
logits never exist."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from chunked_head import chunked_policy_stats, chunked_q_and_v
from irl_loss import irl_loss, policy_stats, q_and_v


def random_batch(B=3, T=7, C=5, V=50, dtype=torch.float64, seed=0):
    """Hidden states, a head, and targets with a prompt, an EOS, a truncated row and padding (-1)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, dtype=dtype)
    weight = torch.randn(V, C, generator=g, dtype=dtype)
    targets = torch.randint(V, (B, T), generator=g)
    loss_mask = torch.zeros(B, T, dtype=dtype)
    done = torch.zeros(B, T, dtype=dtype)
    loss_mask[0, 2:6] = 1; done[0, 5] = 1   # prompt, completion ending in EOS, padding
    loss_mask[1, 1:] = 1                    # truncated by the window
    loss_mask[2, 3:5] = 1; done[2, 4] = 1
    targets[loss_mask == 0] = -1
    return hidden, weight, targets, loss_mask, done


def loss_and_grads(qv_fn, hidden, weight, targets, loss_mask, done, td_coef=0.7, gamma=0.9):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    q, v = qv_fn(hidden, weight, targets)
    loss, _ = irl_loss(q, v, loss_mask, done, td_coef, gamma)
    loss.backward()
    return q.detach(), v.detach(), loss.detach(), hidden.grad, weight.grad


def full(hidden, weight, targets):
    return q_and_v(hidden @ weight.T, targets)


def chunked(chunk_size):
    return lambda hidden, weight, targets: chunked_q_and_v(hidden, weight, targets, chunk_size)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("chunk_size", [1, 4, 21, 100])  # 21 = B*T; 4 does not divide it
def test_values_and_gradients_equal_full_logits(dtype, tol, chunk_size):
    batch = random_batch(dtype=dtype)
    expected = loss_and_grads(full, *batch)
    got = loss_and_grads(chunked(chunk_size), *batch)
    for name, a, b in zip(("q", "v", "loss", "dL/dhidden", "dL/dweight"), got, expected):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("td_coef", [0.0, 1.3])  # MLE and IRL share the path
def test_gradcheck_float64(td_coef):
    hidden, weight, targets, loss_mask, done = random_batch(V=9)

    def loss(h, w):
        q, v = chunked_q_and_v(h, w, targets, 4)
        return irl_loss(q, v, loss_mask, done, td_coef, 0.8)[0]
    assert torch.autograd.gradcheck(loss, (hidden.requires_grad_(True), weight.requires_grad_(True)))


class BiggestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_never_makes_the_full_logits():
    hidden, weight, targets, loss_mask, done = random_batch(V=50)
    (B, T, C), V, chunk_size = hidden.shape, weight.size(0), 4
    with BiggestTensor() as record:
        loss_and_grads(chunked(chunk_size), hidden, weight, targets, loss_mask, done)
    assert record.numel <= max(chunk_size * V, V * C, B * T * C) < B * T * V
    with BiggestTensor() as record:  # the same record catches the full path
        loss_and_grads(full, hidden, weight, targets, loss_mask, done)
    assert record.numel == B * T * V


def test_bfloat16_autocast_keeps_v_float32():
    hidden, weight, targets, loss_mask, done = random_batch(B=3, T=16, C=32, V=300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(full, hidden, weight, targets, loss_mask, done)
        got = loss_and_grads(chunked(5), hidden, weight, targets, loss_mask, done)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[3].dtype == got[4].dtype == torch.float32  # gradients in the parameters' dtype
    # both run the matmul in bf16 and the rest in float32: the same numbers, except that dL/dW is
    # summed over chunks in float32 where the full path rounds one bf16 matmul
    for name, a, b in zip(("q", "v", "loss", "dL/dhidden"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    float32 = loss_and_grads(full, hidden, weight, targets, loss_mask, done)[4]
    relative_error = lambda grad: ((grad - float32).norm() / float32.norm()).item()
    assert relative_error(got[4]) < 1e-2 and relative_error(expected[4]) < 1e-2


@pytest.mark.parametrize("chunk_size", [3, 7, 50])
def test_policy_stats_chunk_by_chunk(chunk_size):
    hidden, weight, targets, loss_mask, _ = random_batch()
    expected = policy_stats(hidden @ weight.T, targets, loss_mask)
    got = chunked_policy_stats(hidden, weight, targets, loss_mask, chunk_size)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key


def test_rejects_bad_chunk_size():
    hidden, weight, targets, _, _ = random_batch()
    with pytest.raises(ValueError, match="chunk_size=0 must be >= 1"):
        chunked_q_and_v(hidden, weight, targets, 0)
