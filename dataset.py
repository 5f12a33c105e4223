"""
Demonstrations: (prompt, completion) pairs, their tokens, and the masks of docs/method.md section 2.

A dataset is either a built-in name (`arith`, `shakespeare`: the folder data/<name>/, made by
data/<name>/prepare.py on first use) or a path: a folder with train/val/test.jsonl and an optional
meta.json, or a single JSONL file of {"prompt": ..., "completion": ...} rows, split 90/5/5 by a
fixed shuffle.

A row of a batch holds exactly one example, right-padded:

    tokens   = start + prompt + completion + [EOS]     (start: [EOS] for char and GPT-2, marking
                                                        "start" as GPT-2 does; for a Hugging Face
                                                        model what its own tokenizer puts first:
                                                        Llama 3's BOS, nothing for Qwen or SmolLM2)
    idx      = tokens[:-1]                             the states s_t
    targets  = tokens[1:]                              the actions a_t = y_t
    loss_mask_t = 1 where targets_t is a completion token (the final EOS included)
    done_t      = 1 where targets_t is that final EOS (the next state is terminal)

Too long for block_size: the prompt is cut from the left first (its end matters most); if the
completion alone does not fit, it is cut at the right. Such an episode is truncated, not
terminated: no done, and irl_loss drops its last TD term.
"""
import importlib
import json
import os
import random
import sys

import torch

from configurator import configure
from runfiles import check_out_dir, json_problem, read_json, read_text, stop_on_interrupt
from generate import generate
from tokenizer import CharTokenizer, GPT2Tokenizer, check_tokenizer_state, tokenizer_from_state

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SPLITS = ("train", "val", "test")


def jsonl_rows(path, what="JSONL file"):
    """(line number, row) for each non-blank line of a JSONL file; ValueError naming the file and
    the line that is not UTF-8 or not JSON."""
    for line_no, line in enumerate(read_text(path, what).split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({json_problem(err)}); "
                                 f"each line of a {what} must be one whole JSON object") from None
            yield line_no, row


def read_jsonl(path):
    """The rows of a JSONL file as (prompt, completion) pairs; one clear error per bad line."""
    pairs = []
    for line_no, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                or not isinstance(row.get("completion"), str):
            raise ValueError(f'{path}:{line_no}: needs string fields "prompt" and "completion"')
        try:
            (row["prompt"] + row["completion"]).encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate, from a "\ud800" escape
            raise ValueError(f"{path}:{line_no}: {err.object[err.start]!r} is half a character "
                             f"(a lone surrogate); write the text as whole UTF-8 "
                             f"characters") from None
        pairs.append((row["prompt"], row["completion"]))
    if not pairs:
        raise ValueError(f"{path} has no examples; add JSONL rows with prompt and completion")
    return pairs


def read_meta(path):
    """A dataset's meta.json: {name, task, tokenizer}, each optional, each checked (file and
    line)."""
    meta = read_json(path, "meta.json")
    if not isinstance(meta.get("name", ""), str):
        raise ValueError(f"{path}: name is {meta['name']!r}, not a string")
    task = meta.get("task", "text")
    if task != "text" and not (isinstance(task, str) and task.isidentifier()
                               and os.path.exists(os.path.join(DATA_DIR, task, "prepare.py"))
                               and hasattr(importlib.import_module(f"data.{task}.prepare"),
                                           "verify")):
        raise ValueError(f"{path}: task {task!r} has no verifier "
                         f"(verify() in data/<task>/prepare.py); use text, arith or cmudict")
    if "tokenizer" in meta:
        try:
            check_tokenizer_state(meta["tokenizer"])
        except ValueError as err:
            raise ValueError(f"{path}: tokenizer: {err}") from None
    return meta


def prepare_task(name, out_dir=None, **knobs):
    """Prepare task `name` with data/<name>/prepare.py into out_dir (default data/<name>) on first
    use, and again when the knobs its meta.json records differ from prepare.py's now (its
    constants, or the knobs passed: arith's MAX_OPERAND=30, say). True when it prepared."""
    module = importlib.import_module(f"data.{name}.prepare")
    where = out_dir or f"data/{name}"
    meta = os.path.join(out_dir or os.path.join(DATA_DIR, name), "meta.json")
    if not os.path.exists(meta):
        print(f"preparing {where} (first use) ...")
    elif hasattr(module, "settings") and \
            read_meta(meta).get("settings") != module.settings(**knobs):
        print(f"{where} was made with other settings than data/{name}/prepare.py's: "
              f"preparing it again")
    else:
        return False
    module.prepare(out_dir, **knobs)
    return True


def dataset_folder(dataset):
    """The folder of a dataset that is not a .jsonl file: a path, or the name of data/<name>/."""
    return dataset if os.path.isdir(dataset) else os.path.join(DATA_DIR, dataset)


