"""
Checkpoints: written atomically, read safely and checked field by field, turned back into a model
and its tokenizer, or made from a pretrained model's (hf_checkpoint: OpenAI's GPT-2, or a Hugging
Face model of the Llama family with its own tokenizer); and the other files the scripts write
(logs, samples, results): write_atomically(), save_figure(), and check_out_dir() /
check_output_path() / check_outputs() / lock_out_dir() for where they go.

A train.py checkpoint is a dict: model (state dict), optimizer, model_args, config, iter_num,
tokenizer (tokenizer.py state), rng, samples (online IQ-Learn, GAIL) and gail (GAIL's models). A
nanoGPT ckpt.pt has the same model, model_args and optimizer keys but no tokenizer. Loading uses weights_only=True: a downloaded
file cannot run code. Every field the scripts read is checked when it is loaded, so that a bad
file stops with one line naming the file and the field, not a traceback later.

Every file is written to a temporary file in the same folder, with a name no other process
shares (tempfile.mkstemp, with the writer's pid in it), fsynced, then renamed over the old one: a
crash, Ctrl-C, SIGTERM or a full disk leaves either the old file or the new one, whole, and no
temporary file behind. Only SIGKILL (or a power cut) can leave one: the next write into that
folder, or the next lock of it, removes the temporaries of processes that no longer run.
"""
import errno
import fcntl
import math
import os
import re
import stat
import tempfile

import torch

from configurator import SEED_RANGE, check_settings, read_json, same_path

# what --keep_best can track into best.pt, and whether higher is better (train.py keeps it, experiment.py reads it)
BEST_IS_HIGHER = {"val/accuracy": True, "val/rougeL": True, "val/nll": False, "val/loss": False}
from model import GPT, GPTConfig, strip_compile_prefix
from tokenizer import check_tokenizer_state, pretrained_tokenizer_state, tokenizer_from_state

LOCK_FILE = "run.lock"  # in an out_dir: held (flock) by the process that trains into it
RUN_FILES = ("ckpt.pt", "best.pt", "log.jsonl")  # what train.py writes into its out_dir
UMASK = os.umask(0o022)  # mkstemp makes files only the owner can read; renamed files get the usual mode
os.umask(UMASK)
held_locks = []  # the open lock files: a lock lasts as long as the process (the kernel drops it at exit)
TEMPORARY = re.compile(r"\..+\.pid(\d+)\.\w{8}\.tmp")  # .ckpt.pt.pid4242.k3j_x9a2.tmp (.gitignore: *.tmp)


def pid_runs(pid):
    """Whether a process with this pid runs (on this machine)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid at all): not ours to judge
    return True


def remove_stale_temporaries(folder):
    """Remove the temporary files in folder that a killed process (SIGKILL) left: those whose pid no
    longer runs. A live writer's are kept, whoever it is."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = TEMPORARY.fullmatch(name)
        if match and not pid_runs(int(match.group(1))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def replace_atomically(path, write):
    """write(tmp_path) a temporary file next to path, fsync it, rename it to path. ValueError with
    one line when the write fails (a full disk, a read-only folder); path is then untouched."""
    folder = os.path.dirname(path) or "."
    remove_stale_temporaries(folder)
    try:
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.pid{os.getpid()}.",
                                        suffix=".tmp")
    except OSError as err:
        raise ValueError(f"cannot write {path} ({err.strerror})") from None
    try:
        os.close(fd)
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    except BaseException as err:  # an error, a full disk, Ctrl-C: no temporary file stays behind
        try:
            os.remove(tmp_path)
        except OSError:
            pass
        if isinstance(err, (OSError, RuntimeError)):  # torch.save reports a failed write as a RuntimeError
            message = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            kept = "the previous file is kept" if os.path.exists(path) else "nothing was written"
            raise ValueError(f"cannot write {path} ({message}); {kept}") from None
        raise


def write_atomically(path, text):
    """Write a text file (a log, results) through a temporary file and a rename: never half a file."""
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write(text)
    replace_atomically(path, write)


