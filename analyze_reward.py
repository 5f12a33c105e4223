"""
Read the reward a model learned: per-token heatmaps, returns of good and bad completions, return
against the task metric (the paper's analysis), the value of the prompt, and instructed features.

    python sample.py --out_dir=out                            # first: K=4 samples at temperature 1
    python analyze_reward.py --out_dir=out                    # one run (MLE or IRL, char or BPE)
    python analyze_reward.py --out_dir=out/irl,out/mle --results=results/reward   # side by side
    python analyze_reward.py --out_dir=out --features=my_features.py   # your own features

What is measured (docs/method.md section 6). Any completion y of a prompt x gets, under a trained
model, the per-token reward of irl_loss.py, r_t = q_t - gamma (1 - done_t) v_{t+1}, and the return
R = sum_k gamma^k r_k (k = 0 at the first completion token). For a terminated completion the sum
telescopes: R = sum_k gamma^k log pi_k + v_0(x), so with gamma = 1, R = log p(y | x) + v_0(x).
Within one prompt the return ranks completions by likelihood; across prompts v_0 decides. IRL's TD
term trains v_0(x) to track the surprisal still to come, so returns of different prompts become
comparable; MLE leaves v_0 arbitrary (softmax ignores it). The script checks the identity on real
completions and reports the largest error.

For each run it scores the first max_prompts expert completions of the split, one corruption of
each (arith: one step's result off by a little, carried to the answer; text: the words shuffled)
and the samples sample.py wrote to the run's folder, then writes into `results`:
    reward_heatmap_<run>.png  completions as text, each token coloured by r_t (one per run)
    reward_returns.png        returns of expert, sampled and corrupted completions
    reward_vs_metric.png      return against accuracy / ROUGE-L of each sample, Spearman's rho
    reward_v0.png             v_0 per prompt: against the expert's surprisal, and run against run
    reward_features.png       instructed-feature weights with 95% intervals and R^2
    reward_tokens_<run>.jsonl every scored completion: token texts, r_t, log pi_t, return, v_0
    reward_summary.json       every number above, per run
and prints the numbers. Spearman's rho of return and metric is taken over a run's own samples,
with a bootstrap standard error over prompts, next to the rho of log p(y | x) alone (what v_0
adds) and, with several runs, the rho over all runs' samples pooled: the same completions under
each reward. Among the K samples of a prompt, "pick rate" is how often the sample with the highest
return has the best metric, among prompts whose samples differ in it; "chance" is what picking one
at random scores on the same prompts.

Instructed features (docs/method.md section 7, features.py): r_t is regressed by least squares on a
few features an analyst names (digits, operators, step separators, the answer, EOS, position,
repetition, ...), each weight with a 95% interval, and R^2 says how much of the reward they explain.
That paper also models bounded rationality, as noise on the value of future actions; in our soft-Q
reading this is exactly the Boltzmann (softmax) policy pi = softmax(Q), whose temperature is the
noise scale (1 here, in logit units), so there is nothing more to build for it.
"""
import importlib
import json
import math
import os
import random
import textwrap

import numpy as np
import torch

from checkpoint import load_checkpoint, model_from_checkpoint, tokenizer_of
from checks import check_device
from configurator import SEED_RANGE, configure, settings_of
from dataset import (dataset_inputs, encode_example, encode_scored, jsonl_rows, load_dataset,
                     make_batch)
from features import feature_matrix, is_eos, least_squares, load_features, token_texts
from irl_loss import q_and_v, token_rewards
import metrics
from runfiles import (check_out_dir, check_outputs, fail, json_text, run_inputs, save_figure,
                      stop_on_interrupt, write_atomically)

# -----------------------------------------------------------------------------
out_dir = "out"  # the run(s): folders with ckpt.pt (or .pt paths); several comma-separated: out/irl,out/mle
results = ""  # where figures and reward_summary.json go; '' = the first run's folder
dataset = ""  # expert completions from this dataset; '' = the one the first run was trained on
tokenizer = ""  # only for nanoGPT checkpoints, which carry none: gpt2
split = "val"  # split of the expert completions
max_prompts = 200  # expert completions (each with one corruption) scored per run (0 = all)
samples = ""  # sample.py's JSONL in each run's folder; '' = samples_<split>_t1.jsonl; none = skip
features = ""  # a .py file of feature functions (see features.py); '' = the task's default set
heatmap_rows = 4  # expert completions and samples, each, drawn in the heatmaps (0 = no heatmaps)
batch_size = 64  # completions scored together
seed = 1337  # seed of the corruptions
device = ""  # '' = cuda if available, else mps, else cpu; or cpu | cuda | cuda:1 | mps
# -----------------------------------------------------------------------------
stop_on_interrupt("analyze_reward.py")
settings = settings_of(globals(), __file__)
globals().update(configure(settings, __file__, ranges=dict(
    max_prompts=(0, None), heatmap_rows=(0, None), batch_size=(1, None), seed=SEED_RANGE)))
