"""critic.py and generate.reward_beam_search against independent references: best-of-N and majority
vote against every sub-pool enumerated, AUC and votes by hand, each model scorer against a float64
loop over a tiny model's logits, the telescoping identity of docs/method.md section 11 (return
ranks as log p within a prompt), reward beam search against greedy and log-p beam search where
its reward is log p, and against a search over every sequence of a tiny vocabulary; then the
command end to end on a tiny arith run, and its one-line refusals."""
import hashlib
import io
import itertools
import json
import os
import random
import runpy
import signal
import sys
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
import torch.nn.functional as F

import critic
from generate import beam_search, generate, reward_beam_search
from tests.helpers import ROOT, TINY, one_thread, run_script
from tests.test_beam import peaked_model
from tokenizer import CharTokenizer


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():  # tiny tensors: extra threads only add OpenMP sync on the shared cores
        yield


# ----------------------------------------------------------------------------- the judging maths

def every_sub_pool(size, n):
    return itertools.combinations(range(size), n)


def pick_by_score(scores, sub_pool):
    """The highest score of the sub-pool, a tie to the candidate earliest in the pool."""
    return max(sub_pool, key=lambda i: (scores[i], -i))


def pick_by_vote(answers, sub_pool):
    """critic.RULES['vote'] written out: the answer with the most votes in the sub-pool, a tie to
    the answer met first in it, and its first candidate; no answer at all: the first candidate."""
    counted = [i for i in sub_pool if answers[i] is not None]
    if not counted:
        return sub_pool[0]
    votes = Counter(answers[i] for i in counted)
    most = max(votes.values())
    return next(i for i in counted if votes[answers[i]] == most)


def random_pool(rng, size):
    """Scores with ties, graded oracle scores, answers from three values and abstentions."""
    return ([rng.choice([0.0, 0.5, 1.0, 2.0, rng.random()]) for _ in range(size)],
            [rng.random() for _ in range(size)],
            [rng.choice(["7", "7", "12", "5", None]) for _ in range(size)])


def test_best_of_n_and_vote_against_every_sub_pool():
    rng = random.Random(0)
    for size in (1, 2, 5, 8):
        for _ in range(6):
            scores, oracle, answers = random_pool(rng, size)
            for n in range(1, size + 1):
                pools = list(every_sub_pool(size, n))
                by_score = sum(oracle[pick_by_score(scores, s)] for s in pools) / len(pools)
                by_vote = sum(oracle[pick_by_vote(answers, s)] for s in pools) / len(pools)
                assert critic.best_of_n(scores, oracle, n) == pytest.approx(by_score, abs=1e-12)
                assert critic.vote_best_of_n(answers, oracle, n) == pytest.approx(by_vote,
                                                                                  abs=1e-12)
                ceiling = critic.best_of_n(oracle, oracle, n)  # the oracle is never beaten
                assert critic.best_of_n(scores, oracle, n) <= ceiling + 1e-12
                assert critic.vote_best_of_n(answers, oracle, n) <= ceiling + 1e-12
            mean = sum(oracle) / size  # N = 1: one candidate drawn at random
            assert critic.best_of_n(scores, oracle, 1) == pytest.approx(mean, abs=1e-12)
            assert critic.vote_best_of_n(answers, oracle, 1) == pytest.approx(mean, abs=1e-12)
            assert critic.best_of_n(oracle, oracle, size) == max(oracle)


