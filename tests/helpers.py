"""Shared by the tests: a batch's masks with every case of docs/method.md section 2, and running a script of
the repository as a user would, on tiny settings."""
import contextlib
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "lab/experiment.py"  # the experiment lab's script, in ROOT
# train.py flags for a model small enough to train for a few steps in seconds on one CPU core
TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32"]  # (a checkpoint keeps its own shape: no shape flags)
TINY = TINY_MODEL + ["--batch_size=8", "--eval_iters=1", "--eval_prompts=4", "--log_interval=1", "--compile=False",
                     "--device=cpu"]


def demonstration_masks(targets, dtype=torch.float64):
    """(loss_mask, done) for targets (B >= 3, T >= 6): row 0 a prompt then a completion ending in EOS
    (then padding), row 1 a completion cut by the window (truncated), row 2 a short completion then
    padding; further rows are all padding. Sets the targets outside the mask to -1, in place."""
    loss_mask = torch.zeros(targets.shape, dtype=dtype)
    done = torch.zeros(targets.shape, dtype=dtype)
    loss_mask[0, 2:6] = 1; done[0, 5] = 1          # prompt 0..1, completion 2..5 ends in EOS, padding
    loss_mask[1, 1:] = 1                           # completion cut by the window: truncated
    loss_mask[2, 3:5] = 1; done[2, 4] = 1          # short completion, then padding
    targets[loss_mask == 0] = -1
    return loss_mask, done


def run_script(args, script="train.py", check=True):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


# Rows of every kind a batch can hold, to put in any order: a bug at the edge of a chunk, a row or the
# flattened batch hides when the same kind of row always comes last (demonstration_masks ends in padding,
# so its last flattened position is never a completion token).
ROW_KINDS = {
    "full": "a one-token prompt, then a completion that fills the window and ends in EOS at its last position",
    "cut": "a one-token prompt, then a completion cut by the window (truncated: no EOS, no done)",
    "eos": "a prompt of two tokens, a completion of four ending in EOS, then padding",
    "short": "a prompt of three tokens, a completion of two ending in EOS, then padding",
    "pad": "padding only",
}
ROW_ORDERS = {  # name -> row kinds, top to bottom
    "longest last": ("eos", "short", "pad", "full"),
    "longest first": ("full", "short", "eos", "pad"),
    "longest in the middle": ("short", "full", "eos"),
    "truncated last": ("full", "eos", "cut"),
    "padding last": ("eos", "cut", "short", "pad"),
}


def rows_of_kinds(targets, kinds, dtype=torch.float64):
    """(loss_mask, done) for targets (len(kinds), T >= 7) with one row of each kind of ROW_KINDS, in the
    order given. Sets the targets outside the mask to -1, in place."""
    assert targets.size(0) == len(kinds) and targets.size(1) >= 7
    T = targets.size(1)
    loss_mask = torch.zeros(targets.shape, dtype=dtype)
    done = torch.zeros(targets.shape, dtype=dtype)
    for row, kind in enumerate(kinds):
        if kind == "full":
            loss_mask[row, :] = 1; done[row, T - 1] = 1
        elif kind == "cut":
            loss_mask[row, :] = 1
        elif kind == "eos":
            loss_mask[row, 1:5] = 1; done[row, 4] = 1
        elif kind == "short":
            loss_mask[row, 2:4] = 1; done[row, 3] = 1
        else:
            assert kind == "pad", kind
    targets[loss_mask == 0] = -1
    return loss_mask, done


@contextlib.contextmanager
def one_thread():
    """Tiny models in the test process on one thread: on busy cores, OpenMP's sync between two threads costs
    milliseconds per op (a greedy loop over forward() goes from 0.2 s to 12 s). The count is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