PROMPT_CHARS = 24  # the heatmaps show at most the end of a prompt this long


# ----------------------------------------------------------------------------- inputs

def name_runs(out_dir):
    """[dict(name, folder, ckpt)]: the runs of --out_dir, each named for its folder, uniquely."""
    runs = []
    for path in [p for p in out_dir.split(",") if p]:
        folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
        name = os.path.basename(os.path.abspath(folder)) or "run"
        while name in [r["name"] for r in runs]:
            name += "_"
        ckpt = os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path
        runs.append(dict(name=name, folder=folder, ckpt=ckpt))
    if not runs:
        fail("--out_dir names no run; give a folder with ckpt.pt, or several: "
             "--out_dir=out/irl,out/mle")
    return runs


def read_samples(path, folder, source):
    """sample.py's rows in path as completions to score; ValueError naming the line of a bad one."""
    rows = []
    for line_no, row in jsonl_rows(path, "samples file"):
        # the metric, arith: correct (0/1); text: ROUGE-L
        metric = row.get("correct", row.get("rougeL")) if isinstance(row, dict) else None
        is_row = isinstance(row, dict) and isinstance(row.get("prompt"), str) \
            and isinstance(row.get("sample"), str)
        if not is_row or not (metric is None or isinstance(metric, (bool, int, float))
                              and math.isfinite(metric)):
            raise ValueError(f"{path}:{line_no} is not a sample.py row; write the file again with "
                             f"python sample.py --out_dir={folder}")
        if row["sample"] or row.get("terminated"):  # an empty, unfinished sample has no tokens
            rows.append(dict(kind="sample", source=source, prompt=row["prompt"],
                             completion=row["sample"], terminated=bool(row.get("terminated", True)),
                             metric=None if metric is None else float(metric)))
    return rows


def load_run(run, device, samples_name):
    """Add to the run its tokenizer, model, training config, gamma and samples."""
    checkpoint = load_checkpoint(run["ckpt"])
    run.update(tok=tokenizer_of(checkpoint, tokenizer),
               model=model_from_checkpoint(checkpoint).to(device).eval(),
               config=checkpoint.get("config", {}), iter_num=checkpoint.get("iter_num"))
    run["gamma"] = float(run["config"].get("gamma", 1.0))
    samples_path = os.path.join(run["folder"], samples_name)
    if samples_name and not os.path.exists(samples_path):
        raise ValueError(f"no {samples_name} in {run['folder']}; run python sample.py "
                         f"--out_dir={run['folder']} first, or pass --samples=none")
    run["samples"] = read_samples(samples_path, run["folder"], run["name"]) if samples_name else []


def check_inputs(runs, device):
    """Check every input, in this order, and stop with the first problem: the device, --results,
    each run (checkpoint, then samples: loaded into its dict), no output in place of an input, the
    dataset's split, the features, and that every run's tokenizer encodes every completion.
    Returns (device, data, the split's (prompt, completion) pairs, the features)."""
    samples_name = "" if samples == "none" else samples or f"samples_{split}_t1.jsonl"
    try:
        device = check_device(device)
        check_out_dir(results, "results")
        for run in runs:
            load_run(run, device, samples_name)
        data_name = dataset or runs[0]["config"].get("dataset", "arith")
        to_write = ["reward_returns.png", "reward_vs_metric.png", "reward_v0.png",  # the figures
                    "reward_features.png", "reward_summary.json"]
        to_write += [f"reward_{kind}_{run['name']}.{ending}" for run in runs
                     for kind, ending in (("heatmap", "png"), ("tokens", "jsonl"))]
        # no output replaces what it is made from: the runs, their samples, the data, the features
        check_outputs(
            [(f"{name} of --results={results}", os.path.join(results, name),
              "give another --results folder") for name in to_write],
            [item for run in runs for item in run_inputs(run["ckpt"], f"--out_dir={run['ckpt']}")]
            + [(f"--samples={samples_name} of {run['folder']}",
                os.path.join(run["folder"], samples_name)) for run in runs if samples_name]
            + dataset_inputs(data_name, f"--dataset={data_name}")
            + ([(f"--features={features}", features)] if features else []))
        data = load_dataset(data_name, runs[0]["tok"])
        if not data["splits"].get(split):
            raise ValueError(f"the dataset has no {split!r} split; use --split=val or --split=test")
        feature_set = load_features(features, data["task"])
        pairs = data["splits"][split][:max_prompts or None]
        every_sample = [(r["prompt"], r["completion"]) for run in runs for r in run["samples"]]
        for run in runs:  # every run scores the data and every run's samples (pooled): a tokenizer
            for prompt, completion in pairs + every_sample:  # that cannot encode them fails here
                encode_example(run["tok"], prompt, completion)
    except (ValueError, OSError, SyntaxError) as err:
        fail(err)
    return device, data, pairs, feature_set


