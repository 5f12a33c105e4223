"""sample.py end to end on tiny checkpoints: train a few steps, sample, and check the files it writes
against what is computed here: the summary's metrics from the samples by the references metrics.py
promises to equal (Google's rouge-score for ROUGE, nltk's sentence_bleu for Self-BLEU, distinct-n by
hand), greedy samples by a plain argmax loop over the model's forward, the answers' correctness by
Python's arithmetic, the policy's entropy on the reference completions."""
import json
import re

import pytest
import torch

import metrics
from dataset import load_dataset
from model import GPT, GPTConfig
from tests.helpers import TINY, one_thread, run_script


WORDS = re.compile(r"\w+|[^\w\s]")  # metrics.py's tokens for BLEU and distinct-n: words, punctuation


def nltk_self_bleu(samples):
    """The usual Self-BLEU: nltk's sentence_bleu (smoothing method 1) of each sample against the rest."""
    bleu = pytest.importorskip("nltk.translate.bleu_score")
    tokens, smooth = [WORDS.findall(s) for s in samples], bleu.SmoothingFunction().method1
    return sum(bleu.sentence_bleu(tokens[:i] + tokens[i + 1:], t, smoothing_function=smooth)
               for i, t in enumerate(tokens)) / len(tokens)


def distinct_by_hand(samples, n):
    """Distinct n-grams / all n-grams of the samples (none across two samples); 0 with none."""
    grams = [tuple(t[i:i + n]) for t in map(WORDS.findall, samples) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def load_model(out_dir):
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


@torch.no_grad()
def greedy_by_forward(model, prompt_ids, eos_id, max_new_tokens=128):
    """The argmax of forward() on the whole sequence, one token at a time, until EOS, max_new_tokens or a
    full window. Returns (tokens, how many of them are sure): a near-tie of the two best logits (< 1e-4)
    is a coin toss for float rounding, so tokens from there on are not compared."""
    seq, out, sure = list(prompt_ids), [], None
    while len(out) < max_new_tokens and len(seq) < model.config.block_size:
        top = model(torch.tensor([seq]))[0, -1].topk(2)
        if sure is None and top.values[0] - top.values[1] < 1e-4:
            sure = len(out)
        seq.append(top.indices[0].item())
        out.append(seq[-1])
        if out[-1] == eos_id:
            break
    return out, len(out) if sure is None else sure


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
    # trained until its samples share words with the references (ROUGE > 0: something to get wrong)
    run_script(TINY + ["--max_iters=60", "--eval_interval=60", "--learning_rate=0.03", "--warmup_iters=0",
                       f"--dataset={folder / 'songs.jsonl'}", f"--out_dir={out_dir}"])
    return out_dir


def read_outputs(path):
    rows = [json.loads(line) for line in open(path)]
    summary = json.load(open(str(path)[:-1]))  # samples_x.jsonl -> samples_x.json
    return rows, summary


@one_thread()
def test_arith_samples_and_metrics(arith_run):
    result = run_script(["--max_prompts=6", "--num_samples=4", "--seed=3", f"--out_dir={arith_run}"], "sample.py")
    assert "tok/s" in result.stdout
    rows, summary = read_outputs(arith_run / "samples_val_t1.jsonl")
    assert len(rows) == 6 * 4 and summary["prompts"] == 6 and summary["num_samples"] == 4
    for key in ("accuracy", "self_bleu", "distinct_1", "distinct_2", "length", "reference_entropy", "tokens_per_second"):
        assert key in summary, key
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / len(rows)
    groups = [[r["sample"] for r in rows[i:i + 4]] for i in range(0, 24, 4)]
    assert all(len({r["prompt"] for r in rows[i:i + 4]}) == 1 for i in range(0, 24, 4))
    assert len({s for g in groups for s in g}) > 6  # real draws, repeated words: something to count
    assert summary["self_bleu"] == pytest.approx(sum(map(nltk_self_bleu, groups)) / 6, abs=1e-12)
    for n in (1, 2):
        expected = sum(distinct_by_hand(g, n) for g in groups) / 6
        assert summary[f"distinct_{n}"] == pytest.approx(expected, abs=1e-12), n
    assert summary["length"] == pytest.approx(sum(r["length"] for r in rows) / len(rows))
    # the rows against the data and the checkpoint: val prompts 0..5 in order, K rows each; an answer is
    # correct when what follows "#" is the prompt's value (Python's arithmetic); a sample is as long as its
    # characters (char tokenizer), plus its EOS if it ended with one, or it stopped at the window or limit
    data = load_dataset("arith")
    tok, pairs = data["tokenizer"], data["splits"]["val"][:6]
    assert [(r["prompt"], r["reference"]) for r in rows] == [pair for pair in pairs for _ in range(4)]
    for r in rows:
        answer = r["sample"].split("#", 1)[1] if "#" in r["sample"] else ""
        assert r["correct"] == bool(re.fullmatch(r"-?[0-9]+", answer) and int(answer) == eval(r["prompt"][:-1]))
        assert r["length"] == len(tok.encode(r["sample"])) + r["terminated"]
        assert r["terminated"] or r["length"] == 128 or 1 + len(r["prompt"]) + r["length"] == 64
    # the policy's entropy on the reference completions of the 6 val rows, per completion token
    model, entropies = load_model(arith_run), []
    with torch.no_grad():
        for prompt, completion in pairs:
            ids = [tok.eos_id] + tok.encode(prompt) + tok.encode(completion) + [tok.eos_id]
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0, len(prompt):], -1)
            entropies += (-(logp.exp() * logp).sum(-1)).tolist()
    assert summary["reference_entropy"] == pytest.approx(sum(entropies) / len(entropies), rel=1e-5)
    # the same seed gives the same samples
    run_script(["--max_prompts=6", "--num_samples=4", "--seed=3", f"--out_dir={arith_run}",
                f"--out_file={arith_run / 'again.jsonl'}"], "sample.py")
    assert [r["sample"] for r in read_outputs(arith_run / "again.jsonl")[0]] == [r["sample"] for r in rows]


