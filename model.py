"""
The GPT language model: nanoGPT's architecture with nanoGPT's parameter names, so its checkpoints
load as they are. Beyond nanoGPT it exposes the final hidden states (the IRL loss reads every
position) and has a batched generate() for prompts of different lengths, with a key/value cache
and, for GPUs, a decode step of fixed shapes that torch.compile can capture as one CUDA graph.

The same class runs today's open models of the Llama family (Llama 3, SmolLM2, Qwen2, Qwen3;
checkpoint.hf_checkpoint loads them) when config.llama is set. What differs from GPT-2, and why:
    RMSNorm       for LayerNorm: x / rms(x) * weight, no mean and no bias (cheaper, as good)
    rotary        for learned positions: q and k of each head are rotated by an angle proportional
                  to the position, so that q . k depends on positions only through their distance
    SwiGLU        for the GELU MLP: c_proj(silu(gate) * up), a gated unit (c_fc computes gate and up)
    grouped-query attention: n_kv_head < n_head key/value heads, each shared by a group of query
                  heads: a smaller key/value cache at about the same quality
and per model: an untied head (the larger ones), biases on q, k, v (Qwen2) and RMSNorm
on each head's q and k (Qwen3).
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

TINY = torch.finfo(torch.float32).tiny  # the lowest temperature used: one below rounds to 0 in float32 (0 / 0 = nan)


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence: positions are learned, one embedding each
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linears and LayerNorms; False is a little better and faster
    gelu_approximate: str = "none"  # exact GELU as nanoGPT; 'tanh' for OpenAI's GPT-2 weights ("gelu_new")
    # the Llama family (see the top of this file); the defaults are GPT-2's
    llama: bool = False  # RMSNorm, rotary positions (no wpe) and a SwiGLU MLP
    n_kv_head: int = 0  # key/value heads, each shared by n_head // n_kv_head query heads; 0 = n_head
    head_dim: int = 0  # width of a head; 0 = n_embd // n_head (Qwen3's is wider)
    mlp_hidden: int = 0  # width of the MLP's hidden layer; 0 = 4 * n_embd
    norm_eps: float = 1e-6  # RMSNorm's epsilon (GPT-2's LayerNorm keeps 1e-5)
    rope_theta: float = 10000.0  # rotary base: head dimension pair i turns by position * rope_theta^(-2i / head_dim)
    rope_scaling: dict = None  # Llama 3's longer context (see rotary_frequencies); None = plain rotary
    tie_weights: bool = True  # lm_head shares the token embedding's matrix (GPT-2, the small Llamas and Qwens)
    qkv_bias: bool = False  # biases on q, k and v only (Qwen2)
    qk_norm: bool = False  # RMSNorm on each head's q and k (Qwen3)

    def __post_init__(self):
        assert self.head_dim or self.n_embd % self.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        assert self.n_head % self.n_kv_head == 0, "n_head must be a multiple of n_kv_head"


def matmul_dtype(tensor):
    """The dtype autocast would run a matmul in (bf16 under bf16 autocast), else the tensor's own."""
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else tensor.dtype


def strip_compile_prefix(state_dict):
    """torch.compile wraps the model, so its state dict names start with '_orig_mod.'; drop that."""
    prefix = "_orig_mod."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (nn.LayerNorm has no such option)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """Llama's norm: x / sqrt(mean(x^2) + eps) * weight, in float32 as Llama computes it."""

    def __init__(self, ndim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps).type_as(x)


def norm(config, ndim):
    """The model's normalisation layer: GPT-2's LayerNorm or Llama's RMSNorm."""
    return RMSNorm(ndim, config.norm_eps) if config.llama else LayerNorm(ndim, bias=config.bias)


