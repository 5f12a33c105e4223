"""
Train or fine-tune a GPT on prompt -> completion demonstrations: by maximum likelihood (MLE), by
offline inverse RL (IQ-Learn as MLE plus a TD regulariser, irl_loss.py), by online IQ-Learn (the
value term also on the policy's own samples) or by GAIL (gail.py). docs/method.md has the maths.

    python train.py                                  # IRL on the arith task, a few minutes on a 2-core CPU
    python train.py --loss=mle --out_dir=out-mle     # the MLE / SFT baseline
    python train.py --td_coef=0.3 --gamma=0.99       # any setting below is a flag; --help lists them
    python train.py --mix_in=0.1 --sample_fraction=0.25 --sample_every=4   # online IQ-Learn
    python train.py --loss=gail --init_from=out-mle/ckpt.pt --out_dir=out-gail --learning_rate=1e-4
    python train.py config/shakespeare_char.py       # a file of overrides, then flags
    python train.py --init_from=resume               # continue the run in out_dir
    python train.py --init_from=path/to/ckpt.pt      # fine-tune a checkpoint (ours or nanoGPT's)
    python train.py --init_from=gpt2 --dataset=mine.jsonl --loss_chunk=1024   # fine-tune GPT-2 (transformers)
    python train.py --init_from=HuggingFaceTB/SmolLM2-135M --dataset=mine.jsonl --loss_chunk=1024  # or a Llama, Qwen
    torchrun --standalone --nproc_per_node=4 train.py    # several GPUs (DDP)

Writes out_dir/ckpt.pt (atomically) and out_dir/log.jsonl (one JSON line per evaluation).
"""
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch

from baseline_losses import dft_loss, gem_loss
from checkpoint import (BEST_IS_HIGHER, GPT2_NAMES, LOCK_FILE, TRAIN_RANGES, check_config, check_fits, check_out_dir,
                        check_outputs, hf_checkpoint, is_hf_model, load_checkpoint, lock_out_dir, model_from_checkpoint,
                        rank_rng, save_checkpoint, tokenizer_of, write_atomically)
