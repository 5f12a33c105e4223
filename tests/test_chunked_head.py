"""chunked_head.py against the full-logits path (itself checked against IQ-Learn written out in
test_irl_loss.py), on batches whose rows come in every order (the longest first, last, in the middle, a
completion that fills the window) cut into chunks that do and do not divide them; a float64 gradcheck, and
a record of every tensor it makes: the (B, T, V) logits never exist."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from chunked_head import chunked_irl_loss, chunked_policy_stats
from tests.helpers import ROW_ORDERS, demonstration_masks, one_thread, rows_of_kinds
from irl_loss import irl_loss, policy_stats, q_and_v


def random_batch(B=3, T=7, C=5, V=50, dtype=torch.float64, seed=0):
    """Hidden states, a head, and targets with a prompt, an EOS, a truncated row and padding (-1)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, dtype=dtype)
    weight = torch.randn(V, C, generator=g, dtype=dtype)
    targets = torch.randint(V, (B, T), generator=g)
    loss_mask, done = demonstration_masks(targets, dtype)
    return hidden, weight, targets, loss_mask, done


def batch_of_rows(kinds, T=7, C=5, V=50, dtype=torch.float64, seed=0):
    """random_batch with one row of each kind of tests/helpers.py ROW_KINDS, in the order given."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(kinds), T, C, generator=g, dtype=dtype)
    weight = torch.randn(V, C, generator=g, dtype=dtype)
    targets = torch.randint(V, (len(kinds), T), generator=g)
    loss_mask, done = rows_of_kinds(targets, kinds, dtype)
    return hidden, weight, targets, loss_mask, done


def loss_and_grads(path, hidden, weight, targets, loss_mask, done, td_coef=0.7, gamma=0.9):
    """(stats, loss, dL/dhidden, dL/dweight) of the IRL loss on the logits hidden @ weight^T, by `path`.
    The stats (nll, td, reward mean and std, v_mean) are functions of q and v."""
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    loss, stats = path(hidden, weight, targets, loss_mask, done, td_coef, gamma)
    loss.backward()
    return stats, loss.detach(), hidden.grad, weight.grad


def full(hidden, weight, targets, loss_mask, done, td_coef, gamma):
    return irl_loss(*q_and_v(hidden @ weight.T, targets), loss_mask, done, td_coef, gamma)


def chunked(chunk_size):
    return lambda *args: chunked_irl_loss(*args, chunk_size)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 21, 100])  # 21 = B*T; 4 does not divide it; 7 = T
@pytest.mark.parametrize("td_coef,gamma", [(0.0, 1.0), (0.7, 0.9), (1.3, 1.0)])
def test_values_and_gradients_equal_full_logits(dtype, tol, chunk_size, td_coef, gamma):
    batch = random_batch(dtype=dtype)
    expected = loss_and_grads(full, *batch, td_coef, gamma)
    got = loss_and_grads(chunked(chunk_size), *batch, td_coef, gamma)
    for name, a, b in zip(("stats", "loss", "dL/dhidden", "dL/dweight"), got, expected):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


def chunk_sizes_for(n, T):
    """1, sizes that do not divide the n = B * T flattened positions and sizes that do, one chunk short of
    all of them, all of them exactly, and more than all."""
    return sorted({1, 5, T, n // 2, n - 1, n, n + 3})


@one_thread()
@pytest.mark.parametrize("order", ROW_ORDERS)
@pytest.mark.parametrize("td_coef,gamma", [(0.0, 1.0), (0.7, 0.9)])
def test_every_row_order_and_chunk_size_equals_full_logits(order, td_coef, gamma):
    """The last chunk must reach the last flattened position: it is a completion token (EOS, or the last
    token of a truncated row) when the longest row comes last, never when padding does."""
    batch = batch_of_rows(ROW_ORDERS[order])
    B, T = batch[2].shape
    expected = loss_and_grads(full, *batch, td_coef, gamma)
    assert expected[1] > 0 and (expected[2].abs().sum(-1) > 0).sum() == batch[3].sum()  # every masked h counts
    for chunk_size in chunk_sizes_for(B * T, T):
        got = loss_and_grads(chunked(chunk_size), *batch, td_coef, gamma)
        for name, a, b in zip(("stats", "loss", "dL/dhidden", "dL/dweight"), got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{name}, chunk_size {chunk_size}")
        stats = chunked_policy_stats(*batch[:3], batch[3], chunk_size)
        expected_stats = policy_stats(batch[0] @ batch[1].T, batch[2], batch[3])
        assert stats == pytest.approx(expected_stats, rel=1e-12, abs=1e-12), chunk_size


@pytest.mark.parametrize("td_coef", [0.0, 1.3])  # MLE and IRL share the path
def test_gradcheck_float64(td_coef):
    hidden, weight, targets, loss_mask, done = random_batch(V=9)
    loss = lambda h, w: chunked_irl_loss(h, w, targets, loss_mask, done, td_coef, 0.8, 4)[0]
    assert torch.autograd.gradcheck(loss, (hidden.requires_grad_(True), weight.requires_grad_(True)))


def test_no_grad_gives_the_same_loss():
    hidden, weight, targets, loss_mask, done = random_batch()
    with torch.no_grad():  # evaluation: no gradient is computed, the values are the same
        got = chunked_irl_loss(hidden, weight, targets, loss_mask, done, 0.7, 0.9, 5)
    expected = full(hidden, weight, targets, loss_mask, done, 0.7, 0.9)
    for a, b in zip(got, expected):  # the loss, and the stats
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


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


def peak_bytes_of(fn):
    """Peak of the bytes fn allocates above what was allocated before (the profiler records each
    tensor allocation and free on the CPU; bench.py measures memory the same way)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        running += nbytes
        peak = max(peak, running)
    return peak


