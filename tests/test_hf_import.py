"""Hugging Face folders as a partial download, a hand edit or a careless script leaves them (issue 41):
train.py --init_from=DIR and sample.py stop with one line naming the file and the field or tensor,
before any work: no traceback, no file written or changed (each hashed before and after), no run.lock
or out_dir left behind. And a prompt means what it means in transformers: encoded as the model's
own tokenizer encodes it (a BOS first only where its post-processor puts one), and sample.py's
greedy text is transformers' model.generate on tokenizer(prompt).input_ids."""
import json
import os
import shutil

import pytest
import torch

from dataset import encode_example, make_batch
from hf_import import hf_checkpoint
from tests.test_bad_inputs import run_inline, snapshot
from tests.test_llama import (CHATML, LLAMA3_ROPE, one_thread, save_family,  # noqa: F401 (fixtures)
                              tokenizer_json)
from tokenizer import CharTokenizer, GPT2Tokenizer, HFTokenizer

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

FAMILY = "llama_tied_gqa_llama3_rope"  # GQA, Llama 3's rope scaling, BOS and EOS in tokenizer_config.json
TRAIN = ["--batch_size=4", "--eval_iters=1", "--eval_prompts=2", "--max_iters=2", "--compile=False",
         "--device=cpu", "--init_from={w}/hf", "--dataset={w}/data.jsonl", "--out_dir={w}/out"]
SAMPLE = ["--out_dir={w}/run", "--num_samples=1", "--max_new_tokens=4", "--device=cpu"]
# a byte-level BPE's post-processors: Llama 3's puts its BOS first, Qwen's adds nothing
BOS = "<|begin_of_text|>"
BOS_FIRST = {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}}}
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer_json):  # noqa: F811 (the fixture imported above)
    """A good folder (hf/), its checkpoint as sample.py reads one (run/ckpt.pt), and data."""
    base = tmp_path_factory.mktemp("base")
    save_family(base / "hf", FAMILY, tokenizer_json)
    (base / "run").mkdir()
    torch.save(hf_checkpoint(str(base / "hf")), base / "run" / "ckpt.pt")
    rows = [dict(prompt=f"Q{i}: what is {i} plus 2?", completion=f" {i + 2}") for i in range(20)]
    (base / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return base


# ----------------------------------------------------------------------------- the faults
def edit_json(name, **changes):
    """A fault: hf/<name> with fields changed (None: removed); or folder/<name> of folder."""
    def apply(w):
        path = (w / "hf" if (w / "hf").is_dir() else w) / name
        values = json.loads(path.read_text()) if path.exists() else {}
        values.update(changes)
        path.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
    return apply


def edit_tensors(change):
    """A fault: hf/model.safetensors with change({name: tensor}) applied."""
    def apply(w):
        path = w / "hf" / "model.safetensors"
        tensors = safetensors_torch.load_file(path)
        change(tensors)
        safetensors_torch.save_file(tensors, path)
    return apply


def faults(*applies):
    """A fault made of several."""
    return lambda w: [apply(w) for apply in applies]


def write(name, content):
    """A fault: hf/<name> replaced by content (bytes), or cut to its first half (content None)."""
    def apply(w):
        path = w / "hf" / name
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2] if content is None else content)
    return apply


def sharded(index):
    """A fault: the weights as a one-shard model whose model.safetensors.index.json is index."""
    def apply(w):
        os.rename(w / "hf" / "model.safetensors", w / "hf" / "model-00001-of-00001.safetensors")
        (w / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    return apply


def with_a_far_token(text):
    """The text of a tokenizer.json with one more token, at id 350: 281 tokens, fewer than the
    model's 300 rows, but the highest id is past them."""
    tok = json.loads(text)
    tok["model"]["vocab"]["<|far|>"] = 350
    tok["added_tokens"].append(dict(tok["added_tokens"][0], id=350, content="<|far|>"))
    return json.dumps(tok)


def token_past_the_embedding(w):
    (w / "hf" / "tokenizer.json").write_text(with_a_far_token((w / "hf" / "tokenizer.json").read_text()))


def data_with(text):
    """A fault: data.jsonl with a first row whose prompt is text."""
    def apply(w):
        (w / "data.jsonl").write_text(json.dumps(dict(prompt=text, completion=" 3")) + "\n"
                                      + (w / "data.jsonl").read_text())
    return apply


def checkpoint_tokenizer(**changes):
    """A fault: run/ckpt.pt whose tokenizer state has these fields; json: a function of its text."""
    def apply(w):
        checkpoint = torch.load(w / "run" / "ckpt.pt", weights_only=True)
        state = checkpoint["tokenizer"]
        state.update({k: v(state[k]) if callable(v) else v for k, v in changes.items()})
        torch.save(checkpoint, w / "run" / "ckpt.pt")
    return apply


def int8(tensors):
    name = "model.layers.0.input_layernorm.weight"
    tensors[name] = tensors[name].to(torch.int8)


def narrow_k_proj(tensors):
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:8]


