"""
The reward as a judge: tables and figure of task critic, from the critic_summary.json (and
critic_beam.jsonl) that critic.py wrote for every task, pool and seed. A scorer is named by the
family of its model, not by the run ("logp[mle]" for each seed's "logp[mle_s3/best]").

Each number is a mean over seeds of the mean over the test prompts; its 95% interval comes from the
two-level bootstrap over seeds and prompts (lab/stats.py): every seed judged the same prompts, each
with a pool of its own.
"""
import json
import os
import re

import numpy as np

from lab.report import FAMILY_COLOURS, json_object, pyplot
from lab.stats import bootstrap
from runfiles import read_text, save_figure

BASELINE = "logp[mle]"  # what every scorer is compared with: the likelihood of the MLE model
DRAWN = {  # the figure's scorers: (colour, line style); the per-token means are in the table only
    "return[irl]": (FAMILY_COLOURS["irl"], "--"), "logp[irl]": (FAMILY_COLOURS["irl"], "-"),
    "logp[mle]": (FAMILY_COLOURS["mle"], "-"), "logp[gem]": (FAMILY_COLOURS["gem"], "-"),
    "vote": ("tab:gray", "-"), "gail[gail]": (FAMILY_COLOURS["gail"], "-"),
    "oracle": ("black", ":")}


def family_scorer(name):
    """'logp[mle_s3/best]' -> 'logp[mle]': the scorer of a seed's run named by its family."""
    return re.sub(r"_s\d+(/\w+)?\]$", "]", name)


def read_pools(folder, pool, seeds):
    """Each seed's critic_summary.json of a pool, its scorers named by family."""
    summaries = []
    for seed in range(seeds):
        summary = json_object(os.path.join(folder, f"{pool}_s{seed}", "critic_summary.json"))
        summary["scorers"] = {family_scorer(k): v for k, v in summary["scorers"].items()}
        summaries.append(summary)
    return summaries


def per_prompt(summaries, scorer, key, n=None):
    """(seeds, prompts) array of a scorer's per-prompt best-of-n (key 'best_of') or AUC (key
    'auc'), NaN where a prompt has no pair to rank."""
    rows = []
    for summary in summaries:
        values = summary["scorers"][scorer]["per_prompt"][key]
        values = values[str(n)] if key == "best_of" else values
        rows.append([np.nan if v is None else v for v in values])
    return np.array(rows, dtype=float)


def curve(summaries, scorer, sizes):
    """A scorer's best-of-N for each N of sizes: the mean over seeds of each seed's mean over
    prompts."""
    return [np.mean([s["scorers"][scorer]["best_of"][n]["mean"] for s in summaries])
            for n in sizes]


def mean_of(values):
    """The bootstrap's statistic on a (seeds, prompts) array: the mean over the drawn seeds and
    prompts of the values that exist (None: none)."""
    def statistic(seed_idx, prompt_idx):
        drawn = values[np.ix_(seed_idx, prompt_idx)]
        return float(np.nanmean(drawn)) if np.isfinite(drawn).any() else None
    return statistic


def cell(values, signed=False):
    """'mean [low, high]' of a (seeds, prompts) array, or '—' when nothing is defined."""
    interval = bootstrap(mean_of(values), *values.shape)
    if interval["mean"] is None:
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    return (f"{f.format(interval['mean'])} [{f.format(interval['low'])}, "
            f"{f.format(interval['high'])}]")


def pool_rows(task, pool, summaries):
    """One pool's table: each scorer's best-of-N for N = 2 ... and its AUC, then each scorer
    against BASELINE at the largest N and in AUC."""
    first, seeds = summaries[0], len(summaries)
    sizes = [n for n in first["scorers"]["oracle"]["best_of"] if n != "1"]
    pool_mean = np.mean([s["pool_mean"] for s in summaries])
    rows = [f"### {task}, pool from {pool.upper()}: {first['num_candidates']} candidates per "
            f"prompt at temperature {first['temperature']:g}, {first['prompts']} test prompts, "
            f"{seeds} seeds",
            "",
            f"{first['metric']} of the candidate each scorer ranks first among N drawn from the "
            f"pool (N = 1, the pool's mean: {pool_mean:.3f}); AUC: how often the better of two "
            f"candidates of a prompt scores higher, over prompts with both (95% interval over "
            f"seeds and prompts)",
            "",
            "| scorer | " + " | ".join(f"N={n}" for n in sizes) + " | AUC |",
            "|---" * (len(sizes) + 2) + "|"]
    for scorer in first["scorers"]:
        means = curve(summaries, scorer, sizes)
        rows.append(f"| {scorer} | " + " | ".join(f"{m:.3f}" for m in means)
                    + f" | {cell(per_prompt(summaries, scorer, 'auc'))} |")
    top = sizes[-1]
    rows += ["", f"each scorer − {BASELINE} (paired by seed and prompt)", "",
             f"| scorer | best-of-{top} | AUC |", "|---|---|---|"]
    best, auc = (per_prompt(summaries, BASELINE, "best_of", top),
                 per_prompt(summaries, BASELINE, "auc"))
    for scorer in first["scorers"]:
        if scorer in (BASELINE, "oracle"):
            continue
        rows.append(f"| {scorer} | "
                    f"{cell(per_prompt(summaries, scorer, 'best_of', top) - best, True)} | "
                    f"{cell(per_prompt(summaries, scorer, 'auc') - auc, True)} |")
    return rows


