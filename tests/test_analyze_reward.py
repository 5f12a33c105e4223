"""analyze_reward.py and features.py: rewards against a naive loop over the model's logits, the
feature regression against weights planted in synthetic data, default features by hand, and the
script end to end on tiny checkpoints (char arith with two runs; GPT-2 BPE text with user features).
Spearman with ties is covered by tests/test_metrics.py (metrics.spearman is what the script uses)."""
import itertools
import json
import math
import os
import shutil
import statistics

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint, model_from_checkpoint, tokenizer_of
from features import EOS, feature_matrix, least_squares, load_features
from tests.helpers import TINY, run_script

SUMMARY_KEYS = {"dataset", "task", "split", "prompts", "features_file", "figures", "telescoping", "runs"}
RUN_KEYS = {
    "checkpoint", "iter_num", "loss", "td_coef", "gamma", "tokenizer", "experts", "samples",
    "expert_return_mean", "sample_return_mean", "corrupt_return_mean", "expert_above_corrupt", "corrupt_pairs",
    "metric", "sample_metric_mean", "spearman_return_metric", "spearman_return_metric_se", "spearman_log_prob_metric",
    "spearman_return_metric_pooled", "spearman_return_metric_pooled_se", "pooled_samples",
    "pick_rate", "pick_chance", "pick_prompts", "telescoping_max_abs_error", "telescoping_checked",
    "v0_mean", "v0_std", "spearman_v0_expert_surprisal", "v0_slope", "feature_r2", "feature_tokens", "feature_intercept",
    "features"}
FIGURES = ["reward_returns.png", "reward_vs_metric.png", "reward_v0.png", "reward_features.png"]


# ----------------------------------------------------------------------------- least squares

def test_least_squares_recovers_planted_weights():
    rng = np.random.default_rng(0)
    n = 4000
    X = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 2, n), rng.uniform(0, 1, n), rng.normal(size=n)])
    w, b, noise = np.array([1.5, -0.7, 0.3, 2.0]), -0.4, 0.5
    y = b + X @ w + noise * rng.normal(size=n)
    fit = least_squares(X, y)
    assert np.all(fit["ci_low"] <= w) and np.all(w <= fit["ci_high"])
    assert np.allclose(fit["weights"], w, atol=0.1) and abs(fit["intercept"] - b) < 0.1
    # R^2 against its population value: var(Xw) / (var(Xw) + noise^2)
    signal = w @ np.cov(X.T) @ w
    assert fit["r2"] == pytest.approx(signal / (signal + noise ** 2), abs=0.02)


def test_least_squares_intervals_cover_95_percent():
    """Over many small data sets, each weight's 95% interval holds the true weight ~95% of the time:
    checks the standard errors, not only the point estimates."""
    rng = np.random.default_rng(1)
    w, covered, repeats = np.array([0.8, -1.2]), np.zeros(2), 400
    for _ in range(repeats):
        X = rng.normal(size=(200, 2))
        fit = least_squares(X, 0.3 + X @ w + rng.normal(size=200))
        covered += (fit["ci_low"] <= w) & (w <= fit["ci_high"])
    assert np.all(np.abs(covered / repeats - 0.95) < 0.035)  # 3 binomial s.e. at 400 repeats


def test_least_squares_constant_and_dependent_features():
    rng = np.random.default_rng(2)
    x = rng.normal(size=50)
    fit = least_squares(np.column_stack([x, np.zeros(50)]), 2 * x + 1)  # a feature that never fires
    assert fit["weights"][0] == pytest.approx(2) and math.isnan(fit["weights"][1])
    fit = least_squares(np.column_stack([x, 2 * x, np.ones(50)]), x)  # twice the first, then a constant
    assert fit["weights"][0] == pytest.approx(1) and math.isnan(fit["weights"][1]) and fit["dependent"] == [1]


# ----------------------------------------------------------------------------- features

def feature_table(tokens, task):
    features = load_features("", task)
    return {name: list(column) for (name, _, _), column in zip(features, feature_matrix([tokens], features).T)}


