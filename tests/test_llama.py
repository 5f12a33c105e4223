"""The Llama family in model.py (Llama 3, SmolLM2, Qwen2, Qwen3), read from Hugging Face folders:
tiny random models built with transformers' config classes and saved with save_pretrained, beside a
byte-level BPE tokenizer trained offline with the `tokenizers` library, give transformers' logits
and greedy generations, their tokenizer round-trips, and train.py, sample.py and analyze_reward.py
run on them. transformers is the reference; skipped without it (requirements-dev.txt installs it).
No test downloads anything."""
import json
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import model_from_checkpoint
from hf_import import hf_checkpoint, is_hf_model
from generate import beam_search, generate
from tests.helpers import ROOT, TINY, TINY_MODEL, run_script
from tests.test_analyze_reward import check_rewards_against_naive_loop
from tests.test_train import train_losses
from tokenizer import HFTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

VOCAB, TOKENS = 300, 280  # the model's rows and the tokenizer's tokens: a padded vocabulary, as Qwen's
SPECIAL = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as SmolLM2 and Qwen write it; the Llama folders' version starts with BOS, as Llama 3's does
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=0.5, high_freq_factor=4.0,
                   original_max_position_embeddings=32)  # head_dim 8: one frequency kept, one blended, two slowed
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, bos_token_id=1, eos_token_id=0)
FAMILIES = {  # name: (config class, model class, what the family sets)
    "llama_tied_gqa_llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
    "llama_untied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_untied_mqa": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=1, tie_word_embeddings=False)),
    "qwen3_tied": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16,
                                                           tie_word_embeddings=True)),
    "qwen3_untied": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16,
                                                             tie_word_embeddings=False, rope_parameters=dict(
                                                                 rope_type="default", rope_theta=1e6))),
}
TEXTS = ["Q7: what is 7 plus 8?", " answer 15", "héllo, wörld\n\ttabs  and  spaces", "<|im_start|>user\nhi"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Matmuls this small are faster on one thread than on two, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def corpus():
    return [f"Q{i}: what is {i} plus {i + 1}? answer {2 * i + 1}. héllo wörld" for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A byte-level BPE (Llama 3's, SmolLM2's and Qwen's kind) trained offline on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=TOKENS, special_tokens=SPECIAL,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path.read_text()


def randomise(hf_model):
    """Weights far from their init: the matrices scaled up, so that the logits are far from uniform,
    and every 1-D weight (norms, biases) drawn at random, each element its own: at its init (all 1.0
    or 0.0) a norm swapped with another, or a q/k norm applied after the rotation, would change nothing."""
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if p.dim() == 1:  # a norm's weight between 2 and 8 (5 on average: the logits scaled up)
                p.normal_(0.0, 1.0) if name.endswith("bias") else p.uniform_(2.0, 8.0)
            else:
                p.mul_(5.0)
    return hf_model


def save_family(folder, family, tokenizer_json, seed=0):
    """A random model of the family (randomise), saved with its tokenizer: Llama's names its BOS and
    ends turns with <|endoftext|>, in tokenizer_config.json; the Qwens have no BOS, end with
    <|im_end|> and keep the chat template in chat_template.jinja, as transformers 5 writes it."""
    config_class, model_class, extra = FAMILIES[family]
    torch.manual_seed(seed)
    hf_model = getattr(transformers, model_class)(getattr(transformers, config_class)(**SHAPE, **extra)).eval()
    randomise(hf_model).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer_json)
    llama = family.startswith("llama")
    im_end = {"__type": "AddedToken", "content": "<|im_end|>", "special": True}  # as older files write a token
    tok_config = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token="<|begin_of_text|>" if llama else None,
                      eos_token="<|endoftext|>" if llama else im_end)
    if llama:
        tok_config["chat_template"] = "{{ bos_token }}" + CHATML
    else:
        (folder / "chat_template.jinja").write_text(CHATML)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return hf_model


def float64_logits(hf_model, idx):
    """transformers' logits in float64, its RMSNorm too (it computes in float32 whatever the input):
    the reference that float32 logits have a rounding error against. The model is float32 again after."""
    def rms_norm_in_float64(self, x):  # transformers' RMSNorm.forward, without the cast to float32
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        for norm in {type(m) for m in hf_model.modules() if type(m).__name__.endswith("RMSNorm")}:
            patch.setattr(norm, "forward", rms_norm_in_float64)
        logits = hf_model.double()(idx).logits
    hf_model.float()
    return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_greedy_generation_equal_transformers(family, tokenizer_json, tmp_path, monkeypatch):
    """Against a float64 reference, our float32 logits are off by at most 1.5 times transformers'
    own float32 error (2e-5 to 2e-4 with these weights): a bug of that size would pass a fixed
    bound of 1e-4, not this one."""
    hf_model = save_family(tmp_path, family, tokenizer_json)
    checkpoint = hf_checkpoint(str(tmp_path))
    model = model_from_checkpoint(checkpoint).eval()
    assert model.config.tie_weights == FAMILIES[family][2]["tie_word_embeddings"]
    idx = torch.randint(VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, theirs, ours = float64_logits(hf_model, idx), hf_model(idx).logits, model(idx)
    assert reference.std() > 1.0  # far from uniform: a wrong layout, rotation or norm would show
    their_error, our_error = ((logits - reference).abs().max().item() for logits in (theirs, ours))
    assert their_error < 1e-3 and our_error <= 1.5 * their_error, (our_error, their_error)

    # greedy: transformers one prompt at a time, ours batched (left-padded) through each decoding path;
    # compile=True is decode_step's path, run eagerly here (torch.compile would take a minute on a CPU)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    prompts = [[1, 5, 9, 200, 17], [1, 42], [1, 3, 4, 250, 251, 252, 7, 8]]
    hf_model.generation_config.eos_token_id = hf_model.generation_config.pad_token_id = None
    expected = [hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                  max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(p):].tolist()
                for p in prompts]
    for decoding in (dict(use_cache=False), dict(use_cache=True), dict(compile=True)):
        assert generate(model, prompts, 12, temperature=0.0, **decoding) == expected, decoding
    assert beam_search(model, prompts, 12, beam_size=1) == expected  # beam search's cache rows follow their beams


@pytest.mark.parametrize("family", ["llama_untied", "qwen2_untied_mqa", "qwen3_untied"])
def test_a_config_without_tie_word_embeddings_is_untied(family, tokenizer_json, tmp_path):
    """transformers reads a config.json without tie_word_embeddings as untied (the default of these
    families' configs): so must we, or the head would be the embedding and every logit differ."""
    save_family(tmp_path, family, tokenizer_json)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    model = model_from_checkpoint(hf_checkpoint(str(tmp_path))).eval()
    assert not hf_model.config.tie_word_embeddings and not model.config.tie_weights
    idx = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_model(idx).logits, rtol=0, atol=1e-3)