from chunked_head import chunked_irl_loss, chunked_policy_stats
from configurator import check_device, configure, help_lines, same_setting
from dataset import dataset_inputs, encode_example, encode_split, load_dataset, make_batch, sample_examples
from irl_loss import irl_loss, mean_entropy, online_irl_loss, policy_stats, q_and_v
from metrics import rouge_l
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# settings: each is a flag (--name=value) and its comment is its --help line. A resumed run takes
# every setting from its checkpoint; a flag passed again changes one marked "(resume: may change)".
# I/O
out_dir = "out"  # where ckpt.pt and log.jsonl are written (resume: may change)
init_from = "scratch"  # scratch | resume (continue out_dir) | path/to/ckpt.pt (ours or nanoGPT's) | gpt2[-medium|-large|-xl] | a Hugging Face folder or hub name of GPT-2, Llama 3, SmolLM2, Qwen2/2.5 or Qwen3 (resume: may change)
# data
dataset = "arith"  # arith | shakespeare | a folder of train/val/test.jsonl | a .jsonl file
tokenizer = ""  # '' = the dataset's (char) or the checkpoint's; char | gpt2
chat_template = False  # format each prompt with the pretrained model's chat template (--init_from a Hugging Face model that has one)
batch_size = 32  # examples per micro-batch (one example per row)
block_size = 64  # longest row in tokens; longer examples are cut (see dataset.py)
# model
n_layer = 2  # transformer blocks
n_head = 4  # attention heads
n_embd = 128  # width
dropout = 0.0  # dropout probability (0 for small data is often fine; try 0.1 when fine-tuning)
bias = False  # biases in Linear and LayerNorm layers
# loss
loss = "irl"  # irl (IQ-Learn: MLE + td_coef * TD term) | mle | dft | gem (baseline_losses.py) | gail (needs --init_from, see gail.py)
td_coef = 0.1  # lambda: weight of the squared TD residual (0 = MLE)
gamma = 1.0  # discount of the implied reward (1: finite episodes); GAIL's reward-to-go too
entropy_coef = 0.0  # beta: minus beta times the policy's mean entropy on the completions, for any loss
gem_beta = 0.7  # GEM: temperature of its target softmax(logits / gem_beta); 1 = MLE's gradient, lower keeps more diversity
loss_chunk = 0  # >0: head + loss over this many positions at a time, never all (B, T, vocab) logits (chunked_head.py)
# online IQ-Learn and GAIL: the policy's own samples
mix_in = 0.0  # online IQ-Learn (loss=irl): weight alpha of the policy's own samples in the value term
sample_every = 1  # online IQ-Learn: fresh policy samples every this many steps, reused in between
sample_fraction = 1.0  # share of a batch's prompts that get a policy sample (online IQ-Learn, GAIL)
max_new_tokens = 64  # longest policy sample (online IQ-Learn, GAIL); the window cuts it too
mle_weight = 1.0  # GAIL: weight of MLE on the data
kl_coef = 0.1  # GAIL: weight of KL(policy || starting model) on the policy's samples
disc_n_layer = 2  # GAIL: blocks of the discriminator (a GPT of the policy's width)
disc_learning_rate = 1e-4  # GAIL: the discriminator's AdamW learning rate (constant)
# optimizer
max_iters = 4000  # optimizer steps (resume: may change)
gradient_accumulation_steps = 1  # micro-batches per optimizer step (in total, over all processes)
learning_rate = 1e-3  # peak learning rate (resume: may change)
weight_decay = 0.1  # AdamW weight decay (2-D weights only)
beta1 = 0.9  # AdamW beta1
beta2 = 0.99  # AdamW beta2
grad_clip = 1.0  # clip the gradient norm at this value (0 = off) (resume: may change)
# learning-rate schedule
decay_lr = True  # linear warmup then cosine decay; False = constant learning_rate (resume: may change)
warmup_iters = 50  # steps of linear warmup (resume: may change)
lr_decay_iters = 0  # step at which the cosine reaches min_lr; 0 = max_iters, so a shorter run decays too (resume: may change)
min_lr = 1e-4  # learning rate at the end of the cosine (resume: may change)
# evaluation and logging
eval_interval = 500  # evaluate (val loss, greedy accuracy) and save every this many steps (resume: may change)
eval_iters = 8  # val batches per evaluation (always the same ones) (resume: may change)
eval_prompts = 200  # val prompts for greedy accuracy (tasks with a verifier) (resume: may change)
log_interval = 100  # print a progress line every this many steps (resume: may change)
wandb_log = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no network); log.jsonl stays the record (resume: may change)
wandb_project = "nanoirl"  # the W&B project (resume: may change)
wandb_run_name = ""  # the W&B run's name; '' = out_dir's name (resume: may change)
keep_best = ""  # early stopping: '' = off; val/accuracy (a verifier) or val/rougeL (text; higher is better), val/nll or val/loss (lower) -> out_dir/best.pt
# system
device = ""  # '' = cuda if available, else mps, else cpu; or cpu | cuda | cuda:1 | mps (resume: may change)
dtype = ""  # '' = bfloat16 on CUDA if supported, else float16 on CUDA, float32 elsewhere (resume: may change)
compile = None  # torch.compile the model; None = on for CUDA, off elsewhere (resume: may change)
backend = "nccl"  # DDP backend on CUDA (gloo is used on CPU) (resume: may change)
seed = 1337  # seed of weights, batches and dropout
# -----------------------------------------------------------------------------
settings = {k: v for k, v in globals().items() if not k.startswith("_")
            and isinstance(v, (bool, int, float, str, type(None)))}
config, given = configure(settings, __file__, ranges=TRAIN_RANGES, with_given=True)  # given: the flags passed
globals().update(config)


def fail(message):
    for path in reversed(made_by_lock):  # a run that fails leaves no lock file, nor an empty out_dir, it made
        try:
            os.rmdir(path) if path == out_dir else os.remove(path)
        except OSError:
            pass  # out_dir holds what the run wrote
    sys.exit(f"train.py: error: {message}")


# -----------------------------------------------------------------------------
# out_dir first, locked before anything is loaded: a second process on it stops at once. Under torchrun
# rank 0, which saves, holds the lock; should it stop here, torchrun stops the other ranks (SIGTERM).
master = int(os.environ.get("RANK", 0)) == 0  # the process that locks, logs and saves
ckpt_path, log_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "log.jsonl")
best_path = os.path.join(out_dir, "best.pt")  # --keep_best: the early-stopped state
made_by_lock = []
if init_from != "resume" and os.path.exists(ckpt_path):
    fail(f"{out_dir} already holds a run (its ckpt.pt); continue it with --init_from=resume, "
         f"or train into a new --out_dir")
try:
    check_out_dir(out_dir)  # a run that cannot save stops now
    if master:
        made_by_lock = [path for path in (out_dir, os.path.join(out_dir, LOCK_FILE)) if not os.path.lexists(path)]
        lock_out_dir(out_dir)  # makes them
