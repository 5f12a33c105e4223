"""
Checkpoints: saved atomically, read safely and checked field by field, turned back into a model and
its tokenizer.

A train.py checkpoint is a dict: model (state dict), optimizer, model_args, config, iter_num,
tokenizer (tokenizer.py state), rng, samples (online IQ-Learn, GAIL), best (--keep_best) and gail
(GAIL's models). A nanoGPT ckpt.pt has the same model, model_args and optimizer keys but no
tokenizer. Loading uses weights_only=True: a downloaded file cannot run code. Every field the
scripts read is checked when it is loaded, so that a bad file stops with one line naming the file
and the field, not a traceback later.
"""
import math
import os

import torch

from configurator import TRAIN_RANGES, check_settings
from model import GPT, strip_compile_prefix
from runfiles import replace_atomically
from tokenizer import check_tokenizer_state, tokenizer_from_state

NOT_A_RUN = "it must be a ckpt.pt written by train.py or nanoGPT"  # what a bad checkpoint hears
# what --keep_best can track into best.pt, and whether higher is better
BEST_IS_HIGHER = {"val/accuracy": True, "val/rougeL": True, "val/nll": False, "val/loss": False}


def beats(metric, value, best):
    """Does this value of metric beat best (dict(value, ...), or None)? A tie keeps the earlier."""
    return best is None or (value > best["value"] if BEST_IS_HIGHER[metric]
                            else value < best["value"])


def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a ckpt.pt."""
    replace_atomically(path, lambda tmp_path: torch.save(checkpoint, tmp_path))


# required
MODEL_ARGS = dict(n_layer=int, n_head=int, n_embd=int, block_size=int, vocab_size=int, bias=bool)
RESUME_FIELDS = dict(optimizer=dict, config=dict, iter_num=int, rng=dict)
# of a checkpoint's config, what sample.py and analyze_reward.py read (and GAIL's state needs),
# of its default's type
READ_SETTINGS = dict(dataset="", loss="", tokenizer="", gamma=1.0, td_coef=0.0, disc_n_layer=1)


def load_checkpoint(path, for_resume=False):
    """The checkpoint dict at path, every field the scripts read checked: ValueError with one line
    naming the file and the field otherwise. for_resume: also what --init_from=resume reads (the
    optimizer, config, iter_num, rng and, for GAIL, its models)."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; train one with train.py or fix the path")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ValueError(f"cannot read checkpoint {path}: it is "
                         f"{'empty' if os.path.isfile(path) else 'not a file'}; "
                         f"{NOT_A_RUN}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's are paragraphs long
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:120]
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {first}); "
                         f"{NOT_A_RUN}") from None
    check_checkpoint(checkpoint, path, for_resume)
    checkpoint["model"] = strip_compile_prefix(checkpoint["model"])
    return checkpoint


def check_checkpoint(checkpoint, path, for_resume=False):
    """ValueError naming path and the first field of checkpoint that is missing or wrong."""
    def bad(field, problem):
        raise ValueError(f"checkpoint {path}: {field} {problem}; {NOT_A_RUN}")

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
        if key not in args or not isinstance(value, kind) or (
                kind is int and (isinstance(value, bool) or value < 1)):
            bad(f"model_args[{key!r}]",
                f"is {value!r}, not {'a whole number >= 1' if kind is int else 'True or False'}")
    if not args.get("head_dim") and args["n_embd"] % args["n_head"]:  # a head_dim of its own: Qwen3
        bad("model_args", f"has n_embd={args['n_embd']}, not a multiple of n_head={args['n_head']}")
    if (not isinstance(args.get("dropout", 0.0), (int, float))
            or not 0 <= args.get("dropout", 0.0) < 1):
        bad("model_args['dropout']", f"is {args['dropout']!r}, not a number in [0, 1)")
    if args.get("gelu_approximate", "none") not in ("none", "tanh"):
        bad("model_args['gelu_approximate']",
            f"is {args['gelu_approximate']!r}, not 'none' or 'tanh'")
    check_llama_args(args, bad)
    model = meta_model(args)
    check_weights(checkpoint["model"], shapes(model), path, "model")
    if "tokenizer" in checkpoint:
        try:
            vocab_size = check_tokenizer_state(checkpoint["tokenizer"])
        except ValueError as err:
            bad("tokenizer", f"is not a tokenizer state ({err})")
        if vocab_size > args["vocab_size"]:
            bad("tokenizer", f"has {vocab_size} tokens, more than "
                f"model_args['vocab_size']={args['vocab_size']}")
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
    states = [("rng['torch']", rng.get("torch"))] + [(f"rng['data'][{i}]", s)
                                                     for i, s in enumerate(rng["data"])]
    for field, state in states:  # what torch.set_rng_state and Generator.set_state accept
        if (not isinstance(state, torch.Tensor) or state.dtype != torch.uint8
                or state.numel() != size):
            bad(field, f"is not a random generator state ({size} bytes)")
    if rng.get("cuda") is not None and (not isinstance(rng["cuda"], torch.Tensor)
                                        or rng["cuda"].dtype != torch.uint8):
        bad("rng['cuda']", "is not a CUDA random generator state")
    check_samples(checkpoint.get("samples", []), args["vocab_size"], bad)
    if config.get("loss") == "gail":
        parts = checkpoint.get("gail")
        if not isinstance(parts, dict) or not all(isinstance(parts.get(k), dict) for k in
                                                  ("discriminator", "disc_optimizer", "reference")):
            bad("gail", "is missing or lacks discriminator, disc_optimizer or reference")
        check_weights(parts["reference"], shapes(model), path, "gail['reference']")
        if "disc_n_layer" not in config:
            bad("config", "lacks disc_n_layer, the depth of GAIL's discriminator")
        # gail.make_models' shape
        discriminator = meta_model(dict(args, n_layer=config["disc_n_layer"]))
        check_weights(parts["discriminator"], shapes(discriminator), path, "gail['discriminator']")
        check_optimizer(parts["disc_optimizer"], discriminator, "gail['disc_optimizer']", bad)


