"""
Train or fine-tune a GPT on prompt -> completion demonstrations: by maximum likelihood (MLE), by
offline inverse RL (IQ-Learn as MLE plus a TD regulariser, irl_loss.py), by online IQ-Learn (the
value term also on the policy's own samples) or by GAIL (gail.py). docs/method.md has the maths.

    python train.py                                  # IRL on the arith task, minutes on a CPU
    python train.py --loss=mle --out_dir=out-mle     # the MLE / SFT baseline
    python train.py --mix_in=0.1 --sample_fraction=0.25 --sample_every=4   # online IQ-Learn
    python train.py --loss=gail --init_from=out-mle/ckpt.pt --out_dir=out-gail --learning_rate=1e-4
    python train.py config/shakespeare_char.py       # a file of overrides, then flags
    python train.py --init_from=resume               # continue the run in out_dir; --help: every flag
    python train.py --init_from=gpt2 --dataset=mine.jsonl --loss_chunk=1024   # GPT-2, a Llama, Qwen
    torchrun --standalone --nproc_per_node=4 train.py    # several GPUs (DDP)

Writes out_dir/ckpt.pt (atomically) and out_dir/log.jsonl (one JSON line per evaluation).
"""
import math
import os
import time
from contextlib import nullcontext

import torch

from baseline_losses import dft_loss, gem_loss
from checkpoint import (beats, check_fits, gather_rank_states, model_from_checkpoint, restore_run,
                        save_checkpoint, tokenizer_of)
from checks import (check_data, check_run, check_shape_flags, stop_cleanly, stop_if_diverged,
                    stop_unless_finite)
from chunked_head import chunked_irl_loss, chunked_policy_stats
from configurator import TRAIN_RANGES, configure, settings_of
from dataset import encode_example, encode_split, load_dataset, make_batch, sample_examples
from gail import GAIL
from generate import generate
from irl_loss import irl_loss, mean_entropy, online_irl_loss, policy_stats, q_and_v
from metrics import rouge_l
from model import GPT
from runfiles import RUN_FILES, fail, stop_on_interrupt
from runlog import RunLog

# -----------------------------------------------------------------------------
# settings: each is a flag (--name=value) and its comment is its --help line. A resumed run takes
# every setting from its checkpoint; a flag passed again changes one of RESUMABLE (below) only.
# I/O
out_dir = "out"  # where ckpt.pt and log.jsonl are written
init_from = "scratch"  # scratch | resume (continue out_dir) | path/to/ckpt.pt (ours or nanoGPT's)
#   | gpt2[-medium|-large|-xl] | a Hugging Face folder or hub name of GPT-2, Llama 3, SmolLM2,
#   Qwen2/2.5 or Qwen3
# data
dataset = "arith"  # arith | shakespeare | a folder of train/val/test.jsonl | a .jsonl file
tokenizer = ""  # '' = the dataset's (char) or the checkpoint's; char | gpt2
chat_template = False  # format each prompt with the pretrained model's chat template
#   (--init_from a Hugging Face model that has one)
batch_size = 32  # examples per micro-batch (one example per row)
block_size = 64  # longest row in tokens; longer examples are cut (see dataset.py)
# model
n_layer = 2  # transformer blocks
n_head = 4  # attention heads
n_embd = 128  # width
dropout = 0.0  # dropout probability (0 for small data is often fine; try 0.1 when fine-tuning)
bias = False  # biases in Linear and LayerNorm layers
# loss
loss = "irl"  # irl (IQ-Learn: MLE + td_coef * TD term) | mle | dft | gem (baseline_losses.py)
#   | gail (needs --init_from, see gail.py)
td_coef = 0.1  # lambda: weight of the squared TD residual (0 = MLE)
gamma = 1.0  # discount of the implied reward (1: finite episodes); GAIL's reward-to-go too
entropy_coef = 0.0  # beta: minus beta times the policy's mean entropy on the completions (not GAIL)
gem_beta = 0.7  # GEM: temperature of its target softmax(logits / gem_beta); 1 = MLE's gradient,
#   lower keeps more diversity
loss_chunk = 0  # >0: head + loss over this many positions at a time, never all (B, T, vocab)
#   logits (chunked_head.py)
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
max_iters = 4000  # optimizer steps
gradient_accumulation_steps = 1  # micro-batches per optimizer step (in total, over all processes)
learning_rate = 1e-3  # peak learning rate
weight_decay = 0.1  # AdamW weight decay (2-D weights only)
beta1 = 0.9  # AdamW beta1
beta2 = 0.99  # AdamW beta2
grad_clip = 1.0  # clip the gradient norm at this value (0 = off)
# learning-rate schedule
decay_lr = True  # linear warmup then cosine decay; False = constant learning_rate
warmup_iters = 50  # steps of linear warmup
lr_decay_iters = 0  # step at which the cosine reaches min_lr; 0 = max_iters, so a shorter run decays too
min_lr = 1e-4  # learning rate at the end of the cosine
# evaluation and logging
eval_interval = 500  # evaluate (val loss, greedy accuracy) and save every this many steps
eval_iters = 8  # val batches per evaluation (always the same ones)
eval_prompts = 200  # val prompts for greedy accuracy (tasks with a verifier)
log_interval = 100  # print a progress line every this many steps
wandb_log = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no
#   network); log.jsonl stays the record
wandb_project = "nanoirl"  # the W&B project
wandb_run_name = ""  # the W&B run's name; '' = out_dir's name
keep_best = ""  # early stopping: '' = off; val/accuracy (a verifier) or val/rougeL (text; higher
#   is better), val/nll or val/loss (lower) -> out_dir/best.pt
# system
device = ""  # '' = cuda if available, else mps, else cpu; or cpu | cuda | cuda:1 | mps
dtype = ""  # '' = bfloat16 on CUDA if supported, else float16 on CUDA, float32 elsewhere
compile = None  # torch.compile the model; None = on for CUDA, off elsewhere
backend = "nccl"  # DDP backend on CUDA (gloo is used on CPU)
seed = 1337  # seed of weights, batches and dropout
RESUMABLE = ("out_dir", "init_from", "max_iters", "learning_rate", "grad_clip", "decay_lr", "warmup_iters",
             "lr_decay_iters", "min_lr", "eval_interval", "eval_iters", "eval_prompts", "log_interval",
             "wandb_log", "wandb_project", "wandb_run_name", "device", "dtype", "compile", "backend")
