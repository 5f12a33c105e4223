"""
The paper's main experiment, small: task score against diversity for MLE, offline IQ-Learn at
several td_coef, online IQ-Learn and GAIL (its figures 2-3), and the small-data ablation (its
figure 7). Runs train.py and sample.py as a user would, several seeds each, then draws one point
per (system, temperature) with standard-error bars.

    python experiment.py                          # arith: accuracy vs Self-BLEU, all systems
    python experiment.py --task=small_data        # arith, 5% vs 100% of train: val curves
    python experiment.py --task=shakespeare       # ROUGE-L vs Self-BLEU, MLE vs IRL

Every run goes to results/<task>/<run>/ and is skipped when its files already exist, so an
interrupted experiment continues where it stopped (small_data reuses arith's 100% runs when they
are there). Writes results/<task>/figure.png and table.md. Ctrl-C (or a run that fails) stops the
runs in progress at once; what they saved is kept, and the same command continues from there.

Runs go `jobs` at a time, each on one thread (OMP_NUM_THREADS=1): the models are too small for a
second thread to speed a run up by much, so two one-thread runs side by side use a 2-core CPU
better than one two-thread run after another. A run's numbers depend on its thread count through
float rounding, so a table is reproduced exactly only with the same thread count and CPU.
"""
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from checkpoint import check_out_dir, lock_out_dir, save_figure, write_atomically
from configurator import configure, parse_list, stop_on_interrupt
from metrics import mean_se

# -----------------------------------------------------------------------------
task = "arith"  # arith | shakespeare | small_data
td_coefs = ""  # td_coef values, 0 is MLE; '' = the task's own (arith 0,0.01,0.1,1; else 0,0.1)
systems = "online,gail,mle300"  # arith only: online IQ-Learn, GAIL, MLE +300 steps (GAIL's control); '' = none
seeds = 3  # seeds per setting
temperatures = "0.5,1.0"  # sampling temperatures
num_samples = 4  # K samples per prompt
max_prompts = 100  # val prompts sampled
jobs = 2  # runs at a time, one thread each
train_args = ""  # extra train.py flags for every run, e.g. "--max_iters=300"
results = "results"  # where runs, table and figure go
# -----------------------------------------------------------------------------
settings = {k: v for k, v in globals().items() if not k.startswith("_")
            and isinstance(v, (bool, int, float, str, type(None)))}
globals().update(configure(settings, __file__, ranges=dict(
    seeds=(1, None), jobs=(1, None), num_samples=(2, None), max_prompts=(1, None))))  # Self-BLEU needs 2 samples


def fail(message):
    sys.exit(f"experiment.py: error: {message}")


if task not in ("arith", "shakespeare", "small_data"):
    fail(f"--task={task!r}; use arith, shakespeare or small_data")

TASKS = {  # per task: train.py flags, the task metric sample.py reports, td_coefs by default
    "arith": (["--dataset=arith", "--eval_interval=250"], "accuracy", "0,0.01,0.1,1"),
    "small_data": (["--dataset=arith", "--eval_interval=250"], "accuracy", "0,0.1"),
    "shakespeare": (["config/shakespeare_char.py"], "rougeL", "0,0.1"),
}
flags, metric, default_td_coefs = TASKS[task]
root = os.path.join(results, task)
# online IQ-Learn (docs/method.md section 4) at the td_coef of the default run, and GAIL (section 5) fine-tuning
# each seed's MLE run for 300 steps; "MLE +300" continues MLE on the same schedule: GAIL's control
FINE_TUNE = ["--learning_rate=1e-4", "--min_lr=1e-5", "--warmup_iters=10", "--max_iters=300",
             "--lr_decay_iters=300", "--eval_interval=100"]
