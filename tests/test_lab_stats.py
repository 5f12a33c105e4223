"""lab/stats.py's intervals and summaries against closed forms, hand computations and brute
force: expected validation performance, the two-level bootstrap over seeds and prompts, and
levelled's window."""
import itertools
import math

import numpy as np
import pytest

from lab import stats


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_expected_max_and_min_against_every_tuple_of_draws(n):
    scores = [0.40, 0.10, 0.70, 0.25]  # unsorted; N^n ordered tuples of n draws each equally likely
    tuples = list(itertools.product(scores, repeat=n))
    assert stats.expected_max(scores, n) == pytest.approx(np.mean([max(t) for t in tuples]))
    assert stats.expected_max(scores, n, higher_is_better=False) == pytest.approx(
        np.mean([min(t) for t in tuples]))


def test_expected_max_of_one_draw_is_the_mean_and_of_many_the_best():
    scores = [2.3, 1.9, None, 2.8, 2.1]  # val nll, say; the None is left out
    assert stats.expected_max(scores, 1) == pytest.approx(np.mean([2.3, 1.9, 2.8, 2.1]))
    assert stats.expected_max(scores, 1, False) == pytest.approx(np.mean([2.3, 1.9, 2.8, 2.1]))
    assert stats.expected_max(scores, 500) == pytest.approx(2.8, abs=1e-6)
    assert stats.expected_max(scores, 500, higher_is_better=False) == pytest.approx(1.9, abs=1e-6)
    ties = [0.5, 0.5, 0.2]  # with ties the best is 0.5 with probability 1 - (1/3)^n
    assert stats.expected_max(ties, 3) == pytest.approx(0.5 - 0.3 / 27)


def half_width(interval):
    """Half the width of a bootstrap interval."""
    return (interval["high"] - interval["low"]) / 2


def test_bootstrap_over_seeds_alone():
    # 400 seeds of sd 1, one prompt: the mean's 95% half-width is 1.96 / sqrt(400)
    a = np.random.default_rng(1).normal(size=400)
    d = stats.bootstrap(lambda s, p: a[s].mean(), n_seeds=400, n_prompts=1)
    assert half_width(d) == pytest.approx(1.96 / 20, rel=0.15)
    assert half_width(d) == pytest.approx(1.96 * a.std() / 20, rel=0.05)  # this sample's sd, 0.91
    assert d["mean"] == pytest.approx(a.mean()) and d["draws"] == 2000
    assert d["low"] < d["mean"] < d["high"]


def test_bootstrap_over_prompts_alone():
    # one seed scored on 400 prompts of sd 1: the same half-width, from the prompts
    b = np.random.default_rng(2).normal(size=400)
    d = stats.bootstrap(lambda s, p: b[p].mean(), n_seeds=1, n_prompts=400)
    assert half_width(d) == pytest.approx(1.96 / 20, rel=0.15)
    assert half_width(d) == pytest.approx(1.96 * b.std() / 20, rel=0.05)
    assert d["mean"] == pytest.approx(b.mean())


def test_bootstrap_over_seeds_and_prompts_adds_their_variances():
    # x[s, p] = a_s + b_p, seeds of sd 1 and prompts of sd 2: the mean's variance is
    # var_a / 50 + var_b / 200 = 0.02 + 0.02; either level alone would be off by a factor sqrt(2)
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, size=50), rng.normal(0, 2, size=200)
    x = a[:, None] + b[None, :]
    d = stats.bootstrap(lambda s, p: x[np.ix_(s, p)].mean(), n_seeds=50, n_prompts=200)
    assert half_width(d) == pytest.approx(1.96 * math.sqrt(a.var() / 50 + b.var() / 200), rel=0.2)
    assert d["mean"] == pytest.approx(x.mean())  # the point estimate: the plain mean


def test_bootstrap_is_reproducible_and_skips_none():
    x = np.random.default_rng(4).normal(size=(5, 30))
    statistic = lambda s, p: x[np.ix_(s, p)].mean()  # noqa: E731
    assert stats.bootstrap(statistic, 5, 30, draws=200) == stats.bootstrap(statistic, 5, 30, 200)
    assert stats.bootstrap(statistic, 5, 30, 200, seed=1) != stats.bootstrap(statistic, 5, 30, 200)
    # None unless seed 0 was drawn: of 2 seeds drawn twice that is 3 draws in 4
    some = stats.bootstrap(lambda s, p: 1.0 if 0 in s else None, n_seeds=2, n_prompts=1)
    assert 1400 < some["draws"] < 1600 and some["low"] == some["high"] == 1.0
    assert stats.bootstrap(lambda s, p: None, 2, 1, draws=50) == dict(
        mean=None, low=None, high=None, draws=0)


def test_levelled_window_fits_the_rows_from_its_start():
    # 1000 iterations evaluated every 25 (41 rows, train rows between): a rise of 1e-4 per iter
    # from iter 750 on, and 0 before, off that line
    assert stats.window_start(1000) == 750
    log = []
    for it in range(0, 1001, 25):
        log.append({"iter": it, "train/loss": 1.0})
        log.append({"iter": it, "val/accuracy": 0.5 + 1e-4 * (it - 750) if it >= 750 else 0.0})
    gain, se = stats.levelled(log, window=stats.window_start(1000))
    assert gain == pytest.approx(1e-4 * 250)  # the slope over iters 750..1000, 11 evaluations
    assert se == pytest.approx(math.sqrt(0.5125 * 0.4875 / 200))  # their mean is 0.5125
    # a start between evaluations picks the next one; a row before it would bend the line
    assert stats.levelled(log, window=740)[0] == pytest.approx(1e-4 * 250)
    assert stats.levelled(log, window=726)[0] == pytest.approx(1e-4 * 250)
    assert stats.levelled(log, window=725)[0] != pytest.approx(1e-4 * 275, rel=0.1)
    # the default, the last quarter of the evaluations (41 // 4 = 10 rows: iters 775..1000)
    assert stats.levelled(log)[0] == pytest.approx(1e-4 * 225)
    assert stats.levelled(log, window=775) == stats.levelled(log)
