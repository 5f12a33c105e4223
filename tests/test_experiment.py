"""The experiment lab (lab/): its statistics, on hand-worked examples (no training); tiny experiments run
from a folder of the user's own, by hand from --plan's commands, and under --quick; and results/README.md's
commands against --help."""
import contextlib
import io
import json
import math
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

argv, handler = sys.argv, signal.getsignal(signal.SIGINT)
sys.argv = ["experiment.py"]  # lab/experiment.py reads its flags at import: none here, not pytest's
import lab.experiment as experiment  # noqa: E402
sys.argv = argv
signal.signal(signal.SIGINT, handler)  # importing installs experiment.py's Ctrl-C message
from configurator import help_lines  # noqa: E402
from dataset import prepare_task  # noqa: E402
from lab import report, stats  # noqa: E402
from lab.report import diff_cells, ms  # noqa: E402
from lab.runner import Runner, last_wins  # noqa: E402
import runfiles  # noqa: E402
import tests.test_bad_inputs as table  # noqa: E402
from tests.helpers import EXPERIMENT, ROOT  # noqa: E402


def test_interpolate_sorts_points_and_averages_ties():
    curve = [(1.0, 0.5), (0.2, 0.1), (0.6, 0.3), (0.6, 0.5)]  # (Self-BLEU, accuracy), out of order, a tie at 0.6
    assert stats.interpolate(curve, 0.4) == pytest.approx(0.25)   # halfway from (0.2, 0.1) to (0.6, 0.4)
    assert stats.interpolate(curve, 0.8) == pytest.approx(0.45)   # halfway from (0.6, 0.4) to (1.0, 0.5)


def test_matched_difference_on_the_common_range():
    # system: accuracy 0.1 + 0.5 s over Self-BLEU s in [0.2, 1]; MLE: -0.06 + 0.4 s over [0.4, 1]. On the common
    # range [0.4, 1] the difference is 0.16 + 0.1 s, linear, so its mean over an even grid is its value at 0.7: 0.23
    system = [(0.2, 0.2), (0.6, 0.4), (1.0, 0.6)]
    mle = [(0.4, 0.1), (1.0, 0.34)]
    assert stats.matched_difference(system, mle) == pytest.approx(0.23)
    assert stats.matched_difference(mle, system) == pytest.approx(-0.23)
    assert stats.matched_difference([(0.1, 0.5), (0.3, 0.5)], mle) is None  # no common Self-BLEU


def test_paired_differences_and_seeds_to_resolve():
    d = stats.paired([0.50, 0.42, None, 0.47], [0.45, 0.40, 0.30, 0.43])  # the seed with a None is left out
    diffs = [0.05, 0.02, 0.04]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    assert d["n"] == 3 and d["mean"] == pytest.approx(mean) and d["sd"] == pytest.approx(sd)
    assert d["se"] == pytest.approx(sd / math.sqrt(3))
    assert d["resolve"] == 3  # sd = 0.01528: (1.96 * 0.01528 / 0.02)^2 = 2.24, rounded up
    assert stats.paired([None], [0.1]) is None
    # a missing reference value leaves its seed out too
    assert stats.paired([0.50, 0.42, 0.30, 0.47], [0.45, 0.40, None, 0.43]) == pytest.approx(d)
    assert stats.paired([0.1], [None]) is None


def test_last_wins_keeps_one_value_per_flag():
    command = ["train.py", "config/x.py", "--max_iters=150", "--lr=1", "--max_iters=50", "--init_from=resume"]
    assert last_wins(command) == ["train.py", "config/x.py", "--max_iters=50", "--lr=1",
                                             "--init_from=resume"]


def test_levelled_fits_a_line_through_the_last_quarter():
    # 8 evaluations; the last quarter (iters 600, 700) rises 0.70 -> 0.74: +0.04 over it; s.e. at 0.72 of 200 prompts
    log = [{"iter": 100 * i, "val/accuracy": a} for i, a in enumerate([0, .2, .4, .5, .6, .65, .70, .74])]
    rise, se = stats.levelled(log)
    assert rise == pytest.approx(0.04) and se == pytest.approx(math.sqrt(0.72 * 0.28 / 200))


