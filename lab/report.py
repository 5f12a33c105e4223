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
from lab.stats import (NLL_TOLERANCE, RESOLVE, best_row, levelled, matched_difference, overlap,
                       paired)
from lab.tasks import CONTROL, FROM_MLE, SYSTEMS
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
    metric, curve_key, chosen = spec["metric"], spec["early_stop"], list(spec["systems"])
    what = curve_key if curve_key == "val/nll" else "greedy val " + metric  # train.py's evaluation
    rows += ["", f"## {name}: learning curves, {what} at each evaluation (mean ± s.e.)"]
    runs = {spec["systems"][s][0]: [run_dir(spec["root"], s, seed) for seed in range(seeds)]
            for s in chosen}
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
    runs; the K samples of a deterministic decoding (greedy, beam) would be equal: Self-BLEU 1."""
    split, deterministic = spec["sampling"]["split"], spec["decodings"][:2]
    scores = spec["also_scored"] + ["self_bleu", "distinct_2"]
    needed = lambda d: [spec["metric"]] + ([] if d in deterministic else ["self_bleu"])
    summary = {(s, d, seed): read_summary(decoding_file(run_dir(spec["root"], s, seed), d, split),
                                          needed(d), scores)
               for s in spec["systems"] for d in spec["decodings"] for seed in range(seeds)}
    return lambda s, d, key: [1.0 if key == "self_bleu" and d in deterministic
                              else summary[(s, d, seed)].get(key) for seed in range(seeds)]


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
    MLE): at matched Self-BLEU (stats.matched_difference), greedy, beam, and beam − greedy."""
    metric, beam, chosen = spec["metric"], spec["decodings"][1], list(spec["systems"])
    base, label = chosen[0], lambda s: spec["systems"][s][0]
    on_curve = ["greedy"] + spec["decodings"][2:]  # the temperatures, greedy as T=0
    curve = lambda s, seed: [(get(s, d, "self_bleu")[seed], get(s, d, metric)[seed])
                             for d in on_curve]
    rows = [f"## {name}: paired differences, system − {label(base)}, or − the control for systems "
            f"fine-tuned from MLE (mean ± s.e. over seeds; 'seeds': how many would bring the 95% "
            f"half-width 1.96 sd/√n down to {RESOLVE}, which is 50% power against a true "
            f"{RESOLVE}, 80% needs about twice as many; 'Self-BLEU range': the range both curves "
            f"cover, mean over seeds)", "",
            f"| system | {metric} at matched Self-BLEU | seeds | Self-BLEU range | greedy | seeds "
            f"| {beam} | seeds | {beam} − greedy (own) |", "|---" * 9 + "|"]
    # online IQ-Learn and GAIL fine-tune MLE for a few hundred steps more: the control (MLE on the
    # same schedule) isolates their part
    for s in chosen[1:]:
        other = CONTROL if s in FROM_MLE and s != CONTROL and CONTROL in chosen else base
        matched = [matched_difference(curve(s, seed), curve(other, seed)) for seed in range(seeds)]
        ranges = [overlap(curve(s, seed), curve(other, seed)) for seed in range(seeds)]
        ranges = [r for r in ranges if r]
        span = (f"{np.mean([r[0] for r in ranges]):.3f}–{np.mean([r[1] for r in ranges]):.3f}"
                if ranges else "none")
        cells = diff_cells(paired(matched, [0.0] * seeds)) + [span]
        cells += [cell for d in ("greedy", beam)
                  for cell in diff_cells(paired(get(s, d, metric), get(other, d, metric)))]
        cells += diff_cells(paired(get(s, beam, metric), get(s, "greedy", metric)))[:1]
        versus = "" if other == base else f" − {label(other)}"
        rows.append(f"| {label(s)}{versus} | " + " | ".join(cells) + " |")
    return rows