# -----------------------------------------------------------------------------
stop_on_interrupt("train.py")
settings = settings_of(globals(), __file__)
config, given = configure(settings, __file__, ranges=TRAIN_RANGES, with_given=True,
                          notes={k: "(resume: may change)" for k in RESUMABLE})
run = check_run(config, given, settings, RESUMABLE)  # every check before work: stops on a problem
globals().update(config)  # a resumed run's own settings
checkpoint, rng_states, device, dtype = (run[k] for k in ("checkpoint", "rng_states", "device", "dtype"))
ckpt_path, best_path, log_path = (os.path.join(out_dir, name) for name in RUN_FILES)
td_coef_used = td_coef if loss == "irl" else 0.0  # MLE is td_coef = 0 (DFT, GEM: no TD term)
online = mix_in > 0 or loss == "gail"  # train on the policy's own samples too

# -----------------------------------------------------------------------------
# devices, DDP, precision
ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
rank, local_rank, world_size = (int(os.environ.get(k, default)) for k, default in
                                (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
master = rank == 0  # the process that logs and saves
if ddp:
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend if device.startswith("cuda") else "gloo")
    gradient_accumulation_steps //= world_size
device_type = "cuda" if device.startswith("cuda") else device.split(":")[0]
compile = device_type == "cuda" if compile is None else compile
torch.manual_seed(seed + rank)
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, getattr(torch, dtype))

# -----------------------------------------------------------------------------
# data and model: a checkpoint brings its tokenizer and its shape
try:
    if checkpoint is not None:
        tok = tokenizer_of(checkpoint, tokenizer)
        check_shape_flags(config, settings, checkpoint)
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
        model = GPT.from_args(model_args)
    else:
        model_args = dict(checkpoint["model_args"], dropout=dropout)
        model = model_from_checkpoint(checkpoint, dropout)
except ValueError as err:
    fail(err)
check_data(config, data, train_data, val_data, model_args["vocab_size"], train_cuts, block_size, master)
model.to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
optimized = [(model, optimizer)]  # (module, its optimizer): one backward, then a step for each

# the method's own state beside the policy, kept in the checkpoint under its name
method_state = {}
if loss == "gail":  # the discriminator, its optimizer and the frozen starting policy (gail.py)
    adversary = GAIL(model, model_args, disc_n_layer, weight_decay, disc_learning_rate, (beta1, beta2),
                     device_type, mle_weight, kl_coef, gamma)
    method_state["gail"] = adversary
    optimized.append((adversary.discriminator, adversary.optimizer))