SYSTEMS = {
    "online": ("online IQ-Learn α=0.1", ["--loss=irl", "--td_coef=0.1", "--mix_in=0.1", "--sample_fraction=0.25",
                                         "--sample_every=4", "--max_new_tokens=40"], None),
    "gail": ("GAIL (MLE +300 steps)", ["--loss=gail", "--max_new_tokens=40"] + FINE_TUNE, "td0"),
    "mle300": ("MLE +300 steps (GAIL's control)", ["--loss=mle"] + FINE_TUNE, "td0"),
}
# every flag is checked before the first run trains, and where the results go
try:
    td_values = parse_list("td_coefs", td_coefs or default_td_coefs, float, low=0)
    temperature_values = parse_list("temperatures", temperatures, float, low=0)
    extra = [s for s in systems.split(",") if s] if task == "arith" else []
    for system in extra:
        if system not in SYSTEMS:
            raise ValueError(f"--systems={systems!r}: unknown system {system!r}; use {', '.join(SYSTEMS)}")
    check_out_dir(results, "results")
except ValueError as err:
    fail(err)
stop_on_interrupt("experiment.py", f"the runs in progress were stopped; finished runs and the checkpoints of "
                                   f"the others are kept in {root}: run the same command to continue")
children, children_lock = set(), threading.Lock()  # the train.py / sample.py processes now running
stopping = threading.Event()  # set once the experiment stops: no new run starts