def check_samples(samples, vocab_size, bad):
    """The policy samples a resumed online run reuses: per process, {micro-step: [(prompt ids,
    completion ids)]}, every id a token of the model. bad(field, problem) otherwise."""
    def is_ids(ids):
        return isinstance(ids, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids)
    if not isinstance(samples, list):
        bad("samples", f"is a {type(samples).__name__}, not a list")
    for rank, steps in enumerate(samples):
        if not isinstance(steps, dict):
            bad(f"samples[{rank}]", f"is {steps!r:.40}, not a dict of micro-step -> samples")
        for step, pairs in steps.items():
            if not (isinstance(step, int) and isinstance(pairs, list) and all(
                    isinstance(p, (list, tuple)) and len(p) == 2 and is_ids(p[0]) and p[0]
                    and is_ids(p[1]) for p in pairs)):
                bad(f"samples[{rank}][{step!r:.20}]",
                    f"is not a list of (prompt ids, completion ids) with ids below {vocab_size}")


def check_config(config, path, settings=READ_SETTINGS):
    """A checkpoint's config checked as train.py's flags are (type and range), each of settings
    ({name: default}: train.py's own for a resumed run) it holds; ValueError naming path and the
    field."""
    try:
        check_settings(config, settings, TRAIN_RANGES, "config[{!r}]")
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}; {NOT_A_RUN}") from None


def rank_rng(rng, rank, world_size, path):
    """The random states rank of a resumed run restores: (torch, cuda, data), from a checkpoint's
    rng (checked by check_checkpoint). Every process of a DDP run saves its own (rng['ranks'],
    rank 0's also as rng['torch'] and rng['cuda']), so each continues its dropout masks, policy
    samples and batches exactly. ValueError for a number of processes other than the saved one:
    their streams cannot be split or merged into others that an uninterrupted run would have
    drawn."""
    saved = len(rng["data"])
    if saved != world_size:
        how = f"torchrun --nproc_per_node={saved} train.py" if saved > 1 else "python train.py"
        raise ValueError(f"{path} was saved by a run of {saved} process{'es' * (saved > 1)} and "
                         f"this one has {world_size}; resume it with {how}, or start a new run "
                         f"from it (another --out_dir, --init_from={path})")
    ranks = rng.get("ranks", [rng] if saved == 1 else None)
    def is_state(state, size=None):  # what torch.set_rng_state (torch.cuda's) accepts
        return (isinstance(state, torch.Tensor) and state.dtype == torch.uint8
                and size in (None, state.numel()))
    if not (isinstance(ranks, list) and len(ranks) == saved and all(
            isinstance(r, dict) and is_state(r.get("torch"), torch.get_rng_state().numel())
            and (r.get("cuda") is None or is_state(r["cuda"])) for r in ranks)):
        raise ValueError(f"checkpoint {path}: rng['ranks'] is not one random generator state per "
                         f"process; it must be a ckpt.pt written by train.py")
    return ranks[rank]["torch"], ranks[rank].get("cuda"), rng["data"][rank]


