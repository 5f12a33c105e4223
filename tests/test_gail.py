"""gail.py against closed forms and naive loops: the discriminator learns to tell expert tokens from
clearly different policy tokens, the reward is log D - log(1 - D) and higher on expert-like tokens,
reward-to-go and the leave-one-out baseline, the REINFORCE gradient, the whole loss and its gradient on a
tiny batch worked by hand, the exact KL; and GAIL through train.py from a tiny checkpoint, including
--init_from=resume."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import gail
from dataset import load_dataset, make_batch
from irl_loss import masked_mean
from model import GPT, GPTConfig
from tests.helpers import TINY, one_thread, run_script
from tests.test_irl_loss import random_batch
from tests.test_train import train_losses

EOS, VOCAB = 0, 12


def toy_batch(n=8, seed=0):
    """Expert completions use tokens 1-3, the 'policy' writes tokens 7-9, after the same prompts."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[EOS] + torch.randint(4, 7, (3,), generator=g).tolist() for _ in range(n)]
    expert = [(p, torch.randint(1, 4, (5,), generator=g).tolist() + [EOS]) for p in prompts]
    policy = [(p, torch.randint(7, 10, (5,), generator=g).tolist() + [EOS]) for p in prompts]
    return make_batch(expert + policy, EOS), n


