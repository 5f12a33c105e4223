"""generate.beam_search against independent references: greedy generate() for beam_size=1, and an
exhaustive search over every completion, scored with plain forward() (no cache), for a beam wide
enough to keep every prefix."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from generate import beam_search, generate
from model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: extra threads only add OpenMP sync on the shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def peaked_model(seed, vocab_size, block_size, scale):
    """A random model whose matrices are scaled up: GPT-2 init gives nearly uniform next-token
    distributions, where every completion scores about the same and rounding decides the ranking."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model.eval()


def completion_log_probs(model, prompt, completions):
    """(N, L) log p of each token of N completions of equal length L, from one forward() of
    prompt + completion (row t - 1 of the logits predicts token t)."""
    idx = torch.tensor([prompt + c for c in completions])
    with torch.no_grad():
        log_p = F.log_softmax(model(idx).double(), dim=-1)[:, len(prompt) - 1:-1]
    return log_p.gather(2, idx[:, len(prompt):, None]).squeeze(2)


def score(log_prob_sum, length, length_penalty):
    return log_prob_sum / max(length, 1) ** length_penalty


PROMPTS = [[1, 2, 3], [7], [4, 4, 9, 12, 30, 2, 5], [11, 3], list(range(1, 30)), list(range(32))]  # block_size 32


@pytest.mark.parametrize("eos", [False, True])
def test_beam_size_1_is_greedy(eos):
    model = peaked_model(0, vocab_size=50, block_size=32, scale=10.0)
    greedy = generate(model, PROMPTS, 12, temperature=0.0)
    eos_id = greedy[2][4] if eos else None  # a token some row emits mid-completion
    if eos:
        greedy = generate(model, PROMPTS, 12, temperature=0.0, eos_id=eos_id)
        assert sum(eos_id in row for row in greedy) >= 2
    assert [len(row) for row in greedy[4:]] == [3, 0]  # the last two are cut by block_size
    assert beam_search(model, PROMPTS, 12, beam_size=1, eos_id=eos_id) == greedy


def exhaustive_best(model, prompt, max_new_tokens, eos_id, length_penalty):
    """(completion, score) of the best of every completion beam_search may return: cut at the room
    left, or ended at its first EOS. Each full-length sequence's prefixes are its partial sums."""
    room = min(max_new_tokens, model.config.block_size - len(prompt))
    sequences = [list(s) for s in itertools.product(range(model.config.vocab_size), repeat=room)]
    partial_sums = completion_log_probs(model, prompt, sequences).cumsum(dim=1).tolist()
    candidates = {}
    for seq, sums in zip(sequences, partial_sums):
        length = seq.index(eos_id) + 1 if eos_id in seq else room
        candidates[tuple(seq[:length])] = score(sums[length - 1], length, length_penalty)
    ranked = sorted(candidates.items(), key=lambda kv: -kv[1])
    assert ranked[0][1] - ranked[1][1] > 1e-4, "a near-tie: the test would depend on rounding"
    return list(ranked[0][0]), ranked[0][1]


def test_wide_beam_is_the_exhaustive_argmax():
    """vocab 5, 3 new tokens: beam_size 5 ** 2 keeps every prefix of 2 tokens; with EOS one more,
    so that the 1 + 4 + 16 = 21 <= 25 EOS endings can never fill the beam and stop a prompt early
    (beam_search's early_stopping). Batched, with a prompt that block_size cuts to 2 new tokens."""
    V, T = 5, 3
    model = peaked_model(3, vocab_size=V, block_size=8, scale=3.0)
    prompts = [[1], [3, 0, 4], [2, 2, 2, 2, 2, 2]]
    greedy_is_beaten = 0
    for eos_id, length_penalty in itertools.product([None, 2], [0.0, 1.0, 2.0]):
        beam_size = V ** (T - 1) + (eos_id is not None)
        out, scores = beam_search(model, prompts, T, beam_size, eos_id=eos_id, length_penalty=length_penalty,
                                  return_scores=True)
        for prompt, completion, s in zip(prompts, out, scores):
            best, best_score = exhaustive_best(model, prompt, T, eos_id, length_penalty)
            assert (completion, s) == (best, pytest.approx(best_score, abs=1e-5)), (eos_id, length_penalty, prompt)
        greedy = generate(model, prompts, T, temperature=0.0, eos_id=eos_id)
        greedy_is_beaten += sum(g != c for g, c in zip(greedy, out))
    assert len(out[2]) <= 2  # block_size 8 leaves the 6-token prompt room for 2 new tokens
    assert greedy_is_beaten >= 3  # the wide beam is not greedy in disguise


def test_small_beam_scores_are_its_completions_log_probs():
    """beam_size 3 on the vocab-50 model: every returned score is its completion's log-probability
    recomputed with forward() (no cache), normalised by its length; and a prompt's result does not
    depend on the other prompts in the batch (the cache rows follow their beams)."""
    model = peaked_model(0, vocab_size=50, block_size=32, scale=10.0)
    prompts = PROMPTS[:5]
    eos_id = generate(model, prompts, 12, temperature=0.0)[2][4]
    for length_penalty in [0.0, 1.0]:
        out, scores = beam_search(model, prompts, 12, 3, eos_id=eos_id, length_penalty=length_penalty,
                                  return_scores=True)
        assert sum(c[-1:] == [eos_id] for c in out) >= 1
        for prompt, completion, s in zip(prompts, out, scores):
            assert completion[-1:] == [eos_id] or len(completion) == min(12, 32 - len(prompt))
            log_prob_sum = completion_log_probs(model, prompt, [completion]).sum().item()
            assert s == pytest.approx(score(log_prob_sum, len(completion), length_penalty), abs=1e-4)
        alone = [beam_search(model, [p], 12, 3, eos_id=eos_id, length_penalty=length_penalty)[0] for p in prompts]
        assert out == alone


def test_sample_py_beam_size_one_is_greedy(tmp_path):
    """sample.py --beam_size=1 writes the same completions as --temperature=0 (greedy)."""
    import json
    from tests.helpers import TINY, run_script
    run = tmp_path / "run"
    run_script(TINY + ["--max_iters=20", "--eval_interval=20", f"--out_dir={run}"])
    common = [f"--out_dir={run}", "--num_samples=1", "--max_prompts=6", "--max_new_tokens=12", "--device=cpu"]
    run_script(common + ["--beam_size=1"], script="sample.py")
    run_script(common + ["--temperature=0"], script="sample.py")
    read = lambda name: [json.loads(line)["sample"] for line in (run / name).read_text().splitlines()]
    assert read("samples_val_beam1.jsonl") == read("samples_val_t0.jsonl")
    refused = run_script(common[:1] + ["--beam_size=2", "--num_samples=4"], script="sample.py", check=False)
    assert refused.returncode != 0 and "pass --num_samples=1" in refused.stderr
