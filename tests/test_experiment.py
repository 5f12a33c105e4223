"""The experiment lab (lab/): its statistics, on hand-worked examples (no training); tiny experiments run
from a folder of the user's own, by hand from --plan's commands, and under --quick; and results/README.md's
commands against --help."""
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

argv, handler = sys.argv, signal.getsignal(signal.SIGINT)
sys.argv = ["experiment.py"]  # lab/experiment.py reads its flags at import: none here, not pytest's
import lab.experiment as experiment  # noqa: E402
sys.argv = argv
signal.signal(signal.SIGINT, handler)  # importing installs experiment.py's Ctrl-C message
from configurator import help_lines  # noqa: E402
from dataset import prepare_task  # noqa: E402
from lab import stats  # noqa: E402
from lab.report import diff_cells, ms  # noqa: E402
from lab.runner import Runner, last_wins  # noqa: E402
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
    touch = lambda *names: [(run / n).write_text("x") for n in names]
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


def test_runs_from_another_folder(tmp_path):
    """From a folder of the user's own, as `python path/to/lab/experiment.py`: it finds train.py,
    sample.py and analyze_reward.py in the repository, and the paths given (--results, the data in
    --train_args) are the user's."""
    result = experiment_in(tmp_path, ["--systems=mle"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "res" / "arith" / "table.md").exists()
    assert sorted(os.listdir(tmp_path)) == ["data", "res"]


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
    the experiment (--quick) trains only what is left, says "run k of N" and its bold note once."""
    plan = experiment_in(tmp_path, ["--systems=mle,mle+ft", "--plan"])
    assert plan.returncode == 0, plan.stderr[-2000:]
    lines = plan.stdout.splitlines()
    assert all(line.startswith("OMP_NUM_THREADS=1 python ") for line in lines), lines
    assert "10 commands in 4 waves (lines 1-1, 2-5, 6-9, 10-10)" in plan.stderr, plan.stderr
    assert os.listdir(tmp_path / "res" / "arith") == ["run.lock"]  # nothing but the lock
    at = lambda *words: next(i for i, line in enumerate(lines) if all(w in line for w in words))
    mle, fine_tuned = "--out_dir=res/arith/mle_s0", "--out_dir=res/arith/mle+ft_s0"
    assert at("train.py", mle, "&& touch res/arith/mle_s0/trained") == 0
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