def test_llama3_rope_scaling_frequencies(tokenizer_json, tmp_path):
    """Llama 3's rope scaling: the frequencies equal transformers' (all three cases occur at head_dim 8)."""
    hf_model = save_family(tmp_path, "llama_tied_gqa_llama3_rope", tokenizer_json)
    model = model_from_checkpoint(hf_checkpoint(str(tmp_path)))
    expected = hf_model.model.rotary_emb.inv_freq
    torch.testing.assert_close(model.inv_freq, expected, rtol=1e-6, atol=0)
    plain = 1.0 / 10000.0 ** (torch.arange(0, 8, 2).float() / 8)
    assert model.inv_freq[0] == plain[0] and plain[1] / 8 < model.inv_freq[1] < plain[1]  # kept, blended,
    torch.testing.assert_close(model.inv_freq[2:], plain[2:] / 8)  # and slowed down


def test_tokenizer_round_trips_and_matches_transformers(tokenizer_json, tmp_path):
    """Our tokenizer (the `tokenizers` library on the stored tokenizer.json) encodes as transformers'
    does, decodes back to the text, and encodes a prompt as apply_chat_template does (the template
    writes Llama's BOS; tests/test_hf_import.py has prompts without a template)."""
    for family in ("llama_untied", "qwen3_tied"):
        folder = tmp_path / family
        save_family(folder, family, tokenizer_json)
        tok = HFTokenizer(hf_checkpoint(str(folder), chat_template=True)["tokenizer"])
        reference = transformers.AutoTokenizer.from_pretrained(str(folder))
        assert tok.vocab_size == TOKENS
        assert tok.eos_id == reference.eos_token_id and tok.eos_id == SPECIAL.index(reference.eos_token)
        assert tok.bos_id == (SPECIAL.index("<|begin_of_text|>") if family.startswith("llama") else tok.eos_id)
        for text in TEXTS:
            ids = tok.encode(text)
            assert ids == reference.encode(text, add_special_tokens=False)
            assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True)
            if "<|" not in text:
                assert tok.decode(ids) == text
        assert tok.decode([tok.eos_id, 299]) == ""  # EOS and an id past the tokenizer (a padded row) decode to nothing
        chat = reference.apply_chat_template([{"role": "user", "content": TEXTS[0]}],
                                             add_generation_prompt=True, return_dict=True)["input_ids"]
        assert tok.encode_prompt(TEXTS[0]) == chat
        assert (chat[0] == SPECIAL.index("<|begin_of_text|>")) == family.startswith("llama")