def shuffle_words(completion, rng):
    """The corruption for text: the same words in a random order."""
    words = completion.split(" ")
    for _ in range(10):
        rng.shuffle(words)
        if " ".join(words) != completion:
            return " ".join(words)
    raise ValueError(f"cannot shuffle {completion!r}: fewer than two different words")


def corrupt_each(pairs, task):
    """One corruption of each expert completion, by the task's corrupt() (text: shuffle_words);
    None where there is none (e.g. a one-word line: the pair is left out)."""
    task_module = importlib.import_module(f"data.{task}.prepare") if task != "text" else None
    corrupt, rng = getattr(task_module, "corrupt", shuffle_words), random.Random(seed)
    corrupted = []
    for prompt, completion in pairs:
        try:
            corrupted.append(corrupt(completion, rng))
        except ValueError:
            corrupted.append(None)
    return corrupted


runs = name_runs(out_dir)
results = results or runs[0]["folder"]
device, data, pairs, feature_set = check_inputs(runs, device)
corrupted = corrupt_each(pairs, data["task"])

# ----------------------------------------------------------------------------- score and measure

@torch.no_grad()
def score(model, tok, rows, gamma):
    """Add to each row (prompt, completion, terminated) its token texts, r_t, log pi_t, return and
    v_0, from irl_loss.token_rewards on padded batches. r_t is None for the last token of a
    completion cut by the window (no next state: no reward)."""
    block_size = model.config.block_size
    examples = [encode_scored(tok, r["prompt"], r["completion"], r["terminated"], block_size)
                for r in rows]
    for i in range(0, len(rows), batch_size):
        chunk = examples[i:i + batch_size]
        batch = {k: v.to(device) for k, v in make_batch(chunk, tok.eos_id).items()}
        q, v = q_and_v(model(batch["idx"]), batch["targets"])
        rewards, returns = token_rewards(q, v, batch["loss_mask"], batch["done"], gamma)
        log_pi = q - v                                                  # log pi_t = q_t - v_t
        for b, ((p, c), row) in enumerate(zip(chunk, rows[i:i + batch_size])):
            first = len(p) - 1  # the position whose target is the first completion token
            terminated = bool(batch["done"][b].any())
            row.update(tokens=token_texts(tok, c),
                       rewards=rewards[b, first:first + len(c)].tolist(),
                       log_pi=log_pi[b, first:first + len(c)].tolist(),
                       ret=returns[b].item(), v0=v[b, first].item(), terminated=terminated)
            if not terminated:
                row["rewards"][-1] = None
    return rows


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def discounted(values, gamma):
    return sum(gamma ** k * x for k, x in enumerate(values))


def finite(x):
    """A float for JSON, None for nan (JSON has no nan)."""
    return None if x is None or not math.isfinite(x) else float(x)


def mean_return(rows):
    return float(np.mean([r["ret"] for r in rows])) if rows else None


def by_prompt(rows):
    """The rows grouped by prompt, in order of first appearance."""
    groups = {}
    for r in rows:
        groups.setdefault(r["prompt"], []).append(r)
    return list(groups.values())