def gather_rank_states(train_gen, samples, device_type, ddp, world_size):
    """(rng, samples) of a checkpoint: every process's random states (torch, cuda), data position
    (train_gen) and policy samples, gathered on each; rank 0's also as rng['torch'] and
    rng['cuda']."""
    mine = dict(torch=torch.get_rng_state(), data=train_gen.get_state(), samples=samples,
                cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None)
    ranks = [mine]
    if ddp:
        ranks = [None] * world_size
        torch.distributed.all_gather_object(ranks, mine)
    rng = dict(torch=mine["torch"], cuda=mine["cuda"], data=[r["data"] for r in ranks],
               ranks=[dict(torch=r["torch"], cuda=r["cuda"]) for r in ranks])
    return rng, [r["samples"] for r in ranks]


def restore_run(checkpoint, rank, rng_states, optimizer, method_state, train_gen, device_type):
    """Put a resumed run back exactly where it stopped: the optimizer, the method's own state
    (GAIL's), this rank's random states (rank_rng's) and data position. Returns (iter_num, best,
    samples): the step, --keep_best's best so far, this rank's policy samples (online methods)."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    for name, state in method_state.items():
        state.load_state_dict(checkpoint[name])
    sample_lists = checkpoint.get("samples", [])
    torch_state, cuda_state, data_state = rng_states
    torch.set_rng_state(torch_state)
    train_gen.set_state(data_state)
    if device_type == "cuda" and cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state)
    samples = sample_lists[rank] if rank < len(sample_lists) else {}
    return checkpoint["iter_num"], checkpoint.get("best"), samples


# optional: absent, they are GPT-2's
LLAMA_ARGS = dict(llama=bool, tie_weights=bool, qkv_bias=bool, qk_norm=bool, n_kv_head=int,
                  head_dim=int, mlp_hidden=int, norm_eps=float, rope_theta=float)
ROPE_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_llama_args(args, bad):
    """The model_args of the Llama family (model.py's GPTConfig) where present: bad(field, problem)
    otherwise."""
    wanted = {bool: "True or False", int: "a whole number >= 0", float: "a number > 0"}
    for key, kind in LLAMA_ARGS.items():
        value = args.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = (isinstance(value, bool) if kind is bool
                else number and isinstance(value, int) and value >= 0 if kind is int
                else number and value > 0)
        if key in args and not fits:
            bad(f"model_args[{key!r}]", f"is {value!r}, not {wanted[kind]}")
    scaling = args.get("rope_scaling")
    if scaling is not None and not (isinstance(scaling, dict) and all(
            isinstance(scaling.get(k), (int, float)) and scaling[k] > 0 for k in ROPE_SCALING)):
        bad("model_args['rope_scaling']",
            f"is {scaling!r:.80}, not None or a dict of {', '.join(ROPE_SCALING)}")
    head_dim = args.get("head_dim") or args["n_embd"] // args["n_head"]
    if args.get("llama") and head_dim % 2:  # rotary turns q and k in pairs
        bad("model_args", f"has heads of width {head_dim}, not even (rotary turns pairs)")
    if scaling is not None and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        bad("model_args['rope_scaling']", "has high_freq_factor <= low_freq_factor")
    if args["n_head"] % (args.get("n_kv_head") or args["n_head"]):
        bad("model_args",
            f"has n_head={args['n_head']}, not a multiple of n_kv_head={args['n_kv_head']}")


def meta_model(model_args):
    """The GPT model_args describe, on the meta device: its shapes without its memory."""
    with torch.device("meta"):
        return GPT.from_args(model_args)


def shapes(model):
    """{name: shape} of a model's weights."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_fits(model_args, device):
    """ValueError, before any memory is taken, when training the model of model_args cannot fit in
    the memory of device (a CUDA GPU's own, else the machine's RAM, which an Apple GPU shares): in
    float32 its weights, their gradients and AdamW's two moments take 16 bytes a parameter,
    activations aside."""
    n = sum(p.numel() for p in meta_model(model_args).parameters())
    have = device_memory(device)
    if 16 * n > have:
        raise ValueError(f"the model has {n / 1e9:.1f}B parameters: training it needs "
                         f"{16 * n / 1e9:.0f} GB (weights, gradients and AdamW's moments in "
                         f"float32), more than the {have / 1e9:.0f} GB of {device}; "
                         f"lower --n_embd or --n_layer")


def check_fits_decoding(model, rows, length, device):
    """ValueError, before any memory is taken, when decoding `rows` sequences of up to `length`
    tokens at once cannot fit in the memory of device: each row's key/value cache (two tensors a
    block) and the logits of its next token, in float32."""
    config = model.config
    length = min(length, config.block_size)
    need = 4 * rows * (2 * config.n_layer * length * config.n_kv_head * config.head_dim
                       + config.vocab_size)
    have = device_memory(device)
    if need > have:
        raise ValueError(f"decoding {rows} rows at once needs {need / 1e9:.0f} GB (their key/value "
                         f"cache and logits in float32), more than the {have / 1e9:.0f} GB of "
                         f"{device}; lower --num_samples (or --beam_size, --batch_size)")


def device_memory(device):
    """Bytes of memory on device: a CUDA GPU's own, else the machine's RAM
    (an Apple GPU shares it)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_weights(state_dict, expected, path, field):
    """ValueError unless state_dict has exactly the expected {name: shape} floating-point, finite
    tensors."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"checkpoint {path}: {field} is a {type(state_dict).__name__}, "
                         f"not a state dict")
    state_dict = strip_compile_prefix(state_dict)
    missing, extra = (sorted(set(expected) - set(state_dict)),
                      sorted(set(state_dict) - set(expected)))
    if missing or extra:
        raise ValueError(f"checkpoint weights do not fit its model_args ({path}: {field} "
                         + (f"lacks {missing[0]})" if missing
                            else f"has an unexpected {extra[0]})"))
    for name, tensor in state_dict.items():
        problem = ("is not a tensor" if not isinstance(tensor, torch.Tensor) else
                   f"has dtype {tensor.dtype}, not floating point"
                   if not tensor.is_floating_point() else
                   f"has shape {tuple(tensor.shape)}, model_args make {expected[name]}"
                   if tuple(tensor.shape) != expected[name] else
                   "has NaN or infinite values" if not torch.isfinite(tensor).all() else "")
        if problem:
            raise ValueError(f"checkpoint weights do not fit its model_args "
                             f"({path}: {field}[{name!r}] {problem})")


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
    # lr, betas, eps, ...
    for i, (group, default) in enumerate(zip(groups, reference.param_groups)):
        for key in default.keys() - {"params"}:
            if key in group and not like_adamw(group[key], default[key]):
                bad(f"{field}['param_groups'][{i}][{key!r}]",
                    f"is {group[key]!r:.40}, not like AdamW's {default[key]!r}")
    for index, moments in state["state"].items():
        if (not isinstance(index, int) or not 0 <= index < len(param_shapes)
                or not isinstance(moments, dict)):
            bad(field, f"has state for a parameter {index!r} the model does not have")
        for name, tensor in moments.items():
            if not isinstance(tensor, torch.Tensor) or (
                    name != "step" and tuple(tensor.shape) != param_shapes[index]):
                bad(f"{field}['state'][{index}][{name!r}]",
                    f"does not fit parameter {index} of shape {param_shapes[index]}")
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad(f"{field}['state'][{index}][{name!r}]", "has NaN or infinite values")