@pytest.fixture(scope="module")
def trained_discriminator():
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, bias=False))
    discriminator, optimizer, _ = gail.make_models(policy, vars(policy.config), 1, 0.0, 1e-2, (0.9, 0.99), "cpu")
    batch, n = toy_batch()
    mask = batch["loss_mask"]
    history = []
    for _ in range(15):
        d = gail.discriminator_scores(discriminator, batch)
        loss, accuracy = gail.discriminator_loss(d[:n], mask[:n], d[n:], mask[n:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append((loss.item(), accuracy))
    return discriminator, history


def test_discriminator_separates_expert_from_policy_tokens(trained_discriminator):
    _, history = trained_discriminator
    assert history[0][1] < 0.9 and history[0][0] > 1.2  # ~chance at first: BCE near 2 log 2
    assert history[-1][1] == 1.0 and history[-1][0] < 0.1


def test_reward_is_log_odds_and_higher_on_expert_like_tokens(trained_discriminator):
    discriminator, _ = trained_discriminator
    batch, n = toy_batch(seed=1)  # new prompts and completions of the same two kinds
    mask = batch["loss_mask"].bool()
    d = gail.discriminator_scores(discriminator, batch).detach().double()
    D = torch.sigmoid(d)
    assert torch.allclose(torch.log(D) - torch.log(1 - D), d, atol=1e-9)  # r_t = log D - log(1 - D) = d_t
    assert d[:n][mask[:n]].min() > 0 > d[n:][mask[n:]].max()  # expert-like tokens: higher reward


def test_rewards_to_go_and_leave_one_out_baseline_against_loops():
    _, _, mask, _ = random_batch(B=5, T=7, seed=3)
    mask[3:, 1:5] = 1  # a few rows share completion steps
    rewards = torch.randn(5, 7, dtype=torch.float64)
    returns = gail.rewards_to_go(rewards, mask, gamma=0.9)
    adv = gail.advantages(returns, mask)
    steps = {}  # (row, t) -> completion step k
    for b in range(5):
        ts = [t for t in range(7) if mask[b, t]]
        for k, t in enumerate(ts):
            steps[b, t] = k
            assert torch.isclose(returns[b, t], sum(0.9 ** j * rewards[b, u] for j, u in enumerate(ts[k:])))
    centred = torch.zeros(5, 7, dtype=torch.float64)
    for (b, t), k in steps.items():
        others = [returns[c, u] for (c, u), j in steps.items() if j == k and c != b]
        centred[b, t] = returns[b, t] - (sum(others) / len(others) if others else 0.0)
    rms = (sum(centred[key] ** 2 for key in steps) / len(steps)).sqrt()
    assert torch.allclose(adv, centred / max(rms, 1.0), atol=1e-12)
    assert torch.allclose(gail.advantages(returns / 100, mask), centred / 100, atol=1e-12)  # small: as is
    assert (returns[mask == 0] == 0).all() and (adv[mask == 0] == 0).all()


def test_policy_gradient_is_reinforce_and_raises_rewarded_tokens():
    """With mle_weight = kl_coef = 0, dL/dlogits_t = -A_t (onehot(y_t) - softmax_t) / N on the
    policy's rows: a descent step makes tokens with positive advantage more likely."""
    batch, n = toy_batch(n=4)
    logits = torch.randn(*batch["idx"].shape, VOCAB, dtype=torch.float64, requires_grad=True)
    d = torch.randn(*batch["idx"].shape, dtype=torch.float64)
    loss, _ = gail.gail_loss(logits, logits[n:].detach(), d, batch, n, mle_weight=0.0, kl_coef=0.0, gamma=0.9)
    loss.backward()
    mask = batch["loss_mask"][n:]
    adv = gail.advantages(gail.rewards_to_go(d[n:], mask, 0.9), mask)
    onehot = torch.nn.functional.one_hot(batch["targets"][n:].clamp(min=0), VOCAB)
    expected = -(adv / mask.sum())[..., None] * (onehot - torch.softmax(logits[n:].detach(), -1))
    assert torch.allclose(logits.grad[n:], expected, atol=1e-12)
    assert (logits.grad[:n] == 0).all()  # the data rows only enter through mle_weight
    step = logits.detach() - logits.grad
    logp, new_logp = (torch.log_softmax(x[n:], -1).gather(-1, batch["targets"][n:, :, None].clamp(min=0))[..., 0]
                      for x in (logits.detach(), step))
    assert ((new_logp - logp)[(adv > 0) & (mask > 0)] > 0).all()


@one_thread()
def test_gail_loss_by_hand_on_a_tiny_batch():
    """gail_loss and its whole gradient on one demonstration and three samples (3 positions, 3 tokens),
    against the advantages worked out by hand below and the gradient of each term written out:
    dL/dlogits_t = -A_t (onehot(y_t) - pi_t) / N_pi             REINFORCE, on the samples
                   - mle_weight (onehot(y_t) - pi_t) / N_E       MLE, on the demonstration
                   + kl_coef pi_t (log pi_t - log ref_t - KL_t) / N_pi
    dL/dd_t = -sigmoid(-d_t) / N_E on the demonstration, sigmoid(d_t) / N_pi on the samples (the reward
    d_t is detached: the policy-gradient term does not reach the discriminator)."""
    gamma, mle_weight, kl_coef, n = 0.5, 0.5, 0.3, 1
    mask = torch.tensor([[0, 1, 1],    # the demonstration: a one-token prompt, then 2 tokens
                         [1, 1, 1],    # sample a
                         [1, 1, 0],    # sample b
                         [0, 1, 1.]], dtype=torch.float64)  # sample c: its steps k = 0, 1 at t = 1, 2
    targets = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 0, 2], [1, 2, 2]])
    d = torch.tensor([[9.0, 0.5, -1.0],
                      [1.0, 2.0, 4.0],    # G = 1 + 0.5 (2 + 0.5 * 4), 2 + 0.5 * 4, 4   = 3, 4, 4
                      [2.0, -2.0, 99.],   # G = 2 + 0.5 * -2, -2                          = 1, -2
                      [99., 0.0, 2.0]], dtype=torch.float64, requires_grad=True)  # G = 0 + 0.5 * 2, 2 = 1, 2
    # leave-one-out baselines and G - b: step 0: a 3 - (1 + 1)/2 = 2, b 1 - (3 + 1)/2 = -1, c 1 - 2 = -1;
    # step 1: a 4 - (-2 + 2)/2 = 4, b -2 - (4 + 2)/2 = -5, c 2 - (4 - 2)/2 = 1; step 2: a alone, 4 - 0 = 4.
    # rms = sqrt((4 + 1 + 1 + 16 + 25 + 1 + 16) / 7) = 8 / sqrt(7) > 1, so A = (G - b) sqrt(7) / 8
    scale = math.sqrt(7) / 8
    advantage = torch.tensor([[2, 4, 4], [-1, -5, 0], [0, -1, 1.]], dtype=torch.float64) * scale
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    reference_logits = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    batch = dict(idx=torch.zeros(4, 3, dtype=torch.long), targets=targets, loss_mask=mask)
    loss, stats = gail.gail_loss(logits, reference_logits, d, batch, n, mle_weight, kl_coef, gamma)
    loss.backward()

    pi = torch.softmax(logits.detach(), -1)
    log_pi = torch.log(pi)
    log_ref = torch.log_softmax(reference_logits, -1)
    onehot = torch.nn.functional.one_hot(targets, 3).double()
    log_pi_y = log_pi.gather(-1, targets[..., None])[..., 0]
    kl = (pi[n:] * (log_pi[n:] - log_ref)).sum(-1)
    expected_grad = torch.zeros(4, 3, 3, dtype=torch.float64)
    expected_grad[n:] = (-advantage[..., None] * (onehot[n:] - pi[n:])
                         + kl_coef * pi[n:] * (log_pi[n:] - log_ref - kl[..., None])) / 7
    expected_grad[:n] = -mle_weight * (onehot[:n] - pi[:n]) / 2
    expected_grad *= mask[..., None]
    assert torch.allclose(logits.grad, expected_grad, atol=1e-12)
    sig = torch.sigmoid(d.detach())
    expected_d_grad = torch.cat([-(1 - sig[:n]) / 2, sig[n:] / 7]) * mask
    assert torch.allclose(d.grad, expected_d_grad, atol=1e-12)

    pg = -(advantage * log_pi_y[n:] * mask[n:]).sum() / 7
    nll = -(log_pi_y[:n] * mask[:n]).sum() / 2
    disc = (F.softplus(-d[:n]) * mask[:n]).sum() / 2 + (F.softplus(d[n:]) * mask[n:]).sum() / 7
    expected = pg + mle_weight * nll + kl_coef * (kl * mask[n:]).sum() / 7 + disc
    assert torch.allclose(loss, expected.detach(), atol=1e-12)
    assert stats["pg"] == pytest.approx(pg.item(), abs=1e-12) and stats["nll"] == pytest.approx(nll.item(), abs=1e-12)
    assert stats["reward"] == pytest.approx((1 + 2 + 4 + 2 - 2 + 0 + 2) / 7, abs=1e-12)  # mean d on the samples
    # (disc_accuracy: expert d 0.5 > 0 right, -1.0 wrong: 1/2; samples d < 0: only -2.0 of 7: 1/7)
    assert stats["disc_accuracy"] == pytest.approx(0.5 * (1 / 2 + 1 / 7), abs=1e-12)