def test_a_chunk_holds_one_float32_copy_of_its_logits():
    """Forward (where the gradient is computed) in float32: what stays allocated is dL/dW, dL/dh,
    q and v and the masks; on top of it a chunk may hold one (chunk, V) tensor, its logits, which
    become its softmax and then its gradient in place. Two would not fit in the budget."""
    hidden, weight, targets, loss_mask, done = random_batch(B=4, T=32, C=8, V=4000, dtype=torch.float32)
    (B, T, C), V, chunk_size = hidden.shape, weight.size(0), 64
    hidden.requires_grad_(True), weight.requires_grad_(True)
    peak = peak_bytes_of(lambda: chunked_irl_loss(hidden, weight, targets, loss_mask, done, 0.7, 0.9, chunk_size))
    kept = 4 * (V * C + B * T * C) + 4 * 64 * B * T  # dL/dW, dL/dh, and (B, T) vectors with room to spare
    assert 4 * chunk_size * V < peak <= kept + 1.25 * 4 * chunk_size * V, (peak, kept)


def test_bfloat16_autocast_keeps_v_float32():
    hidden, weight, targets, loss_mask, done = random_batch(B=3, T=16, C=32, V=300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(full, hidden, weight, targets, loss_mask, done)
        got = loss_and_grads(chunked(5), hidden, weight, targets, loss_mask, done)
    assert got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == torch.float32  # gradients in the parameters' dtype
    # both run the matmuls in bf16 and the rest in float32: the same q, v, hence the same stats
    # (nll, td, v_mean, ...: a v rounded to bf16 would be off by ~1e-2) and loss. The gradients
    # round differently (the chunked path adds the onehot part in float32 and sums dL/dW over
    # chunks in float32, where the full path rounds it inside one bf16 matmul): both stay within
    # bf16 rounding of the float32 gradients
    for name, a, b in zip(("stats", "loss"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    float32 = loss_and_grads(full, hidden, weight, targets, loss_mask, done)
    for i in (2, 3):  # dL/dhidden, dL/dweight
        relative_error = lambda grad: ((grad - float32[i]).norm() / float32[i].norm()).item()
        assert relative_error(got[i]) < 1e-2 and relative_error(expected[i]) < 1e-2


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
        chunked_irl_loss(hidden, weight, targets, torch.ones(targets.shape), torch.zeros(targets.shape), 0.1, 1.0, 0)