def spearman_and_se(rows, resamples=200):
    """Spearman's rho of return and metric over the rows, and its bootstrap standard error over
    prompts (a prompt's K samples are resampled together: they share v_0, are not independent)."""
    if not rows:
        return None, None
    rho = metrics.spearman([r["ret"] for r in rows], [r["metric"] for r in rows])
    groups, rng, rhos = by_prompt(rows), np.random.default_rng(seed), []
    for _ in range(resamples):
        picked = [r for i in rng.integers(len(groups), size=len(groups)) for r in groups[i]]
        rhos.append(metrics.spearman([r["ret"] for r in picked], [r["metric"] for r in picked]))
    rhos = [x for x in rhos if math.isfinite(x)]
    return finite(rho), float(np.std(rhos, ddof=1)) if len(rhos) > 1 else None


def pick_rate(groups):
    """Among prompts whose samples differ in the metric: how often the highest-return sample has the
    best metric, and the rate a random pick would have (the mean share of best samples)."""
    hits, chance = [], []
    for group in groups:
        values = [r["metric"] for r in group]
        if max(values) == min(values):
            continue
        best = max(group, key=lambda r: r["ret"])
        hits.append(best["metric"] == max(values))
        chance.append(values.count(max(values)) / len(values))
    return (float(np.mean(hits)), float(np.mean(chance)), len(hits)) if hits else (None, None, 0)


def score_run(run, pairs, corrupted):
    """Score, under the run's reward, the expert completions, their corruptions and every run's
    samples: the run's rows, experts, corrupts and sampled (its own samples) go into its dict, and
    the samples of all runs (pooled) come back."""
    model, tok, gamma = run["model"], run["tok"], run["gamma"]
    experts = [dict(kind="expert", prompt=p, completion=c, terminated=True) for p, c in pairs]
    corrupts = [dict(kind="corrupt", prompt=p, completion=c, terminated=True, expert=i)
                for i, ((p, _), c) in enumerate(zip(pairs, corrupted)) if c is not None]
    experts, corrupts = score(model, tok, experts, gamma), score(model, tok, corrupts, gamma)
    # every run's samples under this run's reward: its own, and (with several runs) the pool of all,
    # which compares the rewards on the same completions
    pooled = score(model, tok, [dict(r) for other in runs for r in other["samples"]], gamma)
    sampled = [r for r in pooled if r["source"] == run["name"]]
    run["rows"] = experts + corrupts + sampled
    run["experts"], run["corrupts"], run["sampled"] = experts, corrupts, sampled
    return pooled


def measure(run, pooled):
    """The run's summary: returns, expert against corruption, return against the metric (its own
    samples and the pool), pick rate, the telescoping check, and v_0."""
    experts, corrupts, sampled = run["experts"], run["corrupts"], run["sampled"]
    gamma, config = run["gamma"], run["config"]
    # the telescoping identity of docs/method.md section 6, on every terminated completion
    errors = [abs(r["ret"] - (discounted(r["log_pi"], gamma) + r["v0"]))
              for r in run["rows"] if r["terminated"]]
    above = [experts[r["expert"]]["ret"] > r["ret"] for r in corrupts]
    with_metric = [r for r in sampled if r["metric"] is not None]
    rate, chance, n_pick = pick_rate(by_prompt(with_metric))
    rho, rho_se = spearman_and_se(with_metric)
    pooled = [r for r in pooled if r["metric"] is not None] if len(runs) > 1 else []
    rho_pooled, rho_pooled_se = spearman_and_se(pooled) if pooled else (None, None)
    surprisal = [-discounted(r["log_pi"], gamma) for r in experts]  # -sum_k gamma^k log pi_k
    v0 = [r["v0"] for r in experts]
    sample_metric = [r["metric"] for r in with_metric]
    log_prob = [sum(r["log_pi"]) for r in with_metric]
    return dict(
        checkpoint=run["ckpt"], iter_num=run["iter_num"], loss=config.get("loss"),
        td_coef=config.get("td_coef") if config.get("loss") == "irl" else 0.0, gamma=gamma,
        tokenizer=run["tok"].state()["kind"], experts=len(experts), samples=len(sampled),
        expert_return_mean=mean_return(experts), sample_return_mean=mean_return(sampled),
        corrupt_return_mean=mean_return(corrupts),
        expert_above_corrupt=float(np.mean(above)) if above else None, corrupt_pairs=len(above),
        metric=("accuracy" if data["task"] != "text" else "rougeL") if with_metric else None,
        sample_metric_mean=float(np.mean(sample_metric)) if with_metric else None,
        spearman_return_metric=rho, spearman_return_metric_se=rho_se,
        spearman_log_prob_metric=finite(metrics.spearman(log_prob, sample_metric)),
        spearman_return_metric_pooled=rho_pooled, spearman_return_metric_pooled_se=rho_pooled_se,
        pooled_samples=len(pooled),
        pick_rate=rate, pick_chance=chance, pick_prompts=n_pick,
        telescoping_max_abs_error=max(errors) if errors else None, telescoping_checked=len(errors),
        v0_mean=float(np.mean(v0)), v0_std=float(np.std(v0)),
        spearman_v0_expert_surprisal=finite(metrics.spearman(v0, surprisal)),
        v0_slope=slope(surprisal, v0))


