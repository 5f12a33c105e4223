"""Shared by the tests: a batch's masks with every case of docs/method.md section 2, and running a script of
the repository as a user would, on tiny settings."""
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
