"""
Benchmark: what does the IRL loss cost over MLE, what does the chunked head save, and what does the
key/value cache buy when sampling? Every variant trains an identical copy of one model on the same
batch; the variants are interleaved step by step in one run (so all see the same machine state)
and the median step is reported. Ends with a table of the ratios and their targets.

    python bench.py                              # default model size, char and GPT-2 vocabularies
    python bench.py --device=cuda --dtype=bfloat16 --batch_size=8 --block_size=1024 --n_layer=12 \
        --n_head=12 --n_embd=768 --vocab_sizes=50304 --loss_chunk=256 --compile=True   # GPT-2 124M
    python bench.py --device=cuda --dtype=bfloat16 --batch_size=8 --block_size=1024 --n_layer=28 \
        --n_head=16 --n_kv_head=8 --n_embd=1024 --vocab_sizes=49152,151936 --loss_chunk=1024 \
        --shapes=llama --compile=True   # about Qwen3-0.6B's shape (its head_dim is 128, here 64)

Each model shape runs beside the other: gpt2 (LayerNorm, learned positions, GELU MLP) and llama
(model.py's Llama family: RMSNorm, rotary positions, SwiGLU MLP of 3 x n_embd, n_kv_head key/value
heads), both with a tied head, as SmolLM2 and the small Qwens have.

Training variants (forward + backward + AdamW step):
    ce           F.cross_entropy on the full logits (the textbook MLE)
    mle, irl     irl_loss with td_coef = 0 and td_coef > 0, on the full (B, T, V) logits
    mle_chunked, irl_chunked   the same losses through chunked_head.py, loss_chunk positions
                               at a time
Head + loss alone (fixed hidden states in, gradients of hidden states and head out; IRL loss):
    head_full, head_chunked    the part of a step the chunked path changes
Sampling: generate() of max_new_tokens tokens for sample_batch prompts, with the key/value cache
and recomputing the whole prefix for every token (use_cache=False), in tokens per second; with
--compile_decode=True also generate(compile=True), the fixed-shape decode step torch.compile'd
(mode="reduce-overhead": one CUDA graph per token on a GPU), timed after its compilation.

Memory is the peak of what the step allocates above what was allocated when it began (weights,
optimizer state and the batch are there before and are the same for every variant). On CUDA:
torch.cuda.max_memory_allocated() minus memory_allocated() at the start. On CPU PyTorch keeps no
allocator statistics, so the step is run once more under torch.profiler(profile_memory=True),
which records every allocation and free of a tensor; the peak of their running sum is the same
quantity. (Python's tracemalloc would not see tensor memory, and the process's resident size only
grows.) MFU (CUDA only) is model.estimate_mfu against peak_tflops.
"""
import os
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from chunked_head import chunked_irl_loss
from checkpoint import check_fits
from checks import check_device
from configurator import SEED_RANGE, configure, parse_list, settings_of
from runfiles import stop_on_interrupt
from generate import generate
from irl_loss import irl_loss, q_and_v
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
batch_size = 32  # examples per step
block_size = 64  # tokens per row
n_layer = 4  # transformer blocks
n_head = 4  # attention heads
n_embd = 128  # width
vocab_sizes = "32,50304"  # comma-separated vocabularies to run: 32 ~ the char tasks, 50304 = GPT-2,
#   151936 = Qwen
shapes = "gpt2,llama"  # comma-separated model shapes to run: gpt2 | llama (see above)
n_kv_head = 0  # llama shape: key/value heads (grouped-query attention); 0 = n_head / 2,
#   or n_head if it is odd
td_coef = 0.1  # the IRL variants' td_coef
loss_chunk = 128  # positions per chunk on the chunked path (B*T / 16 at the default size)
steps = 20  # timed steps per variant (after warmup)
warmup = 3  # untimed steps per variant
max_new_tokens = 256  # sampling: new tokens per prompt
sample_batch = 8  # sampling: prompts generated together (16 tokens each)
temperature = 1.0  # sampling temperature; 0 = greedy (no random draw over the vocabulary)
device = ""  # '' = cuda if available, else mps, else cpu; or cpu | cuda | cuda:1 | mps
dtype = "float32"  # float32 | bfloat16 (autocast)
compile = False  # torch.compile the models (not the sampling)
compile_decode = False  # also time generate(compile=True): the decode step compiled,
#   a CUDA graph on a GPU
peak_tflops = 0.0  # the GPU's peak for MFU; 0 = from its name (bf16 dense: A100 312, H100/H200 989)
threads = 0  # CPU threads for torch; 0 = torch's default (1 is steadier when other jobs share
#   the cores)
seed = 0  # seed of weights and batch
# -----------------------------------------------------------------------------
stop_on_interrupt("bench.py", "it writes no files")
settings = settings_of(globals(), __file__)
RANGES = {k: (1, None) for k in ("batch_size", "block_size", "n_layer", "n_head", "n_embd",
                                 "loss_chunk", "steps", "max_new_tokens", "sample_batch")}
RANGES.update(td_coef=(0, None), warmup=(0, None), temperature=(0, None), n_kv_head=(0, None),
              seed=SEED_RANGE,
              # more threads than cores slow torch down (by the thousand, crash it)
              threads=(0, os.cpu_count()))
