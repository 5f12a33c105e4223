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

import numpy as np
import pytest
from matplotlib.colors import to_hex

argv, handler = sys.argv, signal.getsignal(signal.SIGINT)
sys.argv = ["experiment.py"]  # lab/experiment.py reads its flags at import: none here, not pytest's
import lab.experiment as experiment  # noqa: E402
sys.argv = argv
signal.signal(signal.SIGINT, handler)  # importing installs experiment.py's Ctrl-C message
from configurator import help_lines  # noqa: E402
from dataset import prepare_task  # noqa: E402
from lab import report, search, stats  # noqa: E402
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


def test_calls_queued_when_the_runner_stops_start_nothing(capsys):
    """Runner.timed, one run at a time: the first run stops the runner (as SIGTERM's handler does);
    the run queued after it never starts and is not announced ("run 2 of 2")."""
    runner, started = Runner(jobs=1, train_flags=[], num_samples=4, max_prompts=500), []

    def run(name):
        if runner.plan is not None:  # the dry pass that counts the runs left: each has work
            runner.lines.append(name)
            return 0.0
        started.append(name)
        if name == "first":
            runner.stop()
        return 1.0

    with pytest.raises(SystemExit, match="stopped"):
        runner.timed("x", "part", {"first": lambda: run("first"), "second": lambda: run("second")})
    out = capsys.readouterr().out
    assert started == ["first"] and "run 1 of 2" in out and "run 2 of 2" not in out


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
    what --help says it runs: arith, finetune, the hours-long tuned task and critic."""
    assert help_lines(experiment.__file__)["task"].startswith(
        "all (arith, finetune, tuned, then critic)")
    tasks = ["all", "tuned", "critic"] + list(experiment.TASKS) + experiment.OWN_TASKS
    with open(os.path.join(ROOT, "results", "README.md")) as f:
        commands = [line for line in f if line.startswith("python lab/experiment.py")]
    assert commands
    for line in commands:
        command, _, comment = line.partition("#")
        flags = dict(arg[2:].partition("=")[::2] for arg in shlex.split(command)[2:])  # --plan: ""
        assert flags.get("task", "all") in tasks, line
        if "task" not in flags:
            assert all(name in comment for name in ("arith", "finetune", "tuned", "critic")), line


def test_every_family_of_a_tuned_setting_gets_the_same_budget():
    """As many trials for every family; trial k of every family meets the same shared settings
    (learning rate, dropout, weight decay), each inside its range, and only the family's own knob
    besides; the flags say the same, with min_lr a tenth of the learning rate."""
    for name, setting in experiment.TUNED.items():
        drawn = experiment.trials(setting)
        assert list(drawn) == setting["families"], name
        assert {len(named) for named in drawn.values()} == {setting["trials"]}, name
        shared = experiment.SHARED[setting["space"]]
        for k in range(setting["trials"]):
            values = [drawn[family][f"{family}_t{k}"] for family in drawn]
            assert all({n: v[n] for n in shared} == {n: values[0][n] for n in shared}
                       for v in values), (name, k)
            for family, v in zip(drawn, values):
                own = experiment.FAMILIES[family][2]
                assert set(v) == set(shared) | set(own)
                for n, (kind, *args) in {**shared, **own}.items():
                    assert v[n] in args[0] if kind == "choice" else args[0] <= v[n] <= args[1]
                flags = experiment.trial_flags(family, v)
                assert f"--loss={experiment.FAMILIES[family][1]}" in flags
                lr = float(next(f for f in flags if f.startswith("--learning_rate="))[16:])
                min_lr = float(next(f for f in flags if f.startswith("--min_lr="))[9:])
                assert lr == v["learning_rate"] and min_lr == pytest.approx(lr / 10, rel=1e-3)
        # the trials differ from one another: a search, not one point drawn six times
        assert len({v["learning_rate"] for v in drawn["mle"].values()}) == setting["trials"]


# ----------------------------------------------------------------------------- hand-made run files
def write_log(folder, key, values, every=100):
    """folder/log.jsonl as train.py writes it: an evaluation of key a line, every `every` iterations."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps({"iter": every * i, key: v}) + "\n"
                                              for i, v in enumerate(values)))


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_the_choice_goes_by_the_val_score_of_best_pt(tmp_path):
    """Each family's trial of the highest mean val score over its tuning runs (the greedy decoding
    of best.pt, or a sampled one), the first of ties."""
    drawn = {"mle": dict.fromkeys(["mle_t0", "mle_t1", "mle_t2"], {}),
             "irl": dict.fromkeys(["irl_t0", "irl_t1"], {})}
    accuracy = {"mle_t0": (0.60, 0.50), "mle_t1": (0.70, 0.30), "mle_t2": (0.20, 0.90),
                "irl_t0": (0.1, 0.2), "irl_t1": (0.3, 0.0)}  # means .55, .50, .55, .15, .15
    dirs = lambda trial: [str(tmp_path / f"{trial}_s{seed}") for seed in (100, 101)]
    for trial, values in accuracy.items():
        for folder, value in zip(dirs(trial), values):
            write_json(Path(folder) / "samples_val_t0.1.json", {"accuracy": value, "length": 9})
    scores, picks = experiment.choose(drawn, dirs, "t0.1", "accuracy")
    assert scores == pytest.approx({"mle_t0": 0.55, "mle_t1": 0.50, "mle_t2": 0.55,
                                    "irl_t0": 0.15, "irl_t1": 0.15})
    assert picks == {"mle": "mle_t0", "irl": "irl_t0"}


