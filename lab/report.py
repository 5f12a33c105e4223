"""
The experiments' tables and figures, drawn from what the runs wrote (their log.jsonl, sample and
reward summaries): Markdown rows, each task's figure.png and the README's overview.png. A file that
cannot be read, is empty, or lacks a number the tables need stops it with one line naming the file
(and line) and how to make it again.
"""
import functools
import json
import os

import numpy as np

from lab.runner import decoding_file, reward_file, run_dir
from lab import search
from lab.stats import (NLL_TOLERANCE, RESOLVE, best, best_row, bootstrap, expected_max, levelled,
                       matched_difference, overlap, paired, window_start)
from lab.tasks import CONTROL, FAMILIES, FROM_MLE, SYSTEMS, search_space
from metrics import mean_se
from runfiles import json_problem, read_text, save_figure, write_atomically

HEADINGS = dict(  # sample.py's key: the table's column
    self_bleu="Self-BLEU", distinct_2="distinct-2", phoneme_error_rate="phoneme error rate",
    bleu="BLEU (phonemes)", rouge1="ROUGE-1", rouge2="ROUGE-2")
OVERVIEW = {  # README's figure: the paper's three kinds of task, each its best-against-best curves
    os.path.join("tuned", "arith"): "arith: reasoning with a verifier",
    "cmudict": "cmudict: translation (spelling → pronunciation)",
    "shakespeare": "shakespeare: continuing real text (next line)"}


REMADE = {  # a file's name: how to make it again
    "log.jsonl": "remove the run's folder and run the same command to train it again",
    "reward_summary.json": "remove it and run the same command to analyse the run again",
    "curves.json": "remove it and run its task again to draw it again"}
SAMPLED_AGAIN = "remove it and run the same command to sample the run again"  # sample.py's summary
REWARD_KEYS = ["spearman_return_metric", "spearman_log_prob_metric", "pick_rate", "pick_chance",
               "v0_mean"]  # what the reward table reads of a run's reward analysis (null: none)


def remedied(read_file):
    """read_file(path, ...), its ValueError ending with how to make the file again."""
    @functools.wraps(read_file)
    def reading(path, *args):
        try:
            return read_file(path, *args)
        except ValueError as err:
            remedy = REMADE.get(os.path.basename(path), SAMPLED_AGAIN)
            raise ValueError(f"{err}; {remedy}") from None
    return reading


