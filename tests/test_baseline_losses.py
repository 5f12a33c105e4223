"""baseline_losses.py (DFT, GEM) against naive float64 references written from their papers'
definitions, their gradients against closed forms, DFT's chunked path against the full one, and
train.py's --keep_best (early stopping) against the run's own log and an uninterrupted run."""
import json

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


def read_log(path):
    return [json.loads(line) for line in open(path)]


def test_keep_best_keeps_the_best_evaluation_and_resumes_exactly(tmp_path):
    """best.pt holds the weights of the evaluation with the lowest val nll in log.jsonl (the same
    weights ckpt.pt had then), and a run stopped and resumed writes the same best.pt as one that was not."""
    common = TINY + ["--loss=gem", "--learning_rate=0.3", "--warmup_iters=0", "--lr_decay_iters=12",
                     "--eval_interval=2", "--keep_best=val/nll", "--eval_prompts=0", "--dropout=0.1"]
    straight = tmp_path / "straight"
    run_script(common + [f"--out_dir={straight}", "--max_iters=12"])
    log = read_log(straight / "log.jsonl")
    best_iter = min(log, key=lambda r: r["val/nll"])["iter"]  # ties: the first, as train.py keeps the earlier
    assert 6 < best_iter < 12  # at this learning rate val nll jumps, falls and turns up again: a best mid-run
    assert [r["iter"] for r in log if r.get("best")][-1] == best_iter
    best = torch.load(straight / "best.pt", weights_only=True)
    assert best["iter_num"] == best_iter and best["best"]["value"] == pytest.approx(
        min(r["val/nll"] for r in log), rel=1e-12)
    # the same run stopped at best_iter holds the same weights in its ckpt.pt
    stopped = tmp_path / "stopped"
    run_script(common + [f"--out_dir={stopped}", f"--max_iters={best_iter}"])
    at_best = torch.load(stopped / "ckpt.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], at_best["model"][k]) for k in best["model"])
    # stopped at iter 6 and resumed to 12: the same best.pt
    resumed = tmp_path / "resumed"
    run_script(common + [f"--out_dir={resumed}", "--max_iters=6"])
    run_script(common + [f"--out_dir={resumed}", "--max_iters=12", "--init_from=resume"])
    again = torch.load(resumed / "best.pt", weights_only=True)
    assert again["iter_num"] == best_iter and again["best"] == best["best"]
    assert all(torch.equal(best["model"][k], again["model"][k]) for k in best["model"])
    # sample.py reads best.pt
    out = run_script([f"--out_dir={straight}", f"--init_from={straight / 'best.pt'}", "--max_prompts=2",
                      "--num_samples=1", "--temperature=0", "--device=cpu"], script="sample.py")
    assert "best.pt" in json.loads(open(straight / "samples_val_t0.json").read())["checkpoint"], out.stdout


def test_new_loss_flags_fail_in_one_line(tmp_path):
    for flags, expected in ((["--loss=gem", "--loss_chunk=16"], "needs the full logits"),
                            (["--keep_best=val/acc"], "use val/accuracy, val/rougeL, val/nll, val/loss"),
                            (["--keep_best=val/rougeL"], "a text task (this one has a verifier)"),
                            (["--gem_beta=0"], "gem_beta"),
                            (["--keep_best=val/accuracy", "--eval_prompts=0"], "--eval_prompts > 0")):
        result = run_script(TINY + [f"--out_dir={tmp_path / 'x'}"] + flags, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert expected in result.stderr.strip().splitlines()[-1], result.stderr


def test_keep_best_by_rouge_on_text(tmp_path):
    """A text task has no verifier: --keep_best=val/rougeL decodes the val prompts greedily at each evaluation and
    keeps the state whose completions have the best ROUGE-L against the references."""
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"line {i}", "completion": "and so it goes"}) + "\n"
                            for i in range(40)))
    run_script(TINY + [f"--dataset={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=4", "--eval_interval=2",
                       "--block_size=32", "--keep_best=val/rougeL"])
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["iter"] for r in log] == [0, 2, 4] and all(0 <= r["val/rougeL"] <= 1 for r in log)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["best"]
    assert best["value"] == max(r["val/rougeL"] for r in log)
