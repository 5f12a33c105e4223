"""
Pretrained models as checkpoints of this repository, with their own tokenizer: OpenAI's GPT-2 (read
by Hugging Face transformers) or a Hugging Face model of the Llama family (config.json,
*.safetensors, tokenizer.json) read into model.py's GPT with config.llama set.
"""
import os
import re

import torch

from checkpoint import ROPE_SCALING, check_weights, meta_model, shapes
from runfiles import read_json
from tokenizer import pretrained_tokenizer_state

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