except (ValueError, OSError) as err:
    fail(err)
from_hf = init_from in GPT2_NAMES or is_hf_model(init_from)  # pretrained weights: GPT-2 or the Llama family
if init_from not in ("scratch", "resume") and not init_from.endswith(".pt") and not from_hf:
    fail(f"--init_from={init_from!r}: use scratch, resume, a path ending in .pt, gpt2[-medium|-large|-xl] "
         f"or a Hugging Face model: a folder with config.json, or a hub name like HuggingFaceTB/SmolLM2-135M")
if chat_template and not from_hf and init_from != "resume":
    fail("--chat_template=True formats prompts with a pretrained model's template: pass --init_from=a Hugging "
         "Face model that has one")
if wandb_log and master:  # imported only when asked for, by the process that logs
    try:
        import wandb
    except ImportError:
        fail("--wandb_log=True needs Weights & Biases, which is not installed: pip install wandb")
checkpoint = None
try:
    if from_hf:  # the model's weights and its own tokenizer (GPT-2's BPE for GPT-2)
        checkpoint = hf_checkpoint(init_from, chat_template)
    elif init_from != "scratch":
        checkpoint = load_checkpoint(ckpt_path, for_resume=True) if init_from == "resume" else load_checkpoint(init_from)
    if init_from == "resume":  # the run's settings, checked as the flags were
        check_config(checkpoint["config"], ckpt_path, settings)
except ValueError as err:
    fail(err)
if init_from == "resume":  # the same run goes on: every setting as saved, unless passed again and allowed to change
    may_change = {k for k, text in help_lines(__file__).items() if "(resume: may change)" in text}
    changed = []
    for key, value in checkpoint["config"].items():
        if key not in settings or key in ("out_dir", "init_from"):  # where the run is, and how it starts: as passed
            continue
        if key in given and not same_setting(config[key], value):
            if key not in may_change:
                fail(f"--{key}={config[key]} but the run in {out_dir} has {key}={value}; drop --{key} "
                     f"(a resumed run keeps its settings) or train into a new --out_dir")
            changed.append(f"{key} {value!r} -> {config[key]!r}")
        else:
            config[key] = value
    globals().update(config)
    if master:
        print(f"resume: {ckpt_path} at iter {checkpoint['iter_num']}, "
              + (f"its settings but {', '.join(changed)} (passed)" if changed else "every setting as saved"))
try:  # no output replaces what the run reads
    check_outputs([(f"--out_dir={out_dir}'s {os.path.basename(path)}", path, "train into another --out_dir")
                   for path in (ckpt_path, log_path, best_path)],
                  dataset_inputs(dataset, f"--dataset={dataset}")
                  + ([(f"--init_from={init_from}", init_from)] if init_from.endswith(".pt") else []))
except ValueError as err:
    fail(err)

# checks between flags, which would otherwise fail late and obscurely
if loss not in ("irl", "mle", "dft", "gem", "gail"):
    fail(f"--loss={loss!r} is not a loss; use irl, mle, dft, gem or gail")
if mix_in > 0 and loss != "irl":
    fail(f"--mix_in={mix_in} is online IQ-Learn's weight: it needs --loss=irl")
if loss == "gail" and init_from == "scratch":
    fail("--loss=gail fine-tunes a trained policy; pass --init_from=path/to/mle/ckpt.pt (or resume)")
if loss_chunk and (loss == "gail" or mix_in > 0):
    fail("--loss_chunk fuses the offline loss only; online IQ-Learn and GAIL need --loss_chunk=0")
if loss_chunk and (entropy_coef or loss == "gem"):
    fail(f"{'--loss=gem' if loss == 'gem' else '--entropy_coef'} needs the full logits; use --loss_chunk=0 with it")
if keep_best and keep_best not in BEST_IS_HIGHER:
    fail(f"--keep_best={keep_best!r}: use {', '.join(BEST_IS_HIGHER)} (or '' for no best.pt)")
if n_embd % n_head:
    fail(f"--n_embd={n_embd} must be a multiple of --n_head={n_head}")
td_coef_used = td_coef if loss == "irl" else 0.0  # MLE is the td_coef = 0 special case (DFT, GEM: no TD term)
online = mix_in > 0 or loss == "gail"  # train on the policy's own samples too
n_sampled = max(1, round(sample_fraction * batch_size))  # prompts per micro-batch the policy continues

# -----------------------------------------------------------------------------
# devices, DDP, precision
ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
if ddp and loss == "gail":
    fail("--loss=gail runs in one process (its discriminator is not wrapped in DDP); run python train.py")