def rotary_frequencies(config):
    """inv_freq_i = rope_theta^(-2i / head_dim), the angle per position of head dimension pair i. Llama 3's
    rope_scaling stretches the context: wavelengths longer than the original context / low_freq_factor turn
    factor times slower, those shorter than it / high_freq_factor are kept, and those between are blended."""
    pair_index = torch.arange(0, config.head_dim, 2, dtype=torch.int64).float()  # 2i
    inv_freq = 1.0 / config.rope_theta ** (pair_index / config.head_dim)
    if config.rope_scaling:  # factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
        s = config.rope_scaling
        wavelength = 2 * math.pi / inv_freq
        keep = (s["original_max_position_embeddings"] / wavelength - s["low_freq_factor"]) \
            / (s["high_freq_factor"] - s["low_freq_factor"])  # 1 (and above): kept, 0 (and below): slowed down
        keep = keep.clamp(0, 1)
        inv_freq = inv_freq * ((1 - keep) / s["factor"] + keep)
    return inv_freq


def rotate(x, cos, sin):
    """Rotary embedding of q or k (B, heads, T, hs): dimensions i and i + hs/2 are the pair turned by
    angle position * inv_freq_i (the half-split layout of Hugging Face's Llama weights)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # q, k, v at once (n_kv_head key and value heads: n_head for GPT-2)
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim,
                                bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # Qwen3: q and k normalised per head, which keeps the attention logits in range
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, kv=None, past=0, rope=None):
        """x (B, T, C) -> y (B, T, C).

        attn_mask: bool (B, T, past + T), True where a query may attend to a key; None means
        plain causal attention. kv: this layer's cache (2, B, nh, max_length, hs), or None; it
        holds the keys and values of the first `past` positions, and this call adds its own.
        past may also be a 1-element tensor (GPT.decode_step): then the one new position is written
        at that slot and the queries read the whole cache, attn_mask (B, 1, max_length) hiding the
        slots not written yet, so that no shape depends on how far decoding has gone.
        rope: (cos, sin) of the rotary angles (Llama), or None (GPT-2: positions were added to x)."""
        B, T, C = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q, k, v = q.view(B, T, nh, hs), k.view(B, T, nkv, hs), v.view(B, T, nkv, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        if rope is not None:  # rotated before the cache: a cached key keeps its own position
            q, k = rotate(q, *rope), rotate(k, *rope)
        if kv is not None and torch.is_tensor(past):  # one in-place write into the tensor itself, not a view
            kv.index_copy_(3, past, torch.stack((k, v)))  # of it, so that a compiled step copies nothing
            k, v = kv[0], kv[1]
        elif kv is not None:  # written in place after the earlier positions; the new queries see them all
            kv[0, :, :, past:past + T], kv[1, :, :, past:past + T] = k, v
            k, v = kv[0, :, :, :past + T], kv[1, :, :, :past + T]
        T_all = k.size(2)
        is_causal = attn_mask is None and T_all == T  # training: the fast fused causal kernel
        if attn_mask is None and not is_causal:
            # new queries after cached keys: causal with the diagonal shifted to the bottom right
            attn_mask = torch.ones(T, T_all, dtype=torch.bool, device=x.device).tril(diagonal=T_all - T)
        elif attn_mask is not None:
            attn_mask = attn_mask.unsqueeze(1)  # the same mask for every head
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=nkv != nh)  # each k, v head serves nh // nkv q heads
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2: c_proj(gelu(c_fc(x))). Llama's SwiGLU: c_fc computes a gate and an up half at once,
    c_proj(silu(gate) * up)."""

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.llama
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * config.mlp_hidden, bias=config.bias)
        self.act = nn.SiLU() if self.swiglu else nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:  # the gate's half, through silu, scales the other half
            gate, up = h.chunk(2, dim=-1)
            return self.dropout(self.c_proj(self.act(gate) * up))
        return self.dropout(self.c_proj(self.act(h)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv=None, past=0, rope=None):
        x = x + self.attn(self.ln_1(x), attn_mask, kv, past, rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({} if config.llama else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm(config, config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:  # one matrix both embeds tokens and scores them (fewer parameters, GPT-2 does it)
            self.transformer.wte.weight = self.lm_head.weight
        if config.llama:  # not a weight: computed from the config, so not in the state dict
            self.register_buffer("inv_freq", rotary_frequencies(config), persistent=False)

        # GPT-2 initialisation: N(0, 0.02), and the projections that write into the residual stream
        # scaled down by sqrt(2 * n_layer) (two per block) so the stream's variance does not grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Number of parameters. The token embedding is shared with lm_head so it counts as a real
        weight; the position embedding does not (non_embedding=True), as in nanoGPT, nor does an
        untied token embedding (a table lookup: no matmul)."""
        n_params = sum(p.numel() for p in self.parameters())  # parameters() lists a tied tensor once
        if non_embedding:
            n_params -= sum(module.weight.numel() for name, module in self.transformer.items()
                            if name == "wpe" or (name == "wte" and not self.config.tie_weights))
        return n_params

    def embed(self, idx, positions):
        """Token embeddings (B, T, C) and the rotary (cos, sin) for the attention. GPT-2 adds a learned
        vector per position to x and has no rope (None); Llama adds nothing and rotates q and k in
        every layer by angles positions * inv_freq: cos and sin (B or 1, 1, T, head_dim)."""
        x = self.transformer.wte(idx)
        if not self.config.llama:
            return x + self.transformer.wpe(positions), None
        angles = positions[..., None].float() * self.inv_freq  # ([B,] T, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(-3)  # both halves of a pair turn alike
        return x, (angles.cos(), angles.sin())

    def hidden_states(self, idx, positions=None, attn_mask=None, kv_cache=None):
        """Final hidden states after ln_f, (B, T, C), for token ids idx (B, T).

        positions: (T,) or (B, T) position ids; by default 0..T-1, after any cached positions.
        attn_mask: bool (B, T, past + T), True where a query may attend; None means causal.
        kv_cache: None, or new_kv_cache(...), which this call extends by its T positions.
        The logits are hidden_states @ lm_head.weight.T; callers that cannot afford all of
        (B, T, vocab) at once can compute them chunk by chunk."""
        B, T = idx.size()
        past = 0  # positions already in the cache
        if kv_cache is not None:
            past = kv_cache["length"]
            assert past + T <= kv_cache["kv"][0].size(-2), "the key/value cache is full"
        if positions is None:
            assert past + T <= self.config.block_size, \
                f"cannot run a sequence of length {past + T}, block_size is only {self.config.block_size}"
            positions = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x, rope = self.embed(idx, positions)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, kv_cache["kv"][i] if kv_cache is not None else None, past, rope)
        if kv_cache is not None:
            kv_cache["length"] = past + T
        return self.transformer.ln_f(x)

    def new_kv_cache(self, batch_size, max_length):
        """An empty key/value cache for hidden_states(): room for max_length positions of every
        layer, allocated once and filled in place, because appending with torch.cat would copy the
        whole cache at every new token. Keys and values are matmul outputs: bf16 under bf16 autocast."""
        n_kv_head, head_size = self.config.n_kv_head, self.config.head_dim
        kv = [torch.empty(2, batch_size, n_kv_head, max_length, head_size, device=self.lm_head.weight.device,
                          dtype=matmul_dtype(self.lm_head.weight)) for _ in range(self.config.n_layer)]  # one per layer
        return {"kv": kv, "length": 0}

    def static_kv_cache(self, batch_size, max_length):
        """The cache for decode_step(): kept on the model and handed out again while the batch size,
        the length (rounded up to a multiple of 64, so that prompts of similar lengths share one),
        dtype and device stay the same, because a compiled decode_step is specialised to the very
        tensor (torch._dynamo.mark_static_address: a CUDA graph reads and writes it where it lies).
        Zero-filled: decode_step's attention reads the slots not written yet, masked to weight 0,
        and 0 * NaN from uninitialised memory would still be NaN."""
        key = (batch_size, -(-max_length // 64) * 64, matmul_dtype(self.lm_head.weight), self.lm_head.weight.device)
        if (getattr(self, "_static_kv_cache", None) or {}).get("key") != key:
            self._static_kv_cache = None  # free the old one first
            self._static_kv_cache = dict(self.new_kv_cache(batch_size, key[1]), key=key)
            for kv in self._static_kv_cache["kv"]:
                torch._dynamo.mark_static_address(kv.zero_())
        self._static_kv_cache["length"] = 0
        return self._static_kv_cache

    def decode_step(self, token, position, attn_mask, kv, slot):
        """Logits (B, vocab_size) of the next token after one new token per row, with shapes that stay
        the same for a whole generation, so that torch.compile(mode="reduce-overhead") can capture
        it once as a CUDA graph and replay it for every token (eager decoding on a GPU is bound by
        launching a few hundred small kernels per token, not by their arithmetic).
        token, position: (B, 1); kv: static_kv_cache()["kv"], of which this step writes slot `slot`
        (a 1-element tensor: a Python int would be a new constant, and a new graph, every step);
        attn_mask: bool (B, 1, max_length), True on the slots each row may attend to, this one included."""
        x, rope = self.embed(token, position)  # no dropout: eval only
        for block, layer_kv in zip(self.transformer.h, kv):
            x = block(x, attn_mask, layer_kv, slot, rope)
        return self.lm_head(self.transformer.ln_f(x[:, -1]))

    def forward(self, idx, head=True):
        """Logits (B, T, vocab_size) at every position of idx (B, T). head=False returns the final
        hidden states (B, T, C) instead, for a loss that applies the tied head itself chunk by chunk
        (chunked_head.py); it goes through forward() so that DDP and torch.compile see the call."""
        T = idx.size(1)
        assert T <= self.config.block_size, \
            f"cannot forward a sequence of length {T}, block_size is only {self.config.block_size}"
        hidden = self.hidden_states(idx)
        return self.lm_head(hidden) if head else hidden

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on the 2D tensors (matmul weights, embeddings) only: biases and
        LayerNorm gains are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        optim_groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra_args = dict(fused=True) if use_fused else dict()  # one kernel for all tensors on GPU
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

    def estimate_mfu(self, fwdbwd_per_iter, dt, seq_len=None, peak_flops=312e12):
        """Model flops utilisation: achieved flops over peak_flops (default: an A100 in bf16, 312
        TFLOPS; an H100 SXM is 989). fwdbwd_per_iter sequences of seq_len tokens (default
        block_size) took dt seconds. Flops per token are 6N for the matmuls (2 forward, 4 backward)
        plus 12*L*H*Q*T for the attention scores (PaLM paper, appendix B), with T the length
        actually run, not block_size: a fine-tuning batch is often much shorter than the window."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.head_dim, seq_len or cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, eos_id=None,
                 generator=None, use_cache=True, compile=False, num_samples=1):
        """Continue each prompt (a non-empty list of token ids) num_samples times, by up to
        max_new_tokens tokens each.

        Returns one list of new token ids per sample, a prompt's num_samples side by side: what
        passing each prompt num_samples times returns, but with the cache each prompt runs through
        the model once and its samples start from copies of its keys and values (docs/speed.md:
        it pays where prompts are long beside completions). A row stops right after it emits
        eos_id, so a completion that ends with eos_id terminated and any other was cut. Positions are absolute
        (no sliding window), so a row also stops when prompt + completion fills block_size.
        temperature 0 is greedy; otherwise logits / temperature, optional top_k, and a sample drawn
        with `generator` (a seeded torch.Generator makes it reproducible).

        Prompts are left-padded into one batch: each row's positions start at 0 at its first real
        token and no real token attends to padding, so a row's output does not depend on the others.
        use_cache=True runs the padded prompts once, then one new position per step, reusing the
        keys and values of earlier positions; use_cache=False recomputes the whole prefix each step
        (slower, same result). compile=True (with the cache) runs every token after the first through
        decode_step, compiled with torch.compile(mode="reduce-overhead"): a CUDA graph on a GPU. It
        compiles once per batch size and cache length (tens of seconds), so it pays off for long or
        many generations."""
        device = self.lm_head.weight.device
        block_size = self.config.block_size
        prompts = [p for p in prompts for _ in range(num_samples)]  # a row per sample
        B = len(prompts)
        assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
        assert all(len(p) <= block_size for p in prompts), f"a prompt is longer than block_size {block_size}"
        assert use_cache or not compile, "compile=True decodes with the key/value cache: use_cache=True"
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        T0 = int(lengths.max())
        max_new_tokens = min(max_new_tokens, block_size - int(lengths.min()))  # no row has room for more
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
            kv_cache = self.static_kv_cache(B, T0 + max_new_tokens)
            decode_step = torch.compile(self.decode_step, mode="reduce-overhead", fullgraph=True)
            key_is_real = torch.zeros(B, 1, kv_cache["kv"][0].size(-2), dtype=torch.bool, device=device)
            key_is_real[:, 0, :T0] = is_real  # decode_step's attn_mask: the slots written so far, minus padding
            slot = torch.tensor([T0 - 1], device=device)  # the slot decode_step writes, before its += 1
        elif use_cache:
            kv_cache = self.new_kv_cache(B, T0 + max_new_tokens)
        step_idx, step_positions = idx, positions  # what the model reads this step

        was_training = self.training
        self.eval()  # no dropout while sampling
        try:
            if use_cache and not finished.all():  # the prompts, each once (rows 0, K, 2K, ...), into their
                # own cache unless K = 1; not at all when every prompt fills block_size (nothing to generate)
                once = kv_cache if num_samples == 1 else self.new_kv_cache(B // num_samples, T0)
                h = self.hidden_states(idx[::num_samples], positions[::num_samples],
                                       padded_causal_mask(is_real[::num_samples], T0), once)
                logits = self.lm_head(h[:, -1, :]).repeat_interleave(num_samples, dim=0)  # step 0's
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
                    logits = decode_step(step_idx, step_positions, key_is_real, kv_cache["kv"], slot)
                elif step > 0 or not use_cache:  # (with the cache, step 0's logits came with the prompts)
                    mask = padded_causal_mask(is_real, step_idx.size(1))
                    h = self.hidden_states(step_idx, step_positions, mask, kv_cache)
                    logits = self.lm_head(h[:, -1, :])  # only the last position predicts the next token
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
                step_idx, step_positions = (next_token[:, None], next_positions) if use_cache else (idx, positions)
        finally:
            self.train(was_training)
        new_tokens, n_new = new_tokens.tolist(), n_new.tolist()
        return [row[:n] for row, n in zip(new_tokens, n_new)]

    @torch.no_grad()
    def beam_search(self, prompts, max_new_tokens, beam_size, eos_id=None, length_penalty=1.0,
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
        device, V, K, block_size = self.lm_head.weight.device, self.config.vocab_size, beam_size, self.config.block_size
        B = len(prompts)
        assert all(0 < len(p) <= block_size for p in prompts), f"prompts need 1 to block_size={block_size} tokens"
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        T0 = int(lengths.max())
        max_new_tokens = min(max_new_tokens, block_size - int(lengths.min()))  # no prompt has room for more
        # left-padded as in generate(): masked_scatter fills each row's last len(p) slots in order
        is_real = torch.arange(T0, device=device)[None, :] >= (T0 - lengths)[:, None]  # (B, T0)
        idx = torch.zeros(B, T0, dtype=torch.long, device=device).masked_scatter(
            is_real, torch.tensor([t for p in prompts for t in p], device=device))
        room = (block_size - lengths).clamp(max=max_new_tokens)  # completion tokens each prompt may have
        kv_cache = self.new_kv_cache(B, T0 + max_new_tokens)
        spare = None  # the cache the next step's reordered rows go into
        scores = torch.zeros(B, 1, device=device)  # (B, n) sum of log p of each live beam: one, empty
        beams = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (B, n, t) their tokens
        best_score, best = torch.full((B,), float("-inf"), device=device), [[] for _ in prompts]
        n_ended, done = torch.zeros(B, dtype=torch.long, device=device), torch.zeros(B, dtype=torch.bool, device=device)

        def offer(candidate_scores, candidates, allowed):  # (B, n), (B, n, length), (B,): keep the best
            value, k = candidate_scores.max(dim=1)
            better = allowed & (value > best_score)
            best_score[better] = value[better]
            for b in better.nonzero().flatten().tolist():
                best[b] = candidates[b, k[b]].tolist()

        step_idx, step_positions = idx, (is_real.cumsum(1) - 1).clamp(min=0)  # positions from each first real token
        mask = padded_causal_mask(is_real, T0)
        was_training = self.training
        self.eval()  # no dropout
        try:
            for t in range(max_new_tokens + 1):
                cut = (room == t) & ~done  # out of length: the live beams end here, as generate() cuts
                offer(scores / max(t, 1) ** length_penalty, beams, cut)  # max: an empty completion scores 0
                done |= cut
                if done.all():
                    break
                # n live beams; beam_size of them once there are enough candidates. A slot with no real prefix
                # (more slots than prefixes: a wide beam's first steps) holds -inf and never wins
                n, n_next = scores.size(1), min(K, scores.size(1) * V)
                logits = self.lm_head(self.hidden_states(step_idx, step_positions, mask, kv_cache)[:, -1])
                total = scores[:, :, None] + F.log_softmax(logits.float(), dim=-1).view(B, n, V)  # (B, n, V)
                if eos_id is not None:
                    # EOS ends a hypothesis of t + 1 tokens if it ranks among the beam_size best continuations
                    # of all, EOS included: with beam_size=1, exactly where greedy emits EOS
                    ended = total[:, :, eos_id].clone()
                    in_top = (ended >= total.view(B, -1).topk(n_next).values[:, -1:]) & (ended > float("-inf"))
                    n_ended += (in_top & ~done[:, None]).sum(dim=1)
                    with_eos = torch.cat([beams, torch.full((B, n, 1), eos_id, device=device)], dim=2)
                    offer(ended.masked_fill(~in_top, float("-inf")) / (t + 1) ** length_penalty, with_eos, ~done)
                    done |= n_ended >= K  # early_stopping=True: a live beam might still score higher
                    total[:, :, eos_id] = float("-inf")  # the live beams go on without EOS
                scores, flat = total.view(B, -1).topk(n_next)  # the best sums of log p live on
                origin, token = flat // V, flat % V  # the beam each new one extends, and by which token
                beams = torch.cat([beams.gather(1, origin[:, :, None].expand(-1, -1, t)), token[:, :, None]], dim=2)
                rows = (torch.arange(B, device=device)[:, None] * n + origin).flatten()  # in the (B * n) batch
                # the rows move: gathered into a second cache, then the two swap (on a CPU, a fresh tensor each
                # step costs 3x the copy itself, in page faults of the newly allocated memory)
                if spare is None or spare[0].size(1) != len(rows):  # twice: B rows become B * beam_size
                    spare = [kv.new_empty((2, len(rows)) + kv.shape[2:]) for kv in kv_cache["kv"]]
                moved = [torch.index_select(kv, 1, rows, out=into) for kv, into in zip(kv_cache["kv"], spare)]
                spare, kv_cache["kv"] = kv_cache["kv"], moved
                is_real = torch.cat([is_real, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
                mask = padded_causal_mask(is_real.repeat_interleave(n_next, dim=0), 1)  # a prompt's beams share it
                step_idx = token.view(B * n_next, 1)
                step_positions = (lengths + t).clamp(max=block_size - 1).repeat_interleave(n_next)[:, None]
        finally:
            self.train(was_training)
        return (best, best_score.tolist()) if return_scores else best


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
    never sees padding. A padding query sees the padding before it, so that no softmax runs over an
    empty set (some attention kernels give NaN there); its output only ever reaches other padding."""
    T = is_real.size(1)
    causal = torch.ones(n_queries, T, dtype=torch.bool, device=is_real.device).tril(diagonal=T - n_queries)
    query_is_real = is_real[:, T - n_queries:]
    return causal & (is_real[:, None, :] | ~query_is_real[:, :, None])
