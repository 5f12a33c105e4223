"""model.py against independent references: nanoGPT's parameter layout written out by hand, attention
and the whole forward pass recomputed naively from the weights, parameter counts by formula, and
generate() against a plain argmax loop over forward()."""
import math

import pytest
import torch

from generate import (beam_search, decode_step, generate, new_kv_cache, padded_causal_mask,
                      sample_from, static_kv_cache)
from model import GPT, GPTConfig, strip_compile_prefix


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: extra threads only add OpenMP sync, which costs milliseconds per op
    when the cores are busy (another job running). One thread here, restored for other test files."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(**overrides):
    args = dict(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    args.update(overrides)
    return GPTConfig(**args)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPT(tiny_config(**overrides))
    # GPT-2 init makes logits nearly uniform; bigger weights give a model with clear preferences,
    # so greedy decoding has no near-ties that float rounding could flip
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model.eval()


PROMPTS = [[1, 2, 3], [7], [4, 4, 9, 12, 30, 2, 5], [11, 3]]


# ----------------------------------------------------------------------------- layout and loading

def nanogpt_shapes(cfg):
    """nanoGPT's state dict names and shapes, written out from its source by hand."""
    C, V, biases = cfg.n_embd, cfg.vocab_size, cfg.bias
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        shapes[h + "ln_1.weight"] = (C,)
        shapes[h + "attn.c_attn.weight"] = (3 * C, C)
        shapes[h + "attn.c_proj.weight"] = (C, C)
        shapes[h + "ln_2.weight"] = (C,)
        shapes[h + "mlp.c_fc.weight"] = (4 * C, C)
        shapes[h + "mlp.c_proj.weight"] = (C, 4 * C)
        if biases:
            shapes[h + "ln_1.bias"] = (C,)
            shapes[h + "attn.c_attn.bias"] = (3 * C,)
            shapes[h + "attn.c_proj.bias"] = (C,)
            shapes[h + "ln_2.bias"] = (C,)
            shapes[h + "mlp.c_fc.bias"] = (4 * C,)
            shapes[h + "mlp.c_proj.bias"] = (C,)
    shapes["transformer.ln_f.weight"] = (C,)
    if biases:
        shapes["transformer.ln_f.bias"] = (C,)
    shapes["lm_head.weight"] = (V, C)
    return shapes


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_has_nanogpt_names_and_shapes(bias):
    cfg = tiny_config(bias=bias)
    state = GPT(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == nanogpt_shapes(cfg)


def test_nanogpt_layout_checkpoint_loads():
    cfg = tiny_config()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape in nanogpt_shapes(cfg).items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied in nanoGPT's checkpoints too
    model = GPT(cfg)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, state["transformer.h.1.mlp.c_fc.weight"])
    # a checkpoint saved from a torch.compile'd model has prefixed names
    compiled_state = {"_orig_mod." + k: v for k, v in state.items()}
    with pytest.raises(RuntimeError):
        GPT(cfg).load_state_dict(compiled_state, strict=True)
    stripped = strip_compile_prefix(compiled_state)
    assert list(stripped) == list(state)
    GPT(cfg).load_state_dict(stripped, strict=True)


def test_weight_tying_and_hidden_states():
    model = tiny_model()
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    idx = torch.randint(50, (2, 9))
    logits = model(idx)
    assert logits.shape == (2, 9, 50)
    torch.testing.assert_close(model.hidden_states(idx) @ model.lm_head.weight.T, logits)


def test_num_params_by_formula():
    cfg = tiny_config()
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    per_block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    total = V * C + cfg.block_size * C + L * per_block + 2 * C  # lm_head is wte: counted once
    model = GPT(cfg)
    assert model.get_num_params(non_embedding=False) == total
    assert model.get_num_params() == total - cfg.block_size * C


def test_init_scales():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=128, n_layer=8))
    std = lambda t: t.std().item()
    assert std(model.transformer.h[0].mlp.c_fc.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.transformer.h[0].attn.c_proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert std(model.transformer.h[3].mlp.c_proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


def test_configure_optimizers_decays_only_matrices():
    model = GPT(tiny_config())
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for group in opt.param_groups for p in group["params"])
    assert n == model.get_num_params(non_embedding=False)


def test_forward_rejects_too_long_input():
    with pytest.raises(AssertionError, match="block_size"):
        tiny_model()(torch.zeros(1, 33, dtype=torch.long))


# ----------------------------------------------------------------------------- the forward pass

def test_causality():
    model = tiny_model()
    idx = torch.randint(50, (1, 20))
    k = 11
    changed = idx.clone()
    changed[0, k] = (idx[0, k] + 1) % 50
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :k], b[:, :k])
    assert (a[:, k:] - b[:, k:]).abs().amax(dim=-1).min() > 1e-4  # every later position sees the change