def slope(x, y):
    """The least-squares slope of y on x (None without two distinct x): 1 where v_0 follows the
    expert's surprisal one for one, 0 where it does not vary with it."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    spread = float(((x - x.mean()) ** 2).sum())
    return float(((x - x.mean()) * (y - y.mean())).sum() / spread) if spread > 0 else None


def fit_features(run):
    """Instructed features: r_t of the expert completions' tokens (those that have a reward) fitted
    by least squares (run["fit"]), into the run's summary. Returns the features' matrix."""
    experts = run["experts"]
    has_reward = np.array([x is not None for r in experts for x in r["rewards"]], dtype=bool)
    y = np.array([x for r in experts for x in r["rewards"] if x is not None])
    try:
        X = feature_matrix([r["tokens"] for r in experts], feature_set)[has_reward]
        fit = least_squares(X, y)
    except ValueError as err:
        fail(f"{err} (features of run {run['name']})")
    if features and fit["dependent"]:  # the analyst's own choice: say so rather than leave it out
        dependent = feature_set[fit["dependent"][0]][0]
        fail(f"{features}: feature {dependent} is a linear combination of the intercept and the "
             f"features before it on the {fit['n']} tokens of run {run['name']}; drop it, or use "
             f"more prompts")
    run["fit"] = fit
    run["summary"].update(
        feature_r2=finite(fit["r2"]), feature_tokens=fit["n"], feature_intercept=fit["intercept"],
        features={name: dict(description=description, weight=finite(w), se=finite(se),
                             ci_low=finite(lo), ci_high=finite(hi))
                  for (name, description, _), w, se, lo, hi
                  in zip(feature_set, fit["weights"], fit["se"], fit["ci_low"], fit["ci_high"])})
    return X


def print_run(run, X):
    """The run's numbers; each line says which completions it counts."""
    s, fit = run["summary"], run["fit"]
    with_metric = [r for r in run["sampled"] if r["metric"] is not None]
    print(f"{run['name']} ({s['loss']}, td_coef {s['td_coef']}): mean return of {s['experts']} "
          f"expert completions {fmt(s['expert_return_mean'])}, {s['samples']} samples "
          f"{fmt(s['sample_return_mean'])}, {len(run['corrupts'])} corrupted "
          f"{fmt(s['corrupt_return_mean'])}; expert above its corruption in "
          f"{fmt(s['expert_above_corrupt'])} of {s['corrupt_pairs']} pairs")
    n = len(with_metric)
    if len({r["metric"] for r in with_metric}) == 1:  # nothing to rank: say so, not n/a
        constant = with_metric[0]["metric"]
        correlation = f"constant ({constant:g}) over its {n} samples, no rank correlation"
    else:
        correlation = (f"Spearman {fmt(s['spearman_return_metric'])} +- "
                       f"{fmt(s['spearman_return_metric_se'])} s.e. (log p alone: "
                       f"{fmt(s['spearman_log_prob_metric'])}) over its {n} samples of "
                       f"{len(by_prompt(with_metric))} prompts")
    pooled = (f", {fmt(s['spearman_return_metric_pooled'])} +- "
              f"{fmt(s['spearman_return_metric_pooled_se'])} over all runs' "
              f"{s['pooled_samples']} samples" if s["pooled_samples"] else "")
    print(f"  return vs {s['metric']}: {correlation}{pooled}; pick rate {fmt(s['pick_rate'])} vs "
          f"chance {fmt(s['pick_chance'])} on the {s['pick_prompts']} of them whose samples differ")
    print(f"  v0 {s['v0_mean']:.3f} +- {s['v0_std']:.3f} sd over {s['experts']} prompts; "
          f"Spearman(v0, expert surprisal) {fmt(s['spearman_v0_expert_surprisal'])}, slope "
          f"{fmt(s['v0_slope'], '.2f')} (1: v0 = surprisal, as the TD term trains it; 0: flat)")
    print(f"  features: R^2 {fmt(s['feature_r2'])} of r_t on the expert completions' {fit['n']} "
          f"tokens; weight = nats of r_t above a token no feature marks, 95% interval:")
    for (name, description, _), column, w, lo, hi \
            in zip(feature_set, X.T, fit["weights"], fit["ci_low"], fit["ci_high"]):
        if math.isnan(w):  # no weight of its own (least_squares): say why
            why = ("never fires" if not column.any() else
                   f"constant ({column[0]:g} on every token)" if column.std() == 0 else
                   "left out: a linear combination of the intercept and the features above on "
                   "these tokens")
            print(f"    {name:20s} {why}")
        else:
            print(f"    {name:20s} {w:+.3f}  [{lo:+.3f}, {hi:+.3f}]  {description}")


