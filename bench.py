"""
Benchmark: what does the IRL loss cost over MLE? Times forward + backward + AdamW step of the
same model on the same batch, the variants interleaved step by step in one run so that both see
the same machine state, and prints ms/step, tokens/s, memory and the IRL/MLE ratios.

    python bench.py                                  # default model size, char and GPT-2 vocabularies
    python bench.py --device=cuda --dtype=bfloat16 --batch_size=8 --block_size=1024 --n_layer=12 \
        --n_head=12 --n_embd=768 --vocab_sizes=50304

Variants: ce  = F.cross_entropy (the textbook MLE), mle = irl_loss with td_coef = 0,
          irl = irl_loss with td_coef > 0 (the TD term on the same q and v).
Memory: on CUDA the peak of torch.cuda.max_memory_allocated over a step; on CPU, where PyTorch
keeps no allocator statistics, the bytes that autograd saves for the backward pass (counted once
per storage) - the part of a step's memory that a loss can change.
"""
import time

import torch
import torch.nn.functional as F

from configurator import configure
from irl_loss import irl_loss, q_and_v
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
batch_size = 32  # examples per step
block_size = 64  # tokens per row
n_layer = 4  # transformer blocks
n_head = 4  # attention heads
n_embd = 128  # width
vocab_sizes = "32,50304"  # comma-separated vocabularies to run: 32 ~ the char tasks, 50304 = GPT-2
td_coef = 0.1  # the IRL variant's td_coef
steps = 20  # timed steps per variant (after warmup)
warmup = 3  # untimed steps per variant
device = ""  # '' = cuda if available else cpu
dtype = "float32"  # float32 | bfloat16 (autocast)
compile = False  # torch.compile the models
seed = 0  # seed of weights and batch
# -----------------------------------------------------------------------------
settings = {k: v for k, v in globals().items() if not k.startswith("_")
            and isinstance(v, (bool, int, float, str, type(None)))}
globals().update(configure(settings, __file__))
device = device or ("cuda" if torch.cuda.is_available() else "cpu")
if device.startswith("cuda") and not torch.cuda.is_available():
    raise SystemExit(f"bench.py: error: --device={device} but no CUDA GPU is visible; use --device=cpu")


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


def step_fn(variant, model, optimizer, batch):
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        with autocast:
            logits = model(batch["idx"])
        if variant == "ce":
            targets = batch["targets"].masked_fill(batch["loss_mask"] == 0, -100)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        else:
            q, v = q_and_v(logits, batch["targets"])
            loss = irl_loss(q, v, batch["loss_mask"], batch["done"], td_coef if variant == "irl" else 0.0)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def saved_bytes(step):
    """Bytes autograd keeps for backward during one step, each storage counted once."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(vocab_size):
    variants = ("ce", "mle", "irl")
    batch = make_batch(vocab_size)
    steps_of, times, memory = {}, {v: [] for v in variants}, {}
    for variant in variants:  # identical copies of one model, one per variant
        torch.manual_seed(seed)
        model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer,
                              n_head=n_head, n_embd=n_embd, bias=False)).to(device)
        model = torch.compile(model) if compile else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        steps_of[variant] = step_fn(variant, model, optimizer, batch)
        for _ in range(warmup):
            steps_of[variant]()
        if device.startswith("cuda"):
            sync()
            torch.cuda.reset_peak_memory_stats()
            steps_of[variant]()
            sync()
            memory[variant] = torch.cuda.max_memory_allocated()
        else:
            memory[variant] = saved_bytes(steps_of[variant])
    for _ in range(steps):  # interleaved: ce, mle, irl, ce, mle, irl, ...
        for variant in variants:
            sync()
            t0 = time.perf_counter()
            steps_of[variant]()
            sync()
            times[variant].append(time.perf_counter() - t0)
    tokens = batch_size * block_size
    memory_kind = "peak allocated" if device.startswith("cuda") else "saved for backward"
    print(f"\nvocab {vocab_size}: {n_layer} layers x {n_embd} wide, batch {batch_size} x {block_size}, "
          f"{device} {dtype}, median of {steps} steps")
    median = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
    for variant in variants:
        print(f"  {variant:4s} {1000 * median[variant]:8.1f} ms/step {tokens / median[variant]:10.0f} tok/s "
              f"{memory[variant] / 2**20:9.1f} MiB {memory_kind}")
    print(f"  IRL/MLE time {median['irl'] / median['mle']:.3f}, memory {memory['irl'] / memory['mle']:.3f};  "
          f"IRL/CE time {median['irl'] / median['ce']:.3f}, memory {memory['irl'] / memory['ce']:.3f}")


if __name__ == "__main__":
    torch.manual_seed(seed)
    for vocab_size in [int(v) for v in vocab_sizes.split(",")]:
        run(vocab_size)
