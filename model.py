"""
The GPT language model: nanoGPT's architecture with nanoGPT's parameter names, so its checkpoints
load as they are. Beyond nanoGPT it exposes the final hidden states (the IRL loss reads every
position), and its attention reads and extends a key/value cache, with which generate.py decodes
prompts of different lengths in one batch.

The same class runs today's open models of the Llama family (Llama 3, SmolLM2, Qwen2, Qwen3;
hf_import.hf_checkpoint loads them) when config.llama is set. What differs from GPT-2, and why:
    RMSNorm       for LayerNorm: x / rms(x) * weight, no mean and no bias (cheaper, as good)
    rotary        for learned positions: q and k of each head are rotated by an angle proportional
                  to the position, so that q . k depends on positions only through their distance
    SwiGLU        for the GELU MLP: c_proj(silu(gate) * up), a gated unit (c_fc computes gate
                  and up)
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


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence: positions are learned, one embedding each
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linears and LayerNorms; False is a little better and faster
    gelu_approximate: str = "none"  # exact as nanoGPT; 'tanh' for OpenAI's GPT-2 ("gelu_new")
    # the Llama family (see the top of this file); the defaults are GPT-2's
    llama: bool = False  # RMSNorm, rotary positions (no wpe) and a SwiGLU MLP
    n_kv_head: int = 0  # key/value heads, each serving n_head // n_kv_head query heads; 0 = n_head
    head_dim: int = 0  # width of a head; 0 = n_embd // n_head (Qwen3's is wider)
    mlp_hidden: int = 0  # width of the MLP's hidden layer; 0 = 4 * n_embd
    norm_eps: float = 1e-6  # RMSNorm's epsilon (GPT-2's LayerNorm keeps 1e-5)
    rope_theta: float = 10000.0  # rotary base: pair i turns by position * theta^(-2i / head_dim)
    rope_scaling: dict = None  # Llama 3's longer context (see rotary_frequencies); None: plain
    tie_weights: bool = True  # lm_head shares wte's matrix (GPT-2, the small Llamas and Qwens)
    qkv_bias: bool = False  # biases on q, k and v only (Qwen2)
    qk_norm: bool = False  # RMSNorm on each head's q and k (Qwen3)

    def __post_init__(self):
        assert self.head_dim or self.n_embd % self.n_head == 0, \
            "n_embd must be a multiple of n_head"
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        assert self.n_head % self.n_kv_head == 0, "n_head must be a multiple of n_kv_head"


def matmul_dtype(tensor):
    """The dtype autocast would run a matmul in (bf16 under bf16 autocast), else the tensor's."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


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
    """inv_freq_i = rope_theta^(-2i / head_dim), the angle per position of head dimension pair i.
    Llama 3's rope_scaling stretches the context: wavelengths longer than the original context /
    low_freq_factor turn factor times slower, those shorter than it / high_freq_factor are kept,
    and those between are blended."""
    pair_index = torch.arange(0, config.head_dim, 2, dtype=torch.int64).float()  # 2i
    inv_freq = 1.0 / config.rope_theta ** (pair_index / config.head_dim)
    if config.rope_scaling:  # factor, low/high_freq_factor, original_max_position_embeddings
        s = config.rope_scaling
        wavelength = 2 * math.pi / inv_freq
        # 1 (and above): kept, 0 (and below): slowed down
        keep = (s["original_max_position_embeddings"] / wavelength - s["low_freq_factor"]) \
            / (s["high_freq_factor"] - s["low_freq_factor"])
        keep = keep.clamp(0, 1)
        inv_freq = inv_freq * ((1 - keep) / s["factor"] + keep)
    return inv_freq