@one_thread()
def test_greedy_and_own_prompts(arith_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+2*3=\n(4+5)*6=\n")
    run_script(["--temperature=0", "--num_samples=2", f"--start=FILE:{prompts}", f"--out_dir={arith_run}"],
               "sample.py")
    rows, summary = read_outputs(arith_run / "samples_start_t0.jsonl")
    assert [r["prompt"] for r in rows] == ["1+2*3="] * 2 + ["(4+5)*6="] * 2
    assert rows[0]["sample"] == rows[1]["sample"] and rows[2]["sample"] == rows[3]["sample"]  # greedy
    model, tok = load_model(arith_run), load_dataset("arith")["tokenizer"]
    for r in rows:  # what a plain argmax loop over forward() writes
        tokens, sure = greedy_by_forward(model, [tok.eos_id] + tok.encode(r["prompt"]), tok.eos_id)
        assert r["sample"].startswith(tok.decode(tokens[:sure])) and sure > 0
        if sure == len(tokens):
            assert r["sample"] == tok.decode(tokens) and r["length"] == len(tokens)
            assert r["terminated"] == (tokens[-1] == tok.eos_id)
    assert summary["self_bleu"] == pytest.approx(
        (nltk_self_bleu([rows[0]["sample"]] * 2) + nltk_self_bleu([rows[2]["sample"]] * 2)) / 2, abs=1e-12)
    assert "accuracy" not in summary  # own prompts have no reference
    assert "per_prompt" not in summary  # nor scores to keep per prompt


def test_text_task_reports_rouge(text_run):
    run_script(["--max_prompts=3", "--num_samples=2", f"--out_dir={text_run}"], "sample.py")
    rows, summary = read_outputs(text_run / "samples_val_t1.jsonl")
    for key in ("self_bleu", "distinct_1", "reference_entropy"):
        assert key in summary, key
    # each row's ROUGE-1/2/L F and their means: rouge-score's, without the stemmer (metrics.py's rule)
    scorer = pytest.importorskip("rouge_score.rouge_scorer").RougeScorer(["rouge1", "rouge2", "rougeL"])
    expected = [{key: score.fmeasure for key, score in scorer.score(r["reference"], r["sample"]).items()}
                for r in rows]
    assert all(e["rougeL"] > 0 for e in expected) and any(e["rouge2"] > 0 for e in expected)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert [r[key] for r in rows] == pytest.approx([e[key] for e in expected], abs=1e-12), key
        assert summary[key] == pytest.approx(sum(e[key] for e in expected) / len(rows), abs=1e-12), key
    # a text task has no verifier: train.py logged no greedy accuracy, only the token accuracy
    log = [json.loads(line) for line in open(text_run / "log.jsonl")]
    assert "val/accuracy" not in log[-1] and "val/token_accuracy" in log[-1]


def check_per_prompt(rows, summary, k, keys):
    """summary["per_prompt"] against the rows: each prompt's (k consecutive rows) mean of each
    score, its Self-BLEU when k > 1, one value per prompt; they average to the summary's means."""
    per_prompt, n = summary["per_prompt"], summary["prompts"]
    assert len(rows) == n * k and list(summary)[-1] == "per_prompt"
    assert set(per_prompt) == set(keys) | ({"self_bleu"} if k > 1 else set())
    groups = [rows[i:i + k] for i in range(0, len(rows), k)]
    assert all(len({r["prompt"] for r in g}) == 1 for g in groups)
    for key in keys:
        row_key = "correct" if key == "accuracy" else key
        expected = [sum(r[row_key] for r in g) / k for g in groups]
        assert per_prompt[key] == pytest.approx(expected, abs=1e-4), key
        assert sum(per_prompt[key]) / n == pytest.approx(summary[key], abs=1e-4), key
    if k > 1:
        expected = [metrics.self_bleu([r["sample"] for r in g]) for g in groups]
        assert per_prompt["self_bleu"] == pytest.approx(expected, abs=1e-4)
        assert sum(per_prompt["self_bleu"]) / n == pytest.approx(summary["self_bleu"], abs=1e-4)
    assert all(len(v) == n for v in per_prompt.values())


@one_thread()
def test_per_prompt_scores_arith(arith_run):
    """Sampling (K=3), greedy and beam search (K=1, no Self-BLEU) keep each prompt's scores in the
    summary, and the printed summary leaves them out."""
    for i, (args, k) in enumerate(((["--num_samples=3", "--seed=5"], 3),
                                   (["--temperature=0", "--num_samples=1"], 1),
                                   (["--beam_size=2", "--num_samples=1"], 1))):
        out_file = arith_run / f"scores_{i}.jsonl"
        result = run_script(args + ["--max_prompts=5", f"--out_dir={arith_run}",
                                    f"--out_file={out_file}"], "sample.py")
        rows, summary = read_outputs(out_file)
        assert summary["prompts"] == 5 and '"per_prompt"' not in result.stdout
        check_per_prompt(rows, summary, k, ["accuracy"])
        if k == 3:
            assert 0 < sum(summary["per_prompt"]["self_bleu"]) < 5  # some samples differ, not all


@one_thread()
def test_per_prompt_scores_rouge(text_run):
    out_file = text_run / "scores.jsonl"
    run_script(["--max_prompts=3", "--num_samples=2", f"--out_dir={text_run}",
                f"--out_file={out_file}"], "sample.py")
    rows, summary = read_outputs(out_file)
    check_per_prompt(rows, summary, 2, ["rouge1", "rouge2", "rougeL"])
    assert any(v > 0 for v in summary["per_prompt"]["rougeL"])