try:
    device = check_device(device)  # '' = cuda, else mps, else cpu
except ValueError as err:
    fail(err)
rank, local_rank, world_size = (int(os.environ.get(k, default)) for k, default in
                                (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))


def fail_together(message):
    """A problem every rank meets alike, found before the process group: rank 0 says it, once."""
    sys.exit(0 if rank else f"train.py: error: {message}")


if gradient_accumulation_steps % world_size:
    fail_together(f"--gradient_accumulation_steps={gradient_accumulation_steps} counts micro-batches over all "
                  f"{world_size} processes; pass a multiple of {world_size}, e.g. "
                  f"--gradient_accumulation_steps={world_size}")
if init_from == "resume":
    try:
        rng_states = rank_rng(checkpoint["rng"], rank, world_size, ckpt_path)  # this rank's, as saved
    except ValueError as err:
        fail_together(err)
if ddp:
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend if device.startswith("cuda") else "gloo")
    gradient_accumulation_steps //= world_size
device_type = "cuda" if device.startswith("cuda") else device.split(":")[0]
if not dtype:
    dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
if dtype not in ("float32", "bfloat16", "float16") or (dtype == "float16" and device_type != "cuda"):
    fail(f"--dtype={dtype!r}: use float32, bfloat16, or float16 (CUDA only)")
if compile is None:
    compile = device_type == "cuda"
torch.manual_seed(seed + rank)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)

# -----------------------------------------------------------------------------
# data and model
try:
    if checkpoint is not None:
        tok = tokenizer_of(checkpoint, tokenizer)
        for key in ("n_layer", "n_head", "n_embd", "bias"):  # a checkpoint keeps its shape: a flag cannot change it
            if config[key] != settings[key] and config[key] != checkpoint["model_args"].get(key):
                raise ValueError(f"--{key}={config[key]} but the checkpoint's model has {key}="
                                 f"{checkpoint['model_args'].get(key)}; drop --{key} (a checkpoint keeps its shape)")
        block_size = min(block_size, checkpoint["model_args"]["block_size"])
    data = load_dataset(dataset, tok if checkpoint is not None else tokenizer)
    tok = data["tokenizer"]
    train_data, train_cuts = encode_split(tok, data["splits"]["train"], block_size)
    val_data, _ = encode_split(tok, data["splits"]["val"], block_size)
    if checkpoint is None:
        vocab_size = tok.vocab_size if tok.vocab_size < 1000 else 64 * math.ceil(tok.vocab_size / 64)
        model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                          bias=bias, vocab_size=vocab_size, dropout=dropout)
        check_fits(model_args, device)
        model = GPT(GPTConfig(**model_args))
    else:
        model_args = dict(checkpoint["model_args"], dropout=dropout)
        model = model_from_checkpoint(checkpoint, dropout)
except ValueError as err:
    fail(err)
if not train_data or not val_data:
    fail(f"dataset {dataset} has an empty train or val split; give it examples")
if keep_best == "val/accuracy" and (data["verify"] is None or eval_prompts == 0):
    fail(f"--keep_best=val/accuracy needs greedy accuracy at each evaluation: "
         f"{'--eval_prompts > 0' if data['verify'] else 'a task with a verifier'}; or use --keep_best=val/nll")
if keep_best == "val/rougeL" and (data["verify"] is not None or eval_prompts == 0):
    fail(f"--keep_best=val/rougeL needs greedy ROUGE-L at each evaluation: "
         f"{'--eval_prompts > 0' if data['verify'] is None else 'a text task (this one has a verifier)'}; "
         f"or use --keep_best=val/{'nll' if data['verify'] is None else 'accuracy'}")
if master and (train_cuts["prompt_cut"] or train_cuts["completion_cut"]):
    print(f"block_size={block_size}: cut the prompt of {train_cuts['prompt_cut']} and truncated the "
          f"completion of {train_cuts['completion_cut']} of {len(train_data)} train examples")
if model_args["vocab_size"] < tok.vocab_size:
    fail(f"the model has {model_args['vocab_size']} token ids but the tokenizer needs {tok.vocab_size}; "
         f"use the checkpoint's tokenizer (--tokenizer)")
model.to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
optimized = [(model, optimizer)]  # (module, its optimizer): one backward, then a step for each