def draw_score_vs_diversity(name, spec, seeds, get):
    """root/figure.png: each system's curve of score against Self-BLEU, greedy to the hottest,
    and beam search's point; its data in root/curves.json (for overview())."""
    metric, decodings, chosen = spec["metric"], spec["decodings"], list(spec["systems"])
    greedy = lambda s: np.mean(get(s, "greedy", metric))
    # one panel of the systems that work; one that collapsed (greedy below half the base's) would
    # squeeze the rest into a strip, so it is named in a note instead
    shown = [s for s in chosen if greedy(s) >= greedy(chosen[0]) / 2]
    lines = []  # per system shown: its curve (Self-BLEU, score, s.e.) and beam's (score, s.e.)
    for s in shown:
        points = sorted((np.mean(get(s, d, "self_bleu")), *mean_se(get(s, d, metric)))
                        for d in ["greedy"] + decodings[2:])
        lines.append(dict(label=spec["systems"][s][0], color=chosen.index(s),
                          curve=[list(map(float, p)) for p in points],
                          beam=list(map(float, mean_se(get(s, decodings[1], metric))))))
    temps = ", ".join(d[1:] for d in decodings[2:])
    drawn = dict(metric=metric, split=spec["sampling"]["split"], seeds=seeds, lines=lines, title=(
        f"{name}: task score against diversity, each curve greedy (right) to T = {temps}\n"
        f"x = beam search ({decodings[1][4:]} beams); mean over {seeds} seeds, band ± s.e."),
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


def draw_curves(ax, drawn, short=False):
    """score_vs_diversity's figure on ax, from its curves.json (drawn); short: family names only in
    the legend."""
    plt = pyplot()
    for line in drawn["lines"]:
        color = plt.cm.tab10(line["color"] % 10)
        x, y, se = map(np.array, zip(*line["curve"]))
        ax.plot(x, y, "o-", color=color, markersize=4,
                label=line["label"].split(" (")[0] if short else line["label"])
        ax.fill_between(x, y - se, y + se, color=color, alpha=0.15)
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
                         f"x = beam search", fontsize=10)
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
    systems_seen = list(dict.fromkeys(s for s, _ in groups))
    data_seen = list(dict.fromkeys(d for _, d in groups))
    logs = {key: read_logs(dirs, ["val/nll", "val/accuracy"]) for key, dirs in groups.items()}
    for (system, data), seed_logs in logs.items():
        iters = np.array([r["iter"] for r in seed_logs[0]])
        color = plt.cm.tab10(systems_seen.index(system) % 10)
        style = ["-", "--", ":", "-."][data_seen.index(data) % 4]
        for ax, key in zip(axes, ("val/nll", "val/accuracy")):
            mean, se = map(np.array, zip(*[mean_se([log[k][key] for log in seed_logs])
                                           for k in range(len(iters))]))
            ax.plot(iters, mean, style, color=color, label=f"{SYSTEMS[system][0]}, {data}")
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
    axes[0].set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter
    for ticks in (axes[0].yaxis.set_major_formatter, axes[0].yaxis.set_minor_formatter):
        ticks(FormatStrFormatter("%.2g"))  # 0.6, not 6×10⁻¹
    fig.suptitle(f"{title} ({seeds} seeds, band ± s.e.)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return [f"## {name}: {title} ({seeds} seeds, mean ± s.e.)", ""] + rows


# ---------------------------------------------------------------------- best against best (tuned)
def grid_table(name, setting, grid, tuning_dirs, scores, picks):
    """Table rows of a tuned setting's grid: each configuration's score (mean over the tuning
    seeds), where its best.pt was, whether its runs levelled off (stats.levelled), and each family's
    choice. tuning_dirs(configuration): its runs' folders; scores {configuration: score}; picks
    {family: configuration}."""
    metric, stop, prompts = setting["metric"], setting["early_stop"], setting["prompts"]
    by_score = stop == f"val/{metric}"
    if by_score:
        score, gain, tolerance = (f"greedy {metric} of each run's best.pt on {prompts} val prompts",
                                  "rise", "one evaluation's s.e.")
    else:
        score, gain, tolerance = (f"lowest {stop} of each run", "fall",
                                  f"a tolerance of {NLL_TOLERANCE} nats")
    column = f"val {metric} (best.pt)" if by_score else stop
    rows = [f"## tuned {name}: the grid ({score}, mean over tuning seeds "
            f"{setting['tuning_seeds']}; '{gain}': a line through the last quarter of the run's "
            f"evaluations, against {tolerance})", "",
            f"| family | configuration | {column} | best at iter | {gain} over the last quarter | "
            f"{'s.e.' if by_score else 'tolerance'} | levelled off | chosen |", "|---" * 8 + "|"]
    for family, configs in grid.items():
        for c in configs:
            logs = [read_log(os.path.join(d, "log.jsonl"), [stop]) for d in tuning_dirs(c)]
            best_iters = [best_row(log, stop)["iter"] for log in logs]
            rises = [levelled(log, stop) for log in logs]
            levelled_off = "yes" if all(r < e for r, e in rises) else "no"
            rows.append(f"| {setting['families'][family][0]} | {c} | {scores[c]:.3f} | "
                        f"{', '.join(map(str, best_iters))} | "
                        f"{', '.join(f'{r:+.3f}' for r, _ in rises)} | "
                        f"{', '.join(f'{e:.3f}' for _, e in rises)} | {levelled_off} | "
                        f"{'✓' if c == picks[family] else ''} |")
    return rows


def levelled_rows(name, spec, seeds):
    """Table rows: per system of spec (score_vs_diversity's), the gain of a line through the last
    quarter of each final run's evaluations (stats.levelled), against its tolerance, and how many
    runs levelled off."""
    key, metric = spec["early_stop"], spec["metric"]
    what, gain, tolerance = ((f"greedy val {metric}", "rise", "one evaluation's s.e.")
                             if key == f"val/{metric}" else (key, "fall", "tolerance"))
    rows = [f"## {name}: levelled off? (the {gain} of a line through the last quarter of each "
            f"run's {what}, mean ± s.e. over seeds, against {tolerance})", "",
            f"| system | {gain} over the last quarter | {tolerance} | runs levelled off |",
            "|---" * 4 + "|"]
    for s, (label, _) in spec["systems"].items():
        rises = [levelled(read_log(os.path.join(run_dir(spec["root"], s, seed), "log.jsonl"),
                                   [key]), key) for seed in range(seeds)]
        rows.append(f"| {label} | {ms([r for r, _ in rises])} | {ms([e for _, e in rises])} | "
                    f"{sum(r < e for r, e in rises)} of {seeds} |")
    return rows
