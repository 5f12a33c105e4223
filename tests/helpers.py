"""Shared by the end-to-end tests: run a script of the repository as a user would, on tiny settings."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# train.py flags for a model small enough to train for a few steps in seconds on one CPU core
TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32"]  # (a checkpoint keeps its own shape: no shape flags)
TINY = TINY_MODEL + ["--batch_size=8", "--eval_iters=1", "--eval_prompts=4", "--log_interval=1", "--compile=False",
                     "--device=cpu"]


def run_script(args, script="train.py", check=True):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result