def test_trials_table_and_file_by_hand(tmp_path):
    """The random search's table, trials.jsonl and expected best from hand-made logs and summaries:
    where each best.pt was, the rise over the last quarter of the run's iterations with the
    evaluations in it, a choice at an edge of its range named, the trial past that edge that
    won, and the expected best of the random trials alone."""
    setting = dict(metric="accuracy", early_stop="val/accuracy", prompts=500, choose_by="greedy",
                   trials=2, tuning_seeds=[100], space="scratch")
    drawn = {"mle": {"mle_t0": dict(learning_rate=0.0059, dropout=0.1, weight_decay=0.0),
                     "mle_t1": dict(learning_rate=0.001, dropout=0.0, weight_decay=0.1)},
             "irl": {"irl_t0": dict(learning_rate=0.0059, dropout=0.1, weight_decay=0.0,
                                    td_coef=0.0011),
                     "irl_t1": dict(learning_rate=0.001, dropout=0.0, weight_decay=0.1,
                                    td_coef=0.03)}}
    # 9 evaluations, every 100 iterations: the last quarter (from 600) holds 600, 700, 800
    logs = {"mle_t0": [0, .2, .3, .4, .5, .5, .60, .62, .64],  # best at 800, rises 0.04
            "mle_t1": [0, .1, .3, .31, .3, .3, .30, .31, .30],  # best at 300, rises 0
            "irl_t0": [0, .1, .2, .3, .4, .5, .60, .61, .61],  # best at 700, rises 0.01
            "irl_t1": [0, .1, .2, .3, .4, .5, .70, .70, .71],  # best at 800, rises 0.01
            "mle_p0": [0, .2, .3, .4, .5, .5, .60, .62, .64]}
    past = {"mle": {"mle_p0": dict(drawn["mle"]["mle_t0"], learning_rate=0.0177)}}
    val = {"mle_t0": 0.5, "mle_t1": 0.3, "irl_t0": 0.6, "irl_t1": 0.2, "mle_p0": 0.55}
    dirs = lambda trial: [str(tmp_path / "tuning" / f"{trial}_s100")]
    for trial, values in logs.items():
        write_log(tmp_path / "tuning" / f"{trial}_s100", "val/accuracy", values)
        write_json(tmp_path / "tuning" / f"{trial}_s100" / "samples_val_t0.json",
                   {"accuracy": val[trial]})
    picks = {"mle": "mle_p0", "irl": "irl_t0"}
    flags_of = lambda family, trial: [f"--loss={family}", "--keep_best=val/accuracy"] + [
        f"--{k}={v}" for k, v in {**drawn[family], **past.get(family, {})}[trial].items()]
    rows = report.trials_table("x", str(tmp_path), setting, drawn, past, flags_of, dirs, val,
                               picks)
    se = lambda p: math.sqrt(p * (1 - p) / 200)  # one evaluation's s.e. at the window's mean
    assert f"| MLE | mle_t0 | learning rate 0.0059, dropout 0.1, weight decay 0 | 0.500 | 800 | " \
           f"+0.040 ≥ {se(0.62):.3f} (3) |  |" in rows
    assert f"| MLE | mle_p0 | learning rate 0.0177, dropout 0.1, weight decay 0 | 0.550 | 800 | " \
           f"+0.040 ≥ {se(0.62):.3f} (3) | ✓ |" in rows
    assert f"| IRL | irl_t1 | learning rate 0.001, dropout 0, weight decay 0.1, td coef 0.03 | " \
           f"0.200 | 800 | +0.010 < {se(0.7033):.3f} (3) |  |" in rows
    # the edges: 0.0059 lies in the top tenth of log(3e-4)..log(6e-3), 0.0011 in the bottom tenth
    # of log(1e-3)..log(1)
    assert "| MLE | mle_t0 | learning_rate high | mle_p0 (0.550) | mle_p0 |" in rows
    assert "| IRL | irl_t0 | learning_rate high, td_coef low | — | irl_t0 |" in rows
    # expected best of n trials: of {0.5, 0.3}, one draw 0.4, two (with replacement) 0.45; of
    # {0.6, 0.2}: 0.4 and 0.5
    assert "| MLE | 0.400 | 0.450 |" in rows and "| IRL | 0.400 | 0.500 |" in rows
    lines = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert [(r["trial"], r["seed"], r["val_score"], r["best_iter"], r["past_edge"], r["chosen"])
            for r in lines] == [
        ("mle_t0", 100, 0.5, 800, False, False), ("mle_t1", 100, 0.3, 300, False, False),
        ("mle_p0", 100, 0.55, 800, True, True),
        ("irl_t0", 100, 0.6, 700, False, True), ("irl_t1", 100, 0.2, 800, False, False)]
    assert lines[3]["flags"] == dict(loss="irl", keep_best="val/accuracy", learning_rate=0.0059,
                                     dropout=0.1, weight_decay=0.0, td_coef=0.0011)
    assert (tmp_path / "search.png").stat().st_size > 0


