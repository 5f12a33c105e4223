"""--keep_best (train.py's save_best, checkpoint.beats): best.pt holds the first evaluation with the
best value, iteration 0 included. Checked against the run itself at each evaluation: a hook saves the
weights every evaluation sees, and the test computes from them each evaluation's val nll (a plain
cross-entropy) or ROUGE-L (greedy completions by an argmax loop over forward(), scored by Google's
rouge-score)."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import tokenizer_of
from dataset import load_dataset
from model import GPT, GPTConfig
from tests.helpers import ROOT, TINY, one_thread, run_script
from tests.test_sample import greedy_by_forward

# train.py with checks.stop_if_diverged (called once per evaluation, with the model) wrapped to save
# the weights it sees to $SNAPSHOTS/<iter>.pt first
WITH_SNAPSHOTS = """import os, runpy, sys, torch, checks
stop_if_diverged = checks.stop_if_diverged
def snapshot(record, model, ckpt_path):
    torch.save(model.state_dict(), os.path.join(os.environ["SNAPSHOTS"], f"{record['iter']}.pt"))
    stop_if_diverged(record, model, ckpt_path)
checks.stop_if_diverged = snapshot
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""
# val nll at every evaluation: a constant learning rate, no warmup, no greedy decoding
NLL_RUN = TINY + ["--keep_best=val/nll", "--eval_interval=1", "--eval_prompts=0",
                  "--warmup_iters=0", "--decay_lr=False"]


