"""
GAIL for language models (Ho & Ermon 2016): the adversarial-IRL baseline of docs/method.md
section 5. It fine-tunes a trained (MLE) policy:
    python train.py --loss=gail --init_from=path/to/mle/ckpt.pt
train.py holds one GAIL object: the discriminator, its optimizer, the frozen starting policy, the
loss, and their state for the checkpoint.

The discriminator D(s_t, a_t) = sigmoid(d_t) is a separate small GPT (model.GPT with the policy's
width, vocabulary and window, disc_n_layer blocks, freshly initialised). Its output over the
vocabulary at position t is read, as the policy's logits are read as Q(s_t, .), as the logit of
D(s_t, a) for every next token a:  d_t = disc(idx)_t[y_t]. One forward pass scores every
(state, action) pair of a row and needs no extra head. A separate network rather than a head on the
policy's trunk: the discriminator's loss does not pull on the policy's features, and the policy
cannot fool the discriminator by moving features the two share.

Each step the policy samples completions for the batch's prompts (the first sample_fraction of
them; dataset.sample_examples: temperature 1, fresh every step because REINFORCE is on-policy), and
then, over completion tokens:
    L_D  = mean_E softplus(-d_t) + mean_pi softplus(d_t)      BCE: -mean_E log D
                                                               - mean_pi log(1 - D)
    r_t  = log D - log(1 - D) = d_t                            the policy's reward
                                                               (no gradient to D)
    G_t  = sum_{k >= t} gamma^(k - t) r_k                      reward-to-go of the sampled token
    A_t  = (G_t - b_t) / max(1, rms(G - b))                    b_t: mean G of the *other* samples
                                                               at the same completion step
                                                               (leave-one-out)
    L_PG = -mean_pi(A_t log pi(a_t | s_t))                     REINFORCE with a baseline
and the policy minimises, with two stabilisers,
    L_pi = L_PG + mle_weight mean_E(-log pi) + kl_coef mean_pi KL(pi(.|s_t) || pi_ref(.|s_t))
where pi_ref is the frozen starting model and the KL is exact at each sampled state (a sum over the
vocabulary), not estimated from the sampled token. train.py minimises L_pi + L_D in one backward:
the two networks share no parameters, and r_t is detached, so each gets exactly its own gradient.

Why these choices: the leave-one-out baseline does not depend on a sample's own actions, so the
gradient stays unbiased. Dividing by the rms once it exceeds 1 keeps the policy-gradient term from
outgrowing the MLE term as D wins and its logits grow; unlike full whitening it does not blow the
noise of a discriminator that has learnt little up to unit size. The stabilisers keep the policy
near the data while the discriminator is still weak: a pure policy gradient on a near-chance
reward is mostly noise, and without mle_weight and kl_coef it drifts to malformed samples, which
the next discriminator step then rewards no better (try --mle_weight=0 --kl_coef=0). A sample cut
by max_new_tokens or the window is truncated: its return counts only the tokens it has. The rewards
come from D before this step's update (one forward serves both losses).
"""
import copy

import torch
import torch.nn.functional as F

from irl_loss import masked_mean, policy_stats, q_and_v
from model import GPT


class GAIL:
    """What GAIL adds to a run: the discriminator and its AdamW optimizer (trained beside the
    policy), the frozen reference policy pi_ref, and the settings of its loss."""

    def __init__(self, policy, model_args, n_layer, weight_decay, learning_rate, betas, device_type,
                 mle_weight, kl_coef, gamma):
        self.discriminator, self.optimizer, self.reference = make_models(
            policy, model_args, n_layer, weight_decay, learning_rate, betas, device_type)
        self.mle_weight, self.kl_coef, self.gamma = mle_weight, kl_coef, gamma

    def loss(self, policy, batch, n_expert, autocast):
        """(L_pi + L_D, stats) for a batch whose first n_expert rows are demonstrations and the rest
        the policy's samples for the same prompts; every network reads the batch once."""
        with autocast:
            logits = policy(batch["idx"])
            d = discriminator_scores(self.discriminator, batch)
            with torch.no_grad():
                reference_logits = self.reference(batch["idx"][n_expert:])
        return gail_loss(logits, reference_logits, d, batch, n_expert, self.mle_weight,
                         self.kl_coef, self.gamma)

    def state_dict(self):
        return dict(discriminator=self.discriminator.state_dict(),
                    disc_optimizer=self.optimizer.state_dict(),
                    reference=self.reference.state_dict())

    def load_state_dict(self, state):
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["disc_optimizer"])
        self.reference.load_state_dict(state["reference"])


