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


def levelled(log_rows, key="val/accuracy", eval_prompts=200, window=None):
    """How much a line through the last quarter of a run's evaluations of key improves over that
    quarter (a rise of greedy val accuracy or ROUGE-L, a fall of val nll), and the tolerance:
    levelled off when the gain is below it. The tolerance is one evaluation's binomial s.e. for a
    score in [0, 1] (for ROUGE-L it bounds the s.e. of the mean from above), NLL_TOLERANCE for
    val/nll. window: an iteration (window_start); the line then goes through the evaluations at
    iter >= window instead of the last quarter of them."""
    rows = [r for r in log_rows if key in r]
    if window is None:
        tail = rows[-max(2, len(rows) // 4):]
    else:
        tail = [r for r in rows if r["iter"] >= window]
    iters, value = np.array([r["iter"] for r in tail]), np.array([r[key] for r in tail])
    direction = 1 if BEST_IS_HIGHER[key] else -1
    gain = np.polyfit(iters, value, 1)[0] * (iters[-1] - iters[0]) * direction
    if not BEST_IS_HIGHER[key]:  # val nll or loss, in nats
        return float(gain), NLL_TOLERANCE
    spread = max(value.mean() * (1 - value.mean()), 1e-4)
    return float(gain), float(math.sqrt(spread / eval_prompts))


def window_start(max_iters):
    """The first iteration of the last quarter of a run of max_iters iterations: levelled's
    window."""
    return 0.75 * max_iters


def best(items, metric, value):
    """The item whose value(item) of metric is best: the highest score, the lowest val nll; the
    first of ties."""
    return (max if BEST_IS_HIGHER[metric] else min)(items, key=value)


def best_row(log_rows, key):
    """The evaluation a run's best.pt keeps under --keep_best=key: the earliest of the best, as
    train.py keeps it."""
    return best([r for r in log_rows if key in r], key, lambda r: r[key])


def expected_max(scores, n, higher_is_better=True):
    """Expected validation performance (Dodge et al. 2019, Show Your Work): the expected best of n
    draws with replacement from scores (a family's trials; None left out), the maximum, or the
    minimum when higher_is_better is False (val nll). With v(1) <= ... <= v(N) sorted, the
    maximum is v(i) with probability (i/N)^n - ((i-1)/N)^n."""
    v = np.sort([s for s in scores if s is not None])
    if not higher_is_better:  # the minimum of v is minus the maximum of -v
        return -expected_max(-v, n)
    cdf = (np.arange(len(v) + 1) / len(v)) ** n
    return float(np.sum(v * np.diff(cdf)))


def bootstrap(statistic, n_seeds, n_prompts, draws=2000, seed=0):
    """A two-level bootstrap over seeds and prompts: each draw resamples n_seeds seed indices and
    n_prompts prompt indices with replacement (the same prompts for every seed: all are scored
    on the same ones) and calls statistic(seed_idx, prompt_idx) -> float or None (skipped).
    Returns dict(mean: the statistic on all seeds and prompts, low, high: the 2.5th and 97.5th
    percentiles of the draws (None without any), draws: how many were not None)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        value = statistic(rng.integers(n_seeds, size=n_seeds),
                          rng.integers(n_prompts, size=n_prompts))
        if value is not None:
            values.append(value)
    low, high = np.percentile(values, [2.5, 97.5]) if values else (None, None)
    return dict(mean=statistic(np.arange(n_seeds), np.arange(n_prompts)),
                low=None if low is None else float(low),
                high=None if high is None else float(high), draws=len(values))