def test_vote_with_a_tie_by_hand():
    """Answers 7, 5, 5, 7 and one abstention; 7 is right. The whole pool ties 2-2: 7 comes first
    and wins. Of the five sub-pools of 4, those without candidate 0 or without candidate 3 elect 5
    (2 votes to 1), those without 1, 2 or 4 elect 7 (2-1, 2-1 and the tie): 3/5."""
    answers, oracle = ["7", "5", "5", "7", None], [1.0, 0.0, 0.0, 1.0, 0.0]
    assert critic.vote_counts(answers) == [2, 2, 2, 2, 0]
    assert critic.vote_best_of_n(answers, oracle, 5) == 1.0
    assert critic.vote_best_of_n(answers, oracle, 4) == pytest.approx(3 / 5)
    assert critic.vote_best_of_n(["5", "7", "7", "5"], [0.0, 1.0, 1.0, 0.0], 4) == 0.0  # 5 first
    assert critic.vote_best_of_n([None, None], [0.3, 0.9], 2) == 0.3  # no answer: the first
    assert critic.answer_reader("arith")("9*7=63;11+63=74#74") == "74"
    assert critic.answer_reader("arith")("9*7=63;11+63=74#") is None  # nothing after '#'
    assert critic.answer_reader("text") is None


def test_pairwise_auc_by_hand():
    """Right: candidates 0 and 2; wrong: 1 and 3. Pairs (0,1), (0,3), (2,1) ordered right, (2,3)
    a tie: 3.5 / 4."""
    assert critic.pairwise_auc([3.0, 1.0, 2.0, 2.0], [1, 0, 1, 0]) == 0.875
    assert critic.pairwise_auc([1.0, 2.0], [1, 1]) is None  # nothing to order
    # graded (ROUGE-L): pairs (0>1), (2>0), (2>1); the scorer gets (2>0) and (2>1) right
    assert critic.pairwise_auc([0.1, 0.5, 0.9], [0.4, 0.2, 0.8]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- the model scorers

ALPHABET = "0123456789+=#"


def float64_terms(model, tok, candidate):
    """(q_k, v_k, v after the last token) of a candidate's completion tokens, from one forward()
    of [EOS] prompt completion, in float64: row f + k reads the state before token k."""
    prompt_ids = [tok.eos_id] + tok.encode(candidate["prompt"])
    ids = tok.encode(candidate["completion"]) + [tok.eos_id] * candidate["terminated"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids]))[0].double()
    f = len(prompt_ids) - 1
    v = torch.logsumexp(logits, -1)
    q = [logits[f + k, t].item() for k, t in enumerate(ids)]
    return q, [v[f + k].item() for k in range(len(ids))], v[f + len(ids)].item()


CANDIDATES = [dict(prompt="1+2=", completion="1+2=3#3", terminated=True),
              dict(prompt="1+2=", completion="3#", terminated=True),
              dict(prompt="45+6=", completion="45+6=5", terminated=False),  # cut: truncated
              dict(prompt="7=", completion="", terminated=True)]  # EOS alone


def test_model_scores_against_float64_by_hand():
    """r_k = q_k - gamma v_{k+1}, r = q at EOS, no reward for a cut candidate's last token;
    R = sum gamma^k r_k, log p = sum (q_k - v_k); means per rewarded / completion token."""
    tok = CharTokenizer(ALPHABET)
    model = peaked_model(1, tok.vocab_size, 24, scale=1.0)
    for gamma in (1.0, 0.8):
        scores = critic.model_scores(model, tok, CANDIDATES, gamma, "cpu", rows=3)
        for cand, s in zip(CANDIDATES, scores):
            q, v, _ = float64_terms(model, tok, cand)
            n = len(q)
            rewards = [q[k] - gamma * v[k + 1] for k in range(n - 1)]
            rewards += [q[-1]] if cand["terminated"] else []
            ret = sum(gamma ** k * r for k, r in enumerate(rewards))
            log_p = sum(qk - vk for qk, vk in zip(q, v))
            assert s["ret"] == pytest.approx(ret, abs=1e-4)
            assert s["ret_mean"] == pytest.approx(ret / len(rewards), abs=1e-4)
            assert s["logp"] == pytest.approx(log_p, abs=1e-4)
            assert s["logp_mean"] == pytest.approx(log_p / n, abs=1e-4)
            assert s["v0"] == pytest.approx(v[0], abs=1e-4)
            assert s["terminated"] == cand["terminated"]


