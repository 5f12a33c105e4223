"""
Pretrained models as checkpoints of this repository, with their own tokenizer: OpenAI's GPT-2 (read
by Hugging Face transformers) or a Hugging Face model of the Llama family (config.json,
*.safetensors, tokenizer.json) read into model.py's GPT with config.llama set.
"""
import math
import os
import re

import torch

from checkpoint import ROPE_SCALING, meta_model, shapes
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
        raise ValueError(f"loading {name_or_dir} needs Hugging Face transformers: "
                         f"pip install transformers") from None
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
    except Exception as err:  # no such folder, no network for a download, not a GPT-2 ...
        raise ValueError(f"cannot load GPT-2 from {name_or_dir!r} ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                         ")") from None
    cfg = hf_model.config
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
            "gelu": "none"}.get(cfg.activation_function)
    if (gelu is None or cfg.n_inner not in (None, 4 * cfg.n_embd) or cfg.layer_norm_epsilon != 1e-5
            or not getattr(cfg, "scale_attn_weights", True)
            or getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            or getattr(cfg, "reorder_and_upcast_attn", False)
            or not getattr(cfg, "tie_word_embeddings", True)):
        raise ValueError(f"{name_or_dir} is a GPT-2 variant this GPT does not implement "
                         f"(activation, n_inner, layer_norm_epsilon, attention scaling or "
                         f"untied head differ from GPT-2's)")
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                      block_size=cfg.n_positions, bias=True, vocab_size=cfg.vocab_size, dropout=0.0,
                      gelu_approximate=gelu)
    # the names are nanoGPT's already; transformers keeps these four as Conv1D, weight (in, out),
    # where nn.Linear's is (out, in); its causal-mask buffers (attn.bias, attn.masked_bias) are not
    # weights
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                  "mlp.c_proj.weight")
    state = {k: (v.t() if k.endswith(transposed) else v).float()
             for k, v in hf_model.state_dict().items()
             if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    return dict(model=state, model_args=model_args)


# Today's open models: the Llama family, read from a Hugging Face folder (config.json,
# *.safetensors, tokenizer.json) into model.py's GPT with config.llama set. SmolLM2 is a
# LlamaForCausalLM.
HF_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
# our name in a block -> the Hugging Face names it is made of: c_attn holds q, k, v and c_fc holds
# gate, up one after the other, so that each is one matmul, as in GPT-2
HF_BLOCK_NAMES = {"ln_1": ["input_layernorm"], "ln_2": ["post_attention_layernorm"],
                  "attn.c_attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  "attn.c_proj": ["self_attn.o_proj"], "attn.q_norm": ["self_attn.q_norm"],
                  "attn.k_norm": ["self_attn.k_norm"], "mlp.c_fc": ["mlp.gate_proj", "mlp.up_proj"],
                  "mlp.c_proj": ["mlp.down_proj"]}
HF_TOP_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight",
                "transformer.ln_f.weight": "model.norm.weight",
                "lm_head.weight": "lm_head.weight"}


def is_hf_model(init_from):
    """Does --init_from name a Hugging Face model: a folder with config.json, or a hub name
    owner/name?"""
    if os.path.isdir(init_from):
        return os.path.isfile(os.path.join(init_from, "config.json"))
    parts = init_from.split("/")
    return (len(parts) == 2 and all(parts) and not init_from.endswith(".pt")
            and not init_from.startswith("."))


