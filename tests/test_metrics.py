"""metrics.py against examples worked by hand (the arithmetic is in the comments), and against the
independent references it promises to equal: Google's rouge-score for ROUGE, nltk for Self-BLEU
(requirements-dev.txt; those tests skip without them)."""
import math
import random

import pytest

from metrics import (bleu4, distinct_n, mean_se, rouge_l, rouge_lsum, rouge_n, rouge_tokens, self_bleu,
                     spearman, words)

CAT_SAT = "the cat sat on the mat"
CAT_IS = "the cat is on the mat"


# ----------------------------------------------------------------------------- words

def test_words_arithmetic():
    assert words("17+23=40") == ["17", "+", "23", "=", "40"]
    assert words("  12 * 3 = 36 ") == ["12", "*", "3", "=", "36"]


def test_words_english_keeps_case_and_splits_punctuation():
    assert words("Hello, world! It's 3.5") == \
        ["Hello", ",", "world", "!", "It", "'", "s", "3", ".", "5"]
    assert words("") == []


# ----------------------------------------------------------------------------- ROUGE

def test_rouge_tokens_lowercase_and_drop_everything_but_a_z_0_9():
    assert rouge_tokens("Hello, world! It's 3.5") == ["hello", "world", "it", "s", "3", "5"]
    assert rouge_tokens("17+23=40") == ["17", "23", "40"]
    assert rouge_tokens("caf\u00e9 na\u00efve \u03b1\u03b2\u03b3") == ["caf", "na", "ve"]  # non-ASCII letters separate
    assert rouge_tokens("  \n\t") == [] and rouge_tokens("") == []


def test_rouge_ignores_case_and_punctuation():
    # "Hello, world!" -> hello world: the same tokens as the reference -> every ROUGE is 1
    # (under the old tokenisation: Hello , world ! vs hello world shared only "world": P 1/4, R 1/2 -> 1/3)
    for rouge in (lambda c, r: rouge_n(c, r, 1), lambda c, r: rouge_n(c, r, 2), rouge_l, rouge_lsum):
        assert rouge("Hello, world!", "hello world") == pytest.approx(1.0)


# The hand-worked examples written for the old case- and punctuation-keeping tokenisation (from here
# to the empty cases) are lowercase words without punctuation: none of their expected values changed.

def test_rouge_same_length_example():
    # cand: the cat sat on the mat      ref: the cat is on the mat      (6 tokens each)
    # unigrams: the x2 both sides -> 2, cat 1, on 1, mat 1; sat/is unmatched -> overlap 5
    #   P = R = 5/6 -> F = 5/6
    assert rouge_n(CAT_SAT, CAT_IS, 1) == pytest.approx(5 / 6)
    # bigrams cand: the-cat cat-sat sat-on on-the the-mat; ref: the-cat cat-is is-on on-the the-mat
    #   shared: the-cat, on-the, the-mat -> 3 of 5 each side -> F = 3/5
    assert rouge_n(CAT_SAT, CAT_IS, 2) == pytest.approx(3 / 5)
    # LCS: "the cat on the mat" = 5 -> P = R = 5/6 -> F = 5/6
    assert rouge_l(CAT_SAT, CAT_IS) == pytest.approx(5 / 6)


def test_rouge_short_candidate():
    # cand "the cat" vs ref CAT_SAT
    # ROUGE-1: overlap 2, P = 2/2, R = 2/6 -> F = 2 * 1 * 1/3 / (4/3) = 1/2
    assert rouge_n("the cat", CAT_SAT, 1) == pytest.approx(1 / 2)
    # ROUGE-2: the-cat matches, P = 1/1, R = 1/5 -> F = 2 * 1/5 / (6/5) = 1/3
    assert rouge_n("the cat", CAT_SAT, 2) == pytest.approx(1 / 3)
    # ROUGE-L: LCS 2 -> same as ROUGE-1 here, 1/2
    assert rouge_l("the cat", CAT_SAT) == pytest.approx(1 / 2)


