"""
Checkpoints: written atomically, read safely, turned back into a model and its tokenizer, or made
from OpenAI's GPT-2 weights; and write_atomically() and save_figure() for the other files the
scripts write (logs, samples, results).

A train.py checkpoint is a dict: model (state dict), optimizer, model_args, config, iter_num,
best_val_loss, tokenizer (tokenizer.py state), rng. A nanoGPT ckpt.pt has the same model,
model_args and optimizer keys but no tokenizer. Loading uses weights_only=True: a downloaded
file cannot run code.
"""
import os

import torch

from model import GPT, GPTConfig, strip_compile_prefix
from tokenizer import tokenizer_from_state


def write_atomically(path, text):
    """Write a text file (a log, results) through a temporary file and a rename: never half a file."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def save_figure(fig, path, **savefig_args):
    """A matplotlib figure saved the same way: a temporary file, then a rename."""
    fig.savefig(path + ".tmp.png", **savefig_args)  # the .png ending tells matplotlib the format
    os.replace(path + ".tmp.png", path)


def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a ckpt.pt."""
    tmp_path = path + ".tmp"
    torch.save(checkpoint, tmp_path)
    with open(tmp_path, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


def load_checkpoint(path):
    """The checkpoint dict at path; ValueError with the fix when it is missing or unreadable."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; train one with train.py or fix the path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint["model"] = strip_compile_prefix(checkpoint["model"])
        checkpoint["model_args"]
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         f"it must be a ckpt.pt written by train.py or nanoGPT") from None
    return checkpoint


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
