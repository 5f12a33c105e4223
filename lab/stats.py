"""
The experiments' statistics: curves of task score against Self-BLEU compared at matched diversity,
paired differences over seeds, and whether a run has levelled off (tests/test_experiment.py works
them by hand).
"""
import math

import numpy as np

from checkpoint import BEST_IS_HIGHER
from metrics import mean_se

# the tables' 'seeds': how many bring the 95% half-width 1.96 sd / sqrt(n) down to RESOLVE (that
# is 50% power against a true difference of RESOLVE, normal quantile; 80% power needs about twice as
# many)
RESOLVE = 0.02
NLL_TOLERANCE = 0.01  # nats per token: val nll that falls less over its last quarter levelled off


def interpolate(curve, x):
    """curve: [(Self-BLEU, score)] of one run; the score at Self-BLEU x on the piecewise linear
    curve through its points sorted by Self-BLEU (points at the same Self-BLEU averaged)."""
    xs = sorted({p[0] for p in curve})
    ys = [np.mean([p[1] for p in curve if p[0] == v]) for v in xs]
    return np.interp(x, xs, ys)


def overlap(curve, reference):
    """(low, high): the Self-BLEU range both curves cover; None when they do not overlap."""
    low = max(min(p[0] for p in curve), min(p[0] for p in reference))
    high = min(max(p[0] for p in curve), max(p[0] for p in reference))
    return (low, high) if low <= high else None


def matched_difference(curve, reference, n_grid=21):
    """Mean of curve - reference over n_grid Self-BLEU values evenly spaced over the range both
    cover; None when the ranges do not overlap."""
    if overlap(curve, reference) is None:
        return None
    grid = np.linspace(*overlap(curve, reference), n_grid)
    return float(np.mean(interpolate(curve, grid) - interpolate(reference, grid)))


def paired(values, reference):
    """Per-seed differences values - reference (None where either is None): mean, s.e., sd, seeds
    and the seeds whose 95% half-width would be RESOLVE with this spread,
    ceil((1.96 sd / RESOLVE)^2)."""
    diffs = [v - r for v, r in zip(values, reference) if v is not None and r is not None]
    if not diffs:
        return None
    mean, se = mean_se(diffs)
    sd = se * math.sqrt(len(diffs))
    return dict(mean=mean, se=se, sd=sd, n=len(diffs),
                resolve=max(1, math.ceil((1.96 * sd / RESOLVE) ** 2)))


def levelled(log_rows, key="val/accuracy", eval_prompts=200):
    """How much a line through the last quarter of a run's evaluations of key improves over that
    quarter (a rise of greedy val accuracy or ROUGE-L, a fall of val nll), and the tolerance:
    levelled off when the gain is below it. The tolerance is one evaluation's binomial s.e. for a
    score in [0, 1] (for ROUGE-L it bounds the s.e. of the mean from above), NLL_TOLERANCE for
    val/nll."""
    rows = [r for r in log_rows if key in r]
    tail = rows[-max(2, len(rows) // 4):]
    iters, value = np.array([r["iter"] for r in tail]), np.array([r[key] for r in tail])
    direction = 1 if BEST_IS_HIGHER[key] else -1
    gain = np.polyfit(iters, value, 1)[0] * (iters[-1] - iters[0]) * direction
    if not BEST_IS_HIGHER[key]:  # val nll or loss, in nats
        return float(gain), NLL_TOLERANCE
    spread = max(value.mean() * (1 - value.mean()), 1e-4)
    return float(gain), float(math.sqrt(spread / eval_prompts))


def best(items, metric, value):
    """The item whose value(item) of metric is best: the highest score, the lowest val nll; the
    first of ties."""
    return (max if BEST_IS_HIGHER[metric] else min)(items, key=value)


def best_row(log_rows, key):
    """The evaluation a run's best.pt keeps under --keep_best=key: the earliest of the best, as
    train.py keeps it."""
    return best([r for r in log_rows if key in r], key, lambda r: r[key])