def stop_children():
    """End the runs in progress (their last checkpoint stays: saves are atomic) and start no new one."""
    with children_lock:
        stopping.set()
        running = list(children)
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(command, done_file):
    """Run a script on one thread unless done_file exists; returns seconds spent (0 when skipped)."""
    if done_file is not None and os.path.exists(done_file):
        return 0.0
    with children_lock:  # no new process once stop_children() began
        if stopping.is_set():
            sys.exit("experiment.py: stopped")
        print("$", " ".join(command), flush=True)
        t0 = time.time()
        process = subprocess.Popen([sys.executable] + command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        children.add(process)
    _, stderr = process.communicate()
    with children_lock:
        children.discard(process)
    if process.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"
        fail(f"{' '.join(command)} failed: {last}")
    return time.time() - t0


def train_and_sample(out_dir, train_flags, seed, sample=True):
    """One run: train.py, then sample.py at each temperature. Returns (out_dir, summaries, seconds).
    An interrupted run with a checkpoint is resumed; one that died before its first checkpoint
    starts afresh."""
    # the task's flags (perhaps a config file, which sets an out_dir of its own) first: later flags win
    command = ["train.py", *flags, f"--out_dir={out_dir}", f"--seed={seed}", *train_flags, *train_args.split()]
    trained = os.path.join(out_dir, "trained")  # written once train.py got to max_iters
    if os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        command.append("--init_from=resume")  # the last --init_from wins
    elif os.path.exists(os.path.join(out_dir, "log.jsonl")) and not os.path.exists(trained):
        os.remove(os.path.join(out_dir, "log.jsonl"))  # the log of a start that saved nothing
    seconds = run(command, trained)
    open(trained, "w").close()
    summaries = {}
    for temperature in temperature_values if sample else []:
        out_file = os.path.join(out_dir, f"samples_t{temperature:g}.jsonl")
        seconds += run(["sample.py", f"--out_dir={out_dir}", f"--temperature={temperature}",
                        f"--num_samples={num_samples}", f"--max_prompts={max_prompts}",
                        f"--seed={seed}", f"--out_file={out_file}"], out_file[:-1])
        with open(out_file[:-1]) as f:  # samples_t1.json: the summary
            summaries[temperature] = json.load(f)
    return out_dir, summaries, seconds


def run_all(runs):
    """runs: {(system, seed): (out_dir, train flags, sample?)}, run `jobs` at a time.
    Returns {(system, seed): (out_dir, summaries, seconds)}."""
    pool = ThreadPoolExecutor(jobs)
    try:
        futures = {key: pool.submit(train_and_sample, out_dir, train_flags, key[1], sample)
                   for key, (out_dir, train_flags, sample) in runs.items()}
        done = {key: future.result() for key, future in futures.items()}
    except BaseException:  # a failed run or Ctrl-C: stop the others now, not after every queued run
        stop_children()
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()
    return done


def td_runs(folder, td_values, suffix="", extra=(), sample=True):
    """The MLE/IRL runs in folder: td_coef 0 is --loss=mle (the same numbers as irl at td_coef 0)."""
    loss_flags = lambda td: ["--loss=mle"] if td == 0 else ["--loss=irl", f"--td_coef={td}"]
    return {(f"td{td:g}{suffix}", seed): (os.path.join(folder, f"td{td:g}{suffix}_s{seed}"),
                                          loss_flags(td) + list(extra), sample)
            for td in td_values for seed in range(seeds)}


def label(system):
    if system in SYSTEMS:
        return SYSTEMS[system][0]
    td = float(system[2:])
    return "MLE" if td == 0 else f"IRL td_coef={td:g}"


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    return plt


def score_vs_diversity():
    """Figures 2-3: one point per (system, temperature), mean +- s.e. over seeds; and a table."""
    done = run_all(td_runs(root, td_values))
    fine_tuned = {}
    for system in extra:  # GAIL and its control start from each seed's MLE checkpoint
        _, system_flags, parent = SYSTEMS[system]
        for seed in range(seeds):
            start = [f"--init_from={os.path.join(root, f'{parent}_s{seed}', 'ckpt.pt')}"] if parent else []
            fine_tuned[(system, seed)] = (os.path.join(root, f"{system}_s{seed}"), system_flags + start, True)
    if extra and 0.0 not in td_values:  # the MLE runs GAIL starts from
        run_all(td_runs(root, [0.0]))
    done.update(run_all(fine_tuned))
    total_seconds = sum(seconds for _, _, seconds in done.values())

    plt = pyplot()
    header = f"| system | T | {metric} | Self-BLEU | distinct-2 | entropy | greedy acc. | ms/step (sampling) |"
    rows = [header, "|---" * 8 + "|"]
    fig, ax = plt.subplots(figsize=(7, 5))
    order = [f"td{td:g}" for td in td_values] + extra
    markers = dict(zip(sorted(set(temperature_values)), "s^ovD"))
    for i, system in enumerate(order):
        seed_runs = [done[(system, seed)] for seed in range(seeds)]
        logs = [read_log(out_dir) for out_dir, _, _ in seed_runs]
        greedy = mean_se([log[-1]["val/accuracy"] for log in logs]) if "val/accuracy" in logs[0][-1] else None
        # the mean time per step so far, from the last evaluation that has it (a resumed run's first has not)
        timed = [next(r for r in reversed(log) if "time/update_ms" in r) for log in logs]
        step_ms = mean_se([r["time/update_ms"] + r["time/sample_ms"] for r in timed])
        sample_ms = mean_se([r["time/sample_ms"] for r in timed])
        curve = []  # the system's points, joined by a line: its trade-off as the temperature moves
        for temperature in markers:
            summaries = [summaries[temperature] for _, summaries, _ in seed_runs]
            stats = {k: mean_se([s[k] for s in summaries]) for k in (metric, "self_bleu", "distinct_2", "entropy")}
            cells = [f"{m:.3f} ± {se:.3f}" for m, se in stats.values()]
            cells.append(f"{greedy[0]:.3f} ± {greedy[1]:.3f}" if greedy else "")
            cells.append(f"{step_ms[0]:.0f} ({sample_ms[0]:.0f})")
            rows.append(f"| {label(system)} | {temperature:g} | " + " | ".join(cells) + " |")
            ax.errorbar(stats["self_bleu"][0], stats[metric][0], xerr=stats["self_bleu"][1],
                        yerr=stats[metric][1], fmt=markers[temperature], color=plt.cm.tab10(i), capsize=3,
                        label=f"{label(system)}, T={temperature:g}")
            curve.append((stats["self_bleu"][0], stats[metric][0]))
        ax.plot(*zip(*curve), color=plt.cm.tab10(i), linewidth=0.8, alpha=0.6)
    ax.set_xlabel("Self-BLEU among K samples (lower = more diverse)")
    ax.set_ylabel(f"{metric} of samples")
    ax.set_title(f"{task}: task score vs diversity ({seeds} seeds, mean ± s.e.)")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    save_figure(fig, os.path.join(root, "figure.png"), dpi=120)
    return rows, total_seconds


def small_data():
    """Figure 7: MLE vs IRL trained on 5% and 100% of arith; val nll and accuracy over training.
    The 100% runs are arith's own (results/arith/td*_s*) when they exist."""
    fraction_data = os.path.join(root, "arith_5pct")
    if not os.path.exists(os.path.join(fraction_data, "train.jsonl")):
        from data.arith.prepare import prepare
        prepare(fraction_data)
        with open(os.path.join(fraction_data, "train.jsonl")) as f:
            lines = f.readlines()
        write_atomically(os.path.join(fraction_data, "train.jsonl"), "".join(lines[: len(lines) // 20]))
    full = run_all(td_runs(os.path.join(results, "arith"), td_values, sample=False))  # arith's, if there
    small = run_all(td_runs(root, td_values, "_5pct", [f"--dataset={fraction_data}"], sample=False))
    total_seconds = sum(seconds for _, _, seconds in list(full.values()) + list(small.values()))
    plt = pyplot()
    rows = ["| system | data | final val nll | final greedy val accuracy | best greedy val accuracy |", "|---" * 5 + "|"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, td in enumerate(td_values):
        for data_name, done, system in (("100%", full, f"td{td:g}"), ("5%", small, f"td{td:g}_5pct")):
            logs = [read_log(done[(system, seed)][0]) for seed in range(seeds)]
            iters = [r["iter"] for r in logs[0]]
            for ax, key in zip(axes, ("val/nll", "val/accuracy")):
                means = [mean_se([log[k][key] for log in logs]) for k in range(len(iters))]
                ax.errorbar(iters, [m for m, _ in means], yerr=[s for _, s in means], capsize=2,
                            color=plt.cm.tab10(i), linestyle="-" if data_name == "100%" else "--",
                            label=f"{label(f'td{td:g}')}, {data_name} of train")
            final = [mean_se([log[-1][k] for log in logs]) for k in ("val/nll", "val/accuracy")]
            best = mean_se([max(r["val/accuracy"] for r in log) for log in logs])
            rows.append(f"| {label(f'td{td:g}')} | {data_name} | " + " | ".join(
                f"{m:.3f} ± {s:.3f}" for m, s in final + [best]) + " |")
    for ax, key in zip(axes, ("val nll (per completion token)", "greedy val accuracy")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.suptitle(f"arith, 5% vs 100% of the train split ({seeds} seeds, mean ± s.e.)")
    fig.tight_layout()
    save_figure(fig, os.path.join(root, "figure.png"), dpi=120)
    return rows, total_seconds


def main():
    t0 = time.time()
    rows, run_seconds = small_data() if task == "small_data" else score_vs_diversity()
    command = ("python experiment.py " + " ".join(sys.argv[1:])).strip()
    table_file = os.path.join(root, "table.md")
    if run_seconds == 0 and os.path.exists(table_file):  # only redrawn: keep the timing of the runs
        with open(table_file) as f:
            timing = f.read().strip().splitlines()[-1].split(": ", 1)[-1]
    elif run_seconds == 0:
        timing = "every run was already done; this invocation redrew the table and figure from their files"
    else:
        timing = (f"{(time.time() - t0) / 60:.1f} minutes wall in this invocation, "
                  f"{jobs} runs at a time ({run_seconds / 60:.1f} minutes of runs)")
    table = "\n".join(rows) + f"\n\n`{command}`: {timing}\n"
    write_atomically(table_file, table)
    print(table)
    print(f"wrote {root}/figure.png and {root}/table.md")


if __name__ == "__main__":
    try:
        lock_out_dir(root)  # one experiment at a time on a results folder
        main()
    except (ValueError, OSError) as err:  # a folder in use, a file that cannot be written (a full disk)
        fail(err)
