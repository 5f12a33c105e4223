"""Fine-tuning GPT-2 from Hugging Face transformers: a tiny, randomly initialised GPT2LMHeadModel,
saved with save_pretrained, gives the same logits in our GPT (transformers itself is the
reference), and train.py fine-tunes it. Skipped when transformers is not installed
(requirements-dev.txt installs it); no test downloads anything."""
import sys

import pytest
import torch

from checkpoint import model_from_checkpoint
from hf_import import gpt2_checkpoint
from tests.helpers import TINY, TINY_MODEL, run_script

TINY_RUN = [flag for flag in TINY if flag not in TINY_MODEL]  # the pretrained model keeps its shape


def save_tiny_gpt2(path, vocab_size, seed=0):
    """A random GPT-2 with weights far from its init (test_llama.randomise: the matrices scaled up,
    every norm weight and bias random), so that its logits are far from uniform (at GPT-2's init
    they differ by less than the float32 tolerance, and a transposed matrix would pass) and a
    swapped ln_1/ln_2 or bias shows."""
    transformers = pytest.importorskip("transformers")
    from tests.test_llama import randomise
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
                                     tie_word_embeddings=True)
    hf_model = randomise(transformers.GPT2LMHeadModel(config).eval())
    hf_model.save_pretrained(path)
    return hf_model


def test_logits_equal_transformers(tmp_path):
    """In float64 (GPT-2 in transformers computes in the weights' dtype throughout): equal to 1e-9."""
    hf_model = save_tiny_gpt2(tmp_path, vocab_size=97)
    model = model_from_checkpoint(gpt2_checkpoint(str(tmp_path))).eval()
    idx = torch.randint(97, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model.double()(idx).logits
        got = model.double()(idx)
    assert expected.std() > 1.0  # far from uniform: a wrong layout or activation would show
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_missing_transformers_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(ValueError, match="pip install transformers"):
        gpt2_checkpoint("gpt2")


def test_train_fine_tunes_a_local_gpt2(tmp_path):
    save_tiny_gpt2(tmp_path / "gpt2", vocab_size=50257)  # GPT-2's vocabulary: its BPE tokenizer
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(f'{{"prompt": "Q{i}:", "completion": " answer {i}"}}\n' for i in range(30)))
    out = tmp_path / "out"
    run_script(TINY_RUN + [f"--init_from={tmp_path / 'gpt2'}", f"--dataset={data}", "--max_iters=2",
                       "--eval_interval=2", "--loss_chunk=64", f"--out_dir={out}"])
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["tokenizer"] == {"kind": "gpt2"} and checkpoint["iter_num"] == 2
    assert checkpoint["model_args"]["gelu_approximate"] == "tanh"  # GPT-2's gelu_new, kept for sampling
    assert checkpoint["model_args"]["n_layer"] == 2  # the pretrained shape