def test_arith_features_by_hand_char_and_bpe():
    char = list("12+7=19;19*2=38#38") + [EOS]
    table = feature_table(char, "arith")
    #                   1  2  +  7  =  1  9  ;  1  9  *  2  =  3  8  #  3  8  EOS
    assert table["in_result"] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert table["in_answer"] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert table["is_operator"] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert table["step_separator"][7] == 1 and sum(table["step_separator"]) == 1
    assert table["is_eos"] == [0] * 18 + [1]
    assert table["repeats_previous"] == [0] * 17 + [0, 0]  # no token equals the one before it
    assert table["relative_position"][0] == 0 and table["relative_position"][-1] == 1
    bpe = ["12", "+", "7", "=", "19", ";", "19", "*", "2", "=", "38", "#", "38", EOS]
    table = feature_table(bpe, "arith")
    assert table["in_result"] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert table["in_answer"] == [0] * 12 + [1, 0]


def test_text_features_by_hand():
    table = feature_table(list("To be, or") + [EOS], "text")
    #                     T  o  _  b  e  ,  _  o  r  EOS
    assert table["word_start"] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    assert table["is_space"] == [0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert table["is_punctuation"] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert table["capitalised"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert feature_table(["To", " be", ",", " be", " be", EOS], "text")["repeats_previous"] == [0, 0, 0, 0, 1, 0]


def test_user_feature_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from features import is_eos  # imported: not one of this file's features\n"
                    "def long_token(tokens, t):\n    '''more than one character'''\n    return len(tokens[t]) > 1\n"
                    "def _helper(tokens, t):\n    return 0\n"
                    "def has_vowel(tokens, t):\n    return any(c in 'aeiou' for c in tokens[t])\n")
    features = load_features(str(path))
    assert [(name, doc) for name, doc, _ in features] == [("long_token", "more than one character"), ("has_vowel", "")]
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines no feature functions"):
        load_features(str(tmp_path / "empty.py"))


# ----------------------------------------------------------------------------- end to end

def naive_scores(model, tok, row, gamma):
    """(r_t, v_0, sum_t log pi_t) of one completion, from one unpadded forward pass, in float64, token
    by token: r_t = q_t - gamma v_{t+1}; at EOS r_t = q_t (V after it is 0); None for the last token of
    an unfinished completion (no next state); v_t = logsumexp of the logits, log pi_t = q_t - v_t."""
    prompt = tok.encode_prompt(row["prompt"])  # the start of a row ([EOS] for char, GPT-2), the prompt
    completion = tok.encode(row["completion"]) + ([tok.eos_id] if row["terminated"] else [])
    tokens = prompt + completion
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]]))[0].double()
    rewards, log_prob = [], 0.0
    for k in range(len(completion)):
        t = len(prompt) - 1 + k  # the position that predicts completion token k
        q = logits[t, tokens[t + 1]].item()
        log_prob += q - torch.logsumexp(logits[t], dim=0).item()
        if k < len(completion) - 1:
            rewards.append(q - gamma * torch.logsumexp(logits[t + 1], dim=0).item())
        else:
            rewards.append(q if row["terminated"] else None)
    return rewards, torch.logsumexp(logits[len(prompt) - 1], dim=0).item(), log_prob


def average_ranks(values):
    """1-based ranks, a tie sharing the mean of its ranks: 1 + how many are smaller + (how many
    others are equal) / 2."""
    return [1 + sum(y < x for y in values) + (sum(y == x for y in values) - 1) / 2 for x in values]


def spearman_by_hand(x, y):
    """Spearman's rho: Pearson's r (the standard library's) of the average ranks; None for a constant
    side."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return statistics.correlation(average_ranks(x), average_ranks(y))


def sure_order(values):
    """No two values closer than 3e-5 (ties included): float32's rounding cannot reorder them."""
    return all(abs(a - b) > 3e-5 for a, b in itertools.combinations(values, 2))