def test_discriminator_returns_by_hand():
    """GAIL's score: the discriminator's logit of each completion token, summed with gamma^k."""
    tok = CharTokenizer(ALPHABET)
    disc = peaked_model(2, tok.vocab_size, 24, scale=1.0)
    out = critic.discriminator_returns(disc, tok, CANDIDATES, 0.9, "cpu", rows=2)
    for cand, s in zip(CANDIDATES, out):
        q, _, _ = float64_terms(disc, tok, cand)  # d_k is the logit of token k: q_k of the disc
        assert s["gail"] == pytest.approx(sum(0.9 ** k * d for k, d in enumerate(q)), abs=1e-4)
        assert s["gail_mean"] == pytest.approx(sum(q) / len(q), abs=1e-4)


def test_return_ranks_as_log_p_within_a_prompt():
    """docs/method.md section 11: at gamma = 1 an ended candidate's R = log p + v_0, v_0 the same
    for every candidate of a prompt, so return and log p pick alike in every sub-pool: the same
    best-of-N and AUC. With gamma < 1 or per token (v_0 / length) the ranking can differ."""
    tok = CharTokenizer(ALPHABET)
    model = peaked_model(3, tok.vocab_size, 24, scale=4.0)
    rng = random.Random(1)
    pool = [dict(prompt="12+3=", completion="".join(rng.choice(ALPHABET) for _ in
                                                   range(rng.randint(1, 6))), terminated=True)
            for _ in range(12)]
    oracle = [rng.randint(0, 1) for _ in pool]
    s = critic.model_scores(model, tok, pool, 1.0, "cpu")
    shift = [x["ret"] - x["logp"] for x in s]
    assert max(shift) - min(shift) < 1e-5 and shift[0] == pytest.approx(s[0]["v0"], abs=1e-5)
    ret, log_p = [x["ret"] for x in s], [x["logp"] for x in s]
    assert sorted(abs(a - b) for a, b in itertools.combinations(log_p, 2))[0] > 1e-4  # no near-tie
    assert critic.ranking(ret) == critic.ranking(log_p)
    for n in range(1, 13):
        assert critic.best_of_n(ret, oracle, n) == critic.best_of_n(log_p, oracle, n)
    assert critic.pairwise_auc(ret, oracle) == critic.pairwise_auc(log_p, oracle)
    discounted = [x["ret"] for x in critic.model_scores(model, tok, pool, 0.5, "cpu")]
    assert critic.ranking(discounted) != critic.ranking(log_p)
    assert critic.ranking([x["ret_mean"] for x in s]) != critic.ranking([x["logp_mean"] for x in s])


# ----------------------------------------------------------------------------- reward beam search

class NormalisedHead(torch.nn.Linear):
    """An lm_head whose logits are log-probabilities: logsumexp 0 at every state, so v = 0 and
    the implied reward r_t = q_t - v_{t+1} is log pi_t."""

    def forward(self, x):
        return F.log_softmax(super().forward(x).float(), dim=-1)


def with_zero_values(model):
    head = NormalisedHead(model.config.n_embd, model.config.vocab_size, bias=False)
    head.weight = model.lm_head.weight  # tied to wte, as before
    model.lm_head = head
    return model


class ShiftedHead(torch.nn.Linear):
    """An lm_head that adds a per-state shift c(s) to every logit: the same policy, the values
    moved by c(s), the freedom MLE leaves (docs/method.md section 3)."""

    def forward(self, x):
        return super().forward(x) + self.shift(x)


def with_value_shift(model, scale):
    head = ShiftedHead(model.config.n_embd, model.config.vocab_size, bias=False)
    head.weight = model.lm_head.weight
    head.shift = torch.nn.Linear(model.config.n_embd, 1, bias=False)
    with torch.no_grad():
        head.shift.weight.normal_(0, scale)
    model.lm_head = head
    return model


PROMPTS = [[1, 2, 3], [7], [4, 4, 9, 12, 30, 2, 5], [11, 3], list(range(1, 30)), list(range(32))]


