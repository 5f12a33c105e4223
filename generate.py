"""
Generation from a GPT (model.py), as plain functions that take the model first: batched sampling
for prompts of different lengths with a key/value cache, beam search (by log-probability, or by
the reward the model implies: reward_beam_search), and for GPUs a decode step of fixed shapes that
torch.compile can capture as one CUDA graph.

    from generate import generate, beam_search
    completions = generate(model, prompts, max_new_tokens=100, temperature=0.0, eos_id=tok.eos_id)

The compiled decode step's cache lives on the model (model._static_kv_cache): the step is
specialised to its tensors, so they last as long as the model and serve every later generation
of the same batch size and length.
"""
import torch
from torch.nn import functional as F

from model import matmul_dtype

TINY = torch.finfo(torch.float32).tiny  # the lowest temperature: one below is 0 (and 0 / 0 = nan)


# ----------------------------------------------------------------------------- the key/value cache

def new_kv_cache(model, batch_size, max_length):
    """An empty key/value cache for model.hidden_states(): room for max_length positions of every
    layer, allocated once and filled in place, because appending with torch.cat would copy the
    whole cache at every new token. Keys and values are matmul outputs: bf16 under bf16 autocast."""
    config, weight = model.config, model.lm_head.weight
    kv = [torch.empty(2, batch_size, config.n_kv_head, max_length, config.head_dim,
                      device=weight.device, dtype=matmul_dtype(weight))
          for _ in range(config.n_layer)]  # one per layer
    return {"kv": kv, "length": 0}


