"""What a newcomer meets in the first hour after the Quick start: a short run that still decays its
learning rate, one clear line for a dataset that is missing or broken, and sample.py summaries that
record how they decoded."""
import json
import shutil

import pytest

from tests.helpers import run_script

# smaller than helpers.TINY: these tests check the plumbing, not what the model learns
SMALL = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--batch_size=4", "--eval_prompts=0", "--eval_iters=1",
         "--compile=False", "--device=cpu"]
MIN_LR = 1e-4  # train.py's default min_lr


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 60-step run (warmup is 50): lr_decay_iters is left at its default, 0 = max_iters."""
    out_dir = tmp_path_factory.mktemp("short") / "out"
    run_script(SMALL + ["--max_iters=60", "--eval_interval=30", f"--out_dir={out_dir}"])
    return out_dir


def logged_lr(out_dir):
    return {r["iter"]: r["lr"] for r in map(json.loads, open(out_dir / "log.jsonl"))}


def test_short_run_decays_to_min_lr_and_so_does_a_resumed_one(short_run, tmp_path):
    lr = logged_lr(short_run)
    assert lr[60] == pytest.approx(MIN_LR) and lr[30] > 2 * MIN_LR  # the cosine ends where the run ends
    # resumed with a longer --max_iters: the stored lr_decay_iters=0 still means max_iters, now 100
    shutil.copytree(short_run, tmp_path / "out")
    run_script(SMALL + ["--max_iters=100", "--eval_interval=30", f"--out_dir={tmp_path / 'out'}", "--init_from=resume"])
    lr = logged_lr(tmp_path / "out")
    assert sorted(lr) == [0, 30, 60, 90, 100] and lr[90] > MIN_LR and lr[100] == pytest.approx(MIN_LR)


def one_line_error(result):
    """The message of a script that stopped on bad input: one line, a non-zero exit, no traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_dataset_file_says_it_does_not_exist(tmp_path):
    missing = tmp_path / "path" / "mine.jsonl"
    message = one_line_error(run_script(SMALL + [f"--dataset={missing}", f"--out_dir={tmp_path / 'out'}"], check=False))
    assert message == f"train.py: error: dataset {missing} does not exist (no such file or folder); check the path"


def test_broken_json_shows_json_s_whole_reason(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2=", "completion": "4}\n')
    message = one_line_error(run_script(SMALL + [f"--dataset={path}", f"--out_dir={tmp_path / 'out'}"], check=False))
    # json's message and where: the string that opens at column 34 ("4}) is never closed
    assert message == (f"train.py: error: {path}:2: not valid JSON (Unterminated string starting at: column 34); "
                       f"each line of a JSONL file must be one whole JSON object")


@pytest.mark.parametrize("flags,expected", [
    (["--beam_size=2", "--num_samples=1"], dict(decoding="beam", temperature=None, top_k=None, beam_size=2)),
    (["--temperature=0", "--num_samples=1"], dict(decoding="greedy", temperature=0.0, top_k=None, beam_size=None)),
])
def test_summary_records_how_it_decoded(short_run, flags, expected):
    run_script(flags + ["--max_prompts=4", "--max_new_tokens=8", f"--out_dir={short_run}"], "sample.py")
    name = "beam2" if "--beam_size=2" in flags else "t0"
    summary = json.load(open(short_run / f"samples_val_{name}.json"))
    assert {k: summary[k] for k in expected} == expected
    # the policy's entropy on the reference completions: named so, not mistaken for the samples' entropy
    assert "entropy" not in summary and summary["reference_entropy"] > 0