def run_with_snapshots(args, out_dir):
    """train.py args --out_dir=out_dir; returns {iter: the weights its evaluation saw}."""
    snapshots = out_dir.parent / f"{out_dir.name}-snapshots"
    snapshots.mkdir()
    result = subprocess.run([sys.executable, "-c", WITH_SNAPSHOTS] + args + [f"--out_dir={out_dir}"],
                            cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", SNAPSHOTS=str(snapshots)))
    assert result.returncode == 0, result.stdout + result.stderr
    return {int(name[:-3]): torch.load(snapshots / name, weights_only=True)
            for name in os.listdir(snapshots)}


def load(path):
    return torch.load(path, weights_only=True)


def model_of(weights, model_args):
    model = GPT(GPTConfig(**model_args))
    model.load_state_dict(weights)
    return model.eval()


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def first_best(values, higher):
    """The earliest iteration of the best value of {iter: value}."""
    best = max(values.values()) if higher else min(values.values())
    return min(i for i, value in values.items() if value == best)


def read_log(out_dir, key):
    return {r["iter"]: r[key] for r in map(json.loads, open(out_dir / "log.jsonl"))}


@torch.no_grad()
def val_nll(model, tok, pairs):
    """Mean -log p of every completion token and the closing EOS over the rows: [EOS] + prompt +
    completion + [EOS], each position predicting the next token, in float64."""
    total, count = 0.0, 0
    for prompt, completion in pairs:
        prompt_ids, completion_ids = tok.encode(prompt), tok.encode(completion) + [tok.eos_id]
        ids = [tok.eos_id] + prompt_ids + completion_ids
        assert len(ids) <= model.config.block_size + 1  # no row is cut
        logits = model(torch.tensor([ids[:-1]]))[0].double()
        logp = torch.log_softmax(logits, -1)[len(prompt_ids):]  # the rows predicting the completion
        total -= logp.gather(1, torch.tensor(completion_ids)[:, None]).sum().item()
        count += len(completion_ids)
    return total / count


def check_best_pt(out_dir, snapshots, values, higher):
    """best.pt is the earliest best of values ({iter: value}): its iteration, its value, its weights
    (those the evaluation saw); log.jsonl marks that evaluation and no later one."""
    best_iter = first_best(values, higher)
    best = load(out_dir / "best.pt")
    assert best["iter_num"] == best["best"]["iter"] == best_iter, (values, best["iter_num"])
    assert best["best"]["value"] == pytest.approx(values[best_iter], rel=1e-5)
    assert same_weights(best["model"], snapshots[best_iter])
    log = [json.loads(line) for line in open(out_dir / "log.jsonl")]
    assert [r["iter"] for r in log if r.get("best")][-1] == best_iter


@one_thread()
@pytest.mark.parametrize("metric", ["val/accuracy", "val/nll"])  # higher is better, lower is better
def test_a_tie_keeps_the_earliest_evaluation(metric, tmp_path):
    """Learning rate 0: the weights never change, so every evaluation ties: best.pt holds iteration 0."""
    out_dir = tmp_path / "run"
    snapshots = run_with_snapshots(TINY + [f"--keep_best={metric}", "--eval_interval=1",
                                           "--max_iters=2", "--learning_rate=0", "--decay_lr=False"],
                                   out_dir)
    assert sorted(snapshots) == [0, 1, 2]
    assert all(same_weights(w, snapshots[0]) for w in snapshots.values())
    best = load(out_dir / "best.pt")
    assert best["iter_num"] == best["best"]["iter"] == 0
    log = [json.loads(line) for line in open(out_dir / "log.jsonl")]
    assert [r["iter"] for r in log if r.get("best")] == [0] and len({r[metric] for r in log}) == 1


@pytest.fixture(scope="module")
def falls_then_rises(tmp_path_factory):
    """A run whose val nll falls, then rises: (out_dir, its snapshots)."""
    out_dir = tmp_path_factory.mktemp("nll") / "straight"
    return out_dir, run_with_snapshots(NLL_RUN + ["--learning_rate=0.03", "--max_iters=4"], out_dir)


@one_thread()
@pytest.mark.parametrize("case", ["falls then rises", "rises from the start"])
def test_best_pt_holds_the_evaluation_with_the_lowest_val_nll(case, falls_then_rises, tmp_path):
    """Each evaluation's val nll computed here from its weights: best.pt holds the lowest, mid-run
    (learning rate 0.03) or the first evaluation's (0.3: every step makes it worse)."""
    if case == "falls then rises":
        out_dir, snapshots = falls_then_rises
    else:
        out_dir = tmp_path / "run"
        snapshots = run_with_snapshots(NLL_RUN + ["--learning_rate=0.3", "--max_iters=4"], out_dir)
    best = load(out_dir / "best.pt")
    pairs = load_dataset("arith")["splits"]["val"][:8]  # eval_iters=1 batch of batch_size=8 val rows
    values = {i: val_nll(model_of(w, best["model_args"]), tokenizer_of(best), pairs)
              for i, w in snapshots.items()}
    log = read_log(out_dir, "val/nll")
    assert log.keys() == values.keys() == {0, 1, 2, 3, 4}
    assert all(log[i] == pytest.approx(values[i], rel=1e-5) for i in values), (log, values)
    assert sorted(values.values())[1] - min(values.values()) > 1e-3  # no near tie: the setup's point
    check_best_pt(out_dir, snapshots, values, higher=False)
    best_iter = first_best(values, higher=False)
    assert 0 < best_iter < 4 if case == "falls then rises" else best_iter == 0


def file_hashes(folder):
    """The run's files (but the lock, which holds the pid of the last script) by their sha256."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in os.listdir(folder) if name != "run.lock"}


@one_thread()
def test_a_resumed_run_keeps_the_best_of_the_whole_run(falls_then_rises, tmp_path):
    """Stopped after the best evaluation: resuming repeats the last evaluation, which changes nothing
    (every file byte for byte), and resumed to the end the run writes the best.pt of the run never
    stopped, which sample.py reads."""
    straight, _ = falls_then_rises
    expected = load(straight / "best.pt")
    assert 0 < expected["iter_num"] < 3  # the best before the stop
    out_dir = tmp_path / "resumed"
    run = NLL_RUN + ["--learning_rate=0.03", f"--out_dir={out_dir}"]
    run_script(run + ["--max_iters=3"])
    before = file_hashes(out_dir)
    run_script(run + ["--max_iters=3", "--init_from=resume"])
    assert file_hashes(out_dir) == before
    run_script(run + ["--max_iters=4", "--init_from=resume"])
    again = load(out_dir / "best.pt")
    assert again["iter_num"] == expected["iter_num"] and again["best"] == expected["best"]
    assert same_weights(again["model"], expected["model"])
    # sample.py reads best.pt: greedy, what an argmax loop over best.pt's forward() writes
    run_script([f"--out_dir={out_dir}", f"--init_from={out_dir / 'best.pt'}", "--max_prompts=2",
                "--num_samples=1", "--temperature=0", "--device=cpu"], script="sample.py")
    model, tok = model_of(again["model"], again["model_args"]), tokenizer_of(again)
    for row in map(json.loads, open(out_dir / "samples_val_t0.jsonl")):
        tokens, sure = greedy_by_forward(model, tok.encode_prompt(row["prompt"]), tok.eos_id)
        assert sure > 0 and row["sample"].startswith(tok.decode(tokens[:sure]))


@torch.no_grad()
def greedy_rouge_l(model, tok, pairs):
    """Mean rouge-score ROUGE-L F of the greedy completions (until EOS or a full window)."""
    from rouge_score.rouge_scorer import RougeScorer
    scorer, scores = RougeScorer(["rougeL"]), []
    for prompt, reference in pairs:
        tokens, _ = greedy_by_forward(model, tok.encode_prompt(prompt), tok.eos_id, 10**9)
        scores.append(scorer.score(reference, tok.decode(tokens))["rougeL"].fmeasure)
    return sum(scores) / len(scores)


@one_thread()
def test_keep_best_by_rouge_on_text(tmp_path):
    """A text task has no verifier: --keep_best=val/rougeL decodes the val prompts greedily at each
    evaluation and keeps the earliest state whose completions score the best ROUGE-L against the
    references."""
    pytest.importorskip("rouge_score.rouge_scorer")
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"line {i}", "completion": "and so it goes"}) + "\n"
                            for i in range(40)))
    out_dir = tmp_path / "run"
    snapshots = run_with_snapshots(TINY + [f"--dataset={data}", "--block_size=32", "--max_iters=6",
                                           "--eval_interval=1", "--keep_best=val/rougeL",
                                           "--learning_rate=0.01", "--warmup_iters=0",
                                           "--decay_lr=False"], out_dir)
    best = load(out_dir / "best.pt")
    tok, pairs = tokenizer_of(best), load_dataset(str(data))["splits"]["val"][:4]  # eval_prompts=4
    values = {i: greedy_rouge_l(model_of(w, best["model_args"]), tok, pairs)
              for i, w in snapshots.items()}
    log = read_log(out_dir, "val/rougeL")
    assert log.keys() == values.keys() == set(range(7))
    assert all(log[i] == pytest.approx(values[i], abs=1e-9) for i in values), (log, values)
    assert 0 < first_best(values, True) < 6 and len(set(values.values())) > 2  # a best mid-run
    check_best_pt(out_dir, snapshots, values, higher=True)