def save_figure(fig, path, **savefig_args):
    """A matplotlib figure saved the same way: a temporary file, then a rename."""
    image_format = os.path.splitext(path)[1][1:] or None  # from the name (.png): the temporary's ends in .tmp
    replace_atomically(path, lambda tmp_path: fig.savefig(tmp_path, format=image_format, **savefig_args))


def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a ckpt.pt."""
    replace_atomically(path, lambda tmp_path: torch.save(checkpoint, tmp_path))


def check_out_dir(folder, flag="out_dir"):
    """ValueError with one line unless folder exists as a writable folder or can be made: checked
    before any data or model is loaded, and without creating anything."""
    if not folder:
        raise ValueError(f"--{flag}='' names no folder; give one, e.g. --{flag}=out")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # the nearest folder that exists is where the rest is made
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--{flag}={folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--{flag}={folder}: {existing} is read-only; give a folder you can write")


def check_output_path(path, flag="out_file"):
    """check_out_dir() for the folder of an output file, and the file must not be a folder."""
    if os.path.isdir(path):
        raise ValueError(f"--{flag}={path} is a folder; give a file name")
    check_out_dir(os.path.dirname(path) or ".", flag)


def check_outputs(outputs, inputs):
    """ValueError with one line if an output would replace an input or an earlier output: writing
    it would destroy that file. outputs: [(what, path, fix)], inputs: [(what, path)], what naming
    the file and its flag. Paths are compared as the files they reach (configurator.same_path: symbolic
    links, '..' and hard links resolved), before any work is done."""
    for i, (what, path, fix) in enumerate(outputs):
        for other, other_path in inputs + [output[:2] for output in outputs[:i]]:
            if same_path(path, other_path):
                raise ValueError(f"{what} is {other}, which writing it would destroy; {fix}")


def run_inputs(ckpt_path, flag):
    """check_outputs()'s inputs for a checkpoint: the file, and the files train.py wrote beside it."""
    folder = os.path.dirname(ckpt_path) or "."
    return [(f"the checkpoint of {flag}", ckpt_path)] + [
        (f"the {name} of {flag}'s run", os.path.join(folder, name)) for name in RUN_FILES]


def lock_out_dir(folder):
    """Make folder and lock it for this process (flock on folder/LOCK_FILE, held until the process
    ends, a kill included: the kernel drops the lock, so it is never stale), then remove the
    temporary files that killed writers left in it. A second process on the same folder gets
    ValueError at once. The lock file is only ever a file of its own: one that is a symbolic link,
    not a regular file, has another name (a hard link) or holds more than a pid is refused, never
    written."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    foreign = f"{path} is not a lock file of these scripts ({{}}); move it away, or use another folder"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        raise ValueError(foreign.format("a symbolic link" if err.errno == errno.ELOOP else err.strerror)) from None
    info = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link" if info.st_nlink != 1
               else "" if info.st_size <= 32 and re.fullmatch(rb"(\d+\n)?", os.pread(fd, 32, 0))  # empty, or a pid
               else "it holds more than a pid")
    if problem:
        os.close(fd)
        raise ValueError(foreign.format(problem))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode().strip()
        os.close(fd)
        raise ValueError(f"{folder} is in use by another process{f' (pid {owner})' if owner else ''}; "
                         f"wait for it to finish, or use another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message above
    held_locks.append(fd)
    remove_stale_temporaries(folder)
    return fd


MODEL_ARGS = dict(n_layer=int, n_head=int, n_embd=int, block_size=int, vocab_size=int, bias=bool)  # required
RESUME_FIELDS = dict(optimizer=dict, config=dict, iter_num=int, rng=dict)
TRAIN_RANGES = {  # train.py's flags: (lowest, highest) allowed, None = no bound; a checkpoint's config too
    **{k: (0, 1) for k in ("gamma", "mix_in", "sample_fraction")},
    "gem_beta": (0.01, 1),
    **{k: (0, 0.99) for k in ("dropout", "beta1", "beta2")},
    **{k: (0, None) for k in ("td_coef", "entropy_coef", "learning_rate", "min_lr", "weight_decay", "grad_clip",
                              "mle_weight", "kl_coef", "disc_learning_rate", "warmup_iters", "lr_decay_iters",
                              "eval_prompts", "loss_chunk")},
    **{k: (1, None) for k in ("batch_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd",
                              "sample_every", "max_new_tokens", "disc_n_layer", "eval_interval", "eval_iters",
                              "log_interval", "max_iters")},  # max_iters=0 would train nothing and save nothing
    "block_size": (2, None),  # a prompt token and a completion token: the fewest a row can learn from
    "seed": SEED_RANGE,
}
# of a checkpoint's config, what sample.py and analyze_reward.py read (and GAIL's state needs), of its default's type
READ_SETTINGS = dict(dataset="", loss="", tokenizer="", gamma=1.0, td_coef=0.0, disc_n_layer=1)


def load_checkpoint(path, for_resume=False):
    """The checkpoint dict at path, every field the scripts read checked: ValueError with one line
    naming the file and the field otherwise. for_resume: also what --init_from=resume reads (the
    optimizer, config, iter_num, rng and, for GAIL, its models)."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; train one with train.py or fix the path")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ValueError(f"cannot read checkpoint {path}: it is {'empty' if os.path.isfile(path) else 'not a file'}; "
                         f"it must be a ckpt.pt written by train.py or nanoGPT")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:120]  # torch's are paragraphs long
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {first}); "
                         f"it must be a ckpt.pt written by train.py or nanoGPT") from None
    check_checkpoint(checkpoint, path, for_resume)
    checkpoint["model"] = strip_compile_prefix(checkpoint["model"])
    return checkpoint