def test_levelled_rows_over_the_last_quarter_of_the_iterations(tmp_path):
    """The levelled-off table of final runs of 9 evaluations every 100 iterations: the window is
    iterations 600-800, 3 evaluations. A least-squares line through 3 evenly spaced points rises
    y2 - y0 over them."""
    accuracy = [[0, .1, .2, .3, .4, .5, 0.60, 0.62, 0.64],  # rises 0.04
                [0, .1, .2, .3, .4, .5, 0.60, 0.61, 0.61],  # 0.01
                [0, .1, .2, .3, .4, .5, 0.70, 0.71, 0.72]]  # 0.02
    nll = [[2.0] * 6 + [1.02, 1.01, 1.00],  # falls 0.02
           [2.0] * 6 + [1.0, 0.998, 0.996],  # 0.004
           [2.0] * 6 + [0.906, 0.9, 0.894]]  # 0.012
    for seed, (values, nats) in enumerate(zip(accuracy, nll)):
        write_log(tmp_path / f"irl_s{seed}", "val/accuracy", values)
        write_log(tmp_path / f"mle_s{seed}", "val/nll", nats)
    ses = [math.sqrt(p * (1 - p) / 200) for p in (0.62, 0.6067, 0.71)]
    mean_se = lambda v: (sum(v) / 3, math.sqrt(sum((x - sum(v) / 3) ** 2 for x in v) / 2 / 3))
    cells = lambda v: "{:.3f} ± {:.3f}".format(*mean_se(v))
    spec = dict(root=str(tmp_path), systems={"irl": ("IRL", [])}, early_stop="val/accuracy",
                metric="accuracy")
    rows = report.levelled_rows("x", spec, 3)
    assert rows[-1] == (f"| IRL | {cells([0.04, 0.01, 0.02])} | {cells(ses)} | 3 | 2 of 3 | "
                        f"+0.040 ≥ {ses[0]:.3f} (3), +0.010 < {ses[1]:.3f} (3), +0.020 < "
                        f"{ses[2]:.3f} (3) |")
    spec.update(systems={"mle": ("MLE", [])}, early_stop="val/nll", metric="rougeL")
    assert report.levelled_rows("x", spec, 3)[-1] == (
        f"| MLE | {cells([0.02, 0.004, 0.012])} | 0.010 ± 0.000 | 3 | 1 of 3 | +0.020 ≥ 0.010 (3), "
        f"+0.004 < 0.010 (3), +0.012 ≥ 0.010 (3) |")


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
    # widest gap: IRL's curve goes from T=1 (Self-BLEU 0.4, 0.2) to greedy (1): 0.6 and 0.8
    row = report.paired_rows("x", spec, 2, report.per_seed(spec, 2))[-1]
    assert row == ("| IRL | +0.035 ± 0.010 | 2 | 0.300–1.000 | 0.800 | +0.035 ± 0.015 | 5 | "
                   "+0.020 ± 0.040 | 31 | +0.015 ± 0.065 |")