def naive_logits(model, idx):
    """The whole model recomputed from its weights with explicit softmax(QK^T / sqrt(d)) attention."""
    cfg, sd = model.config, model.state_dict()
    nh, C = cfg.n_head, cfg.n_embd
    hs = C // nh
    T = idx.size(1)

    def layer_norm(x, name):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def linear(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        q, k, v = linear(layer_norm(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=-1)
        heads = []
        for j in range(nh):
            qj, kj, vj = (t[..., j * hs:(j + 1) * hs] for t in (q, k, v))
            scores = qj @ kj.transpose(-1, -2) / math.sqrt(hs)
            scores = scores.masked_fill(future, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ vj)
        x = x + linear(torch.cat(heads, dim=-1), h + "attn.c_proj")
        u = linear(layer_norm(x, h + "ln_2"), h + "mlp.c_fc")
        u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))  # exact GELU
        x = x + linear(u, h + "mlp.c_proj")
    return layer_norm(x, "transformer.ln_f") @ sd["lm_head.weight"].T


@pytest.mark.parametrize("n_layer", [1, 2])
def test_forward_matches_naive_reference(n_layer):
    model = tiny_model(n_layer=n_layer)
    idx = torch.randint(50, (3, 17))
    torch.testing.assert_close(model(idx), naive_logits(model, idx), rtol=1e-4, atol=1e-4)