def test_rouge_clipping_and_gaps():
    # cand "the the the" vs ref "the cat": "the" counts clipped to min(3, 1) = 1
    #   P = 1/3, R = 1/2 -> F = 2 * (1/6) / (5/6) = 2/5
    assert rouge_n("the the the", "the cat", 1) == pytest.approx(2 / 5)
    # LCS need not be contiguous: "a b c d" vs "a c b d" -> LCS 3 (a b d), P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(3 / 4)


def test_rouge_empty_or_too_short_is_zero():
    assert rouge_n("", CAT_SAT, 1) == 0.0
    assert rouge_n("cat", CAT_SAT, 2) == 0.0        # no bigrams on the candidate side
    assert rouge_l("dog", CAT_SAT) == 0.0
    assert rouge_l("", "") == 0.0
    assert rouge_lsum("", CAT_SAT) == 0.0
    assert rouge_lsum("!!\n\n", "?") == 0.0         # lines but no tokens


def test_rouge_lsum_union_lcs_by_hand():
    # ref "a b c d" (one sentence), cand sentences "c d" and "a b"
    # rougeL on the whole texts: c d a b vs a b c d -> LCS 2 (a b, or c d), P = R = 2/4 -> F = 1/2
    assert rouge_l("c d\na b", "a b c d") == pytest.approx(1 / 2)
    # rougeLsum: LCS(ref, "c d") covers c d, LCS(ref, "a b") covers a b; their union is all 4 tokens
    #   of the ref -> hits 4, P = 4/4, R = 4/4 -> F = 1
    assert rouge_lsum("c d\na b", "a b c d") == pytest.approx(1.0)
    # Lin (2004) section 3.2, w1..w9 written a..i: ref w1 w2 w3 w4 w5, cands w1 w2 w6 w7 w8 and w1 w3 w8 w9 w5
    #   LCSs: w1 w2 and w1 w3 w5 -> union w1 w2 w3 w5 -> hits 4, P = 4/10, R = 4/5 -> F = 8/15
    assert rouge_lsum("a b f g h\na c h i e", "a b c d e") == pytest.approx(8 / 15)


def test_rouge_lsum_credits_a_candidate_token_once():
    # ref sentences "a b" and "a b", cand "a b": each ref sentence's union is a b, 4 tokens in all,
    # but the candidate has one a and one b -> hits 2; P = 2/2, R = 2/4 -> F = 2/3
    assert rouge_lsum("a b", "a b\na b") == pytest.approx(2 / 3)


ROUGE_WORDS = ["the", "The", "THE", "cat", "cat.", "cat,", "sat", "on", "mat!", "a", "dog's", "42", "4.2",
               "17+23=40", "caf\u00e9", "na\u00efve", "\u00c9t\u00e9", "\u732b", "\u212a", "\u0130i", "--", "(x)", ""]
ROUGE_EDGE_PAIRS = [
    ("Hello, world!", "hello world"), ("", ""), ("", "cat"), ("cat", ""), ("...", "!!!"), ("\n\n", "a\n"),
    ("The cat.\nThe mat.", "the cat sat\non the mat"), ("c d\na b", "a b c d"), ("a b", "a b\na b"),
    ("a a a b\nb a", "a b\nb b a\na"), ("  \n  x  \n", "x\n\n\nx"), ("\u732b cat \u732b", "cat"),
    ("r\u00e9sum\u00e9 r\u00e9sum\u00e9", "resume"), ("\u212aelvin", "kelvin"), ("\u0130stanbul", "istanbul"),
    ("line one\r\nline two", "line one\nline two"),
]


def random_text(rng):
    lines = [" ".join(rng.choice(ROUGE_WORDS) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))]
    return "\n".join(lines)