def check_checkpoint(checkpoint, path, for_resume=False):
    """ValueError naming path and the first field of checkpoint that is missing or wrong."""
    def bad(field, problem):
        raise ValueError(f"checkpoint {path}: {field} {problem}; it must be a ckpt.pt written by train.py or nanoGPT")

    def kind_of(value):
        return type(value).__name__
    if not isinstance(checkpoint, dict):
        bad("the file", f"holds a {kind_of(checkpoint)}, not a checkpoint dict")
    for field in ("model", "model_args") + (tuple(RESUME_FIELDS) if for_resume else ()):
        if field not in checkpoint:
            bad(field, "is missing")
        if field in RESUME_FIELDS and not isinstance(checkpoint[field], RESUME_FIELDS[field]):
            bad(field, f"is a {kind_of(checkpoint[field])}")
    args = checkpoint["model_args"]
    if not isinstance(args, dict):
        bad("model_args", f"is a {kind_of(args)}, not a dict")
    for key, kind in MODEL_ARGS.items():
        value = args.get(key)
        if key not in args or not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
            bad(f"model_args[{key!r}]", f"is {value!r}, not {'a whole number >= 1' if kind is int else 'True or False'}")
    if args["n_embd"] % args["n_head"]:
        bad("model_args", f"has n_embd={args['n_embd']}, not a multiple of n_head={args['n_head']}")
    if not isinstance(args.get("dropout", 0.0), (int, float)) or not 0 <= args.get("dropout", 0.0) < 1:
        bad("model_args['dropout']", f"is {args['dropout']!r}, not a number in [0, 1)")
    if args.get("gelu_approximate", "none") not in ("none", "tanh"):
        bad("model_args['gelu_approximate']", f"is {args['gelu_approximate']!r}, not 'none' or 'tanh'")
    check_llama_args(args, bad)
    model = meta_model(args)
    check_weights(checkpoint["model"], shapes(model), path, "model")
    if "tokenizer" in checkpoint:
        try:
            vocab_size = check_tokenizer_state(checkpoint["tokenizer"])
        except ValueError as err:
            bad("tokenizer", f"is not a tokenizer state ({err})")
        if vocab_size > args["vocab_size"]:
            bad("tokenizer", f"has {vocab_size} tokens, more than model_args['vocab_size']={args['vocab_size']}")
    config = checkpoint.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        bad("config", f"is a {kind_of(config)}, not a dict of settings")
    check_config(config, path)
    iter_num = checkpoint.get("iter_num", 0)
    if not isinstance(iter_num, int) or isinstance(iter_num, bool) or iter_num < 0:
        bad("iter_num", f"is {iter_num!r}, not a whole number >= 0")
    if not for_resume:
        return
    check_optimizer(checkpoint["optimizer"], model, "optimizer", bad)
    rng, size = checkpoint["rng"], torch.get_rng_state().numel()
    if not isinstance(rng.get("data"), list) or not rng["data"]:
        bad("rng['data']", "is not a list of data generator states")
    states = [("rng['torch']", rng.get("torch"))] + [(f"rng['data'][{i}]", s) for i, s in enumerate(rng["data"])]
    for field, state in states:  # what torch.set_rng_state and Generator.set_state accept
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.numel() != size:
            bad(field, f"is not a random generator state ({size} bytes)")
    if rng.get("cuda") is not None and (not isinstance(rng["cuda"], torch.Tensor) or rng["cuda"].dtype != torch.uint8):
        bad("rng['cuda']", "is not a CUDA random generator state")
    if not isinstance(checkpoint.get("samples", []), list):
        bad("samples", f"is a {kind_of(checkpoint['samples'])}, not a list")
    if config.get("loss") == "gail":
        parts = checkpoint.get("gail")
        if not isinstance(parts, dict) or not all(isinstance(parts.get(k), dict) for k in
                                                  ("discriminator", "disc_optimizer", "reference")):
            bad("gail", "is missing or lacks discriminator, disc_optimizer or reference")
        check_weights(parts["reference"], shapes(model), path, "gail['reference']")
        if "disc_n_layer" not in config:
            bad("config", "lacks disc_n_layer, the depth of GAIL's discriminator")
        discriminator = meta_model(dict(args, n_layer=config["disc_n_layer"]))  # gail.make_models' shape
        check_weights(parts["discriminator"], shapes(discriminator), path, "gail['discriminator']")
        check_optimizer(parts["disc_optimizer"], discriminator, "gail['disc_optimizer']", bad)