def test_reward_beam_is_log_p_beam_where_the_reward_is_log_p():
    """v = 0 everywhere: the process reward is log p(prefix), so reward beam search is greedy at
    width 1 and beam_search(length_penalty=0) at width 3, completions and scores."""
    model = with_zero_values(peaked_model(0, 50, 32, scale=10.0))
    eos_id = generate(model, PROMPTS, 12, temperature=0.0)[2][4]  # a token some row emits
    greedy = generate(model, PROMPTS, 12, temperature=0.0, eos_id=eos_id)
    assert sum(eos_id in row for row in greedy) >= 2
    assert reward_beam_search(model, PROMPTS, 12, 1, eos_id=eos_id) == greedy
    out, scores = reward_beam_search(model, PROMPTS, 12, 3, eos_id=eos_id, return_scores=True)
    by_log_p, log_p = beam_search(model, PROMPTS, 12, 3, eos_id=eos_id, length_penalty=0.0,
                                  return_scores=True)
    assert out == by_log_p and out != greedy
    assert scores == pytest.approx(log_p, abs=1e-4)


def brute_force(model, prompt, room, eos_id, gamma):
    """(completion, A) of the best of every completion the search may return: ended at its first
    EOS, or cut at `room` tokens; A from one forward() of prompt + completion in float64, the
    last token's reward using the value of the state after it (EOS: none)."""
    best = {}
    for seq in itertools.product(range(model.config.vocab_size), repeat=room):
        seq = list(seq)
        seq = seq[:seq.index(eos_id) + 1] if eos_id in seq else seq
        with torch.no_grad():
            logits = model(torch.tensor([prompt + seq]))[0].double()
        v, f = torch.logsumexp(logits, -1), len(prompt) - 1
        rewards = [logits[f + k, t] - (0 if t == eos_id else gamma * v[f + k + 1])
                   for k, t in enumerate(seq)]
        best[tuple(seq)] = sum(gamma ** k * r.item() for k, r in enumerate(rewards))
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    assert ranked[0][1] - ranked[1][1] > 1e-4, "a near-tie: the test would depend on rounding"
    return list(ranked[0][0]), ranked[0][1]


def test_wide_reward_beam_is_the_exhaustive_argmax():
    """vocab 4, 3 new tokens: beam 36 = 4 * 3^2 holds every proposal of every step (3^t live
    prefixes, each with 3 tokens and EOS), and the 1 + 3 + 9 EOS endings never stop a prompt
    early; so the search returns the argmax of A over every completion, cut ones included.
    Batched, with a prompt that block_size 8 leaves room for 2 tokens. The values get a per-state
    shift, which log p ignores and A reads: the picks differ from log p's."""
    model = with_value_shift(peaked_model(3, 4, 8, scale=3.0), scale=1.0)
    prompts = [[1], [3, 0, 2], [2, 2, 2, 2, 2, 2]]
    not_log_p = 0
    for eos_id, gamma in itertools.product([None, 2], [1.0, 0.8]):
        out, scores = reward_beam_search(model, prompts, 3, 36, eos_id=eos_id, gamma=gamma,
                                         expand=4, return_scores=True)
        for prompt, completion, s in zip(prompts, out, scores):
            room = min(3, 8 - len(prompt))
            best, best_a = brute_force(model, prompt, room, eos_id, gamma)
            assert (completion, s) == (best, pytest.approx(best_a, abs=1e-4)), (eos_id, gamma)
        by_log_p = beam_search(model, prompts, 3, 36, eos_id=eos_id, length_penalty=0.0)
        not_log_p += sum(a != b for a, b in zip(out, by_log_p))
    assert len(out[2]) <= 2
    assert not_log_p >= 2  # the value's lookahead changes the pick: not log p in disguise


# ----------------------------------------------------------------------------- the command