def test_paired_differences_with_per_prompt_scores(tmp_path):
    """Where the summaries keep each prompt's scores, a difference gets a bootstrap interval over
    seeds and prompts: one the same on every prompt of every seed has an interval of that one
    value; one that differs by prompt only has an interval that holds its mean."""
    mle = [[0.0, 0.5, 1.0, 0.5], [0.25, 0.25, 0.5, 1.0]]  # per seed, per prompt
    for seed, scores in enumerate(mle):
        for system, shift in (("mle", 0.0), ("irl", 0.25)):
            per_prompt = [min(1.0, v + shift) if system == "irl" else v for v in scores]
            hot = dict(accuracy=per_prompt, self_bleu=[0.5] * 4)
            summaries = {"t0": dict(accuracy=[v + shift for v in scores]),  # IRL: +0.25 each
                         "beam4": dict(accuracy=per_prompt), "t1": hot}
            for d, values in summaries.items():
                summary = {key: float(np.mean(v)) for key, v in values.items()}
                write_json(tmp_path / f"{system}_s{seed}" / f"samples_val_{d}.json",
                           dict(summary, per_prompt=values))
    spec = dict(root=str(tmp_path), systems={"mle": ("MLE", []), "irl": ("IRL", [])},
                sampling=dict(split="val"), decodings=["greedy", "beam4", "t1"], metric="accuracy",
                also_scored=[])
    cells = report.paired_rows("x", spec, 2, report.per_seed(spec, 2))[-1].split(" | ")
    assert cells[5] == "+0.250 ± 0.000 [+0.250, +0.250]"  # greedy: +0.25 on every prompt
    beam = [min(1.0, v + 0.25) - v for seed in mle for v in seed]  # 0.25 but where capped at 1
    low, high = map(float, cells[7].split("[")[1].rstrip("]").split(","))
    assert low <= np.mean(beam) <= high and low >= 0 and high <= 0.25


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


# ----------------------------------------------------------------------------- figures
DECODINGS = ["greedy", "beam4", "t0.5", "t1"]


def drawn_figure(monkeypatch):
    """The figures report saves, kept (not written) in the list returned."""
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **args: figures.append(fig))
    return figures


def score_figure(root, name, systems, figures):
    """draw_score_vs_diversity from hand-made summaries of 2 seeds (hotter: more diverse, lower
    accuracy): its curves.json and its axes."""
    for k, s in enumerate(systems):
        for seed in range(2):
            for d, (self_bleu, accuracy) in zip(DECODINGS, [(1, .6), (1, .62), (.8, .5), (.5, .3)]):
                write_json(Path(report.decoding_file(str(root / f"{s}_s{seed}"), d)), dict(
                    accuracy=accuracy + 0.01 * (k + seed), self_bleu=self_bleu, distinct_2=0.5))
    spec = dict(root=str(root), systems=systems, sampling=dict(split="val"), decodings=DECODINGS,
                metric="accuracy", also_scored=[])
    report.draw_score_vs_diversity(name, spec, 2, report.per_seed(spec, 2))
    return json.loads((root / "curves.json").read_text()), figures[-1].axes[0]