def check_config(config, path, settings=READ_SETTINGS):
    """A checkpoint's config checked as train.py's flags are (type and range), each of settings
    ({name: default}: train.py's own for a resumed run) it holds; ValueError naming path and the field."""
    try:
        check_settings(config, settings, TRAIN_RANGES, "config[{!r}]")
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}; it must be a ckpt.pt written by train.py or nanoGPT") from None


def rank_rng(rng, rank, world_size, path):
    """The random states rank of a resumed run restores: (torch, cuda, data), from a checkpoint's rng
    (checked by check_checkpoint). Every process of a DDP run saves its own (rng['ranks'], rank 0's
    also as rng['torch'] and rng['cuda']), so each continues its dropout masks, policy samples and
    batches exactly. ValueError for a number of processes other than the saved one: their streams
    cannot be split or merged into others that an uninterrupted run would have drawn."""
    saved = len(rng["data"])
    if saved != world_size:
        how = f"torchrun --nproc_per_node={saved} train.py" if saved > 1 else "python train.py"
        raise ValueError(f"{path} was saved by a run of {saved} process{'es' * (saved > 1)} and this one has "
                         f"{world_size}; resume it with {how}, or start a new run from it (another --out_dir, "
                         f"--init_from={path})")
    ranks = rng.get("ranks", [rng] if saved == 1 else None)
    def is_state(state, size=None):  # what torch.set_rng_state (torch.cuda's) accepts
        return isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and size in (None, state.numel())
    if not (isinstance(ranks, list) and len(ranks) == saved and all(
            isinstance(r, dict) and is_state(r.get("torch"), torch.get_rng_state().numel())
            and (r.get("cuda") is None or is_state(r["cuda"])) for r in ranks)):
        raise ValueError(f"checkpoint {path}: rng['ranks'] is not one random generator state per process; "
                         f"it must be a ckpt.pt written by train.py")
    return ranks[rank]["torch"], ranks[rank].get("cuda"), rng["data"][rank]