def easy_arith(folder):
    """A dataset of the arith task (its verifier) whose test answers a tiny model trained for 300
    steps gets about a quarter right: one-digit sums, "3+4=" -> "3+4=7#7"."""
    rows = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(0).shuffle(rows)
    line = lambda a, b: json.dumps({"prompt": f"{a}+{b}=",
                                    "completion": f"{a}+{b}={a + b}#{a + b}"})
    for split, part in (("train", rows[:61]), ("val", rows[61:71]), ("test", rows[71:])):
        (folder / f"{split}.jsonl").write_text("".join(line(a, b) + "\n" for a, b in part))
    (folder / "meta.json").write_text(json.dumps({"name": "sums", "task": "arith"}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An IRL run and a GAIL run fine-tuned from it for 2 steps."""
    w = tmp_path_factory.mktemp("critic")
    (w / "data").mkdir()
    easy_arith(w / "data")
    common = TINY + [f"--dataset={w / 'data'}", "--block_size=24", "--warmup_iters=0"]
    run_script(common + ["--max_iters=300", "--eval_interval=300", "--learning_rate=0.01",
                         f"--out_dir={w / 'irl'}"])
    run_script(common + ["--max_iters=2", "--eval_interval=2", "--loss=gail", "--disc_n_layer=1",
                         "--max_new_tokens=12", f"--init_from={w / 'irl' / 'ckpt.pt'}",
                         f"--out_dir={w / 'gail'}"])
    (w / "clash").mkdir()  # a dataset file named as an output of --results=clash
    (w / "clash" / "critic_candidates.jsonl").write_text((w / "data" / "test.jsonl").read_text())
    return w


def brute_best_of(scores, oracle, n):
    pools = list(every_sub_pool(len(scores), n))
    return sum(oracle[pick_by_score(scores, s)] for s in pools) / len(pools)


def test_critic_end_to_end(runs, tmp_path):
    irl, gail = runs / "irl" / "ckpt.pt", runs / "gail" / "ckpt.pt"
    out = run_script([f"--policy={irl}", f"--gail={gail}", f"--likelihood={irl},{gail}",
                      "--num_candidates=8", "--beam_size=2", "--device=cpu", "--seed=5",
                      f"--results={tmp_path}"], script="critic.py").stdout
    summary = json.loads((tmp_path / "critic_summary.json").read_text())
    rows = [json.loads(line) for line in open(tmp_path / "critic_candidates.jsonl")]
    tests = [json.loads(line) for line in open(runs / "data" / "test.jsonl")]
    assert len(rows) == 10 * 8 and summary["prompts"] == 10
    assert [r["prompt"] for r in rows] == [t["prompt"] for t in tests for _ in range(8)]
    names = {"return[irl]", "return_mean[irl]", "logp[irl]", "logp_mean[irl]", "logp[gail]",
             "logp_mean[gail]", "gail[gail]", "gail_mean[gail]"}
    assert all(set(r["scores"]) == names for r in rows)  # every scorer scored the one pool
    assert set(summary["scorers"]) == names | {"vote", "oracle"}
    # the pool: what generate() draws with the seed; answers and oracle by Python's arithmetic
    from checkpoint import load_checkpoint, model_from_checkpoint, tokenizer_of
    ckpt = load_checkpoint(str(irl))
    model, tok = model_from_checkpoint(ckpt).eval(), tokenizer_of(ckpt)
    prompts = [[tok.eos_id] + tok.encode(t["prompt"]) for t in tests]
    drawn = generate(model, prompts, 128, temperature=1.0, eos_id=tok.eos_id,
                     generator=torch.Generator().manual_seed(5), num_samples=8)
    assert [r["completion"] for r in rows] == [tok.decode(c) for c in drawn]
    for r in rows:
        answer = r["completion"].split("#", 1)[1] if "#" in r["completion"] else ""
        assert r["answer"] == (answer or None)
        assert r["oracle"] == float(answer.isdigit() and int(answer) == eval(r["prompt"][:-1]))
    assert 0 < summary["pool_mean"] < 1  # right and wrong candidates: something to rank
    # best-of-N and AUC from the written scores, by every sub-pool and every pair
    pools = [rows[i:i + 8] for i in range(0, 80, 8)]
    for name, s in summary["scorers"].items():
        assert list(s["best_of"]) == ["1", "2", "4", "8"]
        for n in (1, 2, 4, 8):
            values = []
            for pool in pools:
                oracle = [r["oracle"] for r in pool]
                if name == "vote":
                    votes = [pick_by_vote([r["answer"] for r in pool], sub)
                             for sub in every_sub_pool(8, n)]
                    values.append(sum(oracle[i] for i in votes) / len(votes))
                else:
                    scores = oracle if name == "oracle" else [
                        float("-inf") if r["scores"][name] is None else r["scores"][name]
                        for r in pool]
                    values.append(brute_best_of(scores, oracle, n))
            assert s["best_of"][str(n)]["mean"] == pytest.approx(sum(values) / 10, abs=1e-12)
            assert s["best_of"][str(n)]["mean"] <= summary["scorers"]["oracle"]["best_of"][str(n)][
                "mean"] + 1e-12
        assert s["best_of"]["1"]["mean"] == pytest.approx(summary["pool_mean"], abs=1e-12)
        # each prompt's numbers (4 decimals), for intervals over prompts: N = 1 left out
        kept = s["per_prompt"]
        assert list(kept["best_of"]) == ["2", "4", "8"] and len(kept["auc"]) == 10
        for n, values in kept["best_of"].items():
            assert sum(values) / 10 == pytest.approx(s["best_of"][n]["mean"], abs=1e-4)
        aucs = [a for a in kept["auc"] if a is not None]
        assert len(aucs) == s["auc_prompts"]
        assert sum(aucs) / len(aucs) == pytest.approx(s["auc"], abs=1e-4)
    mixed = [p for p in pools if len({r["oracle"] for r in p}) == 2]
    assert summary["scorers"]["logp[irl]"]["auc_prompts"] == len(mixed) > 0
    beams = [json.loads(line) for line in open(tmp_path / "critic_beam.jsonl")]
    assert summary["beam"]["reward_beam"][0] == pytest.approx(
        sum(b["reward_beam_oracle"] for b in beams) / len(beams))
    assert summary["telescoping_max_abs_error"] < 1e-4
    assert "N=8" in out and "beam search" in out


def snapshot(folder):
    """{path: (mtime, sha256)} of every file below folder."""
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_mtime_ns,
                                 hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest())
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("flags, words", [
    (["--policy={w}/nowhere/ckpt.pt"], "--policy={w}/nowhere/ckpt.pt: no checkpoint at"),
    (["--num_candidates=0"], "--num_candidates=0 must be >= 1"),
    (["--best_of=1,32"], "--best_of=1,32: 32 is more than the pool's --num_candidates=16"),
    (["--gail={w}/irl/ckpt.pt"], "holds no GAIL discriminator"),
    (["--likelihood={w}/data/test.jsonl"], "--likelihood={w}/data/test.jsonl: cannot read"),
    (["--results={w}/irl/ckpt.pt"], "is a file, not a folder"),
    (["--split=dev"], "no 'dev' split"),
    (["--results={w}/clash", "--dataset={w}/clash/critic_candidates.jsonl"],
     "critic_candidates.jsonl of --results={w}/clash is a file of --dataset="),
])
def test_bad_input_stops_with_one_line(runs, flags, words, monkeypatch):
    """In this process (runpy: no new interpreter): exit status not 0, one line naming the cause,
    and every file of the runs, the data and the results as it was."""
    flags = [f.format(w=runs) for f in flags]
    before = snapshot(runs)
    monkeypatch.setattr(sys, "argv", ["critic.py", f"--policy={runs}/irl/ckpt.pt",
                                      f"--results={runs}/results", "--device=cpu"] + flags)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # its Ctrl-C handler stays out of pytest
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as stop:
        try:
            runpy.run_path(os.path.join(ROOT, "critic.py"), run_name="__main__")
        except Exception as error:  # a traceback is what this test is against
            pytest.fail(f"Traceback: {type(error).__name__}: {error}")
    message = str(stop.value.code)
    assert message.startswith("critic.py: error: ") and "\n" not in message
    assert words.format(w=runs) in message and "Traceback" not in err.getvalue()
    assert snapshot(runs) == before