# the method's own state beside the policy, kept in the checkpoint under its name
method_state = {}
if loss == "gail":  # the discriminator, its optimizer and the frozen starting policy (gail.py)
    from gail import GAIL
    method_state["gail"] = adversary = GAIL(model, model_args, disc_n_layer, weight_decay, disc_learning_rate,
                                            (beta1, beta2), device_type, mle_weight, kl_coef, gamma)
    optimized.append((adversary.discriminator, adversary.optimizer))
samples = {}  # micro-step -> the policy's samples for its prompts (online IQ-Learn, GAIL)
iter_num = 0
best = None  # --keep_best: dict(metric, value, iter) of the state in best.pt
train_gen = torch.Generator().manual_seed(seed + rank)  # its state is the data position
if init_from == "resume":
    optimizer.load_state_dict(checkpoint["optimizer"])
    for name, state in method_state.items():
        if name not in checkpoint:
            fail(f"{ckpt_path} has no {name} state to resume; start a new run from it with --init_from={ckpt_path}")
        state.load_state_dict(checkpoint[name])
    sample_lists = checkpoint.get("samples", [])
    samples = sample_lists[rank] if rank < len(sample_lists) else {}
    iter_num = checkpoint["iter_num"]
    best = checkpoint.get("best")
    torch_state, cuda_state, data_state = rng_states
    torch.set_rng_state(torch_state)
    train_gen.set_state(data_state)
    if device_type == "cuda" and cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state)
checkpoint = None  # free the memory
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))

raw_model = model  # the plain module: for saving and for generation
if compile:
    print("compiling the model (takes a minute) ...") if master else None
    model = torch.compile(model)
if ddp:
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)
pad_to = block_size if compile else None  # a fixed shape: torch.compile does not recompile


# -----------------------------------------------------------------------------
# the loss of each method: (loss, stats) for a batch whose first n_expert rows are demonstrations
# and the rest (online IQ-Learn, GAIL) the policy's own samples for the same prompts
def with_entropy_bonus(loss_value, stats, logits, mask):
    """loss - entropy_coef * mean entropy of the policy over the loss mask (MLE + entropy: a baseline)."""
    if not entropy_coef:
        return loss_value, stats
    entropy = mean_entropy(logits, mask)
    stats["entropy_bonus"] = entropy.item()
    return loss_value - entropy_coef * entropy, stats


def offline_loss(batch, n_expert=None, with_policy_stats=False):
    """MLE and offline IQ-Learn (irl_loss.py), DFT and GEM (baseline_losses.py), from the full logits or
    chunk by chunk (chunked_head.py; not GEM): the same value and gradient. The statistics are
    irl_loss's (nll, TD residual, ...) for every loss, so that val logs compare across methods."""
    mask, done = batch["loss_mask"], batch["done"]
    with autocast:
        if loss_chunk:  # never all (B, T, vocab) logits
            hidden = model(batch["idx"], head=False)
            loss_value, stats = chunked_irl_loss(hidden, raw_model.lm_head.weight, batch["targets"], mask, done,
                                                 td_coef_used, gamma, loss_chunk, dft=loss == "dft")
            if with_policy_stats:  # entropy, accuracy: chunk-wise too
                stats.update(chunked_policy_stats(hidden, raw_model.lm_head.weight, batch["targets"], mask,
                                                  loss_chunk))
            return loss_value, stats
        logits = model(batch["idx"])
        q, v = q_and_v(logits, batch["targets"])
    loss_value, stats = irl_loss(q, v, mask, done, td_coef_used, gamma)
    if loss == "dft":
        loss_value = dft_loss(q, v, mask)
    elif loss == "gem":
        loss_value = gem_loss(logits, batch["targets"], mask, gem_beta)
    if with_policy_stats:
        stats.update(policy_stats(logits, batch["targets"], mask))
    return with_entropy_bonus(loss_value, stats, logits, mask)


def online_loss(batch, n_expert, with_policy_stats=False):
    """Online IQ-Learn (irl_loss.online_irl_loss): mix_in of the value term on the policy's samples."""
    with autocast:
        logits = model(batch["idx"])  # demonstrations and samples in one pass
        q, v = q_and_v(logits, batch["targets"])
    mask, done = batch["loss_mask"], batch["done"]
    E, P = slice(None, n_expert), slice(n_expert, None)  # demonstration rows, sample rows
    loss_value, stats = online_irl_loss(q[E], v[E], mask[E], done[E], v[P], mask[P], done[P], mix_in,
                                        td_coef_used, gamma)
    if with_policy_stats:
        stats.update(policy_stats(logits[E], batch["targets"][E], mask[E]))
    return with_entropy_bonus(loss_value, stats, logits[E], mask[E])