globals().update(configure(settings, __file__, ranges=RANGES))
PROMPT_LEN = 16  # sampling: tokens of each prompt
try:
    device = check_device(device)
    vocabs = parse_list("vocab_sizes", vocab_sizes, int, low=2)
    model_shapes = [shape.strip() for shape in shapes.split(",")]
    if set(model_shapes) - {"gpt2", "llama"}:
        raise ValueError(f"--shapes={shapes!r}: use gpt2, llama or gpt2,llama")
    n_kv_head = n_kv_head or (n_head // 2 if n_head % 2 == 0 else n_head)
    if n_head % n_kv_head:
        raise ValueError(f"--n_head={n_head} must be a multiple of --n_kv_head={n_kv_head}")
    if n_embd % n_head:
        raise ValueError(f"--n_embd={n_embd} must be a multiple of --n_head={n_head}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype={dtype!r}; use float32 or bfloat16")
    largest = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=max(vocabs),
                   bias=False,
                   # gpt2's, which has a position table
                   block_size=max(block_size, PROMPT_LEN + max_new_tokens))
    check_fits(largest, device)
except ValueError as err:
    raise SystemExit(f"bench.py: error: {err}")
cuda = device.startswith("cuda")
if threads > 0:
    torch.set_num_threads(threads)
autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def make_batch(vocab_size):
    """Random tokens; the first quarter of each row is prompt, the rest completion ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(vocab_size, (batch_size, block_size + 1), generator=g)
    loss_mask = torch.ones(batch_size, block_size)
    loss_mask[:, : block_size // 4] = 0
    done = torch.zeros(batch_size, block_size)
    done[:, -1] = 1
    batch = dict(idx=idx[:, :-1], targets=idx[:, 1:], loss_mask=loss_mask, done=done)
    return {k: v.to(device) for k, v in batch.items()}


def new_model(shape, vocab_size, block=block_size):
    torch.manual_seed(seed)  # identical weights for every variant
    llama = dict(llama=True, n_kv_head=n_kv_head, mlp_hidden=3 * n_embd) if shape == "llama" else {}
    return GPT(GPTConfig(block_size=block, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, bias=False, **llama)).to(device)


def loss_of(q, v, batch, variant):
    return irl_loss(q, v, batch["loss_mask"], batch["done"],
                    td_coef if "irl" in variant else 0.0)[0]


def chunked_loss_of(hidden, weight, batch, variant):
    return chunked_irl_loss(hidden, weight, batch["targets"], batch["loss_mask"], batch["done"],
                            td_coef if "irl" in variant else 0.0, 1.0, loss_chunk)[0]


def train_step(variant, shape, vocab_size, batch):
    """One step function per variant, each with its own copy of the model and optimizer."""
    raw_model = new_model(shape, vocab_size)
    model = torch.compile(raw_model) if compile else raw_model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast:
            if variant == "ce":
                targets = batch["targets"].masked_fill(batch["loss_mask"] == 0, -100)
                logits = model(batch["idx"])
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                       ignore_index=-100)
            elif variant.endswith("chunked"):
                hidden = model(batch["idx"], head=False)
                loss = chunked_loss_of(hidden, raw_model.lm_head.weight, batch, variant)
            else:
                loss = loss_of(*q_and_v(model(batch["idx"]), batch["targets"]), batch, variant)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step.model = raw_model
    return step


def head_step(variant, vocab_size, batch):
    """Head + IRL loss, forward and backward, from fixed final hidden states."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch_size, block_size, n_embd,
                         generator=g).to(device).requires_grad_(True)
    weight = (0.02 * torch.randn(vocab_size, n_embd, generator=g)).to(device).requires_grad_(True)

    def step():
        with autocast:
            if variant == "head_chunked":
                loss = chunked_loss_of(hidden, weight, batch, "irl")
            else:
                loss = loss_of(*q_and_v(hidden @ weight.T, batch["targets"]), batch, "irl")
        loss.backward()
        hidden.grad = weight.grad = None
    return step


def sync():
    if cuda:
        torch.cuda.synchronize()