def test_levelled_and_best_row_on_val_nll_count_a_fall_as_the_gain():
    # val nll 2.0 -> 1.0 then 1.00, 0.98 over the last quarter (iters 600, 700): a fall of 0.02, above the 0.01 nats
    # of tolerance (not levelled); train.py's best.pt under --keep_best=val/nll is the lowest, the earliest of ties
    log = [{"iter": 100 * i, "val/nll": v} for i, v in enumerate([2.0, 1.6, 1.3, 1.1, 0.98, 1.05, 1.00, 0.98])]
    fall, tolerance = stats.levelled(log, "val/nll")
    assert fall == pytest.approx(0.02) and tolerance == stats.NLL_TOLERANCE and not fall < tolerance
    assert stats.best_row(log, "val/nll")["iter"] == 400
    accuracy = [{"iter": i, "val/accuracy": a} for i, a in enumerate([0.1, 0.5, 0.5, 0.4])]
    assert stats.best_row(accuracy, "val/accuracy")["iter"] == 1


def test_table_cells():
    assert ms([0.1, 0.3]) == "0.200 ± 0.100"
    # differences 0.2, 0.4: sd 0.1414, (1.96 * 0.1414 / 0.02)^2 = 192.08 -> 193 seeds
    assert diff_cells(stats.paired([0.3, 0.5], [0.1, 0.1])) == ["+0.300 ± 0.100", "193"]
    assert diff_cells(None) == ["—", "—"]


def test_train_skips_resumes_or_starts_again(tmp_path, monkeypatch):
    """Runner.train, with train.py replaced by a recorder: what a stop, or a fresh clone (logs and
    summaries, no weights), leaves behind decides whether a run is skipped, resumed or trained again."""
    calls, runner = [], Runner(jobs=1, train_flags=[], num_samples=4, max_prompts=500)
    monkeypatch.setattr(runner, "launch", lambda command: calls.append(command) or 1.0)
    run = tmp_path / "run"
    run.mkdir()
    # every file "x", but the marker: empty, as one that lists no flags
    touch = lambda *names: [(run / n).write_text("" if n == "trained" else "x") for n in names]
    output = str(tmp_path / "summary.json")

    touch("trained", "ckpt.pt", "log.jsonl")  # finished, weights there: skipped
    assert runner.train(str(run), [], 0) == 0.0 and not calls
    (run / "ckpt.pt").unlink()  # finished, weights gone, but what was made from them is there: skipped
    (tmp_path / "summary.json").write_text("x")
    assert runner.train(str(run), [], 0, [output]) == 0.0 and not calls
    (tmp_path / "summary.json").unlink()  # ... and it is not: trained again from the start, old log gone
    assert runner.train(str(run), ["--loss=mle"], 0, [output]) == 1.0
    assert "--init_from=resume" not in calls[-1] and not (run / "log.jsonl").exists()
    (run / "trained").unlink()  # stopped mid-run with a checkpoint: resumed
    touch("ckpt.pt", "log.jsonl")
    runner.train(str(run), ["--init_from=base.pt"], 0)
    assert "--init_from=resume" in calls[-1] and "--init_from=base.pt" not in calls[-1] and (run / "log.jsonl").exists()
    assert (run / "trained").exists()  # marked finished once train.py returned


def test_a_failed_run_stops_the_runs_in_progress(tmp_path):
    """Runner.timed: a run that fails while an earlier one still runs stops it then, not once it ends
    (the runs here are functions: the slow one ends when the runner stops, or after 20 s)."""
    runner, stopped = Runner(jobs=2, train_flags=[], num_samples=4, max_prompts=500), []

    def slow():
        if runner.plan is None:  # not the dry pass that counts the runs left
            stopped.append(runner.stopping.wait(20))
        return 1.0

    def fails():
        if runner.plan is None:
            raise ValueError("train.py failed: boom")
        return 0.0

    with pytest.raises(ValueError, match="boom"):
        runner.timed("x", "part", {"slow": slow, "fails": fails})
    assert stopped == [True]


