"""
The checks of a train.py run, so that train.py can read as a tutorial: check_run() before any
work, in this order: flags that contradict each other; out_dir, locked before anything is loaded;
the checkpoint or pretrained model; a resumed run's settings; outputs against inputs; the device
and the processes. check_data() once the data and the model are loaded. Every problem stops the run
with one line, `train.py: error: ...` (runfiles.fail), naming what to change; a run that fails
leaves no lock file, nor an empty out_dir, that it made. Also here: the device every script checks,
and the clean stops of a run (Ctrl-C or SIGTERM, a CUDA out-of-memory error, a loss not finite).
"""
import math
import netrc
import os
import re
import signal
import sys
import urllib.parse

import torch

from checkpoint import BEST_IS_HIGHER, check_config, load_checkpoint, rank_rng
from configurator import same_setting
from dataset import dataset_inputs
from hf_import import GPT2_NAMES, hf_checkpoint, is_hf_model
from runfiles import check_out_dir, check_outputs, fail, lock_out_dir

LOSSES = ("irl", "mle", "dft", "gem", "gail")
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what W&B accepts


def check_device(device):
    """The device to run on: '' = cuda if available, else mps, else cpu; a name (cpu, cuda,
    cuda:N, mps) must exist here. ValueError with one line otherwise."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", device):
        raise ValueError(f"--device={device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device={device} but no CUDA GPU is visible; use --device=cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(f"--device={device} but only cuda:0 to cuda:{torch.cuda.device_count() - 1} "
                         f"are visible")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device=mps but no Apple GPU (MPS) is available; use --device=cpu")
    return device


def check_flags(c):
    """Flags that contradict each other, which would otherwise fail late and obscurely."""
    init_from = c["init_from"]
    from_hf = init_from in GPT2_NAMES or is_hf_model(init_from)
    if c["loss"] not in LOSSES:
        fail(f"--loss={c['loss']!r} is not a loss; use irl, mle, dft, gem or gail")
    if c["mix_in"] > 0 and c["loss"] != "irl":
        fail(f"--mix_in={c['mix_in']} is online IQ-Learn's weight: it needs --loss=irl")
    if c["loss"] == "gail" and init_from == "scratch":
        fail("--loss=gail fine-tunes a trained policy; pass --init_from=path/to/mle/ckpt.pt (or resume)")
    if c["loss_chunk"] and (c["loss"] == "gail" or c["mix_in"] > 0):
        fail("--loss_chunk fuses the offline loss only; online IQ-Learn and GAIL need --loss_chunk=0")
    if c["loss_chunk"] and (c["entropy_coef"] or c["loss"] == "gem"):
        fail(f"{'--loss=gem' if c['loss'] == 'gem' else '--entropy_coef'} needs the full logits; "
             f"use --loss_chunk=0 with it")
    if c["entropy_coef"] and c["loss"] == "gail":
        fail(f"--entropy_coef={c['entropy_coef']} does not act on --loss=gail (its policy gradient "
             f"has its own MLE and KL terms); drop it")
    if c["keep_best"] and c["keep_best"] not in BEST_IS_HIGHER:
        fail(f"--keep_best={c['keep_best']!r}: use {', '.join(BEST_IS_HIGHER)} (or '' for no best.pt)")
    if c["n_embd"] % c["n_head"]:
        fail(f"--n_embd={c['n_embd']} must be a multiple of --n_head={c['n_head']}")
    if init_from not in ("scratch", "resume") and not init_from.endswith(".pt") and not from_hf:
        missing = "" if os.path.exists(init_from) else "no such file or folder; "
        fail(f"--init_from={init_from!r}: {missing}use scratch, resume, a path ending in .pt, "
             f"gpt2[-medium|-large|-xl] or a Hugging Face model: a folder with config.json, or a hub "
             f"name like HuggingFaceTB/SmolLM2-135M")
    if c["chat_template"] and not from_hf and init_from != "resume":
        fail("--chat_template=True formats prompts with a pretrained model's template: pass "
             "--init_from=a Hugging Face model that has one")
    return from_hf


def resumed_config(config, given, settings, checkpoint, may_change):
    """A resumed run's settings: every one as saved, unless passed again and one of may_change;
    where the run is and how it starts, as passed."""
    changed = []
    for key, value in checkpoint["config"].items():
        if key not in settings or key in ("out_dir", "init_from"):
            continue
        if key in given and not same_setting(config[key], value):
            if key not in may_change:
                fail(f"--{key}={config[key]} but the run in {config['out_dir']} has {key}={value}; drop "
                     f"--{key} (a resumed run keeps its settings) or train into a new --out_dir")
            changed.append(f"{key} {value!r} -> {config[key]!r}")
        else:
            config[key] = value
    return changed


def check_run(config, given, settings, may_change):
    """Every check before the process group, in order. Returns dict(config, checkpoint, rng_states,
    device, dtype): the settings to run with (a resumed run's own: config is updated), the checkpoint
    or pretrained model to start from (None from scratch), this process's saved random states (a
    resumed run), and the device and dtype that '' chose."""
    out_dir, init_from = config["out_dir"], config["init_from"]
    master = int(os.environ.get("RANK", 0)) == 0  # the process that locks, logs and saves
    ckpt_path = os.path.join(out_dir, "ckpt.pt")

    # flags first, then out_dir, locked before anything is loaded: a second process stops at once.
    # Under torchrun rank 0, which saves, holds the lock; should it stop, torchrun stops the others.
    from_hf = check_flags(config)
    if init_from != "resume" and os.path.exists(ckpt_path):
        fail(f"{out_dir} already holds a run (its ckpt.pt); continue it with --init_from=resume, "
             f"or train into a new --out_dir")
    try:
        check_out_dir(out_dir)  # a run that cannot save stops now
        if master:
            lock_out_dir(out_dir, undo_on_fail=True)  # a run that fails leaves no lock it made
    except (ValueError, OSError) as err:
        fail(err)
    if config["wandb_log"] and master:
        check_wandb()

    # the checkpoint to start from, and a resumed run's settings
    checkpoint = None
    try:
        if from_hf:  # the model's weights and its own tokenizer (GPT-2's BPE for GPT-2)
            checkpoint = hf_checkpoint(init_from, config["chat_template"])
        elif init_from == "resume":
            checkpoint = load_checkpoint(ckpt_path, for_resume=True)
            check_config(checkpoint["config"], ckpt_path, settings)
        elif init_from != "scratch":
            checkpoint = load_checkpoint(init_from)
    except ValueError as err:
        fail(err)
    if init_from == "resume":
        changed = resumed_config(config, given, settings, checkpoint, may_change)
        if master:
            print(f"resume: {ckpt_path} at iter {checkpoint['iter_num']}, "
                  + (f"its settings but {', '.join(changed)} (passed)" if changed
                     else "every setting as saved"))
        if checkpoint.get("best") is not None:
            checkpoint["best"] = check_best(checkpoint["best"], os.path.join(out_dir, "best.pt"), master)
    c = config
    try:  # no output replaces what the run reads
        check_outputs([(f"--out_dir={out_dir}'s {name}", os.path.join(out_dir, name),
                        "train into another --out_dir") for name in ("ckpt.pt", "log.jsonl", "best.pt")],
                      dataset_inputs(c["dataset"], f"--dataset={c['dataset']}")
                      + ([(f"--init_from={init_from}", init_from)] if init_from.endswith(".pt") else []))
    except ValueError as err:
        fail(err)
    check_flags(config)  # again: a resumed run's own settings

    # the device and the processes
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp and c["loss"] == "gail":
        fail("--loss=gail runs in one process (its discriminator is not wrapped in DDP); run python "
             "train.py")
    try:
        device = check_device(c["device"])
    except ValueError as err:
        fail(err)
    device_type = "cuda" if device.startswith("cuda") else device.split(":")[0]
    dtype = c["dtype"] or (("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
                           if device_type == "cuda" else "float32")
    if dtype not in ("float32", "bfloat16", "float16") or (dtype == "float16" and device_type != "cuda"):
        fail(f"--dtype={dtype!r}: use float32, bfloat16, or float16 (CUDA only)")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if c["gradient_accumulation_steps"] % world_size:  # every rank meets it alike: rank 0 says it
        sys.exit(0 if rank else f"train.py: error: --gradient_accumulation_steps="
                 f"{c['gradient_accumulation_steps']} counts micro-batches over all {world_size} "
                 f"processes; pass a multiple of {world_size}, e.g. --gradient_accumulation_steps="
                 f"{world_size}")
    rng_states = None
    if init_from == "resume":
        try:
            rng_states = rank_rng(checkpoint["rng"], rank, world_size, ckpt_path)
        except ValueError as err:
            sys.exit(0 if rank else f"train.py: error: {err}")
    return dict(config=config, checkpoint=checkpoint, rng_states=rng_states, device=device, dtype=dtype)


def check_wandb():
    """--wandb_log=True: Weights & Biases installed, WANDB_MODE one it knows, and a login where it
    logs online (WANDB_API_KEY, or the host's entry in ~/.netrc that `wandb login` writes)."""
    try:
        import wandb  # noqa: F401 (imported only when asked for, by the process that logs)
    except ImportError:
        fail("--wandb_log=True needs Weights & Biases, which is not installed: pip install wandb")
    mode = os.environ.get("WANDB_MODE") or "online"
    if mode not in WANDB_MODES:
        fail(f"WANDB_MODE={mode!r} is not a mode of W&B; use online, offline or disabled")
    if mode in ("online", "run", "shared") and not os.environ.get("WANDB_API_KEY"):
        host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
        try:
            login = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            login = None
        if not login:
            fail(f"--wandb_log=True logs online, but W&B has no login here (no WANDB_API_KEY, no {host} "
                 f"in ~/.netrc): run `wandb login`, or set WANDB_MODE=offline")


def check_best(best, best_path, master):
    """A resumed run's best.pt must hold the state its checkpoint records as the best (best['iter']).
    If it is missing, unreadable or another state, --keep_best starts again (the next evaluation
    writes best.pt), and the run says so. Returns the best to go on from."""
    try:
        saved = load_checkpoint(best_path)
        problem = "" if saved.get("best") == best else f"holds iter {saved.get('iter_num')}"
    except ValueError as err:
        problem = str(err).split(";")[0]
    if not problem:
        return best
    if master:
        print(f"resume: {best_path} should hold the best evaluation, {best['metric']} {best['value']:.4f} "
              f"at iter {best['iter']}, but {problem}; --keep_best starts again from the next "
              f"evaluation, which writes it")
    return None


def check_shape_flags(config, settings, checkpoint):
    """A checkpoint keeps its shape: a shape flag passed with another value is an error."""
    for key in ("n_layer", "n_head", "n_embd", "bias"):
        if config[key] != settings[key] and config[key] != checkpoint["model_args"].get(key):
            raise ValueError(f"--{key}={config[key]} but the checkpoint's model has {key}="
                             f"{checkpoint['model_args'].get(key)}; drop --{key} (a checkpoint keeps "
                             f"its shape)")


def check_data(c, data, train_data, val_data, vocab_size, train_cuts, block_size, master):
    """What the loaded data and model must give the run: examples, a score for --keep_best, ids;
    and a note of the train examples the window cut."""
    verify, prompts = data["verify"], c["eval_prompts"]
    if not train_data or not val_data:
        fail(f"dataset {c['dataset']} has an empty train or val split; give it examples")
    if c["keep_best"] == "val/accuracy" and (verify is None or prompts == 0):
        fail(f"--keep_best=val/accuracy needs greedy accuracy at each evaluation: "
             f"{'--eval_prompts > 0' if verify else 'a task with a verifier'}; or use --keep_best=val/nll")
    if c["keep_best"] == "val/rougeL" and (verify is not None or prompts == 0):
        fail(f"--keep_best=val/rougeL needs greedy ROUGE-L at each evaluation: "
             f"{'--eval_prompts > 0' if verify is None else 'a text task (this one has a verifier)'}; "
             f"or use --keep_best=val/{'nll' if verify is None else 'accuracy'}")
    if master and (train_cuts["prompt_cut"] or train_cuts["completion_cut"]):
        print(f"block_size={block_size}: cut the prompt of {train_cuts['prompt_cut']} and truncated "
              f"the completion of {train_cuts['completion_cut']} of {len(train_data)} train examples")
    if vocab_size < data["tokenizer"].vocab_size:
        fail(f"the model has {vocab_size} token ids but the tokenizer needs "
             f"{data['tokenizer'].vocab_size}; use the checkpoint's tokenizer (--tokenizer)")


def stop_cleanly(ckpt_path, current_iter, batch_size, block_size, vocab_size, chunk_would_fit):
    """Ctrl-C or SIGTERM, and a CUDA out-of-memory error: one line each instead of a traceback."""
    def interrupted(*_):  # ckpt.pt is renamed into place whole: the last complete one stays
        saved = os.path.exists(ckpt_path) and torch.load(ckpt_path, weights_only=True,
                                                         mmap=True)["iter_num"]
        fail(f"interrupted at iter {current_iter()}; " + (
            f"{ckpt_path} holds iter {saved}: continue with --init_from=resume" if saved
            else "no checkpoint was saved yet"))

    def out_of_memory(kind, err, traceback):  # the (B, T, V) logits are what does not fit, mostly
        if not issubclass(kind, torch.OutOfMemoryError):
            return sys.__excepthook__(kind, err, traceback)
        b, t = batch_size, block_size
        logits_gib = b * t * vocab_size * 4 / 2**30
        fix = (f"pass --loss_chunk=1024: the head and the loss then run 1024 positions at a time, "
               f"where the logits of a micro-batch ({b} x {t} x {vocab_size}) take {logits_gib:.1f} "
               f"GiB in float32, and their gradient as much; or "
               if chunk_would_fit else "")
        print(f"train.py: error: CUDA out of memory ({str(err).splitlines()[0][:100]}); {fix}lower "
              f"--batch_size (with a larger --gradient_accumulation_steps to keep the batch) or "
              f"--block_size", file=sys.stderr)

    sys.excepthook = out_of_memory
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted)


def stop_if_diverged(record, model, ckpt_path):
    """An evaluation whose loss or weights are not finite ends the run; ckpt.pt stays as it was."""
    if not (math.isfinite(record["val/loss"]) and all(p.isfinite().all() for p in model.parameters())):
        fail(f"the run diverged by iter {record['iter']} (val loss {record['val/loss']}); stopped, "
             f"{ckpt_path} keeps the last good state; lower --learning_rate, then --init_from=resume")


def stop_unless_finite(finite, ddp, device, iter_num, ckpt_path):
    """A step whose loss is not finite ends the run before the optimizer step, on every rank
    together: one that stopped alone would leave the others waiting for it."""
    if ddp:
        flag = torch.tensor(float(not finite), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        finite = flag.item() == 0
    if not finite:
        fail(f"the loss is not finite at iter {iter_num}; stopped, {ckpt_path} keeps the last good "
             f"state; lower --learning_rate, then --init_from=resume")
