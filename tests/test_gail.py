"""gail.py against closed forms and naive loops: the discriminator learns to tell expert tokens from
clearly different policy tokens, the reward is log D - log(1 - D) and higher on expert-like tokens,
reward-to-go and the leave-one-out baseline, the REINFORCE gradient, the exact KL; and GAIL through
train.py from a tiny checkpoint, including --init_from=resume."""
import re

import pytest
import torch

import gail
from dataset import load_dataset, make_batch
from irl_loss import masked_mean
from model import GPT, GPTConfig
from tests.helpers import TINY, run_script
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