def telescoping_check(runs):
    """The line on the telescoping identity: each run's largest error, on how many completions."""
    errors = ", ".join(
        f"{fmt(r['summary']['telescoping_max_abs_error'], '.2e')} ({r['name']}: "
        f"{r['summary']['telescoping_checked']} of its {len(r['rows'])} completions: "
        f"{len(r['experts'])} expert + {len(r['corrupts'])} corrupted + {len(r['sampled'])} "
        f"samples)" for r in runs)
    return ("check R = sum_k gamma^k log pi_k + v0 on every terminated completion: max abs error "
            + errors)


print("return R: a completion's summed per-token reward r_t, in nats; at gamma = 1, "
      "R = log p(completion | prompt) + v0\n"
      "v0: the value of the prompt, the part of R that depends on the prompt alone (logsumexp of "
      "the logits before\n"
      "    the first completion token); IRL's TD term trains it toward the surprisal of the "
      "expert's completion\n"
      "pick rate: how often the highest-return of a prompt's samples has the best metric, on the "
      "prompts whose\n"
      "    samples differ in it; chance: what picking one at random scores on them")
for run in runs:  # every count printed is of completions: expert + corrupted + samples
    pooled = score_run(run, pairs, corrupted)
    run["summary"] = measure(run, pooled)
    X = fit_features(run)
    print_run(run, X)
telescoping = telescoping_check(runs)
print(telescoping)

# ----------------------------------------------------------------------------- figures
import matplotlib  # imported here: only this part draws

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle


def save(fig, name):
    try:
        save_figure(fig, os.path.join(results, name), dpi=120, bbox_inches="tight")
    except ValueError as err:
        fail(err)
    plt.close(fig)
    figures.append(name)


def draw_heatmap(run):
    """Expert completions and samples as text: the prompt's end in grey, then each token on a
    background coloured by its reward r_t (blue positive, red negative), the return on the right."""
    shown = [("expert", r) for r in run["experts"][:heatmap_rows]]
    if run["summary"]["metric"] == "accuracy":
        verdict = {None: "", 1.0: ", right", 0.0: ", wrong"}
    else:
        verdict = {None: ""}
    for r in run["sampled"][:heatmap_rows]:
        shown.append(("sample" + verdict.get(r["metric"], f", ROUGE-L {r['metric']:.2f}"), r))
    lines = []
    for label, row in shown:
        prompt = row["prompt"].replace("\n", "↵")
        prompt = prompt if len(prompt) <= PROMPT_CHARS else "…" + prompt[1 - PROMPT_CHARS:]
        tokens = [("■" if is_eos(row["tokens"], i) else t.replace("\n", "↵"), r)
                  for i, (t, r) in enumerate(zip(row["tokens"], row["rewards"]))]
        lines.append((label, prompt, tokens, row["ret"]))
    prompt_width = max(len(p) for _, p, _, _ in lines)  # prompts right-aligned: completions aligned
    width = prompt_width + max(sum(len(t) for t, _ in toks) for _, _, toks, _ in lines)
    bound = max([abs(r) for _, _, toks, _ in lines for _, r in toks if r is not None] + [1e-6])
    norm, cmap = Normalize(-bound, bound), plt.get_cmap("RdBu")
    fig, ax = plt.subplots(figsize=(0.12 * width + 3.5, 0.4 * len(lines) + 1.0))
    for y, (label, prompt, tokens, ret) in enumerate(lines):
        ax.text(-0.5, y, label, ha="right", va="center", fontsize=8)
        x = prompt_width - len(prompt)
        letter = dict(ha="center", va="center", family="monospace", fontsize=9)
        for ch in prompt:
            ax.text(x + 0.5, y, ch, color="grey", **letter)
            x += 1
        for text, r in tokens:
            if r is not None:
                ax.add_patch(Rectangle((x, y - 0.42), len(text), 0.84, color=cmap(norm(r)),
                                       linewidth=0))
            strong = r is not None and abs(r) > 0.6 * bound  # white letters on a dark background
            for ch in text:
                ax.text(x + 0.5, y, ch, color="white" if strong else "black", **letter)
                x += 1
        ax.text(width + 1, y, f"R = {ret:.2f}", va="center", fontsize=8)
    ax.set_xlim(-0.5, width + 7)
    ax.set_ylim(len(lines) - 0.5, -0.5)
    ax.axis("off")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.03, pad=0.01,
                 label="reward $r_t$ (nats)")
    ax.set_title(f"{run['name']}: the reward of each completion token, "
                 f"$r_t = q_t - \\gamma(1-d_t)\\,v_{{t+1}}$\n"
                 f"blue: rewarded, red: penalised; grey: the end of the prompt; ■: EOS; "
                 f"R: the sum of the row", fontsize=10)
    save(fig, f"reward_heatmap_{run['name']}.png")