def test_rouge_matches_rouge_score():
    """rouge_n / rouge_l / rouge_lsum against rouge-score's RougeScorer with its defaults (no
    stemmer) on edge cases and random multi-line texts with case, punctuation and unicode."""
    # the submodule, not the package: rouge_score imports but its scorer needs absl-py (a dependency)
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    rng = random.Random(0)
    pairs = ROUGE_EDGE_PAIRS + [(random_text(rng), random_text(rng)) for _ in range(40)]
    for cand, ref in pairs:
        expected = scorer.score(ref, cand)  # score(target, prediction)
        ours = dict(rouge1=rouge_n(cand, ref, 1), rouge2=rouge_n(cand, ref, 2), rougeL=rouge_l(cand, ref),
                    rougeLsum=rouge_lsum(cand, ref))
        for key, value in ours.items():
            assert value == pytest.approx(expected[key].fmeasure, abs=1e-12), (key, cand, ref)
    # the random texts are not all trivial: they do share n-grams and lines
    assert sum(rouge_n(c, r, 2) > 0 for c, r in pairs) >= 10
    assert sum(rouge_lsum(c, r) != rouge_l(c, r) for c, r in pairs) >= 10



# ----------------------------------------------------------------------------- BLEU

def test_bleu_brevity_penalty_and_smoothing():
    # cand "the cat sat" vs ref CAT_SAT: p1 = 3/3, p2 = 2/2, p3 = 1/1,
    # p4: no 4-grams, 0 matches -> smoothed 0.1 / max(1, 0) = 0.1
    # BP: c = 3, r = 6 -> exp(1 - 6/3) = e^-1
    # BLEU = e^-1 * (1 * 1 * 1 * 0.1)^(1/4) = 0.36788 * 0.56234 = 0.20687
    expected = math.exp(-1) * 0.1 ** 0.25
    assert bleu4("the cat sat", [CAT_SAT]) == pytest.approx(expected)
    assert bleu4("the cat sat", [CAT_SAT]) == pytest.approx(0.20687, abs=1e-5)
    # the same precisions against a reference of the candidate's own length (c = r): no penalty, and the
    # smoothed p4 alone: 0.1^(1/4) = 0.56234; so the e^-1 above is the brevity penalty and nothing else
    assert bleu4("the cat sat", ["the cat sat"]) == pytest.approx(0.56234, abs=1e-5)
    assert bleu4("the cat sat", ["the cat sat"]) * math.exp(-1) == pytest.approx(bleu4("the cat sat", [CAT_SAT]))


def test_bleu_closest_reference_tie_takes_shorter():
    # cand "a b c d" (c = 4), refs "a b" (2) and "a b c d e f" (6): both 2 away -> r = 2.
    # c > r -> BP = 1 (had it taken 6, BP = exp(1 - 6/4) = 0.61).
    # All n-grams of the candidate occur in the long ref: p1..p4 = 4/4, 3/3, 2/2, 1/1 -> BLEU = 1
    assert bleu4("a b c d", ["a b", "a b c d e f"]) == pytest.approx(1.0)


def test_bleu_clips_by_max_count_over_references():
    # cand "a a a a b" ; refs "a a b" and "a b": max count of a = 2, b = 1
    # p1 = (2 + 1) / 5 = 3/5 ; bigrams cand: aa x3, ab -> refs max aa 1, ab 1 -> 2/4
    # trigrams cand: aaa x2, aab -> "a a b" has aab -> 1/3
    # 4-grams cand: aaaa, aaab -> none -> smoothed 0.1/2
    # BP: c = 5, closest r = 3 -> c > r -> 1
    expected = (3 / 5 * 2 / 4 * 1 / 3 * 0.1 / 2) ** 0.25
    assert bleu4("a a a a b", ["a a b", "a b"]) == pytest.approx(expected)


def test_bleu_degenerate():
    assert bleu4("", [CAT_SAT]) == 0.0
    assert bleu4("dog ran", [CAT_SAT]) == 0.0         # no unigram match -> exactly 0


# ----------------------------------------------------------------------------- Self-BLEU

def test_self_bleu_identical_is_one():
    assert self_bleu([CAT_SAT] * 3) == pytest.approx(1.0)


def test_self_bleu_disjoint_is_zero():
    # No shared unigram -> BLEU is 0 by the nltk rule (smoothing alone would give
    # (0.1/5 * 0.1/4 * 0.1/3 * 0.1/2)^(1/4) = 0.030).
    assert self_bleu(["a b c d e", "f g h i j", "k l m n o"]) == 0.0