def test_kv_cache_chunks_match_full_sequence():
    model = tiny_model()
    idx = torch.randint(50, (2, 20))
    full = model.hidden_states(idx)
    cache = new_kv_cache(model, 2, 24)
    chunks = [model.hidden_states(idx[:, a:b], kv_cache=cache) for a, b in [(0, 7), (7, 8), (8, 20)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache["length"] == 20


def test_dropout_train_vs_eval():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(50, (2, 10))
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


# ----------------------------------------------------------------------------- generate

def greedy_by_forward(model, prompt, max_new_tokens, eos_id=None):
    """Reference decoding: the argmax of forward() on the whole sequence, one token at a time."""
    seq, out = list(prompt), []
    while len(out) < max_new_tokens and len(seq) < model.config.block_size:
        token = model(torch.tensor([seq]))[0, -1].argmax().item()
        seq.append(token)
        out.append(token)
        if token == eos_id:
            break
    return out


def test_padded_causal_mask_by_hand():
    is_real = torch.tensor([[False, False, True, True], [True, True, True, True]])
    o, x = True, False
    expected_row0 = [[o, x, x, x],   # padding sees earlier padding: never an empty softmax
                     [o, o, x, x],
                     [x, x, o, x],   # real tokens see only real tokens, causally
                     [x, x, o, o]]
    expected_row1 = [[o, x, x, x], [o, o, x, x], [o, o, o, x], [o, o, o, o]]
    assert padded_causal_mask(is_real, 4).tolist() == [expected_row0, expected_row1]
    # one new query after the cache: it sees every real position before it and itself
    is_real = torch.cat([is_real, torch.ones(2, 1, dtype=torch.bool)], dim=1)
    assert padded_causal_mask(is_real, 1).tolist() == [[[x, x, o, o, o]], [[o, o, o, o, o]]]


# the three ways generate() decodes: recomputing the prefix, the growing cache, and the fixed-shape
# decode_step (compile=True) -- run eagerly here, see no_compile
DECODINGS = [dict(use_cache=False), dict(use_cache=True), dict(compile=True)]


@pytest.fixture(autouse=True)
def no_compile(monkeypatch):
    """torch.compile costs tens of seconds per shape on a CPU; these tests check what decode_step
    computes, which torch.compile must not change, so it is replaced by the identity here."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


@pytest.mark.parametrize("decoding", DECODINGS)
def test_greedy_batched_matches_reference(decoding):
    model = tiny_model()
    expected = [greedy_by_forward(model, p, 12) for p in PROMPTS]
    assert generate(model, PROMPTS, 12, temperature=0.0, **decoding) == expected


def test_decode_step_matches_forward():
    """The cache filled by one prompt pass, then decode_step one position at a time over the
    whole fixed-size cache: the logits of forward() on the full sequence, position by position."""
    model = tiny_model()
    idx = torch.randint(50, (2, 20))
    expected = model(idx)
    cache = static_kv_cache(model, 2, 20)
    max_length = cache["kv"][0].size(-2)
    assert max_length == 64 and all(kv.shape == (2, 2, 2, 64, 16) for kv in cache["kv"])
    model.hidden_states(idx[:, :8], kv_cache=cache)
    for t in range(8, 20):
        attn_mask = (torch.arange(max_length) <= t).expand(2, 1, max_length)
        logits = decode_step(model, idx[:, t:t + 1], torch.full((2, 1), t), attn_mask, cache["kv"], torch.tensor([t]))
        torch.testing.assert_close(logits, expected[:, t], rtol=1e-4, atol=1e-4)


def test_static_cache_is_reused_while_the_shapes_stay():
    """A compiled decode_step is specialised to its cache tensors: the same batch size and length
    (rounded up to 64) must get the same tensors back, and stale keys from an earlier call must not
    change what a later one generates."""
    model = tiny_model()
    first = generate(model, PROMPTS, 12, temperature=0.0, compile=True)
    kv = model._static_kv_cache["kv"]
    assert generate(model, PROMPTS[::-1], 10, temperature=0.0, compile=True) == [r[:10] for r in first[::-1]]
    assert all(a is b for a, b in zip(model._static_kv_cache["kv"], kv))
    generate(model, PROMPTS[:3], 12, temperature=0.0, compile=True)  # another batch size: a new cache
    assert model._static_kv_cache["kv"][0].size(1) == 3


@pytest.mark.parametrize("decoding", DECODINGS)
def test_num_samples_is_the_prompts_repeated(decoding):
    """num_samples=K runs each prompt once and copies its keys and values to K rows: the samples
    must be what the reference (sample_by_forward) draws for every prompt passed K times, on every
    decoding path, and a row that stops early (eos) must not change its neighbours (each row of the
    reference cut after its first eos: a row's draws never depend on another's)."""
    model = tiny_model()
    expected = sample_by_forward(model, [p for p in PROMPTS for _ in range(3)], 12, 1.0, seed=0)
    assert len({tuple(s) for s in expected[:3]}) > 1  # the K samples of a prompt differ: real draws
    eos_id = 7
    assert any(eos_id in row[:-1] for row in expected)  # a row that stops early
    for eos in (None, eos_id):
        shared = generate(model, PROMPTS, 12, temperature=1.0, eos_id=eos, num_samples=3,
                          generator=torch.Generator().manual_seed(0), **decoding)
        assert shared == [row[:row.index(eos) + 1] if eos in row else row for row in expected]


def test_greedy_does_not_depend_on_the_batch():
    model = tiny_model()
    alone = [generate(model, [p], 15, temperature=0.0)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, 15, temperature=0.0) == alone
    assert generate(model, PROMPTS[::-1], 15, temperature=0.0) == alone[::-1]
    assert generate(model, PROMPTS, 15, temperature=0.0, use_cache=False) == alone


def test_stops_after_eos():
    model = tiny_model()
    free = generate(model, PROMPTS, 15, temperature=0.0)
    eos_id = free[2][4]  # a token that some row emits mid-completion
    stopped = generate(model, PROMPTS, 15, temperature=0.0, eos_id=eos_id)
    for row, full in zip(stopped, free):
        expected = full[:full.index(eos_id) + 1] if eos_id in full else full
        assert row == expected
    assert stopped[2][-1] == eos_id and len(stopped[2]) <= 5
    assert generate(model, PROMPTS, 15, temperature=0.0, eos_id=eos_id, use_cache=False) == stopped
    assert generate(model, PROMPTS, 15, temperature=0.0, eos_id=eos_id, compile=True) == stopped


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampling_stops_at_eos_when_eos_dominates(use_cache):
    model = tiny_model()
    eos_id = 7
    with torch.no_grad():  # ln_f outputs its bias alone; eos's row of the (tied) head aligns with it
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[eos_id] = 1.0
    g = torch.Generator().manual_seed(0)
    out = generate(model, PROMPTS, 10, temperature=1.0, eos_id=eos_id, generator=g, use_cache=use_cache)
    assert out == [[eos_id]] * len(PROMPTS)


@pytest.mark.parametrize("decoding", DECODINGS)
def test_respects_block_size(decoding):
    model = tiny_model()  # block_size 32
    prompts = [list(range(1, 31)), [3, 1, 4, 1, 5], list(range(32))]
    out = generate(model, prompts, 100, temperature=0.0, **decoding)
    assert [len(p) + len(c) for p, c in zip(prompts, out)] == [32, 32, 32]
    assert out[2] == []
    assert out[:2] == [greedy_by_forward(model, p, 100) for p in prompts[:2]]


@pytest.mark.parametrize("decoding", DECODINGS)
def test_max_new_tokens_beyond_the_window(decoding):
    """max_new_tokens far beyond block_size: what the room left gives (32 - 30 and 32 - 5 tokens here, as
    the argmax loop over forward() finds), and no (B, 2e9) buffer or cache is allocated for it."""
    model = tiny_model()  # block_size 32
    prompts = [list(range(1, 31)), [3, 1, 4, 1, 5]]
    expected = [greedy_by_forward(model, p, 2_000_000_000) for p in prompts]
    assert [len(e) for e in expected] == [2, 27]
    assert generate(model, prompts, 2_000_000_000, temperature=0.0, **decoding) == expected
    assert beam_search(model, prompts, 2_000_000_000, 1) == expected  # one beam is greedy
    assert beam_search(model, prompts, 2_000_000_000, 2) == beam_search(model, prompts, 27, 2)


def test_tiny_temperature_is_greedy():
    """Sampling as the temperature goes to 0 is greedy (no ties here); a temperature that underflows
    float32 must not make nan of the logits."""
    model = tiny_model()
    greedy = generate(model, PROMPTS, 12, temperature=0.0)
    for temperature in (1e-6, 1e-45, 1e-300):
        g = torch.Generator().manual_seed(0)
        assert generate(model, PROMPTS, 12, temperature=temperature, generator=g) == greedy


@torch.no_grad()
def sample_by_forward(model, prompts, max_new_tokens, temperature, seed, top_k=None):
    """Reference sampling: each step, each row's next-token distribution from forward() on its whole
    sequence alone (softmax(logits / temperature), outside the top_k set to 0), and a draw by inversion
    with one uniform number per row from a generator seeded `seed` (sample_from's documented rule: the
    first id whose cumulative probability reaches u * total, u in (0, 1])."""
    g = torch.Generator().manual_seed(seed)
    seqs, outs = [list(p) for p in prompts], [[] for _ in prompts]
    for _ in range(max_new_tokens):
        u = 1.0 - torch.rand(len(prompts), generator=g)
        for row, (seq, out) in enumerate(zip(seqs, outs)):
            logits = model(torch.tensor([seq]))[0, -1] / temperature
            if top_k is not None:
                logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
            cdf = torch.softmax(logits.float(), -1).cumsum(-1)
            token = int((cdf < u[row] * cdf[-1]).sum())  # the first id whose cdf reaches the target
            seq.append(token)
            out.append(token)
    return outs


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    sample = lambda seed, **kw: generate(model, PROMPTS, 12, temperature=1.0,
                                         generator=torch.Generator().manual_seed(seed), **kw)
    first = sample(0)
    assert first == sample_by_forward(model, PROMPTS, 12, 1.0, seed=0)  # what seed 0 draws, and the same again
    assert sample(0) == first
    assert sample(0) != sample(1)
    assert sample(0, top_k=5) == sample_by_forward(model, PROMPTS, 12, 1.0, seed=0, top_k=5)
    assert sample(0, top_k=5) == sample(0, top_k=5)
    hot = generate(model, PROMPTS, 12, temperature=2.5, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert hot == sample_by_forward(model, PROMPTS, 12, 2.5, seed=3)


def test_top_k_1_is_greedy():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    assert (generate(model, PROMPTS, 12, temperature=0.7, top_k=1, generator=g)
            == generate(model, PROMPTS, 12, temperature=0.0))


def test_top_k_samples_only_the_k_best():
    model = tiny_model()
    prompt = [5, 6, 7]
    best3 = set(model(torch.tensor([prompt]))[0, -1].topk(3).indices.tolist())
    g = torch.Generator().manual_seed(0)
    firsts = {generate(model, [prompt] * 64, 1, temperature=5.0, top_k=3, generator=g)[i][0] for i in range(64)}
    assert firsts <= best3 and len(firsts) > 1


def test_sample_from_matches_the_probabilities():
    """Frequencies of 40 000 draws per row against the probabilities (4 standard errors), zero-probability
    ids never drawn (a top_k cut), and rows drawn independently."""
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1, 0.6]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_from(probs, g) for _ in range(40_000)])  # (n, rows)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=5).double() / len(draws)
        p = probs[row].double()
        assert ((freq - p).abs() <= 4 * (p * (1 - p) / len(draws)).sqrt() + 1e-12).all(), (row, freq)


def test_generate_restores_mode_and_ignores_dropout():
    model = tiny_model(dropout=0.5)
    model.train()
    a = generate(model, PROMPTS, 8, temperature=0.0)
    assert model.training
    model.eval()
    assert generate(model, PROMPTS, 8, temperature=0.0) == a and not model.training