def hf_folder(name_or_dir):
    """The local folder of a Hugging Face model: name_or_dir itself, or the hub's copy, downloaded
    once (config, weights and tokenizer files only) by huggingface_hub, which transformers
    installs."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    try:
        from huggingface_hub import snapshot_download  # imported lazily: only a download needs it
    except ImportError:
        raise ValueError(f"downloading {name_or_dir} needs huggingface_hub: "
                         f"pip install transformers") from None
    try:
        return snapshot_download(name_or_dir, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    except Exception as err:  # no network, no such model, a gated model without a login ...
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"--init_from={name_or_dir}: no such folder, and the Hugging Face hub "
                         f"did not give it ({type(err).__name__}: {first})") from None


def hf_checkpoint(name_or_dir, chat_template=False):
    """A pretrained model as a checkpoint of this repository, with its tokenizer: GPT-2 (a name of
    GPT2_NAMES, or a GPT2LMHeadModel folder), or a model of HF_ARCHITECTURES from a folder or hub
    name. chat_template: store the model's chat template with the tokenizer, so that every prompt
    is formatted with it (tokenizer.HFTokenizer.encode_prompt). Every file and field is checked
    before the weights are used: ValueError with one line naming it otherwise."""
    if name_or_dir in GPT2_NAMES:
        folder, architecture = name_or_dir, "GPT2LMHeadModel"
    else:
        folder = hf_folder(name_or_dir)
        config_path = os.path.join(folder, "config.json")
        config = read_json(config_path, "config.json")
        architecture = config_architecture(config, config_path)
    if architecture == "GPT2LMHeadModel":
        if chat_template:
            raise ValueError("GPT-2 has no chat template; drop --chat_template=True")
        return dict(gpt2_checkpoint(folder), tokenizer={"kind": "gpt2"})
    if architecture not in HF_ARCHITECTURES:
        raise ValueError(f"{name_or_dir} is a {architecture}; --init_from reads GPT2LMHeadModel, "
                         f"{', '.join(HF_ARCHITECTURES)} (Llama 3, SmolLM2, Qwen2/2.5, Qwen3)")
    model_args = llama_model_args(config, architecture, config_path)
    tokenizer = pretrained_tokenizer_state(folder, config, chat_template)
    return dict(model=llama_state_dict(folder, model_args), model_args=model_args,
                tokenizer=tokenizer)


def config_architecture(config, config_path):
    """The class config.json names first in architectures; '(none named)' where it names none."""
    architectures = config.get("architectures")
    if not architectures:
        return "(none named)"
    if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        raise ValueError(f"{config_path}: architectures is {architectures!r:.60}, "
                         f'not a list of class names such as ["LlamaForCausalLM"]')
    return architectures[0]


def whole(low):
    """What a field that counts must be: (its description, its test)."""
    return f"a whole number >= {low}", lambda v: (isinstance(v, int) and not isinstance(v, bool)
                                                  and v >= low)


POSITIVE = "a number > 0", lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                                        and 0 < v < math.inf)
FLAG = "true or false", lambda v: isinstance(v, bool)
OBJECT = "an object", lambda v: isinstance(v, dict)
TEXT = "a string", lambda v: isinstance(v, str)
TEXTS = "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
# config.json's fields that model_args are made of: what each must be; LLAMA_OPTIONAL's may be
# absent or null
LLAMA_REQUIRED = dict(hidden_size=whole(1), num_hidden_layers=whole(1),
                      num_attention_heads=whole(1), intermediate_size=whole(1), vocab_size=whole(1),
                      max_position_embeddings=whole(2))  # 2: a prompt token and the next
LLAMA_OPTIONAL = dict(num_key_value_heads=whole(1), head_dim=whole(2), rms_norm_eps=POSITIVE,
                      rope_theta=POSITIVE, rope_scaling=OBJECT, rope_parameters=OBJECT,
                      tie_word_embeddings=FLAG, hidden_act=TEXT, attention_bias=FLAG, mlp_bias=FLAG,
                      use_sliding_window=FLAG, layer_types=TEXTS)
ROPE_OPTIONAL = dict(rope_theta=POSITIVE, rope_type=TEXT, type=TEXT)
LLAMA3_ROPE = dict(factor=POSITIVE, low_freq_factor=POSITIVE, high_freq_factor=POSITIVE,
                   original_max_position_embeddings=whole(1))


def check_fields(values, fields, where, optional=False):
    """ValueError naming where (config.json, and the object inside it) and the first of fields
    ({name: (description, test)}) that values lacks (unless optional) or holds of another kind."""
    for field, (wanted, fits) in fields.items():
        if field not in values:
            if optional:
                continue
            raise ValueError(f"{where} lacks {field}, {wanted}")
        if not fits(values[field]) and not (optional and values[field] is None):
            raise ValueError(f"{where}: {field} is {values[field]!r:.60}, not {wanted}")


def llama_model_args(config, architecture, config_path):
    """model_args of a Llama-family config.json, each field checked; ValueError naming config.json
    and the field for a value of the wrong kind, shapes that do not fit together, or a variant
    model.py does not implement."""
    check_fields(config, LLAMA_REQUIRED, config_path)
    check_fields(config, LLAMA_OPTIONAL, config_path, optional=True)
    rope_field = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    rope = config.get("rope_parameters") or dict(config.get("rope_scaling") or {},
                                                 rope_theta=config.get("rope_theta"))
    check_fields(rope, ROPE_OPTIONAL, f"{config_path}: {rope_field}", optional=True)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    unsupported = [what for what, differs in (
        (f"hidden_act={config.get('hidden_act')}", config.get("hidden_act") not in (None, "silu")),
        (f"rope_type={rope_type}", rope_type not in ("default", "llama3")),
        ("attention_bias", config.get("attention_bias")), ("mlp_bias", config.get("mlp_bias")),
        ("sliding-window attention", config.get("use_sliding_window")
         or any(t != "full_attention" for t in config.get("layer_types") or [])),
    ) if differs]
    if unsupported:
        raise ValueError(f"{config_path}: a {architecture} variant model.py does not implement "
                         f"({', '.join(unsupported)})")
    if rope_type == "llama3":
        check_fields(rope, LLAMA3_ROPE, f"{config_path}: {rope_field}")
        if rope["high_freq_factor"] <= rope["low_freq_factor"]:
            raise ValueError(f"{config_path}: {rope_field}: "
                             f"high_freq_factor={rope['high_freq_factor']} "
                             f"must exceed low_freq_factor={rope['low_freq_factor']} "
                             f"(Llama 3 blends between them)")
    n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    if n_head % n_kv_head:
        raise ValueError(f"{config_path}: num_key_value_heads={n_kv_head} does not divide "
                         f"num_attention_heads={n_head}: each key/value head serves a whole "
                         f"group of query heads")
    if not config.get("head_dim") and n_embd % n_head:
        raise ValueError(f"{config_path}: hidden_size={n_embd} is not a multiple of "
                         f"num_attention_heads={n_head} and no head_dim is given")
    head_dim = config.get("head_dim") or n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"{config_path}: head_dim is {head_dim} "
                         f"(hidden_size / num_attention_heads where absent), not even: "
                         f"rotary positions turn pairs of dimensions")
    check_token_ids(config, config_path)
    return dict(llama=True, n_layer=config["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
                n_kv_head=n_kv_head, head_dim=head_dim, mlp_hidden=config["intermediate_size"],
                vocab_size=config["vocab_size"], block_size=config["max_position_embeddings"],
                bias=False, dropout=0.0, norm_eps=float(config.get("rms_norm_eps") or 1e-6),
                rope_theta=float(rope.get("rope_theta") or 1e4),
                rope_scaling=({k: float(rope[k]) for k in ROPE_SCALING} if rope_type == "llama3"
                              else None),
                # transformers' default: untied
                tie_weights=bool(config.get("tie_word_embeddings")),
                qkv_bias=architecture == "Qwen2ForCausalLM",
                qk_norm=architecture == "Qwen3ForCausalLM")


def check_token_ids(config, config_path):
    """config.json's bos_token_id and eos_token_id, where given: a row of the embedding, or a list
    of them."""
    for field in ("bos_token_id", "eos_token_id"):
        value = config.get(field)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not (ids and all(whole(0)[1](i) and i < config["vocab_size"]
                                                  for i in ids)):
            raise ValueError(f"{config_path}: {field} is {value!r:.60}, "
                             f"not a token id below vocab_size={config['vocab_size']} "
                             f"(or a list of them)")


def llama_state_dict(folder, model_args):
    """Our state dict from the folder's safetensors, each tensor checked (floating point, finite, of
    the shape config.json implies) and accounted for: each of our weights made of the Hugging Face
    tensors it holds, and none of those left over. ValueError naming the file and tensor
    otherwise."""
    tensors, origin = read_safetensors(folder)
    tensors = {k: v for k, v in tensors.items()
               if not k.endswith("rotary_emb.inv_freq")}  # a buffer
    state, used = {}, set()
    for ours, shape in shapes(meta_model(model_args)).items():
        if ours == "lm_head.weight" and model_args["tie_weights"]:
            # a tied model may store its head too: the embedding is what it uses
            used.add("lm_head.weight")
            continue
        if ours.startswith("transformer.h."):
            layer, module, kind = re.match(r"transformer\.h\.(\d+)\.(.+)\.(\w+)$", ours).groups()
            sources = [f"model.layers.{layer}.{hf}.{kind}" for hf in HF_BLOCK_NAMES[module]]
        else:
            sources = [HF_TOP_NAMES[ours]]
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ValueError(f"{folder}: the weights lack {missing[0]}, "
                             f"which its config.json implies")
        for source, source_shape in zip(sources, hf_shapes(ours, shape, model_args)):
            check_tensor(tensors[source], source, origin[source], source_shape)
        state[ours] = torch.cat([tensors[s] for s in sources]).float()
        used.update(sources)
    if model_args["tie_weights"]:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    left_over = sorted(set(tensors) - used)
    if left_over:
        raise ValueError(f"{origin[left_over[0]]}: the weights hold {left_over[0]}, "
                         f"which model.py has no place for "
                         f"({len(left_over)} unused tensors in all)")
    return state


def read_safetensors(folder):
    """({name: tensor}, {name: the file it is in}) of a folder's weights: model.safetensors, or the
    shards model.safetensors.index.json names. ValueError naming a file missing or not whole."""
    try:
        from safetensors.torch import load_file  # imported lazily: only a pretrained model needs it
    except ImportError:
        raise ValueError(f"reading {folder} needs safetensors: pip install transformers") from None
    index = os.path.join(folder, "model.safetensors.index.json")
    tensors, origin = {}, {}
    for file in shard_files(index) if os.path.isfile(index) else ["model.safetensors"]:
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            raise ValueError(f"{folder} has no {file}; this repository reads a model's weights "
                             f"from safetensors")
        try:
            shard = load_file(path)
        except Exception as err:  # a partial download, another format, ...
            first = (str(err).strip().splitlines() or [""])[0][:120]
            raise ValueError(f"{path}: not a whole safetensors file "
                             f"({type(err).__name__}: {first}); download it again") from None
        tensors.update(shard)
        origin.update(dict.fromkeys(shard, path))
    return tensors, origin


def shard_files(index):
    """The .safetensors files of a sharded model: those its index's weight_map names."""
    weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map and all(
            isinstance(file, str) and file.endswith(".safetensors")
            and file == os.path.basename(file)
            for file in weight_map.values())):
        raise ValueError(f"{index}: weight_map is {weight_map!r:.60}, not an object naming "
                         f"the .safetensors file of this folder that holds each tensor")
    return sorted(set(weight_map.values()))


def hf_shapes(ours, shape, model_args):
    """The shapes of the Hugging Face tensors that our weight `ours` (of shape) is made of, one
    after the other along its first dimension: q, k, v for c_attn, gate and up for c_fc, else
    one."""
    kv_rows = model_args["n_kv_head"] * model_args["head_dim"]
    rows = ([model_args["n_head"] * model_args["head_dim"], kv_rows, kv_rows]
            if ".attn.c_attn." in ours
            else [model_args["mlp_hidden"]] * 2 if ".mlp.c_fc." in ours else [shape[0]])
    return [(n,) + shape[1:] for n in rows]


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(tensor, name, path, shape):
    """ValueError naming the file and tensor unless it is floating point, of shape, and finite."""
    problem = (f"has dtype {tensor.dtype}, not floating point (quantised weights are not read)"
               if tensor.dtype not in WEIGHT_DTYPES
               else f"has shape {tuple(tensor.shape)}, where config.json makes {shape}"
               if tuple(tensor.shape) != shape
               else "has NaN or infinite values" if not torch.isfinite(tensor).all() else "")
    if problem:
        raise ValueError(f"{path}: {name} {problem}")