iter_num, best, samples = 0, None, {}  # best: --keep_best's; samples: micro-step -> policy samples
train_gen = torch.Generator().manual_seed(seed + rank)  # its state is the data position
if init_from == "resume":  # exactly where the run stopped: optimizer, samples, random states
    iter_num, best, samples = restore_run(checkpoint, rank, rng_states, optimizer, method_state,
                                          train_gen, device_type)
checkpoint = None  # free the memory
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))

raw_model = model  # the plain module: for saving and for generation
if compile:
    print("compiling the model (takes a minute) ...") if master else None
    model = torch.compile(model)
if ddp:
    model = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[local_rank] if device_type == "cuda" else None)
pad_to = block_size if compile else None  # a fixed shape: torch.compile does not recompile


# -----------------------------------------------------------------------------
# the loss of each method: (loss, stats) for a batch whose first n_expert rows are demonstrations
# and the rest (online IQ-Learn, GAIL) the policy's own samples for the same prompts
def with_entropy_bonus(loss_value, stats, logits, mask):
    """loss - entropy_coef * mean entropy of the policy over the loss mask (MLE + entropy)."""
    if not entropy_coef:
        return loss_value, stats
    entropy = mean_entropy(logits, mask)
    stats["entropy_bonus"] = entropy.item()
    return loss_value - entropy_coef * entropy, stats


def offline_loss(batch, n_expert=None, with_policy_stats=False):
    """MLE, offline IQ-Learn (irl_loss.py), DFT, GEM (baseline_losses.py), from all logits or chunk
    by chunk (chunked_head.py, not GEM). Its stats are irl_loss's, so val logs compare methods."""
    mask, done, targets = batch["loss_mask"], batch["done"], batch["targets"]
    with autocast:
        if loss_chunk:  # never all (B, T, vocab) logits
            hidden, head = model(batch["idx"], head=False), raw_model.lm_head.weight
            loss_value, stats = chunked_irl_loss(hidden, head, targets, mask, done, td_coef_used,
                                                 gamma, loss_chunk, dft=loss == "dft")
            if with_policy_stats:  # entropy, accuracy: chunk-wise too
                stats.update(chunked_policy_stats(hidden, head, targets, mask, loss_chunk))
            return loss_value, stats
        logits = model(batch["idx"])
        q, v = q_and_v(logits, targets)
    loss_value, stats = irl_loss(q, v, mask, done, td_coef_used, gamma)
    if loss == "dft":
        loss_value = dft_loss(q, v, mask)
    elif loss == "gem":
        loss_value = gem_loss(logits, targets, mask, gem_beta)
    if with_policy_stats:
        stats.update(policy_stats(logits, targets, mask))
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
    """GAIL (gail.py): policy gradient on the discriminator's reward, MLE, KL; the discriminator's BCE."""
    return adversary.loss(model, batch, n_expert, autocast)


train_loss = gail_loss if loss == "gail" else online_loss if mix_in > 0 else offline_loss


# -----------------------------------------------------------------------------
def get_lr(it):
    """Linear warmup, then cosine decay from learning_rate to min_lr at lr_decay_iters (0: at
    max_iters, read here and not stored, so a resumed run given a new --max_iters decays to it)."""
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
    """The policy's own completions: fresh every step for GAIL, every sample_every for IQ-Learn."""
    if loss == "gail" or iter_num % sample_every == 0 or micro_step not in samples:
        prompts = examples[:max(1, round(sample_fraction * batch_size))]
        samples[micro_step] = sample_examples(raw_model, prompts, tok.eos_id, max_new_tokens)
    return samples[micro_step]


@torch.no_grad()
def evaluate():
    """The offline loss's statistics on the same eval_iters val batches every time, and greedy
    decoding's accuracy (a verifier) or ROUGE-L (only for --keep_best=val/rougeL) on eval_prompts."""
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
        completions = [tok.decode(c) for c in generate(raw_model, prompts, block_size, temperature=0.0,
                                                        eos_id=tok.eos_id)]
        verify = data["verify"]
        scores = [verify(p, c) if verify else rouge_l(c, ref) for (p, ref), c in zip(pairs, completions)]
        result["val/accuracy" if verify else "val/rougeL"] = sum(scores) / len(scores)
    model.train()
    return result


