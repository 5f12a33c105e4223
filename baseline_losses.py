"""
The supervised fine-tuning losses people use today to keep a model diverse, beside irl_loss.py's
IQ-Learn and as pure functions of the same tensors: DFT and GEM. (MLE + entropy bonus is
irl_loss.mean_entropy, subtracted in train.py.) docs/method.md section 10 compares what each does
to the gradient of a token's logit.

Notation as in irl_loss.py: at completion position t with target y_t, q_t = logits_t[y_t],
v_t = logsumexp(logits_t), log p_t = q_t - v_t, and N = sum(mask).

DFT, "Dynamic Fine-Tuning" (Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning
Perspective with Reward Rectification"): cross-entropy with each token weighted by its own
probability, the weight held constant (stop-gradient, sg):
    L_DFT = (1/N) sum_t mask_t sg(p_t) (-log p_t)
    dL/dlogits_t = (mask_t / N) p_t (softmax(logits_t) - onehot(y_t))
so a token the model finds unlikely barely moves it: DFT learns what it already half-believes and
leaves the rest, where MLE pushes hardest on the tokens it gets most wrong.

GEM (Li et al., ICLR 2025, "Preserving Diversity in Supervised Fine-Tuning of Large Language
Models"), with its linear h: with the tempered policy q_t = sg(softmax(logits_t / beta)),
    L_GEM = (1/N) sum_t mask_t [ -log p_t + sum_a q_t(a) log p_t(a) ]
    dL/dlogits_t = (mask_t / N) (q_t - onehot(y_t))
MLE's gradient is softmax(logits_t) - onehot(y_t): GEM swaps the model's own distribution for a
sharper one (beta < 1), so the push-down lands on the tokens the model already ranks highest and
stops once the target is the clear favourite, instead of draining probability from every
alternative until the target has all of it. beta = 1 is MLE's gradient exactly; beta -> 0 stops
learning wherever argmax already equals the target.
"""
import torch.nn.functional as F

from irl_loss import masked_mean


def dft_loss(q, v, loss_mask):
    """L_DFT = mean_mask(sg(p_t) * (-log p_t)), p_t = exp(q_t - v_t); q, v from irl_loss.q_and_v."""
    log_p = q - v
    return masked_mean(log_p.detach().exp() * -log_p, loss_mask)


def gem_loss(logits, targets, loss_mask, beta):
    """L_GEM = mean_mask(-log p_t(y_t) + sum_a q_t(a) log p_t(a)), q_t = sg(softmax(logits_t / beta)).
    In float32 whatever the logits' dtype; padding targets (-1) read index 0, the mask removes them."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    tempered = F.softmax(logits.detach().float() / beta, dim=-1)   # q_t, held constant
    log_p_target = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return masked_mean(-log_p_target + (tempered * log_p).sum(-1), loss_mask)