def gail_loss(batch, n_expert, with_policy_stats=False):
    """GAIL (gail.py): policy gradient on the discriminator's reward, MLE, KL; and the discriminator's BCE."""
    return adversary.loss(model, batch, n_expert, autocast)


train_loss = gail_loss if loss == "gail" else online_loss if mix_in > 0 else offline_loss


# -----------------------------------------------------------------------------
def get_lr(it):
    """Linear warmup, then cosine decay from learning_rate to min_lr at lr_decay_iters (0: at max_iters,
    read here and not stored in its place, so a resumed run given a new --max_iters decays to it)."""
    if not decay_lr:
        return learning_rate
    decay_iters = lr_decay_iters or max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def to_device(batch):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def policy_samples(micro_step, examples):
    """The policy's own completions for the first n_sampled prompts of a micro-batch: fresh every
    step for GAIL (REINFORCE is on-policy), every sample_every steps for online IQ-Learn."""
    if loss == "gail" or iter_num % sample_every == 0 or micro_step not in samples:
        samples[micro_step] = sample_examples(raw_model, examples[:n_sampled], tok.eos_id, max_new_tokens)
    return samples[micro_step]


@torch.no_grad()
def evaluate():
    """The offline loss's statistics (every method's) on the same eval_iters val batches every
    time, and the first eval_prompts val prompts decoded greedily: their accuracy (tasks with a
    verifier), or their ROUGE-L against the references (text, only for --keep_best=val/rougeL: the
    decoding costs, and nothing else needs it)."""
    model.eval()
    totals = {}
    for i in range(eval_iters):
        rows = [val_data[(i * batch_size + j) % len(val_data)] for j in range(batch_size)]
        _, stats = offline_loss(to_device(make_batch(rows, tok.eos_id, pad_to)), with_policy_stats=True)
        for k, value in stats.items():
            totals[k] = totals.get(k, 0.0) + value / eval_iters
    result = {f"val/{k}": value for k, value in totals.items()}
    result["val/loss"] = totals["nll"] + td_coef_used * totals["td"]
    if eval_prompts > 0 and (data["verify"] is not None or keep_best == "val/rougeL"):
        pairs = data["splits"]["val"][:eval_prompts]
        prompts = [encode_example(tok, p)[-(block_size - 1):] for p, _ in pairs]
        completions = raw_model.generate(prompts, block_size, temperature=0.0, eos_id=tok.eos_id)
        if data["verify"] is not None:
            correct = [data["verify"](p, tok.decode(c)) for (p, _), c in zip(pairs, completions)]
            result["val/accuracy"] = sum(correct) / len(correct)
        else:
            rouge = [rouge_l(tok.decode(c), reference) for (_, reference), c in zip(pairs, completions)]
            result["val/rougeL"] = sum(rouge) / len(rouge)
    model.train()
    return result


def save_state():
    """Everything a resumed run needs to continue exactly: weights, optimizer, and each rank's random
    states (dropout, policy samples), data position and samples (checkpoint.rank_rng restores them)."""
    mine = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None,
                data=train_gen.get_state(), samples=samples)
    ranks = [mine]
    if ddp:
        ranks = [None] * world_size
        torch.distributed.all_gather_object(ranks, mine)
    if master:
        save_checkpoint(dict(
            model=raw_model.state_dict(), optimizer=optimizer.state_dict(), model_args=model_args,
            config=config, iter_num=iter_num, tokenizer=tok.state(), samples=[r["samples"] for r in ranks], best=best,
            rng=dict(torch=mine["torch"], cuda=mine["cuda"], data=[r["data"] for r in ranks],
                     ranks=[dict(torch=r["torch"], cuda=r["cuda"]) for r in ranks]),
            **{name: state.state_dict() for name, state in method_state.items()}), ckpt_path)


def improves_best(record):
    """--keep_best: is this evaluation better than the state in best.pt? Ties keep the earlier state, so
    the evaluation a resumed run repeats (the same weights, the same value) changes nothing."""
    if not keep_best:
        return False
    value = record[keep_best]
    return best is None or (value > best["value"] if BEST_IS_HIGHER[keep_best] else value < best["value"])


def save_best():
    """out_dir/best.pt (atomically): what sample.py and analyze_reward.py read, at the best evaluation so far."""
    save_checkpoint(dict(model=raw_model.state_dict(), model_args=model_args, config=config, iter_num=iter_num,
                         tokenizer=tok.state(), best=best), best_path)