@contextmanager
def quiet_stderr():
    """The CPU profiler logs two lines to the C-level stderr at every start and stop; drop them."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(step):
    """Peak bytes allocated during step() above those allocated when it began (see the
    docstring)."""
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        sync()
        return torch.cuda.max_memory_allocated() - start
    with quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                profile_memory=True) as prof:
        step()
    # every allocation (+bytes) and free (-bytes) of the step, in time order
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def timed(fn):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def median(xs):
    return sorted(xs)[len(xs) // 2]


def gpu_peak_flops():
    if peak_tflops > 0:
        return peak_tflops * 1e12
    name = torch.cuda.get_device_name(device)
    for key, tflops in (("H100", 989), ("H200", 989), ("A100", 312)):
        if key in name:
            return tflops * 1e12
    return None


def sampling_tokens_per_s(shape, vocab_size):
    """generate() tokens/s recomputing the prefix, with the key/value cache, and (compile_decode)
    with the compiled decode step, whose compilation is left out (interleaved, median of 3)."""
    model = new_model(shape, vocab_size, block=PROMPT_LEN + max_new_tokens)
    prompts = torch.randint(vocab_size, (sample_batch, PROMPT_LEN),
                            generator=torch.Generator().manual_seed(seed)).tolist()
    decodings = {"recomputed": dict(use_cache=False), "cached": dict(use_cache=True)}
    if compile_decode:
        decodings["compiled"] = dict(compile=True)
        with autocast:
            generate(model, prompts, max_new_tokens, temperature, compile=True)  # compiles
    times = {name: [] for name in decodings}
    for _ in range(3):
        for name, kwargs in decodings.items():
            with autocast:
                times[name].append(timed(lambda: generate(model, prompts, max_new_tokens,
                                                          temperature, **kwargs)))
    return {name: sample_batch * max_new_tokens / median(t) for name, t in times.items()}


def run(shape, vocab_size):
    batch = make_batch(vocab_size)
    steps_of = {v: train_step(v, shape, vocab_size, batch)
                for v in ("ce", "mle", "irl", "mle_chunked", "irl_chunked")}
    steps_of.update({v: head_step(v, vocab_size, batch) for v in ("head_full", "head_chunked")})
    memory, times = {}, {v: [] for v in steps_of}
    for variant, step in steps_of.items():
        for _ in range(warmup):
            step()
        memory[variant] = peak_bytes(step)
    for _ in range(steps):  # interleaved: ce, mle, irl, ..., ce, mle, irl, ...
        for variant, step in steps_of.items():
            times[variant].append(timed(step))
    ms = {v: 1000 * median(t) for v, t in times.items()}
    tokens = batch_size * block_size
    flops = gpu_peak_flops() if cuda else None

    kv_heads = f" ({n_kv_head} key/value heads)" if shape == "llama" else ""
    print(f"\n{shape} shape, vocab {vocab_size}: {n_layer} layers x {n_embd} wide{kv_heads}, "
          f"batch {batch_size} x {block_size}, loss_chunk {loss_chunk}, {device} {dtype}"
          f"{' compiled' if compile else ''}, median of {steps} steps")
    print(f"  {'variant':13s} {'ms/step':>9s} {'tokens/s':>10s} {'peak MiB':>9s}"
          + ("   MFU" if flops else ""))
    for variant in steps_of:
        mfu = ""
        if flops and not variant.startswith("head"):
            fraction = steps_of[variant].model.estimate_mfu(batch_size, ms[variant] / 1000,
                                                            block_size, flops)
            mfu = f" {100 * fraction:5.1f}%"
        print(f"  {variant:13s} {ms[variant]:9.1f} {tokens / ms[variant] * 1000:10.0f} "
              f"{memory[variant] / 2**20:9.1f}{mfu}")
    sampling = sampling_tokens_per_s(shape, vocab_size)
    print(f"  sampling {sample_batch} x {max_new_tokens} new tokens at temperature {temperature}, "
          "tokens/s: "
          + ", ".join(f"{name} {tokens_per_s:.0f}" for name, tokens_per_s in sampling.items()))
    ratio = lambda d, a, b: d[a] / d[b]
    ratios = {
        "IRL/MLE time, full logits": (ratio(ms, "irl", "mle"), "<= 1.02"),
        "IRL/MLE memory, full logits": (ratio(memory, "irl", "mle"), "<= 1.00"),
        "IRL/MLE time, chunked": (ratio(ms, "irl_chunked", "mle_chunked"), "<= 1.02"),
        "IRL/MLE memory, chunked": (ratio(memory, "irl_chunked", "mle_chunked"), "<= 1.00"),
        "IRL/CE time, full logits": (ratio(ms, "irl", "ce"), ""),
        "chunked/full head+loss memory": (ratio(memory, "head_chunked", "head_full"),
                                          "<= 0.125 at V=50304"),
        "chunked/full head+loss time": (ratio(ms, "head_chunked", "head_full"),
                                        "<= 1.05 at V=50304"),
        "chunked/full IRL step memory": (ratio(memory, "irl_chunked", "irl"), ""),
        "chunked/full IRL step time": (ratio(ms, "irl_chunked", "irl"), ""),
        "sampling cached/recomputed tokens/s": (ratio(sampling, "cached", "recomputed"), ">= 5"),
    }
    if compile_decode:
        ratios["sampling compiled/recomputed tokens/s"] = (ratio(sampling, "compiled",
                                                                 "recomputed"), ">= 5")
    return ratios


if __name__ == "__main__":
    runs = [(shape, vocab) for shape in model_shapes for vocab in vocabs]
    results = {key: run(*key) for key in runs}
    print(f"\nratios ({device} {dtype}; memory = peak above the step's start)")
    print(f"  {'':37s}" + "".join(f"{shape + ' V=' + str(v):>17s}" for shape, v in runs)
          + "  target")
    for name in results[runs[0]]:
        print(f"  {name:37s}" + "".join(f"{results[key][name][0]:17.3f}" for key in runs)
              + f"  {results[runs[0]][name][1]}")