LLAMA_ARGS = dict(llama=bool, tie_weights=bool, qkv_bias=bool, qk_norm=bool, n_kv_head=int, head_dim=int,
                  mlp_hidden=int, norm_eps=float, rope_theta=float)  # optional: absent, they are GPT-2's
ROPE_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_llama_args(args, bad):
    """The model_args of the Llama family (model.py's GPTConfig) where present: bad(field, problem) otherwise."""
    wanted = {bool: "True or False", int: "a whole number >= 0", float: "a number > 0"}
    for key, kind in LLAMA_ARGS.items():
        value = args.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = (isinstance(value, bool) if kind is bool else number and isinstance(value, int) and value >= 0
                if kind is int else number and value > 0)
        if key in args and not fits:
            bad(f"model_args[{key!r}]", f"is {value!r}, not {wanted[kind]}")
    scaling = args.get("rope_scaling")
    if scaling is not None and not (isinstance(scaling, dict) and all(
            isinstance(scaling.get(k), (int, float)) and scaling[k] > 0 for k in ROPE_SCALING)):
        bad("model_args['rope_scaling']", f"is {scaling!r:.80}, not None or a dict of {', '.join(ROPE_SCALING)}")
    if args["n_head"] % (args.get("n_kv_head") or args["n_head"]):
        bad("model_args", f"has n_head={args['n_head']}, not a multiple of n_kv_head={args['n_kv_head']}")


def meta_model(model_args):
    """The GPT model_args describe, on the meta device: its shapes without its memory."""
    with torch.device("meta"):
        return GPT(GPTConfig(**{k: model_args[k] for k in GPTConfig.__dataclass_fields__ if k in model_args}))


def shapes(model):
    """{name: shape} of a model's weights."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_fits(model_args, device):
    """ValueError, before any memory is taken, when training the model of model_args cannot fit in the
    memory of device (a CUDA GPU's own, else the machine's RAM, which an Apple GPU shares): in float32
    its weights, their gradients and AdamW's two moments take 16 bytes a parameter, activations aside."""
    n = sum(p.numel() for p in meta_model(model_args).parameters())
    have = torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else \
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 16 * n > have:
        raise ValueError(f"the model has {n / 1e9:.1f}B parameters: training it needs {16 * n / 1e9:.0f} GB (weights, "
                         f"gradients and AdamW's moments in float32), more than the {have / 1e9:.0f} GB of {device}; "
                         f"lower --n_embd or --n_layer")