def check_summary_numbers(run, rows, naive, sample_metric):
    """A run's reward_summary.json numbers from the naive loop's (return, v_0, log pi) of its rows
    (reward_tokens order: experts, their corruptions, the samples) and the samples' metric (their
    file's). A rank correlation is compared where the ranks are sure; returns the keys compared."""
    of_kind = {kind: [(r, n) for r, n in zip(rows, naive) if r["kind"] == kind]
               for kind in ("expert", "corrupt", "sample")}
    returns = {kind: [n[0] for _, n in pairs] for kind, pairs in of_kind.items()}
    assert (run["experts"], run["samples"]) == (len(returns["expert"]), len(returns["sample"]))
    for kind in ("expert", "corrupt", "sample"):
        mean = pytest.approx(statistics.mean(returns[kind]), abs=1e-4) if returns[kind] else None
        assert run[f"{kind}_return_mean"] == mean, kind  # None without samples (--samples=none)
    # an expert completion against its corruption (the same prompt; each prompt once among experts)
    expert_return = {r["prompt"]: n[0] for r, n in of_kind["expert"]}
    assert len(expert_return) == len(returns["expert"])
    gaps = [expert_return[r["prompt"]] - n[0] for r, n in of_kind["corrupt"]]
    assert min(map(abs, gaps)) > 1e-3  # no near tie that float32 could turn
    assert run["corrupt_pairs"] == len(gaps)
    assert run["expert_above_corrupt"] == sum(g > 0 for g in gaps) / len(gaps)
    v0, surprisal = [n[1] for _, n in of_kind["expert"]], [-n[2] for _, n in of_kind["expert"]]
    assert run["v0_mean"] == pytest.approx(statistics.mean(v0), abs=1e-4)
    assert run["v0_std"] == pytest.approx(statistics.pstdev(v0), abs=1e-4)
    assert run["v0_slope"] == pytest.approx(statistics.linear_regression(surprisal, v0).slope,
                                            abs=1e-4)
    # the samples' metric, then each rank correlation: None where the metric is constant
    assert [r["metric"] for r, _ in of_kind["sample"]] == sample_metric
    mean = pytest.approx(statistics.mean(sample_metric), abs=1e-12) if sample_metric else None
    assert run["sample_metric_mean"] == mean
    compared = []
    log_prob = [n[2] for _, n in of_kind["sample"]]
    for key, x, y in (("spearman_v0_expert_surprisal", v0, surprisal),
                      ("spearman_return_metric", returns["sample"], sample_metric),
                      ("spearman_log_prob_metric", log_prob, sample_metric)):
        expected = spearman_by_hand(x, y)
        if expected is None:
            assert run[key] is None, key
        elif sure_order(x) and (y is sample_metric or sure_order(y)):
            assert run[key] == pytest.approx(expected, abs=1e-9), key
        else:
            continue
        compared.append(key)
    return compared