def file_text(path):
    text = read_text(path)  # a missing file, or not UTF-8: named
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def loads(text, path, line=None):
    """The JSON value of text, from path (at line, for a JSONL file)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        line = line or getattr(err, "lineno", None)
        raise ValueError(f"{path}{f':{line}' if line else ''}: not valid JSON "
                         f"({json_problem(err)})") from None


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numbers(where, record, required=(), optional=()):
    """ValueError naming where and the key unless every key of required is a number in record and
    every key of optional a number or null (or absent)."""
    for key in required:
        if key not in record:
            raise ValueError(f"{where}: no {key}")
    for key in [*required, *optional]:
        if not is_number(record.get(key)) and (key in required or record.get(key) is not None):
            raise ValueError(f"{where}: {key} is {record[key]!r}, not a number")


def json_object(path):
    value = loads(file_text(path), path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


read = remedied(json_object)  # a JSON file of the experiment's own (curves.json)


@remedied
def read_summary(path, required=(), optional=()):
    """sample.py's summary of a decoding: a JSON object, the keys of required numbers, those of
    optional numbers or null."""
    summary = json_object(path)
    numbers(path, summary, required, optional)
    return summary


@remedied
def read_reward(path, name, keys=REWARD_KEYS):
    """Run name's part of analyze_reward.py's summary; keys: numbers or null."""
    runs = json_object(path).get("runs")
    run = runs.get(name) if isinstance(runs, dict) else None
    if not isinstance(run, dict):
        raise ValueError(f"{path}: its runs hold no {name}")
    numbers(f"{path}: runs.{name}", run, optional=keys)
    return run


@remedied
def read_log(path, keys=()):
    """The rows of a run's log.jsonl: JSON objects with a whole-number iter, their val/ values
    numbers, each of keys in every row."""
    rows = []
    for number, line in enumerate(file_text(path).splitlines(), 1):
        if not line.strip():
            continue
        row, where = loads(line, path, number), f"{path}:{number}"
        if not isinstance(row, dict) or not isinstance(row.get("iter"), int) or row["iter"] < 0:
            raise ValueError(f"{where}: not a log row (a JSON object with a whole-number iter)")
        numbers(where, row, keys, [key for key in row if key.startswith("val/")])
        rows.append(row)
    return rows


def read_logs(dirs, keys=()):
    """The log rows of the runs in dirs (a system's seeds), all evaluated at the same iterations."""
    paths = [os.path.join(d, "log.jsonl") for d in dirs]
    logs = [read_log(path, keys) for path in paths]
    iters = lambda log: [r["iter"] for r in log]
    for path, log in zip(paths, logs):
        if iters(log) != iters(logs[0]):
            raise ValueError(f"{path}: evaluations at iters {iters(log)[:3]}... ({len(log)}), not "
                             f"at those of {paths[0]} ({len(logs[0])}); {REMADE['log.jsonl']}")
    return logs


def timing_line(path):
    """The last line of a task's table.md: the timing of the command that ran its runs."""
    lines = read_text(path, "table").strip().splitlines()
    if not lines or "minutes of wall time" not in lines[-1]:
        raise ValueError(f"{path} does not end with its timing line ('`python lab/experiment.py "
                         f"...`: N minutes of wall time ...'); restore it from git, or remove it "
                         f"to time this command")
    return lines[-1]


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    return plt


def ms(values, digits=3):
    """'mean ± s.e.' of values (None left out)."""
    values = [v for v in values if v is not None]
    return f"{mean_se(values)[0]:.{digits}f} ± {mean_se(values)[1]:.{digits}f}" if values else "—"


def diff_cells(d, digits=3):
    """A paired difference as table cells: 'mean ± s.e.' and the seeds that resolve RESOLVE."""
    if not d:
        return ["—", "—"]
    return [f"{d['mean']:+.{digits}f} ± {d['se']:.{digits}f}", str(d["resolve"])]


# ---------------------------------------------------------------------- score against diversity
def score_vs_diversity(name, spec, seeds):
    """Figures 2-3 from the runs of spec (lab/experiment.py's compare()): each decoding's scores,
    paired differences to the base (the first system) or to the control, learning curves and the
    reward analysis as table rows; the figure in root/figure.png, its data in root/curves.json."""
    get = per_seed(spec, seeds)
    rows = decoding_rows(name, spec, seeds, get) + [""] + paired_rows(name, spec, seeds, get)
    if spec.get("fresh"):
        rows += [""] + fresh_rows(name, spec, seeds, get)
    metric, curve_key, chosen = spec["metric"], spec["early_stop"], list(spec["systems"])
    what = curve_key if curve_key == "val/nll" else "greedy val " + metric  # train.py's evaluation
    rows += ["", f"## {name}: learning curves, {what} at each evaluation (mean ± s.e.)"]
    runs = {spec["systems"][s][0]: [run_dir(spec["root"], s, seed) for seed in range(seeds)]
            for s in chosen if spec["systems"][s][1] is not None}  # trained: a log
    rows += learning_curves(runs, curve_key, 2 if metric == "accuracy" else 3)  # nll: third decimal
    if spec["analyzed"]:
        rows += ["", f"## {name}: reward analysis (samples at T=1; at γ=1 return = log p + v_0, so "
                 f"within a prompt return ranks as log p: the pick rate is log p's, and return − "
                 f"log p is what v_0 adds)", ""]
        rows += reward_table(spec["root"], spec["analyzed"], spec["systems"], seeds)
    draw_score_vs_diversity(name, spec, seeds, get)
    return rows


def per_seed(spec, seeds):
    """get(system, decoding, key) -> [the value of key in sample.py's summary, per seed] of spec's
    runs, and get(system, decoding, key, per_prompt=True) -> an array (seeds, prompts) of each
    prompt's value, or None where a summary holds none; the K samples of a deterministic decoding
    (greedy, beam) would be equal: Self-BLEU 1."""
    split, deterministic = spec["sampling"]["split"], spec["decodings"][:2]
    scores = spec["also_scored"] + ["self_bleu", "distinct_2"]
    needed = lambda d: [spec["metric"]] + ([] if d in deterministic else ["self_bleu"])
    summary = {(s, d, seed): read_summary(decoding_file(run_dir(spec["root"], s, seed), d, split),
                                          needed(d), scores)
               for s in spec["systems"] for d in spec["decodings"] for seed in range(seeds)}

    def get(s, d, key, per_prompt=False):
        if not per_prompt:
            return [1.0 if key == "self_bleu" and d in deterministic
                    else summary[(s, d, seed)].get(key) for seed in range(seeds)]
        if key == "self_bleu" and d in deterministic:  # every prompt's Self-BLEU is 1
            scores = get(s, d, spec["metric"], per_prompt=True)
            return None if scores is None else np.ones_like(scores)
        lists = [summary[(s, d, seed)].get("per_prompt", {}).get(key) for seed in range(seeds)]
        if any(not isinstance(v, list) or len(v) != len(lists[0]) for v in lists):
            return None
        return np.array(lists, dtype=float)
    return get


def decoding_rows(name, spec, seeds, get):
    """The table of every system's scores at each decoding, mean ± s.e. over seeds."""
    sampling, metric = spec["sampling"], spec["metric"]
    scores = [metric] + spec["also_scored"] + ["self_bleu", "distinct_2"]
    rows = [f"## {name}: {metric} by decoding ({seeds} seeds, {sampling['prompts']} "
            f"{sampling['split']} prompts, mean ± s.e.)", "",
            "| system | decoding | " + " | ".join(HEADINGS.get(key, key) for key in scores) + " |",
            "|---" * (len(scores) + 2) + "|"]
    return rows + [f"| {label} | {'T=' + d[1:] if d[0] == 't' else d} | "
                   + " | ".join(ms(get(s, d, key)) for key in scores) + " |"
                   for s, (label, _) in spec["systems"].items() for d in spec["decodings"]]


def paired_rows(name, spec, seeds, get):
    """The table of paired differences, system − base (or − the control for those fine-tuned from
    MLE): at matched Self-BLEU (stats.matched_difference), greedy, beam, and beam − greedy; each
    with its 95% interval over seeds and prompts (bootstrapped) where the summaries keep each
    prompt's scores; the Self-BLEU range both curves cover and the widest gap between adjacent
    points of the system's own curve."""
    metric, beam, chosen = spec["metric"], spec["decodings"][1], list(spec["systems"])
    base, label = chosen[0], lambda s: spec["systems"][s][0]
    on_curve = ["greedy"] + spec["decodings"][2:]  # the temperatures, greedy as T=0
    curve = lambda s, seed: [(get(s, d, "self_bleu")[seed], get(s, d, metric)[seed])
                             for d in on_curve]
    rows = [f"## {name}: paired differences, system − {label(base)}, or − the control for systems "
            f"fine-tuned from MLE (mean ± s.e. over seeds, then the 95% interval of a bootstrap "
            f"over seeds and prompts; 'seeds': how many would bring the 95% half-width 1.96 "
            f"sd/√n down to {RESOLVE}; 'Self-BLEU range': the range both curves cover, mean over "
            f"seeds; 'widest gap': between adjacent points of the system's curve, the widest over "
            f"seeds)", "",
            f"| system | {metric} at matched Self-BLEU | seeds | Self-BLEU range | widest gap | "
            f"greedy | seeds | {beam} | seeds | {beam} − greedy (own) |", "|---" * 10 + "|"]
    # online IQ-Learn and GAIL fine-tune MLE for a few hundred steps more: the control (MLE on the
    # same schedule) isolates their part
    for s in chosen[1:]:
        other = CONTROL if s in FROM_MLE and s != CONTROL and CONTROL in chosen else base
        matched = [matched_difference(curve(s, seed), curve(other, seed)) for seed in range(seeds)]
        ranges = [overlap(curve(s, seed), curve(other, seed)) for seed in range(seeds)]
        ranges = [r for r in ranges if r]
        span = (f"{np.mean([r[0] for r in ranges]):.3f}–{np.mean([r[1] for r in ranges]):.3f}"
                if ranges else "none")
        gaps = [np.diff(sorted(x for x, _ in curve(s, seed))).max() for seed in range(seeds)]
        cells = with_interval(diff_cells(paired(matched, [0.0] * seeds)),
                              matched_statistic(get, s, other, on_curve, metric))
        cells += [span, f"{max(gaps):.3f}"]
        for d in ("greedy", beam):
            cells += with_interval(diff_cells(paired(get(s, d, metric), get(other, d, metric))),
                                   difference_statistic(get, (s, d), (other, d), metric))
        cells += diff_cells(paired(get(s, beam, metric), get(s, "greedy", metric)))[:1]
        versus = "" if other == base else f" − {label(other)}"
        rows.append(f"| {label(s)}{versus} | " + " | ".join(cells) + " |")
    return rows


def fresh_rows(name, spec, seeds, get):
    """The table of each system's metric on the test problems that are no reordering of a train
    problem (spec["fresh"], their indices), greedy, beam and T = 1, mean ± s.e. over seeds, and
    greedy − the base's greedy there, with its bootstrap interval over seeds and prompts."""
    keep, metric, beam = spec["fresh"], spec["metric"], spec["decodings"][1]
    decodings = [d for d in ("greedy", beam, "t1") if d in spec["decodings"]]
    base, base_greedy = list(spec["systems"])[0], None
    rows = [f"## {name}: {metric} on the {len(keep)} of {spec['sampling']['prompts']} test "
            f"problems that are no reordering of a train problem (mean ± s.e. over seeds)", "",
            "| system | " + " | ".join(decodings) + f" | greedy − {spec['systems'][base][0]} |",
            "|---" * (len(decodings) + 2) + "|"]
    for s, (label, _) in spec["systems"].items():
        scores = {d: get(s, d, metric, per_prompt=True) for d in decodings}
        if any(a is None for a in scores.values()):
            continue  # no per-prompt scores: the table would be empty
        means = {d: list(scores[d][:, keep].mean(1)) for d in decodings}  # per seed
        cells = [ms(means[d]) for d in decodings]
        if s == base:
            base_greedy = means["greedy"]
        if base_greedy is None or s == base:  # no difference to take
            cells.append("—")
        else:
            cells += with_interval(diff_cells(paired(means["greedy"], base_greedy)),
                                   difference_statistic(get, (s, "greedy"), (base, "greedy"),
                                                        metric, keep))[:1]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def with_interval(cells, statistic):
    """diff_cells' [mean ± s.e., seeds] with the bootstrap's 95% interval after the first, where
    statistic is (function, seeds, prompts) (None: the summaries keep no per-prompt scores)."""
    if statistic is None or cells[0] == "—":
        return cells
    interval = bootstrap(*statistic)
    if interval["low"] is None:
        return cells
    return [f"{cells[0]} [{interval['low']:+.3f}, {interval['high']:+.3f}]", cells[1]]


def difference_statistic(get, run, other, metric, keep=None):
    """(statistic, seeds, prompts) for stats.bootstrap: the mean over the drawn seeds and prompts
    of run's metric − other's, run and other (system, decoding), on the prompts of keep (indices;
    None: all); None without per-prompt scores."""
    a, b = get(*run, metric, per_prompt=True), get(*other, metric, per_prompt=True)
    if a is None or b is None or a.shape != b.shape:
        return None
    diff = a - b if keep is None else (a - b)[:, keep]
    return (lambda seeds, prompts: float(diff[np.ix_(seeds, prompts)].mean()), *diff.shape)


def matched_statistic(get, s, other, on_curve, metric):
    """(statistic, seeds, prompts) for stats.bootstrap: the mean over the drawn seeds of s − other
    at matched Self-BLEU, each curve's points the means over the drawn prompts; None without
    per-prompt scores."""
    arrays = {(x, d, key): get(x, d, key, per_prompt=True)
              for x in (s, other) for d in on_curve for key in ("self_bleu", metric)}
    if any(a is None for a in arrays.values()):
        return None

    def statistic(seeds, prompts):
        points = lambda x, seed: [(arrays[(x, d, "self_bleu")][seed, prompts].mean(),
                                   arrays[(x, d, metric)][seed, prompts].mean()) for d in on_curve]
        diffs = [matched_difference(points(s, seed), points(other, seed)) for seed in seeds]
        return None if None in diffs else float(np.mean(diffs))
    return (statistic, *arrays[(s, on_curve[0], metric)].shape)


def draw_score_vs_diversity(name, spec, seeds, get):
    """root/figure.png: each system's curve of score against Self-BLEU, greedy to the hottest,
    and beam search's point; its data in root/curves.json (for overview())."""
    metric, decodings, chosen = spec["metric"], spec["decodings"], list(spec["systems"])
    greedy = lambda s: np.mean(get(s, "greedy", metric))
    # one panel of the systems that work; one that collapsed (greedy below half the base's) would
    # squeeze the rest into a strip, so it is named in a note instead
    shown = [s for s in chosen if greedy(s) >= greedy(chosen[0]) / 2]
    # per system shown: its key (its colour), its curve (Self-BLEU, score, s.e.), each point's
    # decoding and beam's (score, s.e.)
    lines, named = [], lambda d: "T=" + d[1:] if d[0] == "t" else d  # t0.5: T=0.5
    for s in shown:
        points = sorted((np.mean(get(s, d, "self_bleu")), *mean_se(get(s, d, metric)), named(d))
                        for d in ["greedy"] + decodings[2:])
        lines.append(dict(label=spec["systems"][s][0], system=s,
                          curve=[list(map(float, p[:3])) for p in points],
                          decodings=[p[3] for p in points],
                          beam=list(map(float, mean_se(get(s, decodings[1], metric))))))
    temps = ", ".join(d[1:] for d in decodings[2:])
    drawn = dict(metric=metric, split=spec["sampling"]["split"], seeds=seeds, lines=lines, title=(
        f"{name}: task score against diversity, each curve greedy (right) to T = {temps}\n"
        f"x = beam search ({decodings[1][4:]} beams); mean over {seeds} seeds, band ± s.e.\n"
        f"{comparison(name)}"),
        collapsed=[f"{spec['systems'][s][0]} (greedy {greedy(s):.2f})"
                   for s in chosen if s not in shown])
    write_atomically(os.path.join(spec["root"], "curves.json"), json.dumps(drawn, indent=1) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    draw_curves(ax, drawn)
    ax.set_title(drawn["title"], fontsize=10)
    fig.tight_layout()
    save_figure(fig, os.path.join(spec["root"], "figure.png"), dpi=120)


def learning_curves(runs, key="val/accuracy", digits=2):
    """Table rows: key (val accuracy, or ROUGE-L) at each evaluation (train.py's greedy, on its
    eval_prompts), mean ± s.e. to `digits` decimals; runs: {label: [out_dir per seed]}, one table
    per schedule (its evaluation iterations)."""
    by_schedule = {}
    for label, dirs in runs.items():
        logs = read_logs(dirs)
        by_schedule.setdefault(tuple(r["iter"] for r in logs[0]), []).append((label, logs))
    rows = []
    for iters, group in by_schedule.items():
        rows += ["", "| system | " + " | ".join(f"iter {i}" for i in iters) + " |",
                 "|---" * (len(iters) + 1) + "|"]
        rows += [f"| {label} | " + " | ".join(ms([log[k].get(key) for log in logs], digits)
                                              for k in range(len(iters))) + " |"
                 for label, logs in group]
    return rows


def reward_table(root, analyzed, systems, seeds):
    """The reward analysis over seeds: Spearman(return, metric) over all samples, the same for
    log p alone, what v_0 adds (their paired difference) and the pick rate within prompts."""
    rows = ["| system | λ | Spearman(return, metric) | Spearman(log p, metric) | return − log p | "
            "pick rate | chance | v_0 mean | seeds |", "|---" * 9 + "|"]
    for system in analyzed:
        runs = [read_reward(reward_file(run_dir(root, system, seed)), f"{system}_s{seed}")
                for seed in range(seeds)]
        get = lambda key: [r[key] for r in runs]
        flags = dict(f[2:].split("=", 1) for f in systems[system][1] if "=" in f)
        td = flags.get("td_coef", "0.1") if flags.get("loss") == "irl" else "0"  # train.py's: 0.1
        v0_adds = paired(get("spearman_return_metric"), get("spearman_log_prob_metric"))
        answered = sum(v is not None for v in get("spearman_return_metric"))  # None: none right
        rows.append(f"| {systems[system][0]} | {td} | {ms(get('spearman_return_metric'))} | "
                    f"{ms(get('spearman_log_prob_metric'))} | {diff_cells(v0_adds)[0]} | "
                    f"{ms(get('pick_rate'))} | {ms(get('pick_chance'))} | {ms(get('v0_mean'), 2)} "
                    f"| {answered} |")
    return rows


# One colour per family in every figure; several systems of a family in one figure (online IQ-Learn
# at three λ) share it, told apart by line style (score against diversity) or marker (val curves)
FAMILY_COLOURS = {  # family: colour
    "mle": "tab:blue", "ent": "tab:orange", "dft": "tab:brown", "gem": "tab:green",
    "irl": "tab:red", "online": "tab:purple", "gail": "tab:pink",
    "mle+ft": "tab:cyan", "base": "tab:gray"}  # the control (MLE fine-tuned); a base model
STYLES = ["-", "--", ":", "-."]  # line styles of a family's first, second ... system
MARKERS = [None, "o", "s", "^"]  # markers of the same


def family_of(system):
    """The family of a system's key, by its name: the longest family it begins with (irl0.1: irl,
    mle+ft: mle+ft, not mle)."""
    families = [f for f in FAMILY_COLOURS if isinstance(system, str) and system.startswith(f)]
    if not families:
        raise ValueError(f"system {system!r} is of no family ({', '.join(FAMILY_COLOURS)})")
    return max(families, key=len)


def variants(systems):
    """{system: how many systems of its family come before it in systems} (0, 1, 2 ...)."""
    families = [family_of(s) for s in systems]
    return {s: families[:i].count(families[i]) for i, s in enumerate(systems)}


def comparison(name):
    """What a figure of task `name` compares: best against best (the tuned tasks), or each system
    against the default MLE, untuned."""
    if name.startswith("tuned"):
        return "best against best: each family's configuration tuned on val, early-stopped"
    return ("untuned: against the default MLE (train.py's defaults: no dropout, one learning rate, "
            "no early stopping)")


def draw_curves(ax, drawn, short=False):
    """score_vs_diversity's figure on ax, from its curves.json (drawn), each point named by its
    decoding; short: family names only in the legend, and only the first curve's points named
    (greedy, then the temperature alone: the others are at the same decodings)."""
    variant = variants([line["system"] for line in drawn["lines"]])
    for n, line in enumerate(drawn["lines"]):
        color = FAMILY_COLOURS[family_of(line["system"])]
        x, y, se = map(np.array, zip(*line["curve"]))
        ax.plot(x, y, marker="o", linestyle=STYLES[variant[line["system"]] % 4], color=color,
                markersize=4, label=line["label"].split(" (")[0] if short else line["label"])
        ax.fill_between(x, y - se, y + se, color=color, alpha=0.15)
        # greedy is at Self-BLEU 1 on every curve (beam's x beside it): named on the first only
        for xy, decoding in zip(zip(x, y), line["decodings"]):
            if n == 0 or not short and decoding != "greedy":
                ax.annotate(decoding.replace("T=", "") if short else decoding, xy, xytext=(3, 3),
                            textcoords="offset points", fontsize=6, color=color)  # off the marker
        ax.errorbar([1.0], [line["beam"][0]], yerr=[line["beam"][1]], fmt="x", color=color,
                    markersize=8, capsize=3)
    ax.set_xlabel("Self-BLEU among the K samples of a prompt (lower = more diverse; greedy and "
                  "beam search at 1)" if not short else "Self-BLEU (lower = more diverse)")
    ax.set_ylabel(f"{drawn['metric']} of the completions, {drawn['split']} split")
    if drawn["collapsed"]:
        ax.text(0.01, 0.01, "not shown, collapsed: " + "; ".join(drawn["collapsed"]),
                transform=ax.transAxes, fontsize=8 if not short else 7)
    ax.legend(fontsize=9 if not short else 8, loc="best")


def overview(results):
    """Draw results/overview.png from the three tasks' curves.json, once all three have run; the
    path, or None."""
    files = [os.path.join(results, folder, "curves.json") for folder in OVERVIEW]
    if not all(map(os.path.exists, files)):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(files), figsize=(16, 5))
    for ax, path, title in zip(axes, files, OVERVIEW.values()):
        drawn = read(path)
        try:
            draw_curves(ax, drawn, short=True)
            ax.set_title(f"{title}\n{drawn['split']} split, {drawn['seeds']} seeds, band ± s.e.; "
                         f"x = beam search; first curve's numbers: T", fontsize=10)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"{path}: not the curves experiment.py writes ({type(err).__name__}: "
                             f"{err}); {REMADE['curves.json']}") from None
    fig.suptitle("Task score against diversity: each family's best configuration, tuned on val "
                 "(greedy at the right, then hotter samples)", fontsize=11)
    fig.tight_layout()
    path = os.path.join(results, "overview.png")
    save_figure(fig, path, dpi=100)
    return path