def colours(ax):
    """{legend label: the colour of its line} of a figure's axes."""
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_a_family_has_one_colour_in_every_figure(tmp_path, monkeypatch):
    """IRL is the second system of task arith and the fourth of a tuned task: red in both, as in
    the val curves (its systems by prefix: irl0.1 is IRL's); two of a family (online IQ-Learn at two
    λ) share its colour, told apart by line style; each point named by its decoding, in curves.json
    and on the figure; the untuned task's title says so."""
    figures = drawn_figure(monkeypatch)
    arith = {s: experiment.SYSTEMS[s] for s in ("mle", "irl0.1", "online0.01", "online0.1")}
    curves, ax = score_figure(tmp_path / "arith", "arith", arith, figures)
    tuned = {f: (f"{f.upper()} (dropout 0.1)", []) for f in ("mle", "ent", "gem", "irl")}
    tuned_curves, tuned_ax = score_figure(tmp_path / "tuned", "tuned arith", tuned, figures)
    red, blue = report.FAMILY_COLOURS["irl"], report.FAMILY_COLOURS["mle"]
    assert colours(ax)["IRL λ=0.1"] == colours(tuned_ax)["IRL (dropout 0.1)"] == to_hex(red)
    assert colours(ax)["MLE"] == colours(tuned_ax)["MLE (dropout 0.1)"] == to_hex(blue)
    assert [line["system"] for line in curves["lines"]] == list(arith)
    assert report.family_of("irl0.1") == "irl" and report.family_of("mle+ft") == "mle+ft"
    online = [line for line in ax.get_lines() if line.get_label().startswith("online")]
    assert len({to_hex(line.get_color()) for line in online}) == 1
    assert [line.get_linestyle() for line in online] == ["-", "--"]
    for line in curves["lines"] + tuned_curves["lines"]:  # from the most diverse to greedy
        assert line["decodings"] == ["T=1", "T=0.5", "greedy"]
        assert len(line["curve"]) == len(line["decodings"])
    assert {"T=1", "T=0.5", "greedy"} <= {text.get_text() for text in ax.texts}
    assert "untuned: against the default MLE" in curves["title"]
    assert "best against best" in tuned_curves["title"] and "untuned" not in tuned_curves["title"]

    # the overview of three tasks' curves; one written before the colours were families': named
    results = tmp_path / "res"
    for folder in report.OVERVIEW:
        (results / folder).mkdir(parents=True)
        shutil.copy(tmp_path / "tuned" / "curves.json", results / folder)
    assert report.overview(str(results)) == str(results / "overview.png")
    old = dict(tuned_curves, lines=[dict(line, color=0) for line in tuned_curves["lines"]])
    for line in old["lines"]:
        del line["system"]
    write_json(results / "cmudict" / "curves.json", old)
    with pytest.raises(ValueError, match="cmudict/curves.json: not the curves experiment.py"):
        report.overview(str(results))


