"""No output destroys an input, a resumed run is the same run, and a stop (SIGTERM, SIGKILL) leaves
whole files and no process behind.

The cases of CASES run through tests/test_bad_inputs.py's table machinery (its tiny run w/run, its data
w/data, a snapshot of every file before and after): each stops with a non-zero exit and one short line
naming the cause, and every input and earlier output is byte-identical afterwards. The tests below the
table run a script to its end, or signal it in a subprocess."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import runfiles
import tests.test_bad_inputs as table
from checkpoint import rank_rng
from runfiles import LOCK_FILE, write_atomically
from tests.helpers import EXPERIMENT, ROOT
from tests.test_bad_inputs import DEFAULTS, SETUPS, TRAIN, children_of, replaced, write_checkpoint

base = table.base  # the fixture: w/run, w/data and the small files of the table
check_case = table.test_bad_input_stops_with_one_line  # the table's runner, under a name pytest does not collect


def run_inline(script, args, monkeypatch, capsys, cwd):
    """table.run_inline from the folder cwd, then the locks the script took let go (a lock lasts as long
    as its process)."""
    try:
        return table.run_inline(script, args, monkeypatch, capsys, cwd)
    finally:
        while runfiles.held_locks:
            os.close(runfiles.held_locks.pop())


def link(w, name, target, kind="symbolic"):
    """w/name as a link to w/target (its folders made)."""
    (w / name).parent.mkdir(parents=True, exist_ok=True)
    (os.symlink if kind == "symbolic" else os.link)(w / target, w / name)


def copy(w, source, name):
    (w / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(w / source, w / name)


def two_processes(c):
    """The checkpoint as a 2-process DDP run would have saved it: each rank's states."""
    return dict(c["rng"], data=c["rng"]["data"] * 2, ranks=c["rng"]["ranks"] * 2)