def make_models(policy, model_args, n_layer, weight_decay, learning_rate, betas, device_type):
    """(discriminator, its AdamW, the frozen reference pi_ref = a copy of the policy as it is
    now)."""
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    discriminator = GPT.from_args(dict(model_args, n_layer=n_layer, dropout=0.0))
    discriminator.to(policy.lm_head.weight.device)
    disc_optimizer = discriminator.configure_optimizers(weight_decay, learning_rate, betas,
                                                        device_type)
    return discriminator, disc_optimizer, reference


def discriminator_scores(discriminator, batch):
    """d_t = disc(idx)_t[y_t], the logit of D(s_t, a_t), float32, (B, T); padding reads token 0."""
    logits = discriminator(batch["idx"])
    return logits.gather(-1, batch["targets"].clamp(min=0).unsqueeze(-1)).squeeze(-1).float()


def discriminator_loss(d_expert, expert_mask, d_policy, policy_mask):
    """BCE with demonstrations as 1 and policy samples as 0; and the accuracy (d > 0 says
    'expert')."""
    loss = (masked_mean(F.softplus(-d_expert), expert_mask)
            + masked_mean(F.softplus(d_policy), policy_mask))
    with torch.no_grad():
        accuracy = 0.5 * (masked_mean((d_expert > 0).float(), expert_mask)
                          + masked_mean((d_policy < 0).float(), policy_mask))
    return loss, accuracy.item()


def rewards_to_go(rewards, mask, gamma=1.0):
    """G_t = r_t + gamma G_{t+1} along each row, over the mask; 0 elsewhere."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        running = rewards[:, t] * mask[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def advantages(returns, mask):
    """A_t = (G_t - b_t) / max(1, rms), b_t = mean G of the other rows at the same completion
    step k."""
    steps = ((mask.cumsum(dim=1) - 1).clamp(min=0) * mask).long().flatten()  # k of each token
    total = returns.new_zeros(mask.size(1)).index_add_(0, steps, (returns * mask).flatten())
    count = returns.new_zeros(mask.size(1)).index_add_(0, steps, mask.flatten().to(returns.dtype))
    steps = steps.view_as(mask)
    baseline = (total[steps] - returns) / (count[steps] - 1).clamp(min=1)  # leave-one-out mean
    centred = (returns - baseline) * mask
    return centred / masked_mean(centred.square(), mask).sqrt().clamp(min=1.0)


def kl_to_reference(logits, reference_logits, mask):
    """mean_mask KL(pi(.|s_t) || pi_ref(.|s_t)), summed over the vocabulary at each state."""
    logp, ref_logp = (F.log_softmax(logits.float(), dim=-1),
                      F.log_softmax(reference_logits.float(), dim=-1))
    return masked_mean((logp.exp() * (logp - ref_logp)).sum(-1), mask)


def gail_loss(logits, reference_logits, d, batch, n_expert, mle_weight, kl_coef, gamma=1.0):
    """L_pi + L_D for a batch whose first n_expert rows are demonstrations and the rest the policy's
    samples. logits: the policy's, all rows; reference_logits: pi_ref's, sample rows; d: the
    discriminator's scores, all rows. Returns (loss, stats)."""
    targets, mask = batch["targets"], batch["loss_mask"]
    expert, policy = slice(None, n_expert), slice(n_expert, None)
    q, v = q_and_v(logits, targets)
    log_pi = q - v                                              # log pi(a_t | s_t)
    nll = masked_mean(-log_pi[expert], mask[expert])            # MLE on the data
    disc_loss, disc_accuracy = discriminator_loss(d[expert], mask[expert], d[policy], mask[policy])
    rewards = d[policy].detach()                                # r_t = log D - log(1 - D) = d_t
    advantage = advantages(rewards_to_go(rewards, mask[policy], gamma), mask[policy])
    pg = -masked_mean(advantage * log_pi[policy], mask[policy])  # REINFORCE: -A_t log pi_t
    kl = kl_to_reference(logits[policy], reference_logits, mask[policy])
    loss = pg + mle_weight * nll + kl_coef * kl + disc_loss
    stats = dict(nll=nll.item(), pg=pg.item(), kl=kl.item(), disc_loss=disc_loss.item(),
                 disc_accuracy=disc_accuracy, reward=masked_mean(rewards, mask[policy]).item(),
                 sample_entropy=policy_stats(logits[policy], targets[policy],
                                             mask[policy])["entropy"])
    return loss, stats