def check_weights(state_dict, expected, path, field):
    """ValueError unless state_dict has exactly the expected {name: shape} floating-point, finite tensors."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"checkpoint {path}: {field} is a {type(state_dict).__name__}, not a state dict")
    state_dict = strip_compile_prefix(state_dict)
    missing, extra = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint weights do not fit its model_args ({path}: {field} "
                         + (f"lacks {missing[0]})" if missing else f"has an unexpected {extra[0]})"))
    for name, tensor in state_dict.items():
        problem = ("is not a tensor" if not isinstance(tensor, torch.Tensor) else
                   f"has dtype {tensor.dtype}, not floating point" if not tensor.is_floating_point() else
                   f"has shape {tuple(tensor.shape)}, model_args make {expected[name]}"
                   if tuple(tensor.shape) != expected[name] else
                   "has NaN or infinite values" if not torch.isfinite(tensor).all() else "")
        if problem:
            raise ValueError(f"checkpoint weights do not fit its model_args ({path}: {field}[{name!r}] {problem})")


def check_optimizer(state, model, field, bad):
    """The AdamW state dict that model.configure_optimizers' optimizer would load: its groups hold
    the model's parameters, in order, and each moment has its parameter's shape."""
    reference = model.configure_optimizers(0.0, 1.0, (0.9, 0.9), "cpu")
    param_shapes = [tuple(p.shape) for group in reference.param_groups for p in group["params"]]
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), dict) or \
            [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups] != \
            [len(g["params"]) for g in reference.param_groups]:
        bad(field, "does not hold the optimizer state of this model's parameters")
    for i, (group, default) in enumerate(zip(groups, reference.param_groups)):  # lr, betas, eps, ...
        for key in default.keys() - {"params"}:
            if key in group and not like_adamw(group[key], default[key]):
                bad(f"{field}['param_groups'][{i}][{key!r}]",
                    f"is {group[key]!r:.40}, not like AdamW's {default[key]!r}")
    for index, moments in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(param_shapes) or not isinstance(moments, dict):
            bad(field, f"has state for a parameter {index!r} the model does not have")
        for name, tensor in moments.items():
            if not isinstance(tensor, torch.Tensor) or (name != "step" and tuple(tensor.shape) != param_shapes[index]):
                bad(f"{field}['state'][{index}][{name!r}]",
                    f"does not fit parameter {index} of shape {param_shapes[index]}")
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad(f"{field}['state'][{index}][{name!r}]", "has NaN or infinite values")


def like_adamw(value, default):
    """Is value a setting of the kind of AdamW's default: a number >= 0, a tuple of them, a bool or None?"""
    if isinstance(default, (bool, type(None))):
        return isinstance(value, (bool, type(None)))
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and all(map(like_adamw, value, default))
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def model_from_checkpoint(checkpoint, dropout=None):
    """The GPT a checkpoint describes, with its weights (dropout may be overridden)."""
    model_args = dict(checkpoint["model_args"])
    if dropout is not None:
        model_args["dropout"] = dropout
    model = GPT(GPTConfig(**{k: model_args[k] for k in GPTConfig.__dataclass_fields__ if k in model_args}))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit its model_args: {str(err).splitlines()[0]}") from None
    return model


def tokenizer_of(checkpoint, fallback=""):
    """The checkpoint's tokenizer; a nanoGPT checkpoint has none, so fallback ('gpt2') must say.
    A fallback that contradicts the checkpoint's own tokenizer is an error, not silently ignored."""
    if "tokenizer" in checkpoint:
        kind = checkpoint["tokenizer"].get("kind")
        if fallback and fallback != kind:
            raise ValueError(f"the checkpoint was trained with the {kind} tokenizer, not {fallback}; "
                             f"drop --tokenizer={fallback}")
        return tokenizer_from_state(checkpoint["tokenizer"])
    if fallback == "gpt2":
        return tokenizer_from_state({"kind": "gpt2"})
    raise ValueError("the checkpoint has no tokenizer (a nanoGPT checkpoint?); if it was trained on "
                     "GPT-2 BPE pass --tokenizer=gpt2")


GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # 124M, 350M, 774M, 1558M parameters