def draw_returns(runs):
    """Returns of expert, sampled and corrupted completions: a histogram per run."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False)
    kinds = (("expert", "experts"), ("sampled by the model", "sampled"),
             ("expert, corrupted", "corrupts"))
    for ax, run in zip(axes[0], runs):
        groups = [(kind, [r["ret"] for r in run[key]]) for kind, key in kinds if run[key]]
        bins = np.histogram_bin_edges(np.concatenate([g for _, g in groups]), bins=30)
        for kind, values in groups:
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5,
                    label=f"{kind} ({len(values)})")
        above = fmt(run["summary"]["expert_above_corrupt"], ".0%")
        ax.set_title(f"{run['name']}: return of each completion\nan expert completion beats its "
                     f"corrupted copy in {above} of pairs", fontsize=10)
        ax.set_xlabel("return R = sum of the per-token rewards (nats)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("completions (count)")
    save(fig, "reward_returns.png")


def draw_vs_metric(runs):
    """Return against the task metric, sample by sample (the paper's analysis)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False,
                             layout="constrained")
    jitter = np.random.default_rng(0)
    for ax, run in zip(axes[0], runs):
        rows = [r for r in run["sampled"] if r["metric"] is not None]
        s = run["summary"]
        y = np.array([r["metric"] for r in rows])
        if s["metric"] == "accuracy":  # 0/1: spread the points a little so that they can be seen
            y = y + jitter.uniform(-0.06, 0.06, len(y))
            ax.set_yticks([0, 1], ["wrong", "right"])
            ax.set_ylabel("the sample's answer (points spread a little)")
            best = "a right one"
        else:
            ax.set_ylabel("ROUGE-L of the sample against the reference (0 to 1)")
            best = "the best"
        ax.scatter([r["ret"] for r in rows], y, s=8, alpha=0.5)
        # the pick rate, said in words: Spearman alone mixes prompts of different difficulty
        ax.set_title(f"{run['name']}: return against the task score of {len(rows)} samples, "
                     f"Spearman ρ {fmt(s['spearman_return_metric'], '.2f')} ± "
                     f"{fmt(s['spearman_return_metric_se'], '.2f')}\n"
                     f"a prompt's highest-return sample is {best} in {fmt(s['pick_rate'], '.0%')} "
                     f"of {s['pick_prompts']} prompts\n(those whose samples differ; a random pick: "
                     f"{fmt(s['pick_chance'], '.0%')})", fontsize=9)
        ax.set_xlabel("return R of the sample (nats)")
    save(fig, "reward_vs_metric.png")