def check_outputs(results, names, task_keys):
    summary = json.loads((results / "reward_summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS and set(summary["runs"]) == set(names)
    for name in names:
        run = summary["runs"][name]
        assert set(run) == RUN_KEYS, set(run) ^ RUN_KEYS
        assert run["telescoping_max_abs_error"] < 1e-3 and run["telescoping_checked"] > 0
        assert run["experts"] > 0 and run["samples"] > 0 and run["corrupt_pairs"] > 0
        assert set(run["features"]) == task_keys
    for name in FIGURES + [f"reward_heatmap_{n}.png" for n in names]:
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name  # a non-empty PNG
    assert sorted(summary["figures"]) == sorted(FIGURES + [f"reward_heatmap_{n}.png" for n in names])
    return summary


def check_rewards_against_naive_loop(results, run_dir, name, sample_metric):
    """Each row of reward_tokens_<name>.jsonl, and the run's summary, against the naive loop."""
    checkpoint = load_checkpoint(str(run_dir / "ckpt.pt"))
    model, tok = model_from_checkpoint(checkpoint).double().eval(), tokenizer_of(checkpoint)
    rows = [json.loads(line) for line in open(results / f"reward_tokens_{name}.jsonl")]
    kinds = {"expert", "corrupt", "sample"} if sample_metric else {"expert", "corrupt"}
    assert {r["kind"] for r in rows} == kinds
    naive = []
    for row in rows:
        expected, v0, log_prob = naive_scores(model, tok, row, checkpoint["config"]["gamma"])
        got = row["rewards"]
        assert len(got) == len(expected) and [g is None for g in got] == [e is None for e in expected]
        assert np.allclose([g for g in got if g is not None], [e for e in expected if e is not None], atol=1e-4)
        naive.append((sum(e for e in expected if e is not None), v0, log_prob))
        assert row["ret"] == pytest.approx(naive[-1][0], abs=1e-3)
    summary = json.loads((results / "reward_summary.json").read_text())["runs"][name]
    return check_summary_numbers(summary, rows, naive, sample_metric)


def test_end_to_end_arith_two_runs(tmp_path):
    irl = tmp_path / "irl"
    run_script(TINY + ["--max_iters=3", "--eval_interval=3", f"--out_dir={irl}"])
    run_script([f"--out_dir={irl}", "--max_prompts=6", "--num_samples=3", "--device=cpu"], script="sample.py")
    shutil.copytree(irl, tmp_path / "twin")  # a second run, to draw runs side by side
    results = tmp_path / "results"
    out = run_script([f"--out_dir={irl},{tmp_path / 'twin'}", f"--results={results}", "--max_prompts=12",
                      "--device=cpu"], script="analyze_reward.py")
    assert "max abs error" in out.stdout
    summary = check_outputs(results, ["irl", "twin"], {name for name, _, _ in load_features("", "arith")})
    assert summary["runs"]["irl"]["metric"] == "accuracy" and summary["prompts"] == 12
    samples = [json.loads(line) for line in open(irl / "samples_val_t1.jsonl")]
    accuracy = [float(r["correct"]) for r in samples]
    compared = check_rewards_against_naive_loop(results, irl, "irl", accuracy)
    assert "spearman_v0_expert_surprisal" in compared

    # bad input: one line naming the fix, nothing written
    bad = run_script([f"--out_dir={irl}", f"--results={tmp_path / 'bad'}", "--samples=nothing.jsonl"],
                     script="analyze_reward.py", check=False)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "run python sample.py" in bad.stderr
    assert not os.path.exists(tmp_path / "bad")


def test_end_to_end_text_gpt2_with_user_features(tmp_path):
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Line {i} says:", "completion": f" the {i % 7} cats sat on mats"})
                            + "\n" for i in range(60)))
    features = tmp_path / "mine.py"
    features.write_text("def starts_with_space(tokens, t):\n    return tokens[t].startswith(' ')\n"
                        "def token_length(tokens, t):\n    return len(tokens[t])\n")
    run = tmp_path / "bpe"
    run_script(TINY + ["--max_iters=2", "--eval_interval=2", f"--dataset={data}", "--tokenizer=gpt2", f"--out_dir={run}"])
    # samples in sample.py's format, written here (one unfinished) to save a run of sample.py
    samples = [("Line 1 says:", " the 1 cats sat", True, 0.8), ("Line 1 says:", " mats mats", True, 0.2),
               ("Line 2 says:", " the 2 cats", False, 0.5), ("Line 2 says:", " on", True, 0.1),
               ("Line 3 says:", " sat", True, 0.3), ("Line 3 says:", " sat", True, 0.3)]
    (run / "samples_val_t1.jsonl").write_text("".join(json.dumps(dict(prompt=p, sample=s, terminated=done, rougeL=m))
                                                      + "\n" for p, s, done, m in samples))
    run_script([f"--out_dir={run}", f"--features={features}", "--device=cpu"], script="analyze_reward.py")
    summary = check_outputs(run, ["bpe"], {"starts_with_space", "token_length"})["runs"]["bpe"]
    assert summary["metric"] == "rougeL" and summary["tokenizer"] == "gpt2"
    assert summary["pick_prompts"] == 2  # prompt 3's samples tie on ROUGE-L: nothing to pick
    check_rewards_against_naive_loop(run, run, "bpe", [m for _, _, _, m in samples])