def static_kv_cache(model, batch_size, max_length):
    """The cache for decode_step(): kept on the model and handed out again while the batch size,
    the length (rounded up to a multiple of 64, so that prompts of similar lengths share one),
    dtype and device stay the same, because a compiled decode_step is specialised to the very
    tensor (torch._dynamo.mark_static_address: a CUDA graph reads and writes it where it lies).
    Zero-filled: decode_step's attention reads the slots not written yet, masked to weight 0,
    and 0 * NaN from uninitialised memory would still be NaN."""
    weight = model.lm_head.weight
    key = (batch_size, -(-max_length // 64) * 64, matmul_dtype(weight), weight.device)
    if (getattr(model, "_static_kv_cache", None) or {}).get("key") != key:
        model._static_kv_cache = None  # free the old one first
        model._static_kv_cache = dict(new_kv_cache(model, batch_size, key[1]), key=key)
        for kv in model._static_kv_cache["kv"]:
            torch._dynamo.mark_static_address(kv.zero_())
    model._static_kv_cache["length"] = 0
    return model._static_kv_cache


def decode_step(model, token, position, attn_mask, kv, slot):
    """Logits (B, vocab_size) of the next token after one new token per row, with shapes that stay
    the same for a whole generation, so that torch.compile(mode="reduce-overhead") can capture
    it once as a CUDA graph and replay it for every token (eager decoding on a GPU is bound by
    launching a few hundred small kernels per token, not by their arithmetic).
    token, position: (B, 1); kv: static_kv_cache()["kv"], of which this step writes slot `slot`
    (a 1-element tensor: a Python int would be a new constant, and a new graph, every step);
    attn_mask: bool (B, 1, max_length), True on the slots each row may attend to, this one too."""
    x, rope = model.embed(token, position)  # no dropout: eval only
    for block, layer_kv in zip(model.transformer.h, kv):
        x = block(x, attn_mask, layer_kv, slot, rope)
    return model.lm_head(model.transformer.ln_f(x[:, -1]))


# ----------------------------------------------------------------------------- sampling

@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, eos_id=None,
             generator=None, use_cache=True, compile=False, num_samples=1):
    """Continue each prompt (a non-empty list of token ids) num_samples times, by up to
    max_new_tokens tokens each.

    Returns one list of new token ids per sample, a prompt's num_samples side by side: what
    passing each prompt num_samples times returns, but with the cache each prompt runs through
    the model once and its samples start from copies of its keys and values (docs/speed.md:
    it pays where prompts are long beside completions). A row stops right after it emits
    eos_id, so a completion that ends with eos_id terminated and any other was cut. Positions
    are absolute (no sliding window), so a row also stops when prompt + completion fills
    block_size. temperature 0 is greedy; otherwise logits / temperature, optional top_k, and a
    sample drawn with `generator` (a seeded torch.Generator makes it reproducible).

    Prompts are left-padded into one batch: each row's positions start at 0 at its first real
    token and no real token attends to padding, so a row's output does not depend on the others.
    use_cache=True runs the padded prompts once, then one new position per step, reusing the
    keys and values of earlier positions; use_cache=False recomputes the whole prefix each step
    (slower, same result). compile=True (with the cache) runs every token after the first through
    decode_step, compiled with torch.compile(mode="reduce-overhead"): a CUDA graph on a GPU. It
    compiles once per batch size and cache length (tens of seconds), so it pays off for long or
    many generations."""
    device = model.lm_head.weight.device
    block_size = model.config.block_size
    prompts = [p for p in prompts for _ in range(num_samples)]  # a row per sample
    B = len(prompts)
    assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    assert all(len(p) <= block_size for p in prompts), \
        f"a prompt is longer than block_size {block_size}"
    assert use_cache or not compile, \
        "compile=True decodes with the key/value cache: use_cache=True"
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    T0 = int(lengths.max())
    max_new_tokens = min(max_new_tokens, block_size - int(lengths.min()))  # no row has more room
    n_pad = T0 - lengths
    idx = torch.zeros(B, T0, dtype=torch.long, device=device)  # pad id 0: any id does, it is masked
    for b, p in enumerate(prompts):
        idx[b, T0 - len(p):] = torch.tensor(p, dtype=torch.long)
    is_real = torch.arange(T0, device=device)[None, :] >= n_pad[:, None]  # (B, T0) False on padding
    positions = (torch.arange(T0, device=device)[None, :] - n_pad[:, None]).clamp(min=0)

    new_tokens = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    n_new = torch.zeros(B, dtype=torch.long, device=device)
    finished = lengths >= block_size  # a full prompt has no room left
    kv_cache = None
    if compile:
        kv_cache = static_kv_cache(model, B, T0 + max_new_tokens)
        compiled_step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)
        # compiled_step's attn_mask: the slots written so far, minus padding
        key_is_real = torch.zeros(B, 1, kv_cache["kv"][0].size(-2), dtype=torch.bool, device=device)
        key_is_real[:, 0, :T0] = is_real
        slot = torch.tensor([T0 - 1], device=device)  # the slot the step writes, before its += 1
    elif use_cache:
        kv_cache = new_kv_cache(model, B, T0 + max_new_tokens)
    step_idx, step_positions = idx, positions  # what the model reads this step

    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        # the prompts, each once (rows 0, K, 2K, ...), into their own cache unless K = 1; not at
        # all when every prompt fills block_size (nothing to generate)
        if use_cache and not finished.all():
            once = kv_cache if num_samples == 1 else new_kv_cache(model, B // num_samples, T0)
            h = model.hidden_states(idx[::num_samples], positions[::num_samples],
                                    padded_causal_mask(is_real[::num_samples], T0), once)
            logits = model.lm_head(h[:, -1, :]).repeat_interleave(num_samples, dim=0)  # step 0's
            if num_samples > 1:  # each sample's row starts as a copy of its prompt's
                for kv, prompt_kv in zip(kv_cache["kv"], once["kv"]):
                    kv[:, :, :, :T0] = prompt_kv.repeat_interleave(num_samples, dim=1)
                kv_cache["length"] = T0
        for step in range(max_new_tokens):
            if finished.all():
                break
            if compile and step > 0:  # fixed shapes: one slot of the cache more
                key_is_real[:, 0, T0 + step - 1] = True
                slot += 1  # in place on the device: no copy from the host each step
                torch.compiler.cudagraph_mark_step_begin()  # the last step's logits are used up
                logits = compiled_step(model, step_idx, step_positions, key_is_real,
                                       kv_cache["kv"], slot)
            elif step > 0 or not use_cache:  # (with the cache, the prompt pass gave step 0's)
                mask = padded_causal_mask(is_real, step_idx.size(1))
                h = model.hidden_states(step_idx, step_positions, mask, kv_cache)
                logits = model.lm_head(h[:, -1, :])  # only the last position predicts the next one
            if temperature == 0:
                next_token = logits.argmax(dim=-1)
            else:  # the best logit at 0 first: a tiny temperature then gives -inf, never inf - inf
                logits = logits.float()
                logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, TINY)
                if top_k is not None:
                    kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth_best, float("-inf"))
                next_token = sample_from(F.softmax(logits, dim=-1), generator)

            # finished rows keep computing (one batch, no per-row loop) but their tokens are dropped
            new_tokens[:, step] = next_token
            n_new += (~finished).long()
            finished = finished | (lengths + step + 1 >= block_size)
            if eos_id is not None:
                finished = finished | (next_token == eos_id)

            # the next step reads the new token at its position (a finished row's position is
            # clamped to stay inside the embedding table; its output is never used)
            next_positions = (lengths + step).clamp(max=block_size - 1)[:, None]
            is_real = torch.cat([is_real, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            idx = torch.cat([idx, next_token[:, None]], dim=1)
            positions = torch.cat([positions, next_positions], dim=1)
            if use_cache:
                step_idx, step_positions = next_token[:, None], next_positions
            else:
                step_idx, step_positions = idx, positions
    finally:
        model.train(was_training)
    new_tokens, n_new = new_tokens.tolist(), n_new.tolist()
    return [row[:n] for row, n in zip(new_tokens, n_new)]


# ----------------------------------------------------------------------------- beam search

def keep_best(best_score, best, candidate_scores, candidates, allowed):
    """Where allowed (B,) and better than best_score (B,), each prompt's best candidate, of
    candidate_scores (B, n) and candidates (B, n, length), replaces best, in place."""
    value, k = candidate_scores.max(dim=1)
    better = allowed & (value > best_score)
    best_score[better] = value[better]
    for b in better.nonzero().flatten().tolist():
        best[b] = candidates[b, k[b]].tolist()


@torch.no_grad()
def beam_search(model, prompts, max_new_tokens, beam_size, eos_id=None, length_penalty=1.0,
                return_scores=False):
    """The completion of each prompt with the best length-normalised log-probability found by beam
    search, as generate()'s: one list of new token ids per prompt, ending with eos_id if it
    terminated, else cut at max_new_tokens or where prompt + completion fills block_size.

        score(y) = sum_t log p(y_t | x, y_<t) / len(y) ** length_penalty

    with len(y) the completion's tokens, EOS included (Hugging Face's normalisation: 0 ranks by the
    plain sum, > 0 favours longer completions). return_scores=True also returns each one's score.

    Each step extends every live beam by every token and keeps, per prompt, the beam_size highest
    sums of log p, one batch of prompts x beams whose key/value cache rows follow their beams. An
    EOS continuation that ranks among those beam_size ends a hypothesis; a prompt stops when it
    has ended beam_size of them (Hugging Face's early_stopping=True) or is out of length, where
    its live beams end as they are. So beam_size=1 is greedy generate(temperature=0), and a
    beam_size above vocab_size ** (max_new_tokens - 1) keeps every prefix: the exact argmax.
    The cache is beam_size times generate()'s and is copied each step, as the beams reorder."""
    device, V, K = model.lm_head.weight.device, model.config.vocab_size, beam_size
    block_size, B = model.config.block_size, len(prompts)
    idx, is_real, lengths, max_new_tokens, room = beam_prompts(model, prompts, max_new_tokens)
    T0 = idx.size(1)
    kv_cache = new_kv_cache(model, B, T0 + max_new_tokens)
    spare = None  # the cache the next step's reordered rows go into
    scores = torch.zeros(B, 1, device=device)  # (B, n) sum of log p of each live beam: one, empty
    beams = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (B, n, t) their tokens
    best_score, best = torch.full((B,), float("-inf"), device=device), [[] for _ in prompts]
    n_ended = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    # positions count from each row's first real token
    step_idx, step_positions = idx, (is_real.cumsum(1) - 1).clamp(min=0)
    mask = padded_causal_mask(is_real, T0)
    was_training = model.training
    model.eval()  # no dropout
    try:
        for t in range(max_new_tokens + 1):
            cut = (room == t) & ~done  # out of length: the live beams end here, as generate() cuts
            # max: an empty completion scores 0
            keep_best(best_score, best, scores / max(t, 1) ** length_penalty, beams, cut)
            done |= cut
            if done.all():
                break
            # n live beams; beam_size of them once there are enough candidates. A slot with no
            # real prefix (more slots than prefixes: a wide beam's first steps) holds -inf and
            # never wins
            n, n_next = scores.size(1), min(K, scores.size(1) * V)
            h = model.hidden_states(step_idx, step_positions, mask, kv_cache)
            logits = model.lm_head(h[:, -1])
            total = scores[:, :, None] + F.log_softmax(logits.float(), dim=-1).view(B, n, V)
            if eos_id is not None:
                # EOS ends a hypothesis of t + 1 tokens if it ranks among the beam_size best
                # continuations of all, EOS included: with beam_size=1, exactly where greedy
                # emits EOS
                ended = total[:, :, eos_id].clone()
                kth_best = total.view(B, -1).topk(n_next).values[:, -1:]
                in_top = (ended >= kth_best) & (ended > float("-inf"))
                n_ended += (in_top & ~done[:, None]).sum(dim=1)
                with_eos = torch.cat([beams, torch.full((B, n, 1), eos_id, device=device)], dim=2)
                ended_scores = ended.masked_fill(~in_top, float("-inf")) / (t + 1) ** length_penalty
                keep_best(best_score, best, ended_scores, with_eos, ~done)
                done |= n_ended >= K  # early_stopping=True: a live beam might still score higher
                total[:, :, eos_id] = float("-inf")  # the live beams go on without EOS
            scores, flat = total.view(B, -1).topk(n_next)  # the best sums of log p live on
            origin, token = flat // V, flat % V  # the beam each new one extends, and by which token
            beams = torch.cat([beams.gather(1, origin[:, :, None].expand(-1, -1, t)),
                               token[:, :, None]], dim=2)
            rows = (torch.arange(B, device=device)[:, None] * n + origin).flatten()  # of B * n
            # the rows move: gathered into a second cache, then the two swap (on a CPU, a fresh
            # tensor each step costs 3x the copy itself, in page faults of the new memory)
            if spare is None or spare[0].size(1) != len(rows):  # twice: B rows become B * K
                spare = [kv.new_empty((2, len(rows)) + kv.shape[2:]) for kv in kv_cache["kv"]]
            moved = [torch.index_select(kv, 1, rows, out=into)
                     for kv, into in zip(kv_cache["kv"], spare)]
            spare, kv_cache["kv"] = kv_cache["kv"], moved
            is_real = torch.cat([is_real, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            # a prompt's beams share its mask
            mask = padded_causal_mask(is_real.repeat_interleave(n_next, dim=0), 1)
            step_idx = token.view(B * n_next, 1)
            step_positions = (lengths + t).clamp(max=block_size - 1)
            step_positions = step_positions.repeat_interleave(n_next)[:, None]
    finally:
        model.train(was_training)
    return (best, best_score.tolist()) if return_scores else best


@torch.no_grad()
def reward_beam_search(model, prompts, max_new_tokens, beam_size, eos_id=None, gamma=1.0,
                       expand=0, return_scores=False):
    """Beam search whose beams are ranked by the reward the model implies (irl_loss.py), summed so
    far: a process reward (docs/method.md section 11). A hypothesis of t + 1 tokens scores

        A = sum_{k <= t} gamma^k r_k,   r_k = q_k - gamma (1 - done_k) v_{k+1}

    with q_k the logit of its token k and v_{k+1} the logsumexp of the logits after it (V after
    EOS is 0). Returns what beam_search returns, the completion with the highest A per prompt
    (return_scores=True: and its A, the return of an ended one).

    Each step every live beam proposes EOS and its `expand` likeliest other tokens (0: beam_size);
    each proposal runs one step through the model to read v_{k+1}, and the beam_size best by A
    live on, those logits serving the next step: `expand` times beam_search's work per token.
    EOS and stopping are beam_search's: an EOS that ranks among the beam_size best proposals ends
    a hypothesis, a prompt stops after beam_size of them or out of length, where its live beams end
    with their A (the value of the state where one stops is read at its last token's own position,
    inside the window; irl_loss.token_rewards leaves that last reward out of a cut completion).
    At gamma = 1, A = log p(prefix) + v_0 - v_{t+1}; a model whose logsumexp is 0 everywhere makes
    A = log p(prefix), and this search beam_search(length_penalty=0) (beam_size=1: greedy)."""
    device, V, K = model.lm_head.weight.device, model.config.vocab_size, beam_size
    E = min(expand or K, V - (eos_id is not None))  # proposals per beam besides EOS
    block_size, B = model.config.block_size, len(prompts)
    idx, is_real, lengths, max_new_tokens, room = beam_prompts(model, prompts, max_new_tokens)
    T0 = idx.size(1)
    kv_cache = new_kv_cache(model, B, T0 + max_new_tokens)
    scores = torch.zeros(B, 1, device=device)  # (B, n) A of each live beam: one, empty
    beams = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (B, n, t) their tokens
    best_score, best = torch.full((B,), float("-inf"), device=device), [[] for _ in prompts]
    n_ended = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()  # no dropout
    try:
        positions = (is_real.cumsum(1) - 1).clamp(min=0)
        h = model.hidden_states(idx, positions, padded_causal_mask(is_real, T0), kv_cache)
        logits = model.lm_head(h[:, -1]).float()[:, None]  # (B, n, V): after each live beam
        for t in range(max_new_tokens + 1):
            cut = (room == t) & ~done  # out of length: the live beams end here
            keep_best(best_score, best, scores, beams, cut)
            done |= cut
            if done.all():
                break
            n = scores.size(1)
            others = logits if eos_id is None else logits.index_fill(2, torch.tensor([eos_id],
                                                                      device=device), -torch.inf)
            q, token = others.topk(E, dim=-1)  # (B, n, E) each beam's likeliest other tokens
            proposals = torch.cat([beams[:, :, None].expand(-1, -1, E, -1), token[..., None]],
                                  dim=3).view(B, n * E, t + 1)
            # each proposal reads one step: the value v_{t+1} of the state it leads to
            cache = cache_rows(kv_cache, torch.arange(B * n, device=device).repeat_interleave(E))
            is_real = torch.cat([is_real, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            mask = padded_causal_mask(is_real.repeat_interleave(n * E, dim=0), 1)
            step_positions = (lengths + t).clamp(max=block_size - 1).repeat_interleave(n * E)
            h = model.hidden_states(token.view(-1, 1), step_positions[:, None], mask, cache)
            next_logits = model.lm_head(h[:, -1]).float().view(B, n * E, V)
            total = (scores[:, :, None] + gamma ** t * q).view(B, -1) \
                - gamma ** (t + 1) * next_logits.logsumexp(dim=-1)
            if eos_id is not None:  # an ended hypothesis: r_t = q_t(EOS), nothing after it
                ended = scores + gamma ** t * logits[:, :, eos_id]
                kth_best = torch.cat([total, ended], 1).topk(min(K, n * E + n)).values[:, -1:]
                in_top = (ended >= kth_best) & (ended > float("-inf"))
                n_ended += (in_top & ~done[:, None]).sum(dim=1)
                with_eos = torch.cat([beams, torch.full((B, n, 1), eos_id, device=device)], dim=2)
                keep_best(best_score, best, ended.masked_fill(~in_top, float("-inf")), with_eos,
                          ~done)
                done |= n_ended >= K
            scores, kept = total.topk(min(K, n * E))
            beams = proposals.gather(1, kept[:, :, None].expand(-1, -1, t + 1))
            logits = next_logits.gather(1, kept[:, :, None].expand(-1, -1, V))
            kv_cache = cache_rows(cache, (torch.arange(B, device=device)[:, None] * n * E
                                          + kept).flatten())
    finally:
        model.train(was_training)
    return (best, best_score.tolist()) if return_scores else best


# ----------------------------------------------------------------------------- helpers

def beam_prompts(model, prompts, max_new_tokens):
    """What both beam searches start from: idx (B, T0) and is_real (B, T0), the prompts
    left-padded as in generate() (masked_scatter fills each row's last len(p) slots in order),
    their lengths (B,), max_new_tokens cut to the room the shortest prompt leaves, and room (B,):
    the completion tokens each prompt may have."""
    device, block_size = model.lm_head.weight.device, model.config.block_size
    assert all(0 < len(p) <= block_size for p in prompts), \
        f"prompts need 1 to block_size={block_size} tokens"
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    T0 = int(lengths.max())
    is_real = torch.arange(T0, device=device)[None, :] >= (T0 - lengths)[:, None]
    idx = torch.zeros(len(prompts), T0, dtype=torch.long, device=device).masked_scatter(
        is_real, torch.tensor([t for p in prompts for t in p], device=device))
    max_new_tokens = min(max_new_tokens, block_size - int(lengths.min()))  # no prompt has more
    return idx, is_real, lengths, max_new_tokens, (block_size - lengths).clamp(max=max_new_tokens)


def cache_rows(kv_cache, rows):
    """A new key/value cache of the given rows of kv_cache (a row may come several times)."""
    return {"kv": [kv.index_select(1, rows) for kv in kv_cache["kv"]], "length": kv_cache["length"]}


def sample_from(probs, generator=None):
    """One token id per row of probs (B, V), by inversion: the first id whose cumulative probability
    reaches u ~ U(0, total]. One random number per row, where torch.multinomial draws one per
    vocabulary entry (20x slower at GPT-2's 50 257 on a CPU). u > 0, so an id of probability 0
    (cut by top_k) is never drawn."""
    cdf = probs.cumsum(dim=-1)
    u = (1.0 - torch.rand(probs.size(0), 1, generator=generator, device=probs.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1)


def padded_causal_mask(is_real, n_queries):
    """Attention mask (B, n_queries, T) for the last n_queries of T left-padded positions, where
    is_real (B, T) is False on padding. True where a query may attend: causal, and a real token
    never sees padding. A padding query sees the padding before it, so that no softmax runs over
    an empty set (some attention kernels give NaN there); its output only ever reaches other
    padding."""
    T = is_real.size(1)
    causal = torch.ones(n_queries, T, dtype=torch.bool, device=is_real.device)
    causal = causal.tril(diagonal=T - n_queries)
    query_is_real = is_real[:, T - n_queries:]
    return causal & (is_real[:, None, :] | ~query_is_real[:, :, None])
