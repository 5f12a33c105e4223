"""Masks, done, truncation and loading of demonstrations (docs/method.md section 2), on hand-built examples."""
import json

import pytest

from dataset import encode_example, encode_split, fit_to_block, load_dataset, make_batch, read_jsonl
from tokenizer import CharTokenizer, GPT2Tokenizer, tokenizer_from_state

E = 9  # the EOS id of a 9-character vocabulary


def test_make_batch_masks_by_hand():
    # tokens = [EOS] p1 p2 | c1 c2 EOS   and a second, longer row
    examples = [([E, 1, 2], [3, 4, E]), ([E, 5], [6, 7, 8, 1, E])]
    batch = make_batch(examples, eos_id=E)
    assert batch["idx"].tolist() == [[E, 1, 2, 3, 4, E], [E, 5, 6, 7, 8, 1]]
    assert batch["targets"].tolist() == [[1, 2, 3, 4, E, -1], [5, 6, 7, 8, 1, E]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    assert batch["done"].tolist() == [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]


def test_truncation_prompt_first_then_completion():
    prompt, completion = [E, 1, 2, 3, 4], [5, 6, E]
    # fits: 8 tokens = block_size 7 + 1
    assert fit_to_block(prompt, completion, 7) == (prompt, completion, False, False)
    # the prompt is cut from the left first: 3 + 3 tokens = block_size 5 + 1
    assert fit_to_block(prompt, completion, 5) == ([2, 3, 4], completion, True, False)
    # the completion alone does not fit: one prompt token stays, the completion is cut (no EOS)
    p, c, prompt_cut, completion_cut = fit_to_block(prompt, completion, 2)
    assert (p, c, prompt_cut, completion_cut) == ([4], [5, 6], True, True)
    batch = make_batch([(p, c)], eos_id=E)
    assert batch["loss_mask"].tolist() == [[1, 1]] and batch["done"].tolist() == [[0, 0]]  # truncated
    # a prompt of the start token alone (pre-training text) is never cut, however long the completion
    assert fit_to_block([E], [5, 6, 7, E], 3) == ([E], [5, 6, 7], False, True)


def test_encode_split_reports_cuts():
    tok = CharTokenizer("abcdef")
    examples, cuts = encode_split(tok, [("ab", "de"), ("abcdef", "a"), ("a", "abcdef")], block_size=5)
    assert cuts == dict(prompt_cut=2, completion_cut=1)
    assert all(len(p) + len(c) <= 6 for p, c in examples)


def test_char_tokenizer_round_trip_and_errors():
    tok = CharTokenizer("hello world")
    prompt_ids, completion_ids = encode_example(tok, "hello", " world")
    assert prompt_ids[0] == tok.eos_id and completion_ids[-1] == tok.eos_id
    assert tok.decode(prompt_ids + completion_ids) == "hello world"
    assert tokenizer_from_state(tok.state()).encode("low") == tok.encode("low")
    with pytest.raises(ValueError, match="not in this char vocabulary"):
        tok.encode("hello?")


def test_gpt2_bpe_offline_round_trip():
    tok = GPT2Tokenizer()
    text = "To be, or not to be: that is the question.\n  Whether 'tis nobler in the mind 1234!"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids, as OpenAI's tokenizer gives them
    assert tok.eos_id == 50256 and tok.decode([15496, 50256]) == "Hello"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_file_dataset_split_and_tokenizers(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(40)])
    data = load_dataset(str(path))
    assert [len(data["splits"][s]) for s in ("train", "val", "test")] == [36, 2, 2]
    assert data["task"] == "text" and data["verify"] is None
    assert set(data["tokenizer"].chars) == set("qa0123456789")
    assert load_dataset(str(path))["splits"] == data["splits"]  # the split is fixed
    assert load_dataset(str(path), "gpt2")["tokenizer"].eos_id == 50256


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n', "mine.jsonl:2: not valid JSON"),
    ('{"prompt": "a"}\n', 'mine.jsonl:1: needs string fields "prompt" and "completion"'),
    ("\n", "has no examples"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_jsonl(str(path))


def test_folder_dataset(tmp_path):
    for split in ("train", "val"):
        write_jsonl(tmp_path / f"{split}.jsonl", [{"prompt": "x", "completion": split}])
    data = load_dataset(str(tmp_path))
    assert data["splits"] == {"train": [("x", "train")], "val": [("x", "val")]}