def test_runs_from_another_folder(tmp_path):
    """From a folder of the user's own, as `python path/to/lab/experiment.py`: it finds train.py,
    sample.py and analyze_reward.py in the repository, and the paths given (--results, the data in
    --train_args) are the user's."""
    result = experiment_in(tmp_path, ["--systems=mle"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["data", "res"]
    # the table's T=1 row by hand from the samples: accuracy, the share whose answer (after '#') is the
    # prompt's value (Python's arithmetic); distinct-2, per prompt the unique / all bigrams of words (a
    # run of word characters, or one other character) within each of its 4 samples, then the mean
    samples, right = {}, []
    with open(tmp_path / "res" / "arith" / "mle_s0" / "samples_val_t1.jsonl") as f:
        for row in map(json.loads, f):
            samples.setdefault(row["prompt"], []).append(re.findall(r"\w+|[^\w\s]", row["sample"]))
            answer = row["sample"].partition("#")[2]
            value = eval(row["prompt"][:-1])
            right.append(re.fullmatch(r"-?[0-9]+", answer) is not None and int(answer) == value)
    bigrams = [[tuple(w[i:i + 2]) for w in words for i in range(len(w) - 1)]
               for words in samples.values()]
    distinct = sum(len(set(b)) / len(b) if b else 0.0 for b in bigrams) / len(bigrams)
    assert len(samples) == 2 and all(len(words) == 4 for words in samples.values())
    table = (tmp_path / "res" / "arith" / "table.md").read_text().splitlines()
    row = next(line for line in table if line.startswith("| MLE | T=1 |"))
    self_bleu = row.split(" | ")[3]
    assert row == f"| MLE | T=1 | {sum(right) / 8:.3f} ± 0.000 | {self_bleu} | {distinct:.3f} ± 0.000 |"


def experiment_in(folder, flags):
    """lab/experiment.py run from folder on task arith, one seed, tiny runs on a little of arith
    copied to folder/data; results in folder/res."""
    if not (folder / "data").exists():
        prepare_task("arith")  # as train.py's first use would
        (folder / "data").mkdir()
        for split in ("train", "val", "test"):
            with open(os.path.join(ROOT, "data", "arith", f"{split}.jsonl")) as f:
                (folder / "data" / f"{split}.jsonl").write_text("".join(f.readlines()[:40]))
        shutil.copy(os.path.join(ROOT, "data", "arith", "meta.json"), folder / "data")
    train_args = ("--n_layer=1 --n_head=1 --n_embd=16 --batch_size=4 --block_size=32 --max_iters=2 "
                  "--eval_interval=1 --eval_iters=1 --eval_prompts=2 --compile=False --device=cpu "
                  "--dataset=data")
    command = [sys.executable, os.path.join(ROOT, EXPERIMENT), "--results=res", "--task=arith",
               "--seeds=1", "--temperatures=1.0", "--max_prompts=2", "--beam_size=1",
               f"--train_args={train_args}"] + flags
    return subprocess.run(command, cwd=folder, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_plan_is_run_by_hand_then_the_experiment_goes_on(tmp_path):
    """--plan prints the commands, runnable lines in waves (a fine-tuning run after the run it starts from, a
    sample after its run, an analysis after its samples) and runs nothing; after its first wave ran by hand,
    the experiment (--quick, as planned) trains only what is left, says "run k of N", its note once."""
    plan = experiment_in(tmp_path, ["--systems=mle,mle+ft", "--quick", "--plan"])
    assert plan.returncode == 0, plan.stderr[-2000:]
    lines = plan.stdout.splitlines()
    assert all(line.startswith("OMP_NUM_THREADS=1 python ") for line in lines), lines
    assert "10 commands in 4 waves (lines 1-1, 2-5, 6-9, 10-10)" in plan.stderr, plan.stderr
    assert os.listdir(tmp_path / "res") == ["run.lock"]  # nothing but the lock
    at = lambda *words: next(i for i, line in enumerate(lines) if all(w in line for w in words))
    mle, fine_tuned = "--out_dir=res/arith/mle_s0", "--out_dir=res/arith/mle+ft_s0"
    # its marker lists its flags, a path relative to the run's folder
    marker = "&& printf '%s\\n' --dataset=../../../data "
    assert at("train.py", mle, marker, "> res/arith/mle_s0/trained") == 0
    assert "--init_from=res/arith/mle_s0/ckpt.pt" in lines[at("train.py", fine_tuned)]
    assert at("train.py", fine_tuned) < at("sample.py", fine_tuned, "--temperature=1") < at(
        "analyze_reward.py", "--out_dir=res/arith/mle+ft_s0/ckpt.pt")

    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])  # this python
    subprocess.run(lines[0], shell=True, cwd=tmp_path, check=True, env=dict(os.environ, PATH=path))  # wave 1
    result = experiment_in(tmp_path, ["--systems=mle,mle+ft", "--quick"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count(experiment.QUICK_NOTE) == 1
    assert "run 1 of 2" in result.stdout and "run 2 of 2" in result.stdout
    trained = [line for line in result.stdout.splitlines() if line.startswith("$ train.py")]
    assert len(trained) == 1 and fine_tuned in trained[0]  # MLE's run was there: not trained again
    assert (tmp_path / "res" / "arith" / "table.md").read_text().startswith(experiment.QUICK_NOTE)


def test_results_readme_commands_are_the_experiments():
    """Each command of results/README.md names a task of lab/experiment.py, and the one without --task says
    what --help says it runs: arith, finetune and the hours-long tuned task."""
    assert help_lines(experiment.__file__)["task"].startswith("all (arith, finetune, then tuned)")
    tasks = ["all", "tuned"] + list(experiment.TASKS) + experiment.OWN_TASKS
    with open(os.path.join(ROOT, "results", "README.md")) as f:
        commands = [line for line in f if line.startswith("python lab/experiment.py")]
    assert commands
    for line in commands:
        command, _, comment = line.partition("#")
        flags = dict(arg[2:].partition("=")[::2] for arg in shlex.split(command)[2:])  # --plan: ""
        assert flags.get("task", "all") in tasks, line
        if "task" not in flags:
            assert all(name in comment for name in ("arith", "finetune", "tuned")), line


def test_every_family_of_a_tuned_setting_gets_the_same_budget():
    for name, setting in experiment.TUNED.items():
        grid = experiment.configurations(setting)
        assert list(grid) == list(setting["families"]), name
        assert len({len(configs) for configs in grid.values()}) == 1, name  # as many configurations each


# ----------------------------------------------------------------------------- hand-made run files
def write_log(folder, key, values, every=100):
    """folder/log.jsonl as train.py writes it: an evaluation of key a line, every `every` iterations."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps({"iter": every * i, key: v}) + "\n"
                                              for i, v in enumerate(values)))


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_the_choice_of_configuration_goes_by_the_metrics_direction(tmp_path):
    """Each family's configuration of the lowest val nll (the mean over its tuning runs of each run's
    lowest), from logs of 2 to 6 evaluations; under val/accuracy, of the highest greedy val accuracy."""
    grid = {"mle": dict.fromkeys(["mle_lr1", "mle_lr2", "mle_wd"], []),
            "irl": dict.fromkeys(["irl_a", "irl_b"], [])}
    nll = {"mle_lr1": ([3.0, 2.0, 1.50, 1.60], [3.0, 1.70, 1.55]),  # lowest 1.50 and 1.55: 1.525
           "mle_lr2": ([3.0, 1.40, 1.45, 1.6, 1.7], [2.9, 1.60]),  # 1.40, 1.60: 1.50, MLE's lowest
           "mle_wd": ([3.0, 2.5, 2.2], [3.0, 2.4, 2.1, 2.0, 1.9, 1.95]),  # 2.2, 1.9: 2.05, the highest
           "irl_a": ([3.0, 1.2], [3.0, 1.3, 1.25]),  # 1.2, 1.25: 1.225, IRL's lowest
           "irl_b": ([3.0, 1.0, 1.1], [3.0, 1.5, 1.6])}  # 1.0, 1.5: 1.25
    dirs = lambda c: [tmp_path / f"{c}_s{seed}" for seed in (100, 101)]
    tuning_dirs = lambda c: [str(d) for d in dirs(c)]
    for c, logs in nll.items():
        for folder, values in zip(dirs(c), logs):
            write_log(folder, "val/nll", values)
    scores, picks = experiment.choose(grid, tuning_dirs, "rougeL", "val/nll")
    assert scores == pytest.approx(
        {"mle_lr1": 1.525, "mle_lr2": 1.50, "mle_wd": 2.05, "irl_a": 1.225, "irl_b": 1.25})
    assert picks == {"mle": "mle_lr2", "irl": "irl_a"}

    accuracy = {"mle_lr1": (0.60, 0.50), "mle_lr2": (0.70, 0.30), "mle_wd": (0.20, 0.80),
                "irl_a": (0.1, 0.2), "irl_b": (0.3, 0.3)}  # means .55, .50, .50, .15, .30
    for c, values in accuracy.items():
        for folder, value in zip(dirs(c), values):
            write_json(folder / "samples_val_t0.json", {"accuracy": value, "length": 9})
    scores, picks = experiment.choose(grid, tuning_dirs, "accuracy", "val/accuracy")
    assert scores["mle_lr1"] == pytest.approx(0.55) and picks == {"mle": "mle_lr1", "irl": "irl_b"}


def test_grid_table_rows_by_hand(tmp_path):
    """A tuned setting's grid under val/nll, from logs of 3 to 8 evaluations: score, where each run's
    best.pt is (the earliest of the lowest), the fall over the last quarter against 0.01 nats, levelled
    off, and the choice."""
    setting = dict(metric="rougeL", early_stop="val/nll", prompts=150, tuning_seeds=[100, 101],
                   families={"mle": ("MLE", "mle", [])})
    grid = {"mle": {"mle_a": [], "mle_b": []}}
    dirs = lambda c: [str(tmp_path / f"{c}_s{seed}") for seed in (100, 101)]
    # mle_a: lowest 1.30 at iters 100 and 300 (best.pt: the earliest), last quarter (2 of 4 rows)
    # 1.35 -> 1.30, a fall of 0.05; its other run, 5 evaluations: lowest 1.20 at 300, then 1.25 (2
    # rows again), a fall of -0.05
    write_log(tmp_path / "mle_a_s100", "val/nll", [3.0, 1.30, 1.35, 1.30])
    write_log(tmp_path / "mle_a_s101", "val/nll", [3.0, 2.0, 1.5, 1.20, 1.25])
    # mle_b: 8 evaluations falling by 0.005 over the last quarter (iters 600, 700); 3 falling by 0.004
    write_log(tmp_path / "mle_b_s100", "val/nll", [3.0, 2.5, 2.0, 1.8, 1.7, 1.65, 1.605, 1.600])
    write_log(tmp_path / "mle_b_s101", "val/nll", [3.0, 1.904, 1.900])
    scores, picks = experiment.choose(grid, dirs, "rougeL", "val/nll")
    assert scores == pytest.approx({"mle_a": (1.30 + 1.20) / 2, "mle_b": (1.600 + 1.900) / 2})
    rows = report.grid_table("x", setting, grid, dirs, scores, picks)
    assert rows[-2] == "| MLE | mle_a | 1.250 | 100, 300 | +0.050, -0.050 | 0.010, 0.010 | no | ✓ |"
    assert rows[-1] == "| MLE | mle_b | 1.750 | 700, 200 | +0.005, +0.004 | 0.010, 0.010 | yes |  |"


def test_levelled_rows_at_several_lengths(tmp_path):
    """The levelled-off table of final runs of 4, 9 and 16 evaluations: the last quarter is 2, 2 and 4
    of them. A least-squares line through 4 evenly spaced points y0..y3 rises 0.9 (y3 - y0) +
    0.3 (y2 - y1) over them."""
    accuracy = [[0.1, 0.4, 0.60, 0.64],  # the last 2: a rise of 0.04
                [0, .2, .3, .4, .5, .55, .6, .62, .63],  # 9 // 4 = 2: 0.01
                [0.1] * 12 + [0.70, 0.71, 0.75, 0.74]]  # 4: 0.9 * 0.04 + 0.3 * 0.04 = 0.048
    nll = [[2.0, 1.5, 1.000, 0.995],  # falls 0.005
           [2.0] * 7 + [1.000, 0.985],  # 0.015
           [2.0] * 12 + [1.03, 1.02, 1.01, 1.00]]  # 0.9 * 0.03 + 0.3 * 0.01 = 0.030
    for seed, (values, nats) in enumerate(zip(accuracy, nll)):
        write_log(tmp_path / f"irl_s{seed}", "val/accuracy", values)
        write_log(tmp_path / f"mle_s{seed}", "val/nll", nats)
    rises = [0.04, 0.01, 0.048]
    tails = [[0.60, 0.64], [0.62, 0.63], [0.70, 0.71, 0.75, 0.74]]
    means = [sum(t) / len(t) for t in tails]
    ses = [math.sqrt(p * (1 - p) / 200) for p in means]  # one evaluation of 200 prompts: 0.034, ...
    mean_se = lambda v: (sum(v) / 3, math.sqrt(sum((x - sum(v) / 3) ** 2 for x in v) / 2 / 3))
    cells = lambda v: "{:.3f} ± {:.3f}".format(*mean_se(v))
    spec = dict(root=str(tmp_path), systems={"irl": ("IRL", [])}, early_stop="val/accuracy",
                metric="accuracy")
    rows = report.levelled_rows("x", spec, 3)
    assert rows[-1] == f"| IRL | {cells(rises)} | {cells(ses)} | 1 of 3 |"  # 0.01 < its s.e. only
    assert cells(rises) == "0.033 ± 0.012" and cells(ses) == "0.033 ± 0.001"
    # val nll: a fall below the 0.01 nats of tolerance once
    spec.update(systems={"mle": ("MLE", [])}, early_stop="val/nll", metric="rougeL")
    falls = cells([0.005, 0.015, 0.030])
    assert report.levelled_rows("x", spec, 3)[-1] == f"| MLE | {falls} | 0.010 ± 0.000 | 1 of 3 |"
    assert falls == "0.017 ± 0.007"


def test_paired_differences_from_summaries_by_hand(tmp_path):
    """The paired-differences row of IRL against MLE from sample.py summaries of 2 seeds: each curve
    is greedy (Self-BLEU 1) and T=1; both lines are straight over the common range, so the mean
    difference there is the difference at its middle."""
    summaries = {  # (system, seed): greedy, beam, (T=1 Self-BLEU, accuracy)
        ("mle", 0): (0.50, 0.52, (0.2, 0.30)), ("irl", 0): (0.55, 0.50, (0.4, 0.35)),
        ("mle", 1): (0.40, 0.44, (0.2, 0.20)), ("irl", 1): (0.42, 0.50, (0.2, 0.27))}
    for (system, seed), (greedy, beam, (self_bleu, hot)) in summaries.items():
        run = tmp_path / f"{system}_s{seed}"
        write_json(run / "samples_val_t0.json", {"accuracy": greedy})
        write_json(run / "samples_val_beam4.json", {"accuracy": beam})
        write_json(run / "samples_val_t1.json",
                   {"accuracy": hot, "self_bleu": self_bleu, "distinct_2": 0.9})
    spec = dict(root=str(tmp_path), systems={"mle": ("MLE", []), "irl": ("IRL", [])},
                sampling=dict(split="val"), decodings=["greedy", "beam4", "t1"], metric="accuracy",
                also_scored=[])
    # matched: seed 0 over Self-BLEU 0.4-1, at 0.7: IRL 0.45, MLE 0.30 + 0.2 * 5/8 = 0.425, +0.025;
    # seed 1 over 0.2-1, at 0.6: IRL 0.345, MLE 0.30, +0.045. Mean 0.035, s.e. 0.010; sd 0.01414:
    # (1.96 sd / 0.02)^2 = 1.92 -> 2 seeds. Greedy +0.05, +0.02 (sd 0.0212: 4.32 -> 5 seeds); beam
    # -0.02, +0.06 (sd 0.0566: 30.7 -> 31); IRL's own beam - greedy -0.05, +0.08
    row = report.paired_rows("x", spec, 2, report.per_seed(spec, 2))[-1]
    assert row == ("| IRL | +0.035 ± 0.010 | 2 | 0.300–1.000 | +0.035 ± 0.015 | 5 | +0.020 ± 0.040 "
                   "| 31 | +0.015 ± 0.065 |")


def test_reward_table_skips_a_missing_reference_value(tmp_path):
    """return − log p is a paired difference: a seed whose Spearman(log p, metric) is null (no sample
    right) is left out, not the whole column; the other columns average what is there."""
    values = [(0.30, 0.25), (0.20, None), (0.40, 0.30)]  # (Spearman of return, of log p) per seed
    for seed, (by_return, by_log_p) in enumerate(values):
        run = dict(spearman_return_metric=by_return, spearman_log_prob_metric=by_log_p,
                   pick_rate=0.5, pick_chance=0.25, v0_mean=1.0)
        write_json(tmp_path / f"irl1_s{seed}" / "reward" / "reward_summary.json",
                   {"runs": {f"irl1_s{seed}": run}})
    systems = {"irl1": ("IRL λ=1", ["--loss=irl", "--td_coef=1"])}
    rows = report.reward_table(str(tmp_path), ["irl1"], systems, 3)
    # return: 0.3 ± 0.1/√3; log p: 0.275 ± 0.025; return − log p over seeds 0 and 2: 0.05, 0.10
    assert rows[-1] == ("| IRL λ=1 | 1 | 0.300 ± 0.058 | 0.275 ± 0.025 | +0.075 ± 0.025 | "
                        "0.500 ± 0.000 | 0.250 ± 0.000 | 1.00 ± 0.00 | 3 |")


# ----------------------------------------------------------------------------- refusals, scripts faked
FAKE = ["--results=res", "--task=arith", "--systems=mle", "--seeds=1", "--temperatures=1.0",
        "--beam_size=1", "--max_prompts=2"]  # arith's MLE run of seed 0: greedy, beam1, T=1, reward


def fake_launch(command):
    """Runner.launch with each script replaced by a fake that writes what experiment.py reads:
    train.py a log of 3 evaluations, sample.py a summary, analyze_reward.py a reward summary. 1 s."""
    script, flags = command[0], dict(arg[2:].split("=", 1) for arg in command[1:])
    if script == "train.py":
        write_log(Path(flags["out_dir"]), "val/accuracy", [0.0, 0.2, 0.3])
    elif script == "sample.py":
        name = (f"beam{flags['beam_size']}" if "beam_size" in flags
                else f"t{float(flags['temperature']):g}")
        write_json(Path(flags["out_dir"]) / f"samples_{flags['split']}_{name}.json",
                   {"accuracy": 0.25, "self_bleu": 0.5, "distinct_2": 0.75})
    else:
        run = os.path.basename(os.path.dirname(flags["out_dir"]))  # --out_dir: the run's ckpt.pt
        write_json(Path(flags["results"]) / "reward_summary.json",
                   {"runs": {run: dict.fromkeys(report.REWARD_KEYS, 0.1)}})
    return 1.0


def run_faked(args, cwd, monkeypatch, capsys):
    """experiment.py run in this process from cwd, its scripts faked: (exit status, stdout, stderr);
    the locks it took let go."""
    monkeypatch.setattr(Runner, "launch", lambda runner, command: fake_launch(command))
    try:
        return table.run_inline(EXPERIMENT, args, monkeypatch, capsys, cwd)
    finally:
        while runfiles.held_locks:
            os.close(runfiles.held_locks.pop())


def refused(args, cwd, monkeypatch, capsys):
    """The one line experiment.py (scripts faked) stops with, run from cwd; no traceback, no file
    below cwd changed (lock files aside)."""
    before = table.snapshot(cwd)
    code, out, err = run_faked(args, cwd, monkeypatch, capsys)
    message = "\n".join(m for m in (err.strip(), code if isinstance(code, str) else "") if m)
    assert code not in (None, 0) and "Traceback" not in out + message, message
    assert len(message.splitlines()) == 1, message
    after = table.snapshot(cwd)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    return message


@pytest.mark.parametrize("experiment_running", [True, False])
def test_a_run_in_progress_is_never_taken_for_stale(tmp_path, monkeypatch, capsys, experiment_running):
    """--task=finetune while --task=arith trains into the same --results (its lock on the folder
    held, its train.py on res/arith/mle_s0: the run's lock held, a first log line, no checkpoint):
    refused before anything is touched, arith's log kept. Without the experiment (a train.py of
    --plan's lines run by hand), --task=arith leaves that run alone."""
    later, run = [], tmp_path / "res" / "arith" / "mle_s0"
    try:
        table.hold_lock(run, later)
        write_log(run, "val/accuracy", [0.0])
        if experiment_running:
            table.hold_lock(tmp_path / "res", later)
            message = refused(["--results=res", "--task=finetune", "--seeds=1"], tmp_path,
                              monkeypatch, capsys)
            assert "res is in use by another process" in message, message
        else:
            message = refused(FAKE, tmp_path, monkeypatch, capsys)
            assert "res/arith/mle_s0 is in use by another process (a train.py run)" in message
    finally:
        for cleanup in reversed(later):
            cleanup()


def test_a_rerun_with_other_train_args_is_refused(tmp_path, monkeypatch, capsys):
    """A finished run's marker lists its flags (a path relative to the run): the same command again,
    its paths written from elsewhere, only redraws (its timing line kept); with --max_iters=40 where
    the run had 20, refused naming both, nothing changed."""
    table_md = tmp_path / "res" / "arith" / "table.md"
    (tmp_path / "data").mkdir()
    flags = FAKE + ["--train_args=--max_iters=20 --dataset=data"]
    code, out, _ = run_faked(flags, tmp_path, monkeypatch, capsys)
    assert code in (None, 0) and "run 1 of 1" in out, out
    marker = (tmp_path / "res" / "arith" / "mle_s0" / "trained").read_text().splitlines()
    assert "--max_iters=20" in marker and "--loss=mle" in marker and "--dataset=../../../data" in marker
    assert not any(flag.startswith(("--seed=", "--out_dir=")) for flag in marker)
    drawn = table_md.read_text()
    elsewhere = [f"--results={tmp_path / 'res'}", f"--train_args=--max_iters=20 --dataset={tmp_path}/data"]
    code, out, _ = run_faked(FAKE + elsewhere, tmp_path / "data", monkeypatch, capsys)
    assert code in (None, 0) and "run 1 of" not in out and table_md.read_text() == drawn
    message = refused(FAKE + ["--train_args=--max_iters=40 --dataset=data"], tmp_path, monkeypatch,
                      capsys)
    assert "res/arith/mle_s0 was trained with --max_iters=20, not --max_iters=40 as now" in message
    assert "another --results, or remove the folder" in message


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished experiment (FAKE) of faked runs, from which the next test breaks one file."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(Runner, "launch", lambda runner, command: fake_launch(command))
        monkeypatch.setattr(sys, "argv", [EXPERIMENT] + FAKE)
        monkeypatch.setattr(signal, "signal", lambda *a: None)
        monkeypatch.chdir(folder)
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(os.path.join(ROOT, EXPERIMENT), run_name="__main__")
        while runfiles.held_locks:
            os.close(runfiles.held_locks.pop())
    return folder


SAMPLE_AGAIN = "remove it and run the same command to sample the run again"
TRAIN_AGAIN = "remove the run's folder and run the same command to train it again"
ANALYSE_AGAIN = "remove it and run the same command to analyse the run again"
ROW = '{"iter": 0, "val/accuracy": 0.0}\n'
BROKEN = [  # (id, file of res/arith/mle_s0, its content, words of the message)
    ("summary-empty", "samples_val_t0.json", "", "mle_s0/samples_val_t0.json is empty; " + SAMPLE_AGAIN),
    ("summary-cut", "samples_val_t1.json", '{"accuracy": 0.25,\n "self_bleu"',
     "samples_val_t1.json:2: not valid JSON (Expecting ':' delimiter: column 13); " + SAMPLE_AGAIN),
    ("summary-no-metric", "samples_val_t0.json", '{"length": 3}', "samples_val_t0.json: no accuracy; "),
    ("summary-text", "samples_val_beam1.json", '{"accuracy": "high"}', "accuracy is 'high', not a"),
    ("summary-list", "samples_val_t1.json", "[0.25]", "t1.json: not a JSON object; " + SAMPLE_AGAIN),
    ("log-empty", "log.jsonl", "\n", "mle_s0/log.jsonl is empty; " + TRAIN_AGAIN),
    ("log-cut", "log.jsonl", ROW + '{"iter": 100, "val/acc',
     "log.jsonl:2: not valid JSON (Unterminated string starting at: column 15); " + TRAIN_AGAIN),
    ("log-not-a-row", "log.jsonl", ROW + "[100, 0.2]\n", "log.jsonl:2: not a log row"),
    ("log-text", "log.jsonl", ROW.replace("0.0", '"none"'), "log.jsonl:1: val/accuracy is 'none'"),
    ("reward-empty", "reward/reward_summary.json", "", "reward_summary.json is empty; " + ANALYSE_AGAIN),
    ("reward-other-run", "reward/reward_summary.json", '{"runs": {"irl1_s0": {}}}',
     "reward_summary.json: its runs hold no mle_s0; " + ANALYSE_AGAIN),
    ("reward-text", "reward/reward_summary.json", '{"runs": {"mle_s0": {"pick_rate": "x"}}}',
     "runs.mle_s0: pick_rate is 'x', not a number"),
    ("table-no-timing", "../table.md", "## arith\n", "table.md does not end with its timing line"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_file_of_results_is_named(case, finished, tmp_path, monkeypatch, capsys):
    """A corrupt or empty summary, log, reward summary or table of a finished experiment: one line
    naming the file (and line) and how to make it again; nothing changed."""
    _, name, content, words = case
    shutil.copytree(finished, tmp_path / "w")
    (tmp_path / "w" / "res" / "arith" / "mle_s0" / name).write_text(content)
    message = refused(FAKE, tmp_path / "w", monkeypatch, capsys)
    assert words in message, message