SETUPS.update({  # the table's runner looks a case's setup up there
    "link_ckpt": lambda w, mp, later: link(w, "link.pt", "run/ckpt.pt"),
    "hard_link_log": lambda w, mp, later: link(w, "hard.jsonl", "run/log.jsonl", "hard"),
    "best": lambda w, mp, later: copy(w, "run/ckpt.pt", "run/best.pt"),
    "prompts": lambda w, mp, later: (w / "prompts.txt").write_text("1+1=\n"),
    "tokens_are_samples": lambda w, mp, later: copy(w, "run/samples_val_t1.jsonl", "run/reward_tokens_run.jsonl"),
    "tokens_are_data": lambda w, mp, later: copy(w, "data/train.jsonl", "run/reward_tokens_run.jsonl"),
    "summary_is_ckpt": lambda w, mp, later: copy(w, "run/ckpt.pt", "run/reward_summary.json"),
    "results_link_ckpt": lambda w, mp, later: link(w, "res/reward_summary.json", "run/ckpt.pt"),
    "out_best_is_init": lambda w, mp, later: copy(w, "run/ckpt.pt", "out/best.pt"),
    "out_log_is_data": lambda w, mp, later: copy(w, "data/train.jsonl", "out/log.jsonl"),
    "lock_symlink": lambda w, mp, later: link(w, f"out/{LOCK_FILE}", "afile"),
    "lock_hard_link": lambda w, mp, later: link(w, f"out/{LOCK_FILE}", "afile", "hard"),
    "lock_foreign": lambda w, mp, later: copy(w, "afile", f"out/{LOCK_FILE}"),
    "lock_folder": lambda w, mp, later: (w / "out" / LOCK_FILE).mkdir(parents=True),
    "saved_by_two": lambda w, mp, later: write_checkpoint(w / "run" / "ckpt.pt", replaced("rng", two_processes)),
    "no_ranks": lambda w, mp, later: write_checkpoint(w / "run" / "ckpt.pt",
                                                      replaced("rng", lambda c: dict(c["rng"], ranks=[]))),
})
SAMPLE_OUT = "give --out_file another name"
ANALYZE = ["--results={w}/run"]
RESUME = ["--init_from=resume", "--out_dir={w}/run"]
NOT_A_LOCK = "is not a lock file of these scripts"
CASES = [  # (id, script, flags, words of the message (one string, or all of a tuple), setup)
    # an output path that is an input: each input of sample.py, and the summary beside the samples
    ("out-file-ckpt", "sample.py", ["--out_file={w}/run/ckpt.pt"], ("the checkpoint of --out_dir", SAMPLE_OUT), ""),
    ("out-file-init-from", "sample.py", ["--init_from={w}/run/ckpt.pt", "--out_file={w}/run/ckpt.pt"],
     "the checkpoint of --init_from", ""),
    ("out-file-log", "sample.py", ["--out_file={w}/run/log.jsonl"], ("the log.jsonl of --out_dir", SAMPLE_OUT), ""),
    ("out-file-best", "sample.py", ["--out_file={w}/run/best.pt"], "the best.pt of --out_dir", "best"),
    ("out-file-val-split", "sample.py", ["--dataset={w}/data", "--out_file={w}/data/val.jsonl"],
     ("a file of --dataset", SAMPLE_OUT), ""),
    ("out-file-train-split", "sample.py", ["--dataset={w}/data", "--out_file={w}/data/train.jsonl"],
     "a file of --dataset", ""),
    ("out-file-meta", "sample.py", ["--dataset={w}/data", "--out_file={w}/data/meta.json"], "a file of --dataset", ""),
    ("out-file-jsonl-dataset", "sample.py", ["--dataset={w}/latin1.jsonl", "--out_file={w}/latin1.jsonl"],
     "a file of --dataset", ""),
    ("out-file-prompts", "sample.py", ["--start=FILE:{w}/prompts.txt", "--out_file={w}/prompts.txt"],
     "the prompt file of --start", "prompts"),
    ("out-file-samples-summary", "sample.py", ["--out_file={w}/run/samples_val_t1.json"],
     ("the summary of --out_file", "a name ending in .jsonl"), ""),
    ("out-file-new-summary", "sample.py", ["--out_file={w}/new.json"], "the summary of --out_file", ""),
    ("out-file-symlink", "sample.py", ["--out_file={w}/link.pt"], "the checkpoint of --out_dir", "link_ckpt"),
    ("out-file-dotdot", "sample.py", ["--out_file={w}/run/../run/ckpt.pt"], "the checkpoint of --out_dir", ""),
    ("out-file-hard-link", "sample.py", ["--out_file={w}/hard.jsonl"], "the log.jsonl of --out_dir", "hard_link_log"),
    # analyze_reward.py: its fixed names in --results against the runs, samples and data it reads
    ("results-over-samples", "analyze_reward.py", ANALYZE + ["--samples=reward_tokens_run.jsonl"],
     ("reward_tokens_run.jsonl of --results", "--samples=reward_tokens_run.jsonl"), "tokens_are_samples"),
    ("results-over-dataset", "analyze_reward.py", ANALYZE + ["--dataset={w}/run/reward_tokens_run.jsonl"],
     ("of --results", "a file of --dataset"), "tokens_are_data"),
    ("results-over-ckpt", "analyze_reward.py", ANALYZE + ["--out_dir={w}/run/reward_summary.json"],
     ("reward_summary.json of --results", "the checkpoint of --out_dir"), "summary_is_ckpt"),
    ("results-link-to-ckpt", "analyze_reward.py", ["--results={w}/res"],
     ("reward_summary.json of --results", "the checkpoint of --out_dir"), "results_link_ckpt"),
    # train.py: its ckpt.pt, log.jsonl and best.pt against the checkpoint it starts from and its data
    ("train-best-over-init-from", "train.py", ["--init_from={w}/out/best.pt", "--dataset={w}/data"],
     ("best.pt is --init_from", "another --out_dir"), "out_best_is_init"),
    ("train-log-over-dataset", "train.py", ["--dataset={w}/out/log.jsonl"], ("log.jsonl is a file of --dataset"),
     "out_log_is_data"),
    # the lock file: never followed, never truncated
    ("lock-symlink", "train.py", ["--dataset={w}/data"], (NOT_A_LOCK, "a symbolic link"), "lock_symlink"),
    ("lock-hard-link", "train.py", ["--dataset={w}/data"], (NOT_A_LOCK, "a hard link"), "lock_hard_link"),
    ("lock-foreign", "train.py", ["--dataset={w}/data"], (NOT_A_LOCK, "holds more than a pid"), "lock_foreign"),
    ("lock-folder", "train.py", ["--dataset={w}/data"], NOT_A_LOCK, "lock_folder"),
    # a resumed run continues the same streams: another number of processes is refused
    ("resume-world-size", "train.py", RESUME, ("saved by a run of 2 processes and this one has 1",
                                               "torchrun --nproc_per_node=2"), "saved_by_two"),
    ("resume-no-ranks", "train.py", RESUME, "rng['ranks'] is not one random generator state per process", "no_ranks"),
    # experiment.py --train_args: shell quoting, and the flags experiment.py sets per run
    ("train-args-seed", EXPERIMENT, ["--train_args=--seed=5"], ("--seed is experiment.py's", "--seeds=N"), ""),
    ("train-args-out-dir", EXPERIMENT, ["--train_args=--device=cpu --out_dir=x"],
     ("--out_dir is experiment.py's", "--results"), ""),
    ("train-args-init-from", EXPERIMENT, ["--train_args=--init_from=x.pt"], "--init_from is experiment.py's", ""),
    ("train-args-quote", EXPERIMENT, ["--train_args=--dataset='a b"], ("does not parse", "shell quoting"), ""),
    ("train-args-space", EXPERIMENT, ["--train_args=--dataset='{w}/no such data'"],
     "no such data does not exist (no such file or folder)", ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_before_any_output(case, base, tmp_path, monkeypatch, capsys):
    check_case(case, base, tmp_path, monkeypatch, capsys)


# ----------------------------------------------------------------------------- a resumed run is the same run
def test_resume_keeps_the_checkpoints_settings(base, tmp_path, monkeypatch, capsys):
    """A run started with --learning_rate=0.01 and resumed with no flags keeps both: a setting marked
    "(resume: may change)" changes only when passed again, and the first line says which did."""
    out = tmp_path / "out"
    args = TRAIN + [f"--dataset={base / 'data'}", f"--out_dir={out}", "--learning_rate=0.01"]
    assert run_inline("train.py", args, monkeypatch, capsys, tmp_path)[0] in (None, 0)
    code, stdout, _ = run_inline("train.py", ["--init_from=resume", f"--out_dir={out}"], monkeypatch, capsys, tmp_path)
    assert code in (None, 0) and stdout.splitlines()[0].endswith("every setting as saved")
    code, stdout, _ = run_inline("train.py", ["--init_from=resume", f"--out_dir={out}", "--max_iters=3"],
                                 monkeypatch, capsys, tmp_path)
    assert code in (None, 0) and stdout.splitlines()[0].endswith("but max_iters 2 -> 3 (passed)")
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 3 and checkpoint["config"]["learning_rate"] == 0.01
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert log[-1]["iter"] == 3 and log[-1]["lr"] == 0.01 * 4 / 51  # warmup (50 steps) of 0.01, not of 1e-3


def test_each_rank_restores_its_own_random_states():
    """rank_rng hands rank r the states rank r saved, and refuses another number of processes."""
    states = [torch.Generator().manual_seed(r).get_state() for r in range(4)]
    rng = dict(torch=states[0], cuda=None, data=states[2:], ranks=[dict(torch=s, cuda=None) for s in states[:2]])
    assert all(torch.equal(a, b) for a, b in zip(rank_rng(rng, 1, 2, "ckpt.pt"), (states[1], None, states[3]))
               if a is not None)
    with pytest.raises(ValueError, match="saved by a run of 2 processes and this one has 3"):
        rank_rng(rng, 0, 3, "ckpt.pt")


def torchrun(args, out_dir):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py"] + args + [f"--out_dir={out_dir}"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]


def test_ddp_resume_with_dropout_is_exact(base, tmp_path):
    """Two processes with dropout, stopped at iter 2 and resumed to 4, end with the weights of a run
    that went straight to 4: each rank continued its own dropout masks and batches."""
    args = TRAIN + [f"--dataset={base / 'data'}", "--dropout=0.1", "--eval_interval=2", "--gradient_accumulation_steps=2"]
    torchrun(args + ["--max_iters=4"], tmp_path / "straight")
    torchrun(args, tmp_path / "resumed")
    torchrun(["--init_from=resume", "--max_iters=4"], tmp_path / "resumed")
    a, b = (torch.load(tmp_path / run / "ckpt.pt", weights_only=True) for run in ("straight", "resumed"))
    assert b["iter_num"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ----------------------------------------------------------------------------- stops and kills
def start(script, args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script)] + args, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_for(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def temporaries(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".tmp")]


def test_sigterm_stops_train_cleanly_and_it_resumes(base, tmp_path, monkeypatch, capsys):
    """SIGTERM is Ctrl-C: one line, the last checkpoint whole, no temporary file; after a SIGKILL the
    next run in the folder removes the temporaries the killed writer left."""
    out = tmp_path / "out"
    process = start("train.py", TRAIN + [f"--dataset={base / 'data'}", f"--out_dir={out}", "--max_iters=100000"])
    wait_for(lambda: (out / "ckpt.pt").exists())
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().startswith("train.py: error: interrupted at iter") and len(stderr.strip().splitlines()) == 1
    assert not temporaries(out)
    dead = out / f".ckpt.pt.pid{process.pid}.abcd_123.tmp"  # as a SIGKILL during a save leaves it
    dead.write_bytes(b"half a checkpoint")
    iter_num = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    code, _, _ = run_inline("train.py", ["--init_from=resume", f"--out_dir={out}", f"--max_iters={iter_num + 1}"],
                            monkeypatch, capsys, tmp_path)
    assert code in (None, 0) and not temporaries(out)
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == iter_num + 1


def test_a_write_removes_only_dead_writers_temporaries(tmp_path):
    """A figure's temporary that a killed process left goes with the next write into its folder; the
    temporary of a writer still running stays."""
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid no longer runs
    dead = tmp_path / f".reward_returns.png.pid{finished.pid}.abcd_123.tmp"
    live = tmp_path / f".ckpt.pt.pid{os.getpid()}.abcd_123.tmp"
    for path in (dead, live):
        path.write_bytes(b"half a file")
    write_atomically(str(tmp_path / "reward_summary.json"), "{}\n")
    assert not dead.exists() and live.exists() and (tmp_path / "reward_summary.json").read_text() == "{}\n"


def test_experiment_stopped_leaves_no_run(base, tmp_path):
    """experiment.py stopped by SIGTERM ends its train.py runs (one line, no temporary file); killed by
    SIGKILL alone, its runs get SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop too."""
    w = tmp_path / "w"
    shutil.copytree(base, w)
    args = [a.replace("{w}", str(w)) for a in DEFAULTS[EXPERIMENT] + ["--train_args=" + " ".join(
        TRAIN + [f"--dataset={w}/data", "--max_iters=100000", "--eval_interval=100000"])]]
    for signum in (signal.SIGTERM, signal.SIGKILL):  # each wait is for its event: 600 s only end a hang
        process = start(EXPERIMENT, args)
        wait_for(lambda: children_of(process.pid) or process.poll() is not None, 600)
        kids = children_of(process.pid)
        assert kids, process.communicate()[1]
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=600)
        wait_for(lambda: not [k for k in kids if os.path.exists(f"/proc/{k}")], 600)
        if signum == signal.SIGTERM:
            assert process.returncode == 1 and stderr.strip().startswith("experiment.py: interrupted"), stderr
        assert "Traceback" not in stderr and not temporaries(w)