# ---------------------------------------------------------------------- val curves (small data)
def val_curves(name, groups, title, seeds, path):
    """The small-data figure at path: val nll and greedy val accuracy against iteration, one line
    per group {(system, data label): [out_dir per seed]}, band ± s.e.; and the table of start /
    final / best."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = ["| system | data | val nll: start | final | min | final − min (overfitting) | greedy "
            "val acc.: start | final | best | final acc. − MLE | seeds |", "|---" * 11 + "|"]
    variant = variants(list(dict.fromkeys(s for s, _ in groups)))
    data_seen = list(dict.fromkeys(d for _, d in groups))
    logs = {key: read_logs(dirs, ["val/nll", "val/accuracy"]) for key, dirs in groups.items()}
    for (system, data), seed_logs in logs.items():
        iters = np.array([r["iter"] for r in seed_logs[0]])
        color = FAMILY_COLOURS[family_of(system)]
        style = STYLES[data_seen.index(data) % 4]  # the data by line style, the system by marker
        for ax, key in zip(axes, ("val/nll", "val/accuracy")):
            mean, se = map(np.array, zip(*[mean_se([log[k][key] for log in seed_logs])
                                           for k in range(len(iters))]))
            ax.plot(iters, mean, style, color=color, marker=MARKERS[variant[system] % 4],
                    markersize=3, label=f"{SYSTEMS[system][0]}, {data}")
            ax.fill_between(iters, mean - se, mean + se, color=color, alpha=0.15)
        column = lambda key, pick: [pick([r[key] for r in log]) for log in seed_logs]
        first, last = (lambda v: v[0]), (lambda v: v[-1])
        vs_mle = None
        if system != "mle" and ("mle", data) in logs:
            mle_last = [log[-1]["val/accuracy"] for log in logs[("mle", data)]]
            vs_mle = paired(column("val/accuracy", last), mle_last)
        cells = [ms(column("val/nll", f)) for f in (first, last, min)]
        cells += [ms(column("val/nll", lambda v: v[-1] - min(v)))]  # per seed: risen from its best
        cells += [ms(column("val/accuracy", f)) for f in (first, last, max)] + diff_cells(vs_mle)
        rows.append(f"| {SYSTEMS[system][0]} | {data} | " + " | ".join(cells) + " |")
    for ax, key in zip(axes, ("val nll (per completion token)", "greedy val accuracy")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    # val nll on a log scale, plain numbers (0.6, not 6×10⁻¹), no label twice: the decades, and
    # between them, within a decade every tick with as many digits as tell them apart (0.58,
    # 0.585), over one 2, 3 and 5 of each decade
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, ScalarFormatter
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FormatStrFormatter("%g"))
    low, high = axes[0].get_ylim()
    between = FuncFormatter(lambda y, _: f"{y:g}" if round(y / 10 ** np.floor(np.log10(y)))
                            in (2, 3, 5) else "")
    if high / low < 10:
        between = ScalarFormatter(useOffset=False)
        between.set_scientific(False)
    axes[0].yaxis.set_minor_formatter(between)
    fig.suptitle(f"{title} ({seeds} seeds, band ± s.e.)\n{comparison(name)}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return [f"## {name}: {title} ({seeds} seeds, mean ± s.e.)", ""] + rows


# ---------------------------------------------------------------------- best against best (tuned)
def trials_table(name, root, setting, drawn, past, flags_of, tuning_dirs, scores, picks):
    """A tuned setting's random search: root/trials.jsonl (a line per tuning run), root/search.png
    (each family's expected best val score against the number of random trials) and table rows:
    every trial's values, val score, where its best.pt was, whether it levelled off; each family's
    choice of the random search, where it lies at an edge of a range, the trials past that edge
    and the final choice. drawn, past {family: {trial: {setting: value}}}: the random trials, the
    trials past an edge (lab/search.py); flags_of(family, trial): the train.py flags it adds to
    the task's; tuning_dirs(trial): its runs' folders; scores {trial: mean val score}; picks
    {family: trial}."""
    metric, stop, prompts = setting["metric"], setting["early_stop"], setting["prompts"]
    lines, rows = [], []
    for family, named in drawn.items():
        for trial, values in {**named, **past.get(family, {})}.items():
            logs = [read_log(os.path.join(d, "log.jsonl"), [stop]) for d in tuning_dirs(trial)]
            tests = [levelled_off(log, stop) for log in logs]
            for d, seed_log, seed in zip(tuning_dirs(trial), logs, setting["tuning_seeds"]):
                lines.append(dict(family=family, trial=trial, seed=seed,
                                  flags=dict(map(flag_pair, flags_of(family, trial))),
                                  val_score=read_summary(decoding_file(d, setting["choose_by"],
                                                                       "val"), [metric])[metric],
                                  best_iter=best_row(seed_log, stop)["iter"],
                                  past_edge=trial in past.get(family, {}),
                                  chosen=trial == picks[family]))
            knobs = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in values.items())
            rows.append(f"| {FAMILIES[family][0]} | {trial} | {knobs} | {scores[trial]:.3f} | "
                        f"{', '.join(str(line['best_iter']) for line in lines[-len(logs):])} | "
                        f"{', '.join(t['cell'] for t in tests)} | "
                        f"{'✓' if trial == picks[family] else ''} |")
    write_atomically(os.path.join(root, "trials.jsonl"),
                     "".join(json.dumps(line) + "\n" for line in lines))
    decoding = "greedy" if setting["choose_by"] == "greedy" else f"T = {setting['choose_by'][1:]}"
    head = [f"## tuned {name}: the random search ({setting['trials']} trials a family; a trial's "
            f"score: {metric} of its best.pt ({stop}) on {prompts} val prompts, {decoding}, mean "
            f"over tuning seeds {setting['tuning_seeds']}; 'rise': a line through the last "
            f"quarter of the run's evaluations, against one evaluation's s.e. (val nll: "
            f"{NLL_TOLERANCE} nats), with the evaluations in that quarter; a trial _p<k>: past "
            f"the edge of a range where the random search's choice lay)", "",
            "| family | trial | settings | val score | best at iter | rise over the last quarter "
            "(evaluations) | chosen |", "|---" * 7 + "|"]
    edges = ["", f"## tuned {name}: each family's choice against the ranges searched", "",
             "| family | the random search's choice | at an edge of its range | tried past the "
             "edge (val score) | chosen |", "|---" * 5 + "|"]
    for family, named in drawn.items():
        first = best(named, f"val/{metric}", lambda t: scores[t])
        at = search.at_edges(named[first], search_space(setting, family))
        tried = ", ".join(f"{trial} ({scores[trial]:.3f})" for trial in past.get(family, {}))
        edges.append(f"| {FAMILIES[family][0]} | {first} | {', '.join(at) or 'no'} | "
                     f"{tried or '—'} | {picks[family]} |")
    evp = draw_expected_best(name, root, drawn, scores, metric)
    return head + rows + edges + ["", f"## tuned {name}: expected best val score of n trials "
                                  f"(Dodge et al. 2019; search.png)", ""] + evp


def flag_pair(flag):
    """'--name=value' as (name, value), value a number where it reads as one."""
    name, _, value = flag[2:].partition("=")
    try:
        return name, float(value)
    except ValueError:
        return name, value


def levelled_off(log, key):
    """stats.levelled over the last quarter of a run's iterations: {gain, tolerance, evaluations
    in the window, cell (the table's '+0.012 < 0.025 (8)')}."""
    evaluated = [r["iter"] for r in log if key in r]
    window = min(window_start(evaluated[-1]), evaluated[-2])  # at least 2 (--quick's short runs)
    gain, tolerance = levelled(log, key, window=window)
    count = sum(key in r and r["iter"] >= window for r in log)
    sign = "<" if gain < tolerance else "≥"
    return dict(gain=gain, tolerance=tolerance, evaluations=count,
                cell=f"{gain:+.3f} {sign} {tolerance:.3f} ({count})")


def draw_expected_best(name, root, drawn, scores, metric):
    """root/search.png: per family, the expected best val score of n of its trials drawn at random
    (stats.expected_max), n = 1 to all; the same numbers as table rows."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    n_trials = max(len(named) for named in drawn.values())
    rows = ["| family | " + " | ".join(f"n = {n}" for n in range(1, n_trials + 1)) + " |",
            "|---" * (n_trials + 1) + "|"]
    for family, named in drawn.items():
        values = [scores[t] for t in named]
        curve = [expected_max(values, n) for n in range(1, len(values) + 1)]
        ax.plot(range(1, len(values) + 1), curve, "o-", label=FAMILIES[family][0],
                color=FAMILY_COLOURS[family])
        rows.append(f"| {FAMILIES[family][0]} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    ax.set_xlabel("trials of random search")
    ax.set_ylabel(f"expected best val {metric}")
    ax.set_title(f"tuned {name}: expected best of n trials (Dodge et al. 2019)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(root, "search.png"), dpi=120)
    return rows


def levelled_rows(name, spec, seeds):
    """Table rows: per system of spec (score_vs_diversity's), the gain of a line through the last
    quarter of each final run's iterations (levelled_off), against its tolerance, how many
    evaluations that quarter holds, and how many runs levelled off."""
    key, metric = spec["early_stop"], spec["metric"]
    what, gain, tolerance = ((f"greedy val {metric}", "rise", "one evaluation's s.e.")
                             if key == f"val/{metric}" else (key, "fall", "tolerance"))
    rows = [f"## {name}: levelled off? (the {gain} of a line through the last quarter of each "
            f"run's {what}, mean ± s.e. over seeds, against {tolerance})", "",
            f"| system | {gain} over the last quarter | {tolerance} | evaluations in it | runs "
            f"levelled off | per run |", "|---" * 6 + "|"]
    for s, (label, flags) in spec["systems"].items():
        if flags is None:  # not trained
            continue
        tests = [levelled_off(read_log(os.path.join(run_dir(spec["root"], s, seed), "log.jsonl"),
                                       [key]), key) for seed in range(seeds)]
        rows.append(f"| {label} | {ms([t['gain'] for t in tests])} | "
                    f"{ms([t['tolerance'] for t in tests])} | "
                    f"{min(t['evaluations'] for t in tests)} | "
                    f"{sum(t['gain'] < t['tolerance'] for t in tests)} of {seeds} | "
                    f"{', '.join(t['cell'] for t in tests)} |")
    return rows