def test_self_bleu_two_samples_by_hand():
    # A = the cat sat on the mat ; B = the cat sat on a mat   (both 6 tokens, BP = 1)
    # A vs B: p1: the min(2,1)=1, cat, sat, on, mat -> 5/6
    #         p2: the-cat cat-sat sat-on | on-the the-mat unmatched -> 3/5
    #         p3: the-cat-sat cat-sat-on | sat-on-the on-the-mat unmatched -> 2/4
    #         p4: the-cat-sat-on | cat-sat-on-the sat-on-the-mat unmatched -> 1/3
    #   BLEU = (5/6 * 3/5 * 2/4 * 1/3)^(1/4) = (1/12)^(1/4) = 0.53728
    # B vs A: p1: 'a' unmatched -> 5/6; p2: on-a a-mat unmatched -> 3/5; p3 2/4; p4 1/3 -> same
    # Self-BLEU = mean of the two = (1/12)^(1/4)
    samples = [CAT_SAT, "the cat sat on a mat"]
    assert self_bleu(samples) == pytest.approx((1 / 12) ** 0.25)
    assert self_bleu(samples) == pytest.approx(0.53728, abs=1e-5)


def test_self_bleu_matches_nltk():
    """self_bleu against the usual Self-BLEU: nltk's sentence_bleu(method1) of each sample (words())
    against the others, averaged; random groups of 2-5 samples with short, empty and repeated ones."""
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    smooth, sentence_bleu = bleu_score.SmoothingFunction().method1, bleu_score.sentence_bleu
    rng = random.Random(0)
    vocab = ["the", "cat", "sat", "on", "mat", "a", ".", ",", "7+3=10", "Cat"]
    for _ in range(50):
        samples = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(2, 5))]
        tokens = [words(s) for s in samples]
        expected = sum(sentence_bleu(tokens[:i] + tokens[i + 1:], t, smoothing_function=smooth)
                       for i, t in enumerate(tokens)) / len(tokens)
        assert self_bleu(samples) == pytest.approx(expected, abs=1e-12), samples


def test_self_bleu_needs_two_samples():
    with pytest.raises(ValueError):
        self_bleu([CAT_SAT])


# ----------------------------------------------------------------------------- distinct-n

def test_distinct_n_by_hand():
    samples = ["a b a", "a b c"]
    # unigrams: a b a a b c -> 6 total, unique {a, b, c} = 3 -> 1/2
    assert distinct_n(samples, 1) == pytest.approx(1 / 2)
    # bigrams: a-b b-a | a-b b-c (none across samples) -> 4 total, unique 3 -> 3/4
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)
    assert distinct_n(["x", "y"], 2) == 0.0          # no bigrams at all


# ----------------------------------------------------------------------------- Spearman

def test_spearman_with_ties_by_hand():
    # x = 1 2 2 3 -> ranks 1 2.5 2.5 4 ; y = 1 3 2 4 -> ranks 1 3 2 4 ; both mean 2.5
    # dx = -1.5 0 0 1.5 ; dy = -1.5 0.5 -0.5 1.5
    # sum dx*dy = 2.25 + 2.25 = 4.5 ; sum dx^2 = 4.5 ; sum dy^2 = 2.25+0.25+0.25+2.25 = 5
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9) = 0.948683
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


def test_spearman_monotone_reversed_constant():
    assert spearman([1, 2, 3, 4], [10, 20, 300, 4000]) == pytest.approx(1.0)   # ranks only
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1], [2]))


# ----------------------------------------------------------------------------- mean ± s.e.

def test_mean_se_known_numbers():
    # 1 2 3 4: mean 2.5 ; sample var = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    # s.e. = sqrt(5/3) / sqrt(4) = sqrt(5/12) = 0.645497
    mean, se = mean_se([1, 2, 3, 4])
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(5 / 12))
    assert mean_se([7.0]) == (7.0, 0.0)
