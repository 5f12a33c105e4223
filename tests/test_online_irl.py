"""online_irl_loss (docs/method.md section 4) against a transition-by-transition reference, the literal
formula of docs/method.md on fully terminated batches, the offline loss at mix_in = 0, and the sign of its
gradient on v; and online IQ-Learn through train.py: a few steps, and one step's loss, value gap and
gradient against the reference on the very demonstrations and samples it trained on."""
import re

import pytest
import torch

from irl_loss import irl_loss, online_irl_loss, q_and_v
from model import GPT, GPTConfig
from tests.helpers import TINY, one_thread, run_script
from tests.test_irl_loss import random_batch
from tests.test_train import arith_examples, train_losses


def online_loss(logits, batch, policy_logits, policy, mix_in, td_coef, gamma):
    q, v = q_and_v(logits, batch[0])
    _, policy_v = q_and_v(policy_logits, policy[0])
    return online_irl_loss(q, v, batch[1], batch[2], policy_v, policy[1], policy[2], mix_in, td_coef, gamma)[0]


def transitions(logits, targets, loss_mask, done, gamma):
    """(q, v, v', has_next) per completion token, one at a time: v' = 0 after EOS and where the
    window cut the episode (then has_next is False: no next state to bootstrap from)."""
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T):
            if loss_mask[b, t] == 0:
                continue
            v = torch.logsumexp(logits[b, t], -1)
            has_next = bool(done[b, t]) or (t + 1 < T and loss_mask[b, t + 1] == 1)
            v_next = torch.logsumexp(logits[b, t + 1], -1) if has_next and not done[b, t] else 0 * v
            yield logits[b, t, targets[b, t]], v, gamma * v_next, has_next


def reference(logits, batch, policy_logits, policy, mix_in, td_coef, gamma, literal=False):
    """IQ-Learn with the value term on (1 - mix_in) expert + mix_in policy transitions. literal: the
    docs/method.md formula as written, one mask for all expert means (right when no episode is truncated):
        -mean_E(q - g v') + (1 - a) mean_E(v - g v') + a mean_pi(v - g v') + td_coef mean_E(r^2)
    otherwise: a truncated last token keeps its likelihood term -(q - v) only (its v' is unknown)."""
    mean = lambda xs: torch.stack(xs).mean()
    expert = list(transitions(logits, *batch, gamma))
    on_policy = list(transitions(policy_logits, *policy, gamma))
    value_e = mean([v - vn for q, v, vn, ok in expert if ok])
    value_pi = mean([v - vn for q, v, vn, ok in on_policy if ok])
    chi2 = mean([(q - vn) ** 2 for q, v, vn, ok in expert if ok])
    if literal:
        expert_term = mean([q - vn for q, v, vn, ok in expert])
        return -expert_term + (1 - mix_in) * value_e + mix_in * value_pi + td_coef * chi2
    return mean([v - q for q, v, vn, ok in expert]) + mix_in * (value_pi - value_e) + td_coef * chi2


def two_batches(terminated_only=False):
    logits, *batch = random_batch(seed=0)
    policy_logits, *policy = random_batch(B=4, T=6, seed=1)
    if terminated_only:  # drop row 1 (truncated) of each
        logits, batch = logits[[0, 2]], [x[[0, 2]] for x in batch]
        policy_logits, policy = policy_logits[[0, 2]], [x[[0, 2]] for x in policy]
    return logits, batch, policy_logits, policy


@pytest.mark.parametrize("mix_in,gamma,literal", [(0.1, 1.0, False), (0.5, 0.9, False), (0.3, 0.8, True)])
def test_equals_transition_by_transition_reference(mix_in, gamma, literal):
    logits, batch, policy_logits, policy = two_batches(terminated_only=literal)
    ours = [x.clone().requires_grad_(True) for x in (logits, policy_logits)]
    refs = [x.clone().requires_grad_(True) for x in (logits, policy_logits)]
    loss = online_loss(ours[0], batch, ours[1], policy, mix_in, 0.7, gamma)
    expected = reference(refs[0], batch, refs[1], policy, mix_in, 0.7, gamma, literal)
    loss.backward(); expected.backward()
    assert torch.allclose(loss, expected, atol=1e-12)
    assert all(torch.allclose(a.grad, b.grad, atol=1e-12) for a, b in zip(ours, refs))