def test_every_tensor_is_accounted_for(tokenizer_json, tmp_path):
    """A weight the config does not explain, or one it needs and the file lacks, is an error naming it;
    so is an architecture model.py does not implement, with the supported ones."""
    from safetensors.torch import load_file, save_file
    save_family(tmp_path, "qwen2_tied", tokenizer_json)
    weights = load_file(tmp_path / "model.safetensors")
    save_file(dict(weights, **{"model.layers.0.mlp.extra.weight": torch.zeros(2)}), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"hold model\.layers\.0\.mlp\.extra\.weight, which model\.py has no place"):
        hf_checkpoint(str(tmp_path))
    save_file({k: v for k, v in weights.items() if k != "model.layers.1.self_attn.k_proj.bias"},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"lack model\.layers\.1\.self_attn\.k_proj\.bias"):
        hf_checkpoint(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, architectures=["MistralForCausalLM"])))
    with pytest.raises(ValueError, match="is a MistralForCausalLM; --init_from reads GPT2LMHeadModel, "
                                         "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        hf_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(config, rope_parameters=dict(rope_type="yarn"))))
    with pytest.raises(ValueError, match=r"variant model\.py does not implement \(rope_type=yarn\)"):
        hf_checkpoint(str(tmp_path))


def test_a_hub_name_is_downloaded_and_a_failed_download_is_one_line(tmp_path, monkeypatch):
    """--init_from=owner/name asks the hub (here a stand-in that fails as it does without a network);
    a local folder with config.json is read as it is, and a .pt path or a folder without it is no model."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    asked = []

    def no_network(name, **kwargs):
        asked.append(name)
        raise OSError("Name or service not known\nmore lines")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ValueError, match=r"^--init_from=HuggingFaceTB/SmolLM2-135M: no such folder, and the Hugging "
                                         r"Face hub did not give it \(OSError: Name or service not known\)$"):
        hf_checkpoint("HuggingFaceTB/SmolLM2-135M")
    assert asked == ["HuggingFaceTB/SmolLM2-135M"]
    (tmp_path / "config.json").write_text("{}")
    assert is_hf_model("HuggingFaceTB/SmolLM2-135M") and is_hf_model(str(tmp_path))
    assert not any(map(is_hf_model, ["out/ckpt.pt", str(tmp_path.parent), "gpt2", "./a/b"]))


def test_chunked_head_equals_full_logits_with_an_untied_head(tokenizer_json, tmp_path):
    """train.py's --loss_chunk path reads lm_head.weight, which is not the embedding when untied: same
    loss and gradients as the full logits, for IRL and MLE."""
    from chunked_head import chunked_irl_loss
    from irl_loss import irl_loss, q_and_v
    save_family(tmp_path, "llama_untied", tokenizer_json)
    model = model_from_checkpoint(hf_checkpoint(str(tmp_path)))
    idx = torch.randint(TOKENS, (2, 17), generator=torch.Generator().manual_seed(2))
    idx, targets = idx[:, :-1], idx[:, 1:]
    mask, done = torch.ones(2, 16), torch.zeros(2, 16)
    mask[:, :4], done[:, -1] = 0, 1
    for td_coef in (0.1, 0.0):
        results = []
        for chunked in (False, True):
            model.zero_grad()
            if chunked:
                loss = chunked_irl_loss(model(idx, head=False), model.lm_head.weight, targets, mask, done, td_coef,
                                        1.0, 5)[0]
            else:
                loss = irl_loss(*q_and_v(model(idx), targets), mask, done, td_coef)[0]
            loss.backward()
            results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
        for full, chunk in zip(*results):
            torch.testing.assert_close(chunk, full, rtol=1e-3, atol=1e-4)


# -----------------------------------------------------------------------------
# the scripts, as a user runs them, on a Hugging Face folder
RUN = [flag for flag in TINY if flag not in TINY_MODEL] + ["--block_size=48", "--warmup_iters=1"]


def run_with(argv, **env):
    """python argv... in the repository, one thread, with env added; returns the CompletedProcess."""
    return subprocess.run([sys.executable] + argv, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mine.jsonl"
    path.write_text("".join(json.dumps(dict(prompt=f"Q{i}: what is {i} plus {i + 1}?",
                                            completion=f" {i} plus {i + 1} is {2 * i + 1}, so {2 * i + 1}."))
                            + "\n" for i in range(100)))
    return path


WANDB_STUB = """import json, os
def write(entry):
    with open(os.environ["WANDB_CALLS"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
class Run:
    def log(self, record, step):
        write([step, record])
    def finish(self):
        write("finish")
def init(project, name, config):
    write([project, name])
    return Run()
"""


def test_train_resume_analyze_on_a_llama_folder_with_wandb(tokenizer_json, data, tmp_path):
    """IRL with the full logits and an exact resume from its checkpoint, logged to a stand-in wandb module
    (the real one is not a dependency); analyze_reward.py reads the run with the model's own tokenizer."""
    save_family(tmp_path / "hf", "llama_tied_gqa_llama3_rope", tokenizer_json)
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "wandb.py").write_text(WANDB_STUB)
    common = RUN + [f"--init_from={tmp_path / 'hf'}", f"--dataset={data}", "--eval_interval=2", "--dropout=0.1"]
    straight = run_with(["train.py"] + common + [f"--out_dir={tmp_path / 'a'}", "--max_iters=4", "--wandb_log=True",
                                                 "--wandb_project=tiny"],
                        PYTHONPATH=str(tmp_path / "stub"), WANDB_CALLS=str(tmp_path / "calls.jsonl"),
                        WANDB_MODE="offline")  # no login asked for
    assert straight.returncode == 0, straight.stdout + straight.stderr
    run_script(common + [f"--out_dir={tmp_path / 'b'}", "--max_iters=2"])
    resumed = run_script(common + [f"--out_dir={tmp_path / 'b'}", "--max_iters=4", "--init_from=resume"])
    expected, got = train_losses(straight.stdout), train_losses(resumed.stdout)
    assert sorted(got) == [2, 3] and all(got[i] == expected[i] for i in got)
    a, b = (torch.load(tmp_path / run / "ckpt.pt", weights_only=True) for run in "ab")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["tokenizer"]["kind"] == "hf" and a["model_args"]["llama"] and a["model_args"]["rope_scaling"]

    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == ["tiny", "a"] and calls[-1] == "finish"
    steps = [step for step, _ in calls[1:-1]]
    assert steps == sorted(steps) and [r["val/loss"] for _, r in calls[1:-1] if "val/loss" in r] == \
        [json.loads(line)["val/loss"] for line in open(tmp_path / "a" / "log.jsonl")]  # log.jsonl's records
    assert {step for step, r in calls[1:-1] if "train/loss" in r} == {0, 1, 2, 3}  # and the progress lines

    # analyze_reward.py with the model's own tokenizer: each completion's rewards, returns and v_0, and
    # the summary's numbers, against a loop over the model's forward() in float64 (no samples here)
    run_script([f"--out_dir={tmp_path / 'a'}", "--samples=none", "--device=cpu"], "analyze_reward.py")
    check_rewards_against_naive_loop(tmp_path / "a", tmp_path / "a", "a", sample_metric=[])


def test_train_chunked_mle_with_chat_template_then_sample(tokenizer_json, data, tmp_path):
    """MLE through the chunked head on a Qwen3 folder, each prompt in the model's chat template, which
    the checkpoint keeps for sample.py (which encodes a prompt as transformers' apply_chat_template
    does: tests/test_hf_import.py)."""
    save_family(tmp_path / "hf", "qwen3_untied", tokenizer_json)
    out = tmp_path / "out"
    run_script(RUN + [f"--init_from={tmp_path / 'hf'}", f"--dataset={data}", "--loss=mle", "--loss_chunk=16",
                      "--chat_template=True", "--max_iters=2", "--eval_interval=2", f"--out_dir={out}"])
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["tokenizer"]["chat_template"] == CHATML and not checkpoint["model_args"]["tie_weights"]
    sampled = run_script([f"--out_dir={out}", "--start=Q3: what is 3 plus 4?", "--num_samples=2",
                          "--max_new_tokens=6", "--device=cpu"], "sample.py")
    rows = [json.loads(line) for line in open(out / "samples_start_t1.jsonl")]
    assert [r["prompt"] for r in rows] == ["Q3: what is 3 plus 4?"] * 2, sampled.stdout


def test_wandb_missing_and_out_of_memory_stop_with_one_line(tmp_path):
    """--wandb_log without wandb installed, and a run that runs out of GPU memory on the logits: one
    line each, naming the fix."""
    missing = run_script(RUN + ["--wandb_log=True", f"--out_dir={tmp_path / 'w'}"], check=False)
    assert missing.returncode != 0 and missing.stderr.strip().splitlines()[-1] == \
        "train.py: error: --wandb_log=True needs Weights & Biases, which is not installed: pip install wandb"
    # CUDA out of memory on the logits, simulated where the full logits are read
    argv = ["train.py"] + RUN + ["--max_iters=1", f"--out_dir={tmp_path / 'o'}"]
    oom = run_with(["-c", "import runpy, sys, torch, irl_loss\n"
                          "def q_and_v(*args): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 9 GiB')\n"
                          "irl_loss.q_and_v = q_and_v\n"
                          f"sys.argv = {argv!r}\n"
                          "runpy.run_path('train.py', run_name='__main__')\n"])
    assert oom.returncode == 1 and "Traceback" not in oom.stderr, oom.stderr
    assert oom.stderr.startswith("train.py: error: CUDA out of memory (CUDA out of memory. Tried to allocate 9 GiB); "
                                 "pass --loss_chunk=1024")