@pytest.mark.parametrize("nll", [(0.615, 0.585), (3.0, 0.25)], ids=["narrow", "wide"])
def test_val_curves_log_axis_repeats_no_tick_label(tmp_path, monkeypatch, nll):
    """Task finetune's figure: val nll within a decade (0.615 -> 0.585, ticks 0.005 apart, where
    '%.2g' printed 0.58 twice) or over one, on a log scale: labelled, and no tick label twice;
    IRL red, as in the score figures; titled as untuned."""
    figures, groups = drawn_figure(monkeypatch), {}
    for k, s in enumerate(("mle", "irl0.1")):
        groups[(s, "250 demos")] = [str(tmp_path / f"{s}_s{seed}") for seed in range(2)]
        for folder in groups[(s, "250 demos")]:
            values = [nll[0] + (nll[1] - nll[0]) * i / 5 + 0.001 * k for i in range(6)]
            os.makedirs(folder)
            Path(folder, "log.jsonl").write_text("".join(json.dumps(
                {"iter": 50 * i, "val/nll": v, "val/accuracy": 0.1 * i}) + "\n"
                for i, v in enumerate(values)))
    report.val_curves("finetune", groups, "fine-tuning", 2, str(tmp_path / "figure.png"))
    fig = figures[0]
    fig.canvas.draw()
    ax, (low, high) = fig.axes[0], fig.axes[0].get_ylim()
    ticks = [t for minor in (False, True) for t in ax.get_yticklabels(minor=minor) if t.get_text()]
    labels = [t.get_text() for t in ticks]
    assert len(labels) == len(set(labels)), labels
    assert sum(low <= t.get_position()[1] <= high for t in ticks) >= 3, labels  # in view
    assert colours(ax)["IRL λ=0.1, 250 demos"] == to_hex(report.FAMILY_COLOURS["irl"])
    assert "untuned: against the default MLE" in fig._suptitle.get_text()


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
                   {"accuracy": 0.25, "self_bleu": 0.5, "distinct_2": 0.75,
                    "phoneme_error_rate": 0.5, "bleu": 0.5})
    elif script == "analyze_reward.py":
        run = os.path.basename(os.path.dirname(flags["out_dir"]))  # --out_dir: the run's ckpt.pt
        write_json(Path(flags["results"]) / "reward_summary.json",
                   {"runs": {run: dict.fromkeys(report.REWARD_KEYS, 0.1)}})
    else:  # critic.py: every scorer picks a right answer on the first prompt only
        prompts, name = int(flags["max_prompts"]), lambda path: path.split("/")[-2] + "/best"
        judged = [f"return[{name(flags['irl'])}]", "vote", "oracle"] + [
            f"logp[{name(path)}]" for path in flags["likelihood"].split(",")]
        per_prompt = [1.0] + [0.0] * (prompts - 1)
        write_json(Path(flags["results"]) / "critic_summary.json", dict(
            num_candidates=16, temperature=1.0, prompts=prompts, metric="accuracy",
            pool_mean=0.1, beam=dict(beam_size=int(flags.get("beam_size", 0))),
            scorers={s: dict(best_of={str(n): dict(mean=1 / prompts) for n in (1, 2, 4, 8, 16)},
                             per_prompt=dict(best_of={str(n): per_prompt for n in (2, 4, 8, 16)},
                                             auc=per_prompt)) for s in judged}))
        if "beam_size" in flags:
            (Path(flags["results"]) / "critic_beam.jsonl").write_text(json.dumps(dict(
                logp_beam="1", reward_beam="", logp_beam_oracle=1.0, reward_beam_oracle=0.0)) + "\n")
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


def test_scores_on_the_problems_that_are_no_reordering_of_a_train_problem(tmp_path):
    """demonstrations.fresh leaves out a test problem whose operands a train problem holds in
    another order; the report's table scores each system on the others alone, by hand."""
    from lab.demonstrations import fresh
    folder = tmp_path / "data"
    folder.mkdir()
    rows = lambda prompts: "".join(json.dumps(dict(prompt=p, completion="x")) + "\n"
                                   for p in prompts)
    (folder / "train.jsonl").write_text(rows(["1*8*11=", "9-2="]))
    (folder / "test.jsonl").write_text(rows(["1*11*8=", "2-9=", "8*11*1=", "3+4="]))
    assert fresh(str(folder), "test", 4) == [1, 3] and fresh(str(folder), "test", 2) == [1]
    greedy = {"mle": [[1, 0, 1, 0], [1, 1, 1, 0]], "irl": [[1, 1, 1, 1], [1, 1, 1, 1]]}
    for system, per_seed in greedy.items():
        for seed, scores in enumerate(per_seed):
            for d in ("t0", "beam4"):
                write_json(tmp_path / f"{system}_s{seed}" / f"samples_test_{d}.json",
                           dict(accuracy=float(np.mean(scores)), per_prompt=dict(accuracy=scores)))
    spec = dict(root=str(tmp_path), systems={"mle": ("MLE", []), "irl": ("IRL", [])},
                sampling=dict(split="test", prompts=4), decodings=["greedy", "beam4"],
                metric="accuracy", also_scored=[], fresh=[1, 3])
    table = report.fresh_rows("x", spec, 2, report.per_seed(spec, 2))
    # MLE on prompts 1 and 3: seed 0 (0 + 0) / 2 = 0, seed 1 (1 + 0) / 2 = 0.5: 0.250 ± 0.250;
    # IRL 1 on both: +0.750 ± 0.250 over MLE (its differences 1 and 0.5)
    assert table[-2] == "| MLE | 0.250 ± 0.250 | 0.250 ± 0.250 | — |"
    assert table[-1].startswith("| IRL | 1.000 ± 0.000 | 1.000 ± 0.000 | +0.750 ± 0.250 [")
    assert "the 2 of 4 test problems" in table[0]