def dataset_inputs(dataset, flag):
    """check_outputs()'s inputs for a dataset: the files of it that exist (a JSONL file, or a
    folder's splits and meta.json)."""
    paths = [dataset] if os.path.isfile(dataset) else [
        os.path.join(dataset_folder(dataset), name)
        for name in [f"{s}.jsonl" for s in SPLITS] + ["meta.json"]]
    return [(f"a file of {flag}", path) for path in paths if os.path.isfile(path)]


def load_dataset(dataset, tokenizer=""):
    """Returns dict(name, task, splits={split: [(prompt, completion)]}, tokenizer, verify, scores).
    tokenizer: '' keeps the dataset's own (char by default), 'char' or 'gpt2' overrides it,
    a Tokenizer object (e.g. from a checkpoint) is used as is."""
    meta = {}
    if os.path.isfile(dataset):  # one JSONL file: a fixed 90/5/5 split
        pairs = read_jsonl(dataset)
        order = list(range(len(pairs)))
        random.Random(0).shuffle(order)
        n_val = n_test = max(1, len(pairs) // 20)
        if len(pairs) < 3:
            raise ValueError(f"{dataset} has {len(pairs)} examples; "
                             f"it needs at least 3 (train/val/test)")
        val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
        splits = {"train": [pairs[i] for i in train], "val": [pairs[i] for i in val],
                  "test": [pairs[i] for i in test]}
        name, paths = os.path.splitext(os.path.basename(dataset))[0], [dataset]
    else:
        folder = dataset_folder(dataset)
        if not os.path.isdir(dataset):
            if os.path.exists(os.path.join(folder, "prepare.py")):
                prepare_task(dataset)
            elif not os.path.exists(os.path.join(folder, "meta.json")):
                # meant as a path, not a built-in name
                if dataset.endswith(".jsonl") or os.sep in dataset:
                    raise ValueError(f"dataset {dataset} does not exist (no such file or folder); "
                                     f"check the path")
                raise ValueError(f"unknown dataset {dataset!r}; use arith, shakespeare, "
                                 f"a folder with train/val/test.jsonl or a .jsonl file")
        if os.path.exists(os.path.join(folder, "meta.json")):
            meta = read_meta(os.path.join(folder, "meta.json"))
        for s in ("train", "val"):
            if not os.path.exists(os.path.join(folder, f"{s}.jsonl")):
                raise ValueError(f"{folder} has no {s}.jsonl; a dataset folder needs train.jsonl "
                                 f"and val.jsonl (test.jsonl is optional)")
        splits = {s: read_jsonl(os.path.join(folder, f"{s}.jsonl")) for s in SPLITS
                  if os.path.exists(os.path.join(folder, f"{s}.jsonl")) or s != "test"}
        paths = [os.path.join(folder, f"{s}.jsonl") for s in splits]
        name = meta.get("name", os.path.basename(os.path.normpath(folder)))

    if isinstance(tokenizer, str) and tokenizer not in ("", "char", "gpt2"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; use char or gpt2 "
                         f"(or leave --tokenizer out)")
    if not isinstance(tokenizer, str):
        tok = tokenizer
        check_alphabet(tok, splits, paths)
    elif tokenizer == "gpt2":
        tok = GPT2Tokenizer()
    elif tokenizer == "char" or "tokenizer" not in meta:
        text = "".join(p + c for pairs in splits.values() for p, c in pairs)
        if not text:
            raise ValueError(f"dataset {dataset}: every prompt and completion is empty; "
                             f"a char tokenizer needs text to learn its characters from")
        tok = CharTokenizer(text)
    else:
        tok = tokenizer_from_state(meta["tokenizer"])

    task = meta.get("task", "text")
    module = importlib.import_module(f"data.{task}.prepare") if task != "text" else None
    verify = module.verify if module else None
    # a task's metrics beyond right / wrong (cmudict: PER, BLEU)
    scores = getattr(module, "scores", None)
    return dict(name=name, task=task, splits=splits, tokenizer=tok, verify=verify, scores=scores)


def check_alphabet(tok, splits, paths):
    """A char tokenizer made on other data (a checkpoint's) knows only its own characters:
    ValueError naming the file (of paths, the data's), line and first character of the splits it
    lacks."""
    if not isinstance(tok, CharTokenizer):
        return
    unknown = set().union(*(p + c for pairs in splits.values() for p, c in pairs)) - set(tok.chars)
    if not unknown:
        return
    path, line_no, ch = next((path, line_no, ch) for path in paths
                             for line_no, row in jsonl_rows(path)
                             for ch in row["prompt"] + row["completion"] if ch in unknown)
    raise ValueError(f"{path}:{line_no}: character {ch!r} is not in this char vocabulary "
                     f"(the checkpoint's {len(tok.chars)} characters); "
                     f"use data written in the alphabet it was trained on")


def prepare_main(prepare, script_path):
    """`python data/<name>/prepare.py [--out_dir=folder]`: prepare(folder) (default: the script's
    own), with one line for a bad flag, a folder that cannot be written or a failed write."""
    stop_on_interrupt("prepare.py")
    out_dir = configure(dict(out_dir=""), script_path)["out_dir"] or \
        os.path.dirname(os.path.abspath(script_path))
    try:
        check_out_dir(out_dir)
        prepare(out_dir)
    except (ValueError, OSError) as err:
        sys.exit(f"prepare.py: error: {err}")
    counts = {split: read_text(os.path.join(out_dir, f"{split}.jsonl")).count("\n")
              for split in SPLITS}
    print(f"wrote {out_dir}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))


def encode_example(tok, prompt, completion=None):
    """Token ids of one example: (start + prompt, completion + [EOS]); the completion is None for
    a bare prompt (sampling). The prompt is encoded as the model's own tokenizer does (a pretrained
    model's BOS where it adds one, its chat template if it carries one; tokenizer.encode_prompt)."""
    prompt_ids = tok.encode_prompt(prompt)  # the start of a row, then the prompt
    if completion is None:
        return prompt_ids
    return prompt_ids, tok.encode(completion) + [tok.eos_id]


def fit_to_block(prompt_ids, completion_ids, block_size):
    """Cut an example to at most block_size + 1 tokens (block_size positions of idx/targets).
    Returns (prompt_ids, completion_ids, prompt_cut, completion_cut)."""
    room = block_size + 1
    # the prompt's end; at least [BOS], to predict the first action from
    kept = max(1, room - len(completion_ids))
    # a prompt of [BOS] alone is never cut, however long its completion
    prompt_cut = len(prompt_ids) > kept
    if prompt_cut:
        prompt_ids = prompt_ids[-kept:]
    completion_cut = len(prompt_ids) + len(completion_ids) > room
    if completion_cut:  # truncated, not terminated: the final EOS is cut off with the tail
        completion_ids = completion_ids[:room - len(prompt_ids)]
    return prompt_ids, completion_ids, prompt_cut, completion_cut


def encode_scored(tok, prompt, completion, terminated, block_size):
    """(prompt ids, completion ids) of a completion to score, fitted to the window; no EOS for one
    that did not end (analyze_reward.py, critic.py)."""
    prompt_ids, completion_ids = encode_example(tok, prompt, completion)
    completion_ids = completion_ids if terminated else completion_ids[:-1]
    return fit_to_block(prompt_ids, completion_ids, block_size)[:2]


def encode_split(tok, pairs, block_size):
    """Encode and fit every example; returns (examples, counts of cut prompts and completions)."""
    examples, n_prompt_cut, n_completion_cut = [], 0, 0
    for prompt, completion in pairs:
        p, c, prompt_cut, completion_cut = fit_to_block(*encode_example(tok, prompt, completion),
                                                        block_size)
        examples.append((p, c))
        n_prompt_cut += prompt_cut
        n_completion_cut += completion_cut
    return examples, dict(prompt_cut=n_prompt_cut, completion_cut=n_completion_cut)


def make_batch(examples, eos_id, pad_to=None):
    """Right-padded (B, T) tensors idx, targets, loss_mask, done from fitted (prompt, completion)
    token lists. T = the longest row, or pad_to (a fixed shape avoids recompiles)."""
    rows = [p + c for p, c in examples]
    T = pad_to or max(len(r) for r in rows) - 1
    idx = torch.full((len(rows), T), eos_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)  # -1: no target (padding)
    loss_mask = torch.zeros(len(rows), T)
    done = torch.zeros(len(rows), T)
    for i, ((p, c), row) in enumerate(zip(examples, rows)):
        n = len(row) - 1
        idx[i, :n] = torch.tensor(row[:-1])
        targets[i, :n] = torch.tensor(row[1:])
        loss_mask[i, len(p) - 1:n] = 1.0  # targets_t = row[t + 1] is a completion token from here
        if c and c[-1] == eos_id:  # ends with its own EOS: terminated, not truncated
            done[i, n - 1] = 1.0
    return dict(idx=idx, targets=targets, loss_mask=loss_mask, done=done)


def sample_examples(model, examples, eos_id, max_new_tokens, generator=None):
    """The policy's own demonstrations for the prompts of `examples`: (prompt, sampled completion)
    pairs for make_batch, sampled from the policy itself (temperature 1) with the key/value cache
    and no gradient. A sample that stops without EOS (max_new_tokens or the window) keeps no EOS, so
    make_batch treats it as truncated, not terminated. Online IQ-Learn and GAIL both use this."""
    prompts = [prompt for prompt, _ in examples]
    completions = generate(model, prompts, max_new_tokens, temperature=1.0, eos_id=eos_id,
                           generator=generator)
    return list(zip(prompts, completions))