def gpt2_checkpoint(name_or_dir):
    """OpenAI's GPT-2 weights, read by Hugging Face transformers, as a checkpoint of this
    repository: dict(model=state_dict, model_args=...), which model_from_checkpoint turns into a
    GPT. name_or_dir is one of GPT2_NAMES (downloaded once, then cached by
    transformers) or a folder that save_pretrained wrote (config.json and the weights). Raises
    ValueError naming the fix when transformers is missing or the model is not a plain GPT-2."""
    try:
        from transformers import GPT2LMHeadModel  # imported lazily: only fine-tuning GPT-2 needs it
    except ImportError:
        raise ValueError(f"loading {name_or_dir} needs Hugging Face transformers: pip install transformers") from None
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
    except Exception as err:  # no such folder, no network for a download, not a GPT-2 ...
        raise ValueError(f"cannot load GPT-2 from {name_or_dir!r} ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    cfg = hf_model.config
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(cfg.activation_function)
    if (gelu is None or cfg.n_inner not in (None, 4 * cfg.n_embd) or cfg.layer_norm_epsilon != 1e-5
            or not getattr(cfg, "scale_attn_weights", True) or getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            or getattr(cfg, "reorder_and_upcast_attn", False) or not getattr(cfg, "tie_word_embeddings", True)):
        raise ValueError(f"{name_or_dir} is a GPT-2 variant this GPT does not implement (activation, "
                         f"n_inner, layer_norm_epsilon, attention scaling or untied head differ from GPT-2's)")
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.n_positions,
                      bias=True, vocab_size=cfg.vocab_size, dropout=0.0, gelu_approximate=gelu)
    # the names are nanoGPT's already; transformers keeps these four as Conv1D, weight (in, out),
    # where nn.Linear's is (out, in); its causal-mask buffers (attn.bias, attn.masked_bias) are not weights
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {k: (v.t() if k.endswith(transposed) else v).float() for k, v in hf_model.state_dict().items()
             if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    return dict(model=state, model_args=model_args)


# Today's open models: the Llama family, read from a Hugging Face folder (config.json, *.safetensors,
# tokenizer.json) into model.py's GPT with config.llama set. SmolLM2 is a LlamaForCausalLM.
HF_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
# our name in a block -> the Hugging Face names it is made of: c_attn holds q, k, v and c_fc holds gate, up
# one after the other, so that each is one matmul, as in GPT-2
HF_BLOCK_NAMES = {"ln_1": ["input_layernorm"], "ln_2": ["post_attention_layernorm"],
                  "attn.c_attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  "attn.c_proj": ["self_attn.o_proj"], "attn.q_norm": ["self_attn.q_norm"],
                  "attn.k_norm": ["self_attn.k_norm"], "mlp.c_fc": ["mlp.gate_proj", "mlp.up_proj"],
                  "mlp.c_proj": ["mlp.down_proj"]}
HF_TOP_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
                "lm_head.weight": "lm_head.weight"}


def is_hf_model(init_from):
    """Does --init_from name a Hugging Face model: a folder with config.json, or a hub name owner/name?"""
    if os.path.isdir(init_from):
        return os.path.isfile(os.path.join(init_from, "config.json"))
    parts = init_from.split("/")
    return len(parts) == 2 and all(parts) and not init_from.endswith(".pt") and not init_from.startswith(".")