def rotate(x, cos, sin):
    """Rotary embedding of q or k (B, heads, T, hs): dimensions i and i + hs/2 are the pair turned
    by angle position * inv_freq_i (the half-split layout of Hugging Face's Llama weights)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim
        # q, k, v at once (n_kv_head key and value heads: n_head for GPT-2)
        qkv_width = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_width, bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # Qwen3: normalising q and k per head keeps the attention logits in range
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, kv=None, past=0, rope=None):
        """x (B, T, C) -> y (B, T, C).

        attn_mask: bool (B, T, past + T), True where a query may attend to a key; None means
        plain causal attention. kv: this layer's cache (2, B, nh, max_length, hs), or None; it
        holds the keys and values of the first `past` positions, and this call adds its own.
        past may also be a 1-element tensor (generate.decode_step): then the one new position is
        written at that slot and the queries read the whole cache, attn_mask (B, 1, max_length)
        hiding the slots not written yet, so that no shape depends on how far decoding has gone.
        rope: (cos, sin) of the rotary angles (Llama), or None (GPT-2: positions added to x)."""
        B, T, C = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q, k, v = q.view(B, T, nh, hs), k.view(B, T, nkv, hs), v.view(B, T, nkv, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        if rope is not None:  # rotated before the cache: a cached key keeps its own position
            q, k = rotate(q, *rope), rotate(k, *rope)
        if kv is not None and torch.is_tensor(past):
            # one in-place write into the tensor itself, not a view of it, so that a compiled
            # step copies nothing
            kv.index_copy_(3, past, torch.stack((k, v)))
            k, v = kv[0], kv[1]
        elif kv is not None:  # written in place after the earlier positions; new queries see all
            kv[0, :, :, past:past + T], kv[1, :, :, past:past + T] = k, v
            k, v = kv[0, :, :, :past + T], kv[1, :, :, :past + T]
        T_all = k.size(2)
        is_causal = attn_mask is None and T_all == T  # training: the fast fused causal kernel
        if attn_mask is None and not is_causal:
            # new queries after cached keys: causal with the diagonal shifted to the bottom right
            attn_mask = torch.ones(T, T_all, dtype=torch.bool, device=x.device)
            attn_mask = attn_mask.tril(diagonal=T_all - T)
        elif attn_mask is not None:
            attn_mask = attn_mask.unsqueeze(1)  # the same mask for every head
        # with enable_gqa, each k, v head serves nh // nkv q heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=nkv != nh)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2: c_proj(gelu(c_fc(x))). Llama's SwiGLU: c_fc computes a gate and an up half at once,
    c_proj(silu(gate) * up)."""

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.llama
        hidden_width = (2 if self.swiglu else 1) * config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, hidden_width, bias=config.bias)
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
        if config.tie_weights:  # one matrix embeds tokens and scores them (fewer parameters, GPT-2)
            self.transformer.wte.weight = self.lm_head.weight
        if config.llama:  # not a weight: computed from the config, so not in the state dict
            self.register_buffer("inv_freq", rotary_frequencies(config), persistent=False)

        # GPT-2 initialisation: N(0, 0.02), and the projections that write into the residual
        # stream scaled down by sqrt(2 * n_layer) (two per block) so the stream's variance does
        # not grow with depth
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

    @classmethod
    def from_args(cls, model_args):
        """The GPT a model_args dict describes (train.py's, or a checkpoint's); keys that are not
        GPTConfig fields are left out."""
        fields = {k: model_args[k] for k in GPTConfig.__dataclass_fields__ if k in model_args}
        return cls(GPTConfig(**fields))

    def get_num_params(self, non_embedding=True):
        """Number of parameters. The token embedding is shared with lm_head so it counts as a real
        weight; the position embedding does not (non_embedding=True), as in nanoGPT, nor does an
        untied token embedding (a table lookup: no matmul)."""
        n_params = sum(p.numel() for p in self.parameters())  # a tied tensor is listed once
        if non_embedding:
            n_params -= sum(module.weight.numel() for name, module in self.transformer.items()
                            if name == "wpe" or (name == "wte" and not self.config.tie_weights))
        return n_params

    def embed(self, idx, positions):
        """Token embeddings (B, T, C) and the rotary (cos, sin) for the attention. GPT-2 adds a
        learned vector per position to x and has no rope (None); Llama adds nothing and rotates
        q and k in every layer by angles positions * inv_freq: cos, sin (B or 1, 1, T, head_dim)."""
        x = self.transformer.wte(idx)
        if not self.config.llama:
            return x + self.transformer.wpe(positions), None
        angles = positions[..., None].float() * self.inv_freq  # ([B,] T, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(-3)  # a pair's halves turn alike
        return x, (angles.cos(), angles.sin())

    def hidden_states(self, idx, positions=None, attn_mask=None, kv_cache=None):
        """Final hidden states after ln_f, (B, T, C), for token ids idx (B, T).

        positions: (T,) or (B, T) position ids; by default 0..T-1, after any cached positions.
        attn_mask: bool (B, T, past + T), True where a query may attend; None means causal.
        kv_cache: None, or generate.new_kv_cache(...), which this call extends by its T positions.
        The logits are hidden_states @ lm_head.weight.T; callers that cannot afford all of
        (B, T, vocab) at once can compute them chunk by chunk."""
        B, T = idx.size()
        past = 0  # positions already in the cache
        if kv_cache is not None:
            past = kv_cache["length"]
            assert past + T <= kv_cache["kv"][0].size(-2), "the key/value cache is full"
        if positions is None:
            block_size = self.config.block_size
            assert past + T <= block_size, \
                f"cannot run a sequence of length {past + T}, block_size is only {block_size}"
            positions = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x, rope = self.embed(idx, positions)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, kv_cache["kv"][i] if kv_cache is not None else None, past, rope)
        if kv_cache is not None:
            kv_cache["length"] = past + T
        return self.transformer.ln_f(x)

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
        has_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = device_type == "cuda" and has_fused
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