def like_adamw(value, default):
    """Is value a setting of the kind of AdamW's default: a number >= 0, a tuple of them, a bool or
    None?"""
    if isinstance(default, (bool, type(None))):
        return isinstance(value, (bool, type(None)))
    if isinstance(default, tuple):
        return (isinstance(value, (tuple, list)) and len(value) == len(default)
                and all(map(like_adamw, value, default)))
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def model_from_checkpoint(checkpoint, dropout=None):
    """The GPT a checkpoint describes, with its weights (dropout may be overridden)."""
    model_args = dict(checkpoint["model_args"])
    if dropout is not None:
        model_args["dropout"] = dropout
    model = GPT.from_args(model_args)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit its model_args: "
                         f"{str(err).splitlines()[0]}") from None
    return model


def tokenizer_of(checkpoint, fallback=""):
    """The checkpoint's tokenizer; a nanoGPT checkpoint has none, so fallback ('gpt2') must say.
    A fallback that contradicts the checkpoint's own tokenizer is an error, not silently ignored."""
    if "tokenizer" in checkpoint:
        kind = checkpoint["tokenizer"].get("kind")
        if fallback and fallback != kind:
            raise ValueError(f"the checkpoint was trained with the {kind} tokenizer, "
                             f"not {fallback}; drop --tokenizer={fallback}")
        return tokenizer_from_state(checkpoint["tokenizer"])
    if fallback == "gpt2":
        return tokenizer_from_state({"kind": "gpt2"})
    raise ValueError("the checkpoint has no tokenizer (a nanoGPT checkpoint?); if it was trained "
                     "on GPT-2 BPE pass --tokenizer=gpt2")