def hf_folder(name_or_dir):
    """The local folder of a Hugging Face model: name_or_dir itself, or the hub's copy, downloaded
    once (config, weights and tokenizer files only) by huggingface_hub, which transformers installs."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    try:
        from huggingface_hub import snapshot_download  # imported lazily: only a download needs it
    except ImportError:
        raise ValueError(f"downloading {name_or_dir} needs huggingface_hub: pip install transformers") from None
    try:
        return snapshot_download(name_or_dir, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    except Exception as err:  # no network, no such model, a gated model without a login ...
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"--init_from={name_or_dir}: no such folder, and the Hugging Face hub did not give it "
                         f"({type(err).__name__}: {first})") from None


def hf_checkpoint(name_or_dir, chat_template=False):
    """A pretrained model as a checkpoint of this repository, with its tokenizer: GPT-2 (a name of
    GPT2_NAMES, or a GPT2LMHeadModel folder), or a model of HF_ARCHITECTURES from a folder or hub
    name. chat_template: store the model's chat template with the tokenizer, so that every prompt
    is formatted with it (tokenizer.HFTokenizer.format_prompt)."""
    if name_or_dir in GPT2_NAMES:
        folder, architecture = name_or_dir, "GPT2LMHeadModel"
    else:
        folder = hf_folder(name_or_dir)
        config = read_json(os.path.join(folder, "config.json"), "config.json")
        architecture = (config.get("architectures") or ["(none named)"])[0]
    if architecture == "GPT2LMHeadModel":
        if chat_template:
            raise ValueError("GPT-2 has no chat template; drop --chat_template=True")
        return dict(gpt2_checkpoint(folder), tokenizer={"kind": "gpt2"})
    if architecture not in HF_ARCHITECTURES:
        raise ValueError(f"{name_or_dir} is a {architecture}; --init_from reads GPT2LMHeadModel, "
                         f"{', '.join(HF_ARCHITECTURES)} (Llama 3, SmolLM2, Qwen2/2.5, Qwen3)")
    model_args = llama_model_args(config, architecture, name_or_dir)
    tokenizer = pretrained_tokenizer_state(folder, config, chat_template)
    return dict(model=llama_state_dict(folder, model_args, name_or_dir), model_args=model_args, tokenizer=tokenizer)


def llama_model_args(config, architecture, name):
    """model_args of a Llama-family config.json; ValueError for a variant model.py does not implement."""
    rope = config.get("rope_parameters") or dict(config.get("rope_scaling") or {}, rope_theta=config.get("rope_theta", 1e4))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    unsupported = [what for what, differs in (
        (f"hidden_act={config.get('hidden_act')}", config.get("hidden_act", "silu") != "silu"),
        (f"rope_type={rope_type}", rope_type not in ("default", "llama3")),
        ("attention_bias", config.get("attention_bias")), ("mlp_bias", config.get("mlp_bias")),
        ("sliding-window attention", config.get("use_sliding_window")
         or any(t != "full_attention" for t in config.get("layer_types") or [])),
    ) if differs]
    if unsupported:
        raise ValueError(f"{name} is a {architecture} variant model.py does not implement ({', '.join(unsupported)})")
    try:
        n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
        return dict(llama=True, n_layer=config["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
                    n_kv_head=config.get("num_key_value_heads") or n_head,
                    head_dim=config.get("head_dim") or n_embd // n_head, mlp_hidden=config["intermediate_size"],
                    vocab_size=config["vocab_size"], block_size=config["max_position_embeddings"], bias=False,
                    dropout=0.0, norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                    rope_theta=float(rope["rope_theta"]),
                    rope_scaling={k: float(rope[k]) for k in ROPE_SCALING} if rope_type == "llama3" else None,
                    tie_weights=bool(config.get("tie_word_embeddings", False)),
                    qkv_bias=architecture == "Qwen2ForCausalLM", qk_norm=architecture == "Qwen3ForCausalLM")
    except KeyError as err:
        raise ValueError(f"{name}: config.json lacks {err.args[0]}") from None


def llama_state_dict(folder, model_args, name):
    """Our state dict from the folder's safetensors, every tensor accounted for: each of our weights
    made of the Hugging Face tensors it holds, and none of those left over (ValueError otherwise)."""
    try:
        from safetensors.torch import load_file  # imported lazily: only a pretrained model needs it
    except ImportError:
        raise ValueError(f"reading {name} needs safetensors: pip install transformers") from None
    index = os.path.join(folder, "model.safetensors.index.json")
    files = sorted(set(read_json(index)["weight_map"].values())) if os.path.isfile(index) else ["model.safetensors"]
    tensors = {}
    for file in files:
        if not os.path.isfile(os.path.join(folder, file)):
            raise ValueError(f"{name} has no {file}; this repository reads a model's weights from safetensors")
        tensors.update(load_file(os.path.join(folder, file)))
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer, not a weight
    expected = shapes(meta_model(model_args))
    state, used = {}, set()
    for ours in expected:
        if ours == "lm_head.weight" and model_args["tie_weights"]:
            used.add("lm_head.weight")  # a tied model may store its head too: the embedding is what it uses
            continue
        if ours.startswith("transformer.h."):
            layer, module, kind = re.match(r"transformer\.h\.(\d+)\.(.+)\.(\w+)$", ours).groups()
            sources = [f"model.layers.{layer}.{hf}.{kind}" for hf in HF_BLOCK_NAMES[module]]
        else:
            sources = [HF_TOP_NAMES[ours]]
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ValueError(f"{name}: the weights lack {missing[0]}, which its config.json implies")
        state[ours] = torch.cat([tensors[s] for s in sources]).float()
        used.update(sources)
    if model_args["tie_weights"]:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    left_over = sorted(set(tensors) - used)
    if left_over:
        raise ValueError(f"{name}: the weights hold {left_over[0]}, which model.py has no place for "
                         f"({len(left_over)} unused tensors in all)")
    check_weights(state, expected, name, "model")
    return state