def test_critic_judges_each_seeds_pools_with_the_final_runs(tmp_path, monkeypatch, capsys):
    """--task=critic (scripts faked) on a finished --quick cmudict: critic.py once per seed and pool,
    on the final runs' best.pt, beam search with the pool from IRL only; arith and shakespeare,
    not run, left out by name; the same command again only redraws; a final run whose weights
    are gone is trained again before its pool is judged."""
    launched = []

    def launch(runner, command):  # the fakes, and train.py's weights as a real run leaves them
        launched.append(command)
        if command[0] == "train.py":
            out_dir = Path(dict(a[2:].split("=", 1) for a in command[1:])["out_dir"])
            out_dir.mkdir(parents=True, exist_ok=True)
            for weights in ("ckpt.pt", "best.pt"):
                (out_dir / weights).write_text("")
        return fake_launch(command)

    def run(task):
        try:
            return table.run_inline(EXPERIMENT, ["--results=res", f"--task={task}", "--quick",
                                                 "--seeds=1"], monkeypatch, capsys, tmp_path)
        finally:
            while runfiles.held_locks:
                os.close(runfiles.held_locks.pop())

    monkeypatch.setattr(Runner, "launch", launch)
    code, _, err = run("critic")  # before any task ran: one line, what to run first
    assert "has run best against best in res: run one first" in f"{code} {err}" and not launched
    assert run("cmudict")[0] in (None, 0)
    launched.clear()
    code, out, err = run("critic")
    assert code in (None, 0), err
    critics = [c for c in launched if c[0] == "critic.py"]
    assert len(critics) == 2 and len(launched) == 2
    final = lambda family: f"res/cmudict/{family}_s0/best.pt"
    for command, pool in zip(critics, ("mle", "irl")):
        flags = dict(a[2:].split("=", 1) for a in command[1:])
        assert flags["policy"] == final(pool) and flags["irl"] == final("irl")
        assert flags["likelihood"] == f"{final('mle')},{final('irl')}"  # --quick: no GEM
        assert flags["results"] == f"res/critic/cmudict/{pool}_s0"
        assert flags["split"] == "test" and flags["max_prompts"] == "100"
        assert ("beam_size" in flags) == (pool == "irl")
    assert "critic: arith left out" in out and "critic: shakespeare left out" in out
    drawn = (tmp_path / "res" / "critic" / "table.md").read_text()
    assert "### cmudict, pool from MLE" in drawn and "| return[irl] | 0.010 |" in drawn
    launched.clear()
    assert run("critic")[0] in (None, 0) and not launched  # only redrawn
    for weights in ("ckpt.pt", "best.pt"):  # as in a clone: git keeps neither
        os.remove(tmp_path / "res" / "cmudict" / "irl_s0" / weights)
    shutil.rmtree(tmp_path / "res" / "critic" / "cmudict" / "irl_s0")
    assert run("critic")[0] in (None, 0)
    assert [c[0] for c in launched] == ["train.py", "critic.py"]
    assert "--out_dir=res/cmudict/irl_s0" in launched[0]


def test_a_choice_at_an_edge_is_tried_past_it():
    """search.beyond: a choice in the outer tenth of a log range gets the trials with that setting
    divided (low edge) or multiplied (high edge) by 3 and 9, the rest as chosen; a choice inside,
    or at the edge of a range not drawn on a log scale, gets none."""
    space = dict(learning_rate=("log", 3e-4, 6e-3), dropout=("choice", [0.0, 0.1, 0.2]),
                 gem_beta=("uniform", 0.1, 1.0), td_coef=("log", 1e-3, 1.0))
    low = dict(learning_rate=3.82e-4, dropout=0.2, gem_beta=0.95, td_coef=0.5)
    assert search.beyond(low, space) == [dict(low, learning_rate=1.27e-4),
                                         dict(low, learning_rate=4.24e-5)]
    both = dict(learning_rate=5.9e-3, dropout=0.0, gem_beta=0.5, td_coef=0.0011)
    assert search.beyond(both, space) == [
        dict(both, learning_rate=0.0177), dict(both, learning_rate=0.0531),
        dict(both, td_coef=0.000367), dict(both, td_coef=0.000122)]
    assert search.beyond(dict(low, learning_rate=1e-3), space) == []  # gem_beta high: not log


