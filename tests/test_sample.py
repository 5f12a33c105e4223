"""sample.py end to end on tiny checkpoints: train a few steps, sample, and check the files it writes
against the rows themselves (the summary must be the mean of the per-sample metrics)."""
import json

import pytest

from metrics import distinct_n, rouge_l, self_bleu
from tests.helpers import TINY, run_script


@pytest.fixture(scope="module")
def arith_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("arith")
    run_script(TINY + ["--max_iters=20", "--eval_interval=20", f"--out_dir={out_dir}"])
    return out_dir


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    rows = [{"prompt": f"line {i} of the song", "completion": f" and so we sing {'la ' * (i % 4)}again"}
            for i in range(40)]
    (folder / "songs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = folder / "out"
    run_script(TINY + ["--max_iters=20", "--eval_interval=20", f"--dataset={folder / 'songs.jsonl'}",
                       f"--out_dir={out_dir}"])
    return out_dir


def read_outputs(path):
    rows = [json.loads(line) for line in open(path)]
    summary = json.load(open(str(path)[:-1]))  # samples_x.jsonl -> samples_x.json
    return rows, summary


def test_arith_samples_and_metrics(arith_run):
    result = run_script(["--max_prompts=6", "--num_samples=4", "--seed=3", f"--out_dir={arith_run}"], "sample.py")
    assert "tok/s" in result.stdout
    rows, summary = read_outputs(arith_run / "samples_val_t1.jsonl")
    assert len(rows) == 6 * 4 and summary["prompts"] == 6 and summary["num_samples"] == 4
    for key in ("accuracy", "self_bleu", "distinct_1", "distinct_2", "length", "entropy", "tokens_per_second"):
        assert key in summary, key
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / len(rows)
    groups = [[r["sample"] for r in rows[i:i + 4]] for i in range(0, 24, 4)]
    assert all(len({r["prompt"] for r in rows[i:i + 4]}) == 1 for i in range(0, 24, 4))
    assert summary["self_bleu"] == pytest.approx(sum(map(self_bleu, groups)) / 6)
    assert summary["distinct_2"] == pytest.approx(sum(distinct_n(g, 2) for g in groups) / 6)
    assert summary["length"] == pytest.approx(sum(r["length"] for r in rows) / len(rows))
    # the same seed gives the same samples
    run_script(["--max_prompts=6", "--num_samples=4", "--seed=3", f"--out_dir={arith_run}",
                f"--out_file={arith_run / 'again.jsonl'}"], "sample.py")
    assert [r["sample"] for r in read_outputs(arith_run / "again.jsonl")[0]] == [r["sample"] for r in rows]


def test_greedy_and_own_prompts(arith_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+2*3=\n(4+5)*6=\n")
    run_script(["--temperature=0", "--num_samples=2", f"--start=FILE:{prompts}", f"--out_dir={arith_run}"],
               "sample.py")
    rows, summary = read_outputs(arith_run / "samples_start_t0.jsonl")
    assert [r["prompt"] for r in rows] == ["1+2*3="] * 2 + ["(4+5)*6="] * 2
    assert rows[0]["sample"] == rows[1]["sample"] and rows[2]["sample"] == rows[3]["sample"]  # greedy
    assert summary["self_bleu"] == pytest.approx((self_bleu([rows[0]["sample"]] * 2) + self_bleu([rows[2]["sample"]] * 2)) / 2)
    assert "accuracy" not in summary  # own prompts have no reference


def test_text_task_reports_rouge(text_run):
    run_script(["--max_prompts=3", "--num_samples=2", f"--out_dir={text_run}"], "sample.py")
    rows, summary = read_outputs(text_run / "samples_val_t1.jsonl")
    for key in ("rouge1", "rouge2", "rougeL", "self_bleu", "distinct_1", "entropy"):
        assert key in summary, key
    assert summary["rougeL"] == pytest.approx(sum(rouge_l(r["sample"], r["reference"]) for r in rows) / len(rows))
    # a text task has no verifier: train.py logged no greedy accuracy, only the token accuracy
    log = [json.loads(line) for line in open(text_run / "log.jsonl")]
    assert "val/accuracy" not in log[-1] and "val/token_accuracy" in log[-1]