def append_log(record):
    """One JSON line, appended and fsynced; a write that fails (a full disk) is cut off again, so
    the log keeps whole lines only."""
    size = os.path.getsize(log_path) if os.path.exists(log_path) else None
    try:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")  # one write per line
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        os.remove(log_path) if size is None else os.truncate(log_path, size)
        fail(f"cannot write {log_path} ({err.strerror}); it keeps its lines before iter {record['iter']}")


def logged_iters(last_iter):
    """Keep the log lines up to the checkpoint's iteration (none for a new run: the log of a start
    that saved no checkpoint goes) and drop a line a crash cut short, rewriting the log (atomically)
    only when a line goes. Returns the iterations it holds: a resumed run does not log them twice."""
    if not os.path.exists(log_path):
        return set()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    kept = {}
    for line in lines:
        try:
            it = json.loads(line)["iter"] if line.endswith("\n") else None
        except (ValueError, KeyError, TypeError):
            it = None
        if isinstance(it, int) and it <= last_iter:
            kept[it] = line
    if list(kept.values()) != lines:
        write_atomically(log_path, "".join(kept.values()))
    return set(kept)


def interrupted(*_):
    """Ctrl-C or SIGTERM: one line instead of a traceback. ckpt.pt is written to a temporary file and renamed,
    so an interrupt, even in the middle of a save, leaves the last complete checkpoint in place."""
    saved = os.path.exists(ckpt_path) and torch.load(ckpt_path, weights_only=True, mmap=True)["iter_num"]
    fail(f"interrupted at iter {iter_num}; " + (f"{ckpt_path} holds iter {saved}: continue with --init_from=resume"
                                                 if saved else "no checkpoint was saved yet"))


def out_of_memory(kind, err, traceback):
    """sys.excepthook: a run that does not fit on the GPU ends with one line naming what makes it fit,
    not a traceback. With a vocabulary of 50k-150k tokens the (B, T, V) logits and their gradient
    are usually what does not fit, and --loss_chunk never makes them."""
    if not issubclass(kind, torch.OutOfMemoryError):
        return sys.__excepthook__(kind, err, traceback)
    logits_gib = batch_size * block_size * model_args["vocab_size"] * 4 / 2**30
    fix = (f"pass --loss_chunk=1024: the head and the loss then run 1024 positions at a time, where the logits "
           f"of a micro-batch ({batch_size} x {block_size} x {model_args['vocab_size']}) take {logits_gib:.1f} GiB "
           f"in float32, and their gradient as much; or " if not loss_chunk and not online else "")
    print(f"train.py: error: CUDA out of memory ({str(err).splitlines()[0][:100]}); {fix}lower --batch_size "
          f"(with a larger --gradient_accumulation_steps to keep the batch) or --block_size", file=sys.stderr)


# -----------------------------------------------------------------------------
# the training loop
sys.excepthook = out_of_memory
if master:
    try:
        logged = logged_iters(iter_num if init_from == "resume" else -1)
    except (ValueError, OSError) as err:
        fail(err)
    print(f"{data['name']}: {len(train_data)} train / {len(val_data)} val examples; model "
          f"{raw_model.get_num_params() / 1e6:.2f}M params; loss={loss} td_coef={td_coef_used} gamma={gamma}; "
          f"device={device} dtype={dtype}")
wandb_run = None  # --wandb_log: the records of log.jsonl and the progress lines, also on Weights & Biases
if master and wandb_log:
    wandb_run = wandb.init(project=wandb_project, name=wandb_run_name or os.path.basename(os.path.abspath(out_dir)),
                           config=config)
for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, kill: the same clean stop
    signal.signal(signum, interrupted)