def test_a_tuned_setting_tries_past_the_edge_and_runs_the_winner(tmp_path, monkeypatch, capsys):
    """Scripts faked, --quick: the random search's trial lies at the low edge of the learning rate
    and a lower rate scores higher on val, so each family tries 1/3 and 1/9 of it, chooses the
    1/9 and runs that on the final seed; trials.jsonl and the table say so."""
    def draw(shared, own, trials, seed):  # trial 0 at the bottom tenth of the learning rate
        return [dict(learning_rate=3.1e-4, dropout=0.0, weight_decay=0.1,
                     **({"td_coef": 0.03} if own else {}))] * trials

    def launch(runner, command):  # val accuracy falls with the learning rate the run had
        if command[0] == "sample.py":
            flags = dict(a[2:].split("=", 1) for a in command[1:])
            marker = (Path(flags["out_dir"]) / "trained").read_text().splitlines()
            rate = float(next(f for f in marker if f.startswith("--learning_rate="))[16:])
            fake_launch(command)
            summary = next(Path(flags["out_dir"]).glob(f"samples_{flags['split']}_*.json"))
            write_json(summary, dict(json.loads(summary.read_text()), accuracy=1 - 100 * rate))
            return 1.0
        return fake_launch(command)

    monkeypatch.setattr(search, "draw", draw)
    monkeypatch.setattr(Runner, "launch", launch)
    try:
        code, out, err = table.run_inline(EXPERIMENT, ["--results=res", "--task=cmudict",
                                                       "--quick", "--seeds=1"],
                                          monkeypatch, capsys, tmp_path)
    finally:
        while runfiles.held_locks:
            os.close(runfiles.held_locks.pop())
    assert code in (None, 0), err
    root = tmp_path / "res" / "cmudict"
    lines = [json.loads(line) for line in (root / "trials.jsonl").read_text().splitlines()]
    assert [(r["trial"], r["flags"]["learning_rate"], r["past_edge"], r["chosen"])
            for r in lines] == [("mle_t0", 3.1e-4, False, False), ("mle_p0", 1.03e-4, True, False),
                                ("mle_p1", 3.44e-5, True, True), ("irl_t0", 3.1e-4, False, False),
                                ("irl_p0", 1.03e-4, True, False), ("irl_p1", 3.44e-5, True, True)]
    for family in ("mle", "irl"):
        assert "--learning_rate=3.44e-05" in (root / f"{family}_s0" / "trained").read_text()
    table_md = (root / "table.md").read_text()
    assert "| MLE | mle_t0 | learning_rate low | mle_p0 (0.990), mle_p1 (0.997) | mle_p1 |" \
        in table_md


def test_finetunes_base_row_is_decoded_on_the_fine_tuning_data(tmp_path, monkeypatch, capsys):
    """Scripts faked, --quick: tuned finetune's "base model" row decodes each seed's start, task
    arith's MLE run, on the test prompts of the shifted demonstrations the runs fine-tune on (not on
    arith's own, which the checkpoint names); the fine-tuned runs on their own data."""
    launched = []
    monkeypatch.setattr(Runner, "launch", lambda runner, command: launched.append(command)
                        or fake_launch(command))
    try:
        code, _, err = table.run_inline(EXPERIMENT, ["--results=res", "--task=tuned", "--quick",
                                                     "--seeds=1"], monkeypatch, capsys, tmp_path)
    finally:
        while runfiles.held_locks:
            os.close(runfiles.held_locks.pop())
    assert code in (None, 0), err
    fine_tune = next(c for c in launched if "--out_dir=res/tuned/finetune/mle_s0" in c)
    data = next(f for f in fine_tune if f.startswith("--dataset="))
    assert "shifted" in data
    base = [c for c in launched if "--out_dir=res/tuned/finetune/base_s0" in c]
    assert base and all(c[0] == "sample.py" and data in c and "--split=test" in c
                        and "--init_from=res/arith/mle_s0/ckpt.pt" in c for c in base)
    tuned = [c for c in launched if c[0] == "sample.py" and "res/tuned/finetune/mle_s0" in c[1]]
    assert tuned and not any(f.startswith("--dataset=") for c in tuned for f in c)
