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

from checkpoint import LOCK_FILE, rank_rng, write_atomically
from tests.helpers import ROOT
from tests.test_bad_inputs import (DEFAULTS, SETUPS, TRAIN, base, children_of, replaced, run_inline,  # noqa: F401
                                   snapshot, write_checkpoint)
from tests.test_bad_inputs import test_bad_input_stops_with_one_line as check_case


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
    ("train-args-seed", "experiment.py", ["--train_args=--seed=5"], ("--seed is experiment.py's", "--seeds=N"), ""),
    ("train-args-out-dir", "experiment.py", ["--train_args=--device=cpu --out_dir=x"],
     ("--out_dir is experiment.py's", "--results"), ""),
    ("train-args-init-from", "experiment.py", ["--train_args=--init_from=x.pt"], "--init_from is experiment.py's", ""),
    ("train-args-quote", "experiment.py", ["--train_args=--dataset='a b"], ("does not parse", "shell quoting"), ""),
    ("train-args-space", "experiment.py", ["--train_args=--dataset='{w}/no such data'"],
     "no such data does not exist (no such file or folder)", ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_before_any_output(case, base, tmp_path, monkeypatch, capsys):  # noqa: F811 (base: a fixture)
    check_case(case, base, tmp_path, monkeypatch, capsys)