def save_state():
    """All a resumed run needs to go on exactly (checkpoint.restore_run puts it back)."""
    rng, rank_samples = gather_rank_states(train_gen, samples, device_type, ddp, world_size)
    if master:
        save_checkpoint(dict(
            model=raw_model.state_dict(), optimizer=optimizer.state_dict(), model_args=model_args,
            config=config, iter_num=iter_num, tokenizer=tok.state(), samples=rank_samples, best=best,
            rng=rng, **{name: state.state_dict() for name, state in method_state.items()}), ckpt_path)


def save_best(record):
    """--keep_best: out_dir/best.pt when this evaluation beats the best so far (a tie keeps the
    earlier, so a resumed run's repeated evaluation changes nothing); before ckpt.pt records it."""
    global best
    if not keep_best or not beats(keep_best, record[keep_best], best):
        return
    best = dict(metric=keep_best, value=record[keep_best], iter=iter_num)
    record["best"] = True
    if master:
        save_checkpoint(dict(model=raw_model.state_dict(), model_args=model_args, config=config,
                             iter_num=iter_num, tokenizer=tok.state(), best=best), best_path)


# -----------------------------------------------------------------------------
# the training loop
try:  # log.jsonl kept up to the checkpoint's iteration; W&B beside it
    log = RunLog(log_path, iter_num if init_from == "resume" else -1, master, online, world_size)
    if master and wandb_log:
        log.start_wandb(wandb_project, wandb_run_name or os.path.basename(os.path.abspath(out_dir)), config)
except (ValueError, OSError) as err:
    fail(err)
if master:
    print(f"{data['name']}: {len(train_data)} train / {len(val_data)} val examples; model "
          f"{raw_model.get_num_params() / 1e6:.2f}M params; loss={loss} td_coef={td_coef_used} "
          f"gamma={gamma}; device={device} dtype={dtype}")
stop_cleanly(ckpt_path, lambda: iter_num, batch_size, block_size, model_args["vocab_size"],
             chunk_would_fit=not loss_chunk and not online)
while True:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr

    # evaluate, keep the best, save, log
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        with log.paused():
            record = dict(iter=iter_num, lr=lr, **evaluate(), **log.step_times(iter_num))
            stop_if_diverged(record, raw_model, ckpt_path)
            try:  # a full disk: the previous files stay whole
                save_best(record)
                if iter_num > log.start_iter or (iter_num > 0 and init_from != "resume"):
                    save_state()
                log.evaluation(record)
            except ValueError as err:
                fail(err)
    if iter_num >= max_iters:
        break

    # one optimizer step over gradient_accumulation_steps micro-batches
    log_now = iter_num % log_interval == 0
    t_step, finite = time.time(), True
    for micro_step in range(gradient_accumulation_steps):
        rows = torch.randint(len(train_data), (batch_size,), generator=train_gen).tolist()
        examples = [train_data[i] for i in rows]
        if online:
            t_sample = time.time()
            examples = examples + policy_samples(micro_step, examples)
            log.sample_seconds += time.time() - t_sample
        batch = to_device(make_batch(examples, tok.eos_id, pad_to))
        log.tokens += int((batch["targets"] >= 0).sum())
        if ddp:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        loss_value, stats = train_loss(batch, batch_size, with_policy_stats=log_now and micro_step == 0)
        finite = finite and math.isfinite(loss_value.item())
        scaler.scale(loss_value / gradient_accumulation_steps).backward()
    stop_unless_finite(finite, ddp, device, iter_num, ckpt_path)  # before the optimizer step
    for module, module_optimizer in optimized:  # clip, step (the policy, GAIL's discriminator)
        if grad_clip > 0:
            scaler.unscale_(module_optimizer)
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        scaler.step(module_optimizer)
        module_optimizer.zero_grad(set_to_none=True)
    scaler.update()
    iter_num += 1
    log.step_seconds += time.time() - t_step
    if log_now and master:
        log.progress(iter_num, loss_value.item(), stats)

if master:
    if best is not None:
        print(f"best {keep_best} {best['value']:.4f} at iter {best['iter']}: {best_path}")
    print(f"done: {ckpt_path}\nnext: python sample.py --out_dir={out_dir}   "
          f"or   python analyze_reward.py --out_dir={out_dir}")
    log.finish()
if ddp:
    torch.distributed.barrier()  # rank 0 may still be writing: all ranks are done before the end
    torch.distributed.destroy_process_group()