def test_mix_in_zero_is_the_offline_loss_exactly():
    logits, batch, policy_logits, policy = two_batches()
    logits.requires_grad_(True); policy_logits.requires_grad_(True)
    online = online_loss(logits, batch, policy_logits, policy, 0.0, 0.7, 0.9)
    online.backward()
    online_grad, logits.grad = logits.grad, None
    offline = irl_loss(*q_and_v(logits, batch[0]), batch[1], batch[2], 0.7, 0.9)[0]
    offline.backward()
    assert torch.equal(online, offline) and torch.equal(online_grad, logits.grad)
    assert (policy_logits.grad == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_value_term_lowers_v_on_policy_states_and_raises_it_on_expert_states(gamma):
    """dL/dv of the mix-in part, in closed form: a (td_t - g (1 - d_{t-1}) td_{t-1}) / M on policy
    rows and minus that on expert rows. So a descent step lowers V where the policy goes and
    raises it where the expert goes: strictly at every transition when gamma < 1; with gamma = 1
    the sum telescopes and only the first state of each row (and a truncated last one) moves."""
    mix_in = 0.4
    logits, batch, policy_logits, policy = two_batches()
    q, v = q_and_v(logits, batch[0])
    _, policy_v = q_and_v(policy_logits, policy[0])
    v, policy_v = v.detach().requires_grad_(True), policy_v.detach().requires_grad_(True)
    grads = {}
    for a in (0.0, mix_in):
        loss = online_irl_loss(q, v, batch[1], batch[2], policy_v, policy[1], policy[2], a, 0.5, gamma)[0]
        grads[a] = torch.autograd.grad(loss, (v, policy_v))
    for rows, side, sign in ((batch, 0, -1), (policy, 1, 1)):
        _, loss_mask, done = rows
        td = loss_mask * torch.maximum(done, torch.cat([loss_mask[:, 1:], torch.zeros(len(done), 1)], 1))
        previous = torch.cat([torch.zeros(len(done), 1), (td * (1 - done))[:, :-1]], 1)
        expected = sign * mix_in * (td - gamma * previous) / td.sum()
        assert torch.allclose(grads[mix_in][side] - grads[0.0][side], expected, atol=1e-12)
        moved = sign * expected[td == 1]  # >= 0 everywhere a transition starts
        assert (moved >= 0).all() and (moved > 0).all() == (gamma < 1)
        rows_with_completion = loss_mask.sum(1) > 0  # their first completion state always moves
        first = loss_mask.argmax(1)[rows_with_completion]
        assert (sign * expected[rows_with_completion.nonzero().flatten(), first] > 0).all()


def test_online_irl_trains_through_train_py(tmp_path):
    out = run_script(TINY + ["--mix_in=0.3", "--sample_every=2", "--sample_fraction=0.5", "--max_new_tokens=12",
                             "--max_iters=3", "--eval_interval=3", f"--out_dir={tmp_path}"]).stdout
    lines = re.findall(r"^iter \d+: loss (\S+),.*value_gap (\S+), \d+ ms/iter \((\d+) sampling\)", out, re.M)
    assert len(lines) == 3 and all(float(loss) == float(loss) for loss, _, _ in lines)  # finite, not NaN
    assert int(lines[0][2]) > 0  # iter 0 samples; the time is reported


def example_transitions(model, examples, eos_id, gamma):
    """transitions() for (prompt ids, completion ids) pairs, each run through the model on its own: a
    completion that ends in EOS terminated there, any other was cut (no next state for its last token)."""
    for prompt, completion in examples:
        tokens = torch.tensor(prompt + completion)
        logits = model(tokens[None, :-1])
        loss_mask = torch.zeros(1, len(tokens) - 1)
        loss_mask[0, len(prompt) - 1:] = 1
        done = torch.zeros(1, len(tokens) - 1)
        done[0, -1] = float(completion[-1] == eos_id)
        yield from transitions(logits, tokens[None, 1:], loss_mask, done, gamma)


@one_thread()
def test_online_irl_step_in_train_py_equals_the_reference(tmp_path):
    """train.py's online IQ-Learn on the batch it trained on: the demonstrations it drew (torch.randint from
    a generator seeded seed, as tests/test_train.py checks) and the policy's samples for the first half of
    their prompts, which the checkpoint keeps. With learning_rate=0 and beta1=0 the checkpoint also holds
    the weights the step read and its gradient (AdamW's first moment); the printed loss and value gap, and
    that gradient, are the transition-by-transition reference's."""
    seed, batch_size, mix_in, td_coef, gamma = 7, 8, 0.3, 0.5, 0.9
    out = run_script(TINY + [f"--seed={seed}", f"--mix_in={mix_in}", f"--td_coef={td_coef}", f"--gamma={gamma}",
                             "--sample_fraction=0.5", "--max_new_tokens=12", "--max_iters=1", "--eval_interval=1",
                             "--eval_prompts=0", "--learning_rate=0", "--decay_lr=False", "--weight_decay=0",
                             "--beta1=0", "--grad_clip=0", f"--out_dir={tmp_path}"]).stdout
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    optimizer = model.configure_optimizers(0.0, 0.0, (0.0, 0.99), "cpu")
    optimizer.load_state_dict(checkpoint["optimizer"])
    tok, train = arith_examples("train")
    rows = torch.randint(len(train), (batch_size,), generator=torch.Generator().manual_seed(seed)).tolist()
    expert = [train[i] for i in rows]
    samples = [(list(p), list(c)) for p, c in checkpoint["samples"][0][0]]
    assert [p for p, _ in samples] == [p for p, _ in expert[:batch_size // 2]]  # the first half of the prompts
    assert all(1 <= len(c) <= 12 and tok.eos_id not in c[:-1] for _, c in samples)  # EOS ends a sample

    mean = lambda xs: torch.stack(xs).mean()
    on_expert = list(example_transitions(model, expert, tok.eos_id, gamma))
    on_policy = list(example_transitions(model, samples, tok.eos_id, gamma))
    value_gap = (mean([v - vn for q, v, vn, ok in on_policy if ok])
                 - mean([v - vn for q, v, vn, ok in on_expert if ok]))
    loss = (mean([v - q for q, v, vn, ok in on_expert]) + mix_in * value_gap
            + td_coef * mean([(q - vn) ** 2 for q, v, vn, ok in on_expert if ok]))
    line = re.search(r"^iter 0: loss (\S+),.*value_gap (\S+),", out, re.M)
    assert float(line[1]) == pytest.approx(loss.item(), abs=2e-4) and float(train_losses(out)[0]) == float(line[1])
    assert float(line[2]) == pytest.approx(value_gap.item(), abs=2e-4) and abs(value_gap.item()) > 1e-3
    loss.backward()
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        assert state["step"] == 1, name
        error = (state["exp_avg"] - p.grad).norm() / p.grad.norm()
        assert error < 1e-4, (name, error.item())