def test_kl_to_reference_against_torch_distributions():
    logits, ref_logits = torch.randn(2, 2, 4, 6, dtype=torch.float64)  # (B, T, V) each
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0.]], dtype=torch.float64)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits),
                                                 torch.distributions.Categorical(logits=ref_logits))
    assert torch.allclose(gail.kl_to_reference(logits, ref_logits, mask), masked_mean(expected, mask))


def test_gail_trains_and_resumes_through_train_py(tmp_path):
    """From a tiny checkpoint: finite losses and GAIL's statistics; 2 + 2 resumed steps give the
    same losses as 4 straight ones (discriminator, its optimizer, reference and RNG all restored)."""
    tok = load_dataset("arith")["tokenizer"]  # a starting checkpoint as train.py writes one
    model_args = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, bias=False, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    torch.save(dict(model=GPT(GPTConfig(**model_args)).state_dict(), model_args=model_args, tokenizer=tok.state()),
               tmp_path / "start.pt")
    args = TINY + ["--max_new_tokens=12", "--eval_interval=2", "--learning_rate=3e-3"]
    gail_args = args + ["--loss=gail", f"--init_from={tmp_path / 'start.pt'}"]
    straight = run_script(gail_args + ["--max_iters=4", f"--out_dir={tmp_path / 'a'}"]).stdout
    stats = re.findall(r"kl (\S+), sample_entropy \S+, reward (\S+), disc_accuracy (\S+), \d+ ms/iter "
                       r"\(\d+ sampling\)", straight)
    assert len(stats) == 4 and float(stats[0][0]) == 0.0  # the policy starts as its reference
    assert all(0 <= float(acc) <= 1 and float(kl) >= 0 for kl, _, acc in stats)
    run_script(gail_args + ["--max_iters=2", f"--out_dir={tmp_path / 'b'}"])
    resumed = run_script(args + ["--loss=gail", "--init_from=resume", "--max_iters=4",
                                 f"--out_dir={tmp_path / 'b'}"])
    expected, got = train_losses(straight), train_losses(resumed.stdout)
    assert sorted(got) == [2, 3] and all(got[i] == expected[i] for i in got)
    assert all(float(loss) == float(loss) for loss in expected.values())  # no NaN
    # the checkpoint: pi_ref is still the starting policy, the policy moved, and both networks took a step
    # every iteration (the discriminator through its own optimizer)
    start = torch.load(tmp_path / "start.pt", weights_only=True)["model"]
    final = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    assert final["gail"]["reference"].keys() == start.keys()
    assert all(torch.equal(final["gail"]["reference"][k], start[k]) for k in start)
    assert not all(torch.equal(final["model"][k], start[k]) for k in start)
    for optimizer in (final["optimizer"], final["gail"]["disc_optimizer"]):
        assert {int(state["step"]) for state in optimizer["state"].values()} == {4}