TEMPLATE = ["--chat_template=True"]
CASES = [  # (id, script, fault, flags, words the one line must hold)
    ("hidden_size-a-string", "train.py", edit_json("config.json", hidden_size="64"), [],
     ("config.json: hidden_size is '64', not a whole number",)),
    ("num_hidden_layers-a-string", "train.py", edit_json("config.json", num_hidden_layers="2"), [],
     ("config.json: num_hidden_layers is '2'",)),
    ("rope_scaling-a-list", "train.py", edit_json("config.json", rope_scaling=["llama3", 8.0]), [],
     ("config.json: rope_scaling is ['llama3', 8.0], not an object",)),
    ("architectures-a-string", "train.py", edit_json("config.json", architectures="LlamaForCausalLM"), [],
     ("config.json: architectures is 'LlamaForCausalLM', not a list",)),
    ("kv-heads-not-dividing-heads", "train.py", edit_json("config.json", num_key_value_heads=3), [],
     ("config.json: num_key_value_heads=3 does not divide num_attention_heads=4",)),
    ("zero-heads", "train.py", edit_json("config.json", num_attention_heads=0), [],
     ("config.json: num_attention_heads is 0",)),
    ("zero-kv-heads", "train.py", edit_json("config.json", num_key_value_heads=0), [],
     ("config.json: num_key_value_heads is 0",)),
    ("odd-head_dim", "train.py", edit_json("config.json", head_dim=7), [],
     ("config.json: head_dim is 7", "even")),
    ("odd-head_dim-of-hidden_size", "train.py", edit_json("config.json", head_dim=None, hidden_size=36), [],
     ("config.json: head_dim is 9", "even")),
    ("max_position_embeddings-0", "train.py", edit_json("config.json", max_position_embeddings=0), [],
     ("config.json: max_position_embeddings is 0",)),
    ("max_position_embeddings-1", "train.py", edit_json("config.json", max_position_embeddings=1), [],
     ("config.json: max_position_embeddings is 1",)),
    ("rope_theta-0", "train.py", edit_json("config.json", rope_parameters=dict(LLAMA3_ROPE, rope_theta=0)),
     [],
     ("config.json: rope_parameters: rope_theta is 0",)),
    ("llama3-factor-0", "train.py", edit_json("config.json", rope_parameters=dict(LLAMA3_ROPE, factor=0)), [],
     ("config.json: rope_parameters: factor is 0",)),
    ("tie_word_embeddings-a-string", "train.py", edit_json("config.json", tie_word_embeddings="false"), [],
     ("config.json: tie_word_embeddings is 'false'",)),
    ("eos-id-negative", "train.py", edit_json("config.json", eos_token_id=-1), [],
     ("config.json: eos_token_id is -1",)),
    ("eos-id-past-the-vocabulary", "train.py", edit_json("config.json", eos_token_id=99999), [],
     ("config.json: eos_token_id is 99999, not a token id below vocab_size=300",)),
    ("eos-id-of-no-token", "train.py", faults(edit_json("tokenizer_config.json", eos_token=None),
                                                 edit_json("config.json", eos_token_id=290)), [],
     ("config.json: eos_token_id is 290, not the id of a token of tokenizer.json",)),
    ("weights-truncated", "train.py", write("model.safetensors", None), [],
     ("model.safetensors: not a whole safetensors file",)),
    ("weights-garbage", "train.py", write("model.safetensors", b"<html>404</html>"), [],
     ("model.safetensors: not a whole safetensors file",)),
    ("index-without-weight_map", "train.py", sharded({"metadata": {}}), [],
     ("model.safetensors.index.json: weight_map is None",)),
    ("index-weight_map-malformed", "train.py", sharded({"weight_map": {"lm_head.weight": 1}}), [],
     ("model.safetensors.index.json: weight_map is {'lm_head.weight': 1}",)),
    ("tensor-shape-not-its-name", "train.py", edit_tensors(narrow_k_proj), [],
     ("model.safetensors: model.layers.1.self_attn.k_proj.weight has shape (8, 32), where config.json makes "
      "(16, 32)",)),
    ("int8-tensor", "train.py", edit_tensors(int8), [],
     ("model.safetensors: model.layers.0.input_layernorm.weight has dtype torch.int8",)),
    ("token-ids-past-the-embedding", "train.py", token_past_the_embedding, [],
     ("tokenizer.json: token '<|far|>' has id 350, past the model's 300 embedding rows",)),
    ("tokenizer-garbage", "train.py", write("tokenizer.json", b'{"version": "1.0"}'), [],
     ("tokenizer.json: not a valid tokenizer.json",)),
    ("eos_token-an-int", "train.py", edit_json("tokenizer_config.json", eos_token=0), [],
     ("tokenizer_config.json: eos_token is 0, not the text of a token",)),
    ("eos_token-no-token", "train.py", edit_json("tokenizer_config.json", eos_token="</s>"), [],
     ("tokenizer_config.json: eos_token is '</s>', not the text of a token",)),
    ("template-undefined-call", "train.py", edit_json("tokenizer_config.json", chat_template="{{ now() }}"),
     TEMPLATE, ("tokenizer_config.json: chat_template: the chat template fails when rendered "
                "(UndefinedError: 'now' is undefined)",)),
    ("template-huge-range", "train.py", edit_json("tokenizer_config.json",
                                                  chat_template="{% for i in range(10**9) %}{% endfor %}"),
     TEMPLATE, ("tokenizer_config.json: chat_template: the chat template fails when rendered",
                "Range too big")),
    ("template-list-for-a-string", "train.py", edit_json("tokenizer_config.json",
                                                         chat_template="{{ bos_token + messages }}"),
     TEMPLATE, ("tokenizer_config.json: chat_template: the chat template fails when rendered (TypeError",)),
    ("chat_template-a-list-of-strings", "train.py",
     edit_json("tokenizer_config.json", chat_template=[CHATML]), TEMPLATE,
     ("tokenizer_config.json: chat_template is a list, but not of",)),
    ("lone-surrogate-in-the-data", "train.py", data_with("Q\ud800: what?"), [],
     ("data.jsonl:1: '\\ud800' is half a character (a lone surrogate)",)),
    ("sample-lone-surrogate-in-start", "sample.py", None, ["--start=Q\udcff1"],  # an undecodable byte of argv
     ("holds a lone surrogate '\\udcff'",)),
    ("sample-token-ids-past-the-embedding", "sample.py", checkpoint_tokenizer(json=with_a_far_token),
     ["--start=Q1"], ("run/ckpt.pt: tokenizer has 351 tokens, more than model_args['vocab_size']=300",)),
    ("sample-template-fails-when-rendered", "sample.py", checkpoint_tokenizer(chat_template="{{ now() }}"),
     ["--start=Q1"], ("run/ckpt.pt: tokenizer is not a tokenizer state (the chat template fails when "
                      "rendered (UndefinedError",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_broken_folder_stops_with_one_line(case, base, tmp_path, monkeypatch, capsys):
    name, script, fault, flags, words = case
    w = tmp_path / "w"
    shutil.copytree(base, w)
    if fault:
        fault(w)
    before = snapshot(w)
    args = [a.replace("{w}", str(w)) for a in {"train.py": TRAIN, "sample.py": SAMPLE}[script] + flags]
    code, out, err = run_inline(script, args, monkeypatch, capsys, w)
    message = "\n".join(m for m in (err.strip(), code if isinstance(code, str) else "") if m)
    assert code not in (None, 0) and "Traceback" not in out + message, message
    assert message.startswith(f"{script}: error: ") and len(message.splitlines()) == 1, message
    assert all(word in message.replace(str(w) + "/", "") for word in words), message
    assert snapshot(w) == before and not (w / "out").exists()  # nothing written, no out_dir nor run.lock


# ----------------------------------------------------------------------------- a prompt, as in transformers
def tokenizer_folder(folder, family, tokenizer_json, post_processor, **tok_config):  # noqa: F811
    """save_family's folder, its tokenizer.json with this post-processor, tokenizer_config.json with
    these fields (None: removed)."""
    hf_model = save_family(folder, family, tokenizer_json)
    tok = json.loads(tokenizer_json)
    tok["post_processor"] = post_processor
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    edit_json("tokenizer_config.json", **tok_config)(folder)
    return hf_model


TOKENIZERS = {  # name: (family, post-processor, tokenizer_config.json's changes, does it put a BOS first)
    "llama3-post-processor-bos": ("llama_untied", BOS_FIRST, {}, True),
    "qwen-post-processor-none": ("qwen3_tied", BYTE_LEVEL, {}, False),
    "no-post-processor": ("llama_untied", None, {}, False),
    # transformers 5 reads the post-processor alone: add_bos_token beside it changes nothing
    "add_bos_token-true-no-post-processor": ("llama_untied", None, dict(add_bos_token=True), False),
    "add_bos_token-false-llama3": ("llama_untied", BOS_FIRST, dict(add_bos_token=False), True),
}
PROMPTS = ["Q7: what is 7 plus 8?", " héllo\n", "<|im_start|>user", ""]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_prompt_is_encoded_as_transformers_encodes_it(name, tokenizer_json, tmp_path):  # noqa: F811
    """A row starts with the prompt's ids as AutoTokenizer(prompt).input_ids gives them: a BOS first
    only where the model's tokenizer puts one; an empty prompt that gives no id is the BOS (the EOS
    without one), a state to predict the first completion token from, the completion and its EOS
    in the loss mask."""
    family, post_processor, tok_config, bos_first = TOKENIZERS[name]
    tokenizer_folder(tmp_path, family, tokenizer_json, post_processor, **tok_config)
    tok = HFTokenizer(hf_checkpoint(str(tmp_path))["tokenizer"])
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (reference(PROMPTS[0]).input_ids[0] == reference.convert_tokens_to_ids(BOS)) == bos_first
    completion = reference(" 15", add_special_tokens=False).input_ids + [reference.eos_token_id]
    for prompt in PROMPTS:
        prompt_ids, completion_ids = encode_example(tok, prompt, " 15")
        assert prompt_ids == (reference(prompt).input_ids or [tok.bos_id]), prompt
        assert completion_ids == completion
        batch = make_batch([(prompt_ids, completion_ids)], tok.eos_id)
        assert batch["idx"][0, :len(prompt_ids)].tolist() == prompt_ids
        assert batch["targets"][0, batch["loss_mask"][0] == 1].tolist() == completion  # its EOS included


def test_a_chat_prompt_is_encoded_as_apply_chat_template(tokenizer_json, tmp_path):  # noqa: F811
    """With --chat_template=True: apply_chat_template(add_generation_prompt=True, tokenize=True), which
    adds no special token of its own: Llama's template writes the BOS, ChatML writes none; a template
    may call strftime_now, as Llama 3.1's does."""
    for family in ("llama_untied", "qwen3_tied"):
        folder = tmp_path / family
        tokenizer_folder(folder, family, tokenizer_json, BOS_FIRST)
        if family.startswith("qwen"):
            (folder / "chat_template.jinja").write_text("{{ strftime_now('%Y') }}\n" + CHATML)
        tok = HFTokenizer(hf_checkpoint(str(folder), chat_template=True)["tokenizer"])
        reference = transformers.AutoTokenizer.from_pretrained(str(folder))
        for prompt in PROMPTS:
            chat = [{"role": "user", "content": prompt}]
            expected = reference.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]
            assert encode_example(tok, prompt) == expected, prompt


def test_char_and_gpt2_rows_start_with_eos():
    """The char and GPT-2 rows as they were: [EOS] + the prompt, whatever the prompt."""
    for tok in (CharTokenizer("ab"), GPT2Tokenizer()):
        assert encode_example(tok, "ab") == [tok.eos_id] + tok.encode("ab")
        assert encode_example(tok, "") == [tok.eos_id]


@pytest.mark.parametrize("family, template", [("llama_untied", False), ("qwen3_tied", False),
                                              ("qwen3_tied", True)])
def test_sample_greedy_is_transformers_generate(family, template, tokenizer_json, tmp_path, monkeypatch,
                                                capsys):  # noqa: F811
    """sample.py --temperature=0 on the folder's checkpoint writes the text that transformers' greedy
    model.generate decodes to from tokenizer(prompt).input_ids (Llama 3's BOS first, Qwen's none:
    before, every prompt began with a BOS, or the EOS), or, trained with --chat_template=True, from
    apply_chat_template(add_generation_prompt=True)."""
    hf_model = tokenizer_folder(tmp_path / "hf", family, tokenizer_json,
                                BOS_FIRST if family.startswith("llama") else BYTE_LEVEL)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    (tmp_path / "run").mkdir()
    torch.save(hf_checkpoint(str(tmp_path / "hf"), chat_template=template), tmp_path / "run" / "ckpt.pt")
    prompt = "Q3: what is 3 plus 4?"
    args = [f"--out_dir={tmp_path / 'run'}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
            "--max_new_tokens=10", "--device=cpu"]
    code, out, err = run_inline("sample.py", args, monkeypatch, capsys, tmp_path)
    assert code in (None, 0), err
    sample = json.loads((tmp_path / "run" / "samples_start_t0.jsonl").read_text())["sample"]
    if template:
        ids = reference.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = reference(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        generated = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                      do_sample=False, eos_token_id=reference.eos_token_id,
                                      pad_token_id=reference.eos_token_id)
    assert sample == reference.decode(generated[0, ids.size(1):], skip_special_tokens=True)
    assert len(sample) > 5