start_iter = last_log_iter = iter_num
t0, tokens_seen = time.time(), 0
run_seconds = dict(sample=0.0, step=0.0)  # since start_iter, for log.jsonl: sampling vs the whole step
sample_seconds_at_log = 0.0  # run_seconds["sample"] at the last progress line
while True:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr

    # evaluate and save
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        t_eval = time.time()
        record = dict(iter=iter_num, lr=lr, **evaluate())
        if iter_num > start_iter:  # mean time per step so far: sampling (online IQ-Learn, GAIL), update
            steps_run = iter_num - start_iter
            record["time/sample_ms"] = 1000 * run_seconds["sample"] / steps_run
            record["time/update_ms"] = 1000 * (run_seconds["step"] - run_seconds["sample"]) / steps_run
        if not (math.isfinite(record["val/loss"]) and all(p.isfinite().all() for p in raw_model.parameters())):
            fail(f"the run diverged by iter {iter_num} (val loss {record['val/loss']}); stopped, {ckpt_path} keeps "
                 f"the last good state; lower --learning_rate, then --init_from=resume")
        if improves_best(record):  # before ckpt.pt, which records it: a resume continues the same search
            best = dict(metric=keep_best, value=record[keep_best], iter=iter_num)
            record["best"] = True
            try:
                save_best() if master else None
            except ValueError as err:
                fail(err)
        if iter_num > start_iter or (iter_num > 0 and init_from != "resume"):
            try:
                save_state()
            except ValueError as err:  # a full disk: the previous ckpt.pt stays whole
                fail(err)
        if master and iter_num not in logged:
            append_log(record)
            acc = "".join(f", val {key[4:]} {record[key]:.3f}" for key in ("val/accuracy", "val/rougeL")
                          if key in record)
            print(f"eval {iter_num}: val loss {record['val/loss']:.4f}, val nll {record['val/nll']:.4f}, "
                  f"val td {record['val/td']:.4f}{acc}")
            if wandb_run:
                wandb_run.log(record, step=iter_num)
        t0 += time.time() - t_eval  # progress lines time training steps only
    if iter_num >= max_iters:
        break

    # one optimizer step over gradient_accumulation_steps micro-batches
    log_now = iter_num % log_interval == 0
    t_step, nonfinite = time.time(), False
    for micro_step in range(gradient_accumulation_steps):
        rows = torch.randint(len(train_data), (batch_size,), generator=train_gen).tolist()
        examples = [train_data[i] for i in rows]
        if online:
            t_sample = time.time()
            examples = examples + policy_samples(micro_step, examples)
            run_seconds["sample"] += time.time() - t_sample
        batch = to_device(make_batch(examples, tok.eos_id, pad_to))
        tokens_seen += int((batch["targets"] >= 0).sum())
        if ddp:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        loss_value, stats = train_loss(batch, batch_size, with_policy_stats=log_now and micro_step == 0)
        nonfinite = nonfinite or not math.isfinite(loss_value.item())
        scaler.scale(loss_value / gradient_accumulation_steps).backward()
    if ddp:  # all ranks stop together: one that stopped alone would leave the others waiting for it
        flag = torch.tensor(float(nonfinite), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        nonfinite = flag.item() > 0
    if nonfinite:  # before the optimizer step: the weights and ckpt.pt keep the last good state
        fail(f"the loss is not finite at iter {iter_num}; stopped, {ckpt_path} keeps the last good state; "
             f"lower --learning_rate, then --init_from=resume")
    for module, module_optimizer in optimized:  # clip, step (the policy, and GAIL's discriminator)
        if grad_clip > 0:
            scaler.unscale_(module_optimizer)
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        scaler.step(module_optimizer)
        module_optimizer.zero_grad(set_to_none=True)
    scaler.update()
    iter_num += 1
    run_seconds["step"] += time.time() - t_step

    # log: time and tokens (padding excluded) since the last progress line
    if log_now and master:
        dt, steps = time.time() - t0, iter_num - last_log_iter
        extra = "".join(f", {k} {stats[k]:.4f}" for k in ("td", "v_mean", "entropy", "value_gap", "kl",
                                                          "sample_entropy", "reward", "disc_accuracy") if k in stats)
        sample_seconds = run_seconds["sample"] - sample_seconds_at_log
        split = f" ({1000 * sample_seconds / steps:.0f} sampling)" if online else ""
        print(f"iter {iter_num - 1}: loss {loss_value.item():.4f}, nll {stats['nll']:.4f}{extra}, "
              f"{1000 * dt / steps:.0f} ms/iter{split}, {tokens_seen * world_size / dt:.0f} tok/s")
        if wandb_run:
            wandb_run.log({"train/loss": loss_value.item(), **{f"train/{k}": v for k, v in stats.items()},
                           "time/ms_per_iter": 1000 * dt / steps, "tokens_per_s": tokens_seen * world_size / dt},
                          step=iter_num - 1)
        t0, tokens_seen, sample_seconds_at_log, last_log_iter = time.time(), 0, run_seconds["sample"], iter_num

if master:
    if best is not None:
        print(f"best {keep_best} {best['value']:.4f} at iter {best['iter']}: {best_path}")
    print(f"done: {ckpt_path}\nnext: python sample.py --out_dir={out_dir}   "
          f"or   python analyze_reward.py --out_dir={out_dir}")
    if wandb_run:
        wandb_run.finish()
if ddp:
    torch.distributed.barrier()  # rank 0 may still be writing: no rank tears the group down before all are done
    torch.distributed.destroy_process_group()