def draw_v0(runs):
    """v_0 per prompt: against the expert's surprisal, and (with several runs) the first run against
    the second."""
    two = len(runs) > 1
    # layout="constrained": room for the two-line title above the axes' own
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6, 4.6), squeeze=False,
                             layout="constrained")
    fig.suptitle("$v_0$, the value of the prompt: the part of every return that depends on the "
                 "prompt alone\n(logsumexp of the logits before the first completion token; IRL's "
                 "TD term trains it toward the grey line: the slope says how far it got)",
                 fontsize=9.5)
    ax = axes[0][0]
    for run in runs:
        surprisal = [-discounted(r["log_pi"], run["gamma"]) for r in run["experts"]]
        rho = fmt(run["summary"]["spearman_v0_expert_surprisal"], ".2f")
        ax.scatter(surprisal, [r["v0"] for r in run["experts"]], s=8, alpha=0.6,
                   label=f"{run['name']} (Spearman {rho}, slope "
                         f"{fmt(run['summary']['v0_slope'], '.2f')})")
    low, high = ax.get_xlim()
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8, label="$v_0$ = surprisal")
    ax.set_title("one point per prompt", fontsize=9)
    ax.set_xlabel(r"surprisal of the expert's completion, $-\sum_k \gamma^k \log\pi_k$ (nats)")
    ax.set_ylabel(r"$v_0(x)$, value of the prompt (nats)")
    ax.legend(fontsize=8)
    for ax, run in zip(axes[0][1:], runs[1:2]):
        ax.scatter([r["v0"] for r in runs[0]["experts"]], [r["v0"] for r in run["experts"]],
                   s=8, alpha=0.6)
        ax.set_xlabel(f"$v_0$ of {runs[0]['name']} (nats)")
        ax.set_ylabel(f"$v_0$ of {run['name']} (nats)")
        ax.set_title("the same prompts under two runs, one point per prompt", fontsize=9)
    save(fig, "reward_v0.png")


def draw_features(runs):
    """Instructed features: each run's weights with 95% intervals, each feature by its description
    (its docstring)."""
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(feature_set) + 1.6))
    ys = np.arange(len(feature_set))
    for j, run in enumerate(runs):
        fit = run["fit"]
        offset = (j - (len(runs) - 1) / 2) * 0.25
        xerr = [fit["weights"] - fit["ci_low"], fit["ci_high"] - fit["weights"]]
        ax.errorbar(fit["weights"], ys + offset, xerr=xerr, fmt="o", markersize=4, capsize=3,
                    label=f"{run['name']} ($R^2$ = {fmt(fit['r2'], '.2f')})")
    ax.axvline(0, color="grey", linewidth=0.8)
    labels = [textwrap.fill(description or name, 40) for name, description, _ in feature_set]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"What the learned reward pays for: $r_t$ fitted on named features of the tokens\n"
                 f"({runs[0]['fit']['n']} tokens of expert completions; $R^2$ = the share of "
                 f"$r_t$'s variance they explain)", fontsize=9.5)
    ax.set_xlabel("weight: nats of $r_t$ above a token no feature marks, with 95% interval")
    ax.legend(fontsize=8, title="run", title_fontsize=8)
    save(fig, "reward_features.png")


try:
    os.makedirs(results, exist_ok=True)
except OSError as err:
    fail(f"cannot make --results={results} ({err.strerror})")
figures = []  # the names of the figures drawn, in order (save adds each)
for run in runs:
    if heatmap_rows and (run["experts"] or run["sampled"]):
        draw_heatmap(run)
draw_returns(runs)
if any(r["summary"]["metric"] for r in runs):
    draw_vs_metric(runs)
draw_v0(runs)
draw_features(runs)

# ----------------------------------------------------------------------------- write
TOKEN_KEYS = ("kind", "prompt", "completion", "terminated", "tokens", "rewards", "log_pi", "ret",
              "v0", "metric")


def rounded(x):
    """Floats (in lists too) to 5 decimals: float32 has about 7 digits."""
    if isinstance(x, list):
        return [rounded(y) for y in x]
    return round(x, 5) if isinstance(x, float) else x


summary = dict(dataset=data["name"], task=data["task"], split=split, prompts=len(pairs),
               features_file=features or None, figures=figures, telescoping=telescoping,
               runs={run["name"]: run["summary"] for run in runs})
outputs = {"reward_summary.json": json_text(summary)}
for run in runs:
    outputs[f"reward_tokens_{run['name']}.jsonl"] = "".join(
        json.dumps({k: rounded(r[k]) for k in TOKEN_KEYS if k in r}) + "\n" for r in run["rows"])
for name, text in outputs.items():
    try:
        write_atomically(os.path.join(results, name), text)
    except ValueError as err:
        fail(err)
print(f"wrote {', '.join(figures + list(outputs))} to {results}")