def beam_rows(judged, seeds):
    """Beam search on each seed's IRL model by log p against by its implied reward, at equal
    width: the task score of each, and the difference with its interval."""
    rows = ["### beam search on the IRL model: by log p against by its implied reward (a process "
            "reward), the same width", "",
            "| task | beams | by log p | by the reward | reward − log p | completions that "
            "differ |",
            "|---|---|---|---|---|---|"]
    for task, folder in judged.items():
        runs = [os.path.join(folder, f"irl_s{seed}") for seed in range(seeds)]
        beams = [[json.loads(line) for line in read_text(os.path.join(run, "critic_beam.jsonl"))
                  .splitlines() if line.strip()] for run in runs]
        width = json_object(os.path.join(runs[0], "critic_summary.json"))["beam"]["beam_size"]
        by = {k: np.array([[r[f"{k}_beam_oracle"] for r in b] for b in beams])
              for k in ("logp", "reward")}
        differ = sum(r["logp_beam"] != r["reward_beam"] for b in beams for r in b)
        rows.append(f"| {task} | {width} | {cell(by['logp'])} | {cell(by['reward'])} | "
                    f"{cell(by['reward'] - by['logp'], True)} | {differ} of {by['logp'].size} |")
    return rows


def draw(read, seeds, path):
    """Score of the pick against N, a panel per task (columns) and pool (rows), a line per
    scorer of DRAWN, the mean over seeds; read: {task: {pool: its seeds' summaries}}."""
    plt = pyplot()
    pools = next(iter(read.values()))
    fig, axes = plt.subplots(len(pools), len(read), figsize=(4.2 * len(read), 3.4 * len(pools)),
                             squeeze=False)
    for j, (task, by_pool) in enumerate(read.items()):
        for i, (pool, summaries) in enumerate(by_pool.items()):
            ax = axes[i][j]
            sizes = list(summaries[0]["scorers"]["oracle"]["best_of"])
            for scorer, (colour, style) in DRAWN.items():
                if scorer in summaries[0]["scorers"]:
                    ax.plot([int(n) for n in sizes], curve(summaries, scorer, sizes), style,
                            color=colour, marker="o", markersize=3, label=scorer)
            ax.set_xscale("log", base=2)
            ax.set_xticks([int(n) for n in sizes], [n for n in sizes])
            ax.set_title(f"{task}: pool from {pool.upper()}", fontsize=10)
            ax.set_xlabel("N candidates")
            ax.set_ylabel(summaries[0]["metric"])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"best-of-N by each scorer, mean over {seeds} seeds", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def tables(root, judged, pools, seeds):
    """Table rows of every task judged ({task: its folder of runs}); the figure into
    root/figure.png."""
    rows = ["## the reward as a judge: best-of-N and pairwise ranking on one pool per prompt", "",
            "return[irl] is the return of IRL's implied reward, logp[m] the log-likelihood under "
            "model m (_mean: per token), vote the answer most candidates give. At γ = 1 an "
            "ended candidate's return is its log p under the same model plus v_0 of the prompt "
            "(docs/method.md, section 11): return[irl] and logp[irl] pick alike.", ""]
    read = {task: {pool: read_pools(folder, pool, seeds) for pool in pools}
            for task, folder in judged.items()}
    for task, by_pool in read.items():
        for pool, summaries in by_pool.items():
            rows += pool_rows(task, pool, summaries) + [""]
    rows += beam_rows(judged, seeds)
    draw(read, seeds, os.path.join(root, "figure.png"))
    return rows
