"""
Text metrics for evaluating generations (docs/method.md section 8). Standard library + numpy only.

Two tokenisations. ROUGE uses rouge_tokens(), the rule of Google's rouge-score package
(rouge_score.rouge_scorer.RougeScorer with its defaults, use_stemmer=False), so that our ROUGE numbers
are the ones papers report: lowercase, every run of characters other than a-z and 0-9 is a separator,
no stemming. So "Hello, world!" is [hello, world], "17+23=40" is [17, 23, 40], and accented or
non-Latin letters vanish (as in rouge-score). Self-BLEU and distinct-n use words(): the regex
\\w+|[^\\w\\s], case kept, so "17+23=40" is five tokens and "cat." is two: for arithmetic
answers and for diversity the operators and punctuation are tokens too.

Quality against a reference (F-measure, beta = 1, as rouge-score's fmeasure):
    rouge_n(c, r, n)   clipped n-gram overlap (ROUGE-1, ROUGE-2).
    rouge_l(c, r)      longest common subsequence of the two whole texts (rougeL).
    rouge_lsum(c, r)   summary-level LCS (rougeLsum): the texts split into sentences on newlines,
                       each reference sentence matched by the union of its LCSs with every candidate
                       sentence (Lin 2004, section 3.2). One-line texts: the same as rouge_l.
Diversity of the K samples drawn for one prompt (the caller averages over prompts):
    self_bleu(samples) mean BLEU-4 of each sample against the other K - 1; lower = more diverse.
    distinct_n(s, n)   unique n-grams / total n-grams pooled over the K samples; higher = more diverse.
Statistics:
    spearman(x, y)     rank correlation, ties get their average rank (used for reward analysis).
    mean_se(values)    mean and standard error over seeds, reported as mean +- s.e.

BLEU choices, made to match the common Self-BLEU recipe (nltk sentence_bleu, SmoothingFunction
().method1): uniform weights over 1..4-grams, counts clipped by the max count in any reference,
brevity penalty against the reference length closest to the candidate's (ties -> shorter), and
Chen & Cherry (2014) smoothing method 1: a zero match count becomes epsilon = 0.1. As in nltk, a
candidate with no unigram match at all scores exactly 0 (smoothing cannot invent similarity), so
samples with disjoint vocabularies give Self-BLEU 0. Identical samples give 1 only if they are at
least 4 tokens long; shorter ones have no 4-grams and pay the smoothed 0.1 precision.
tests/test_metrics.py checks ROUGE against rouge-score and Self-BLEU against nltk.
"""
import math
import re
from collections import Counter

import numpy as np

WORD_RE = re.compile(r"\w+|[^\w\s]")
ROUGE_TOKEN_RE = re.compile(r"[a-z0-9]+")
BLEU_MAX_N = 4
BLEU_EPSILON = 0.1


def words(text):
    """Split text into word runs and single punctuation marks, keeping case (BLEU, distinct-n)."""
    return WORD_RE.findall(text)


def rouge_tokens(text):
    """rouge-score's default tokeniser without the stemmer: the runs of a-z / 0-9 of the lowercased
    text. Lowercase first, as rouge-score does: a few non-ASCII letters lowercase to ASCII ones
    (Kelvin sign K -> k, dotted I -> i + a combining dot)."""
    return ROUGE_TOKEN_RE.findall(text.lower())


def ngram_counts(tokens, n):
    """Multiset of the n-grams (as tuples) in a token list; empty if it is shorter than n."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def f1(precision, recall):
    """Harmonic mean; 0 when both are 0 rather than a division by zero."""
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- ROUGE

def rouge_n(candidate, reference, n):
    """ROUGE-n F-measure: n-gram overlap with counts clipped, so a repeated n-gram only matches as
    often as it appears on the other side."""
    cand, ref = ngram_counts(rouge_tokens(candidate), n), ngram_counts(rouge_tokens(reference), n)
    if not cand or not ref:
        return 0.0
    overlap = sum((cand & ref).values())     # Counter & takes the min count per n-gram
    return f1(overlap / sum(cand.values()), overlap / sum(ref.values()))


def lcs_table(a, b):
    """table[i][j] = length of the longest common subsequence of a[:i] and b[:j]:
    table[i][j] = table[i-1][j-1] + 1 if a[i-1] == b[j-1] else max(table[i-1][j], table[i][j-1])."""
    table = [[0] * (len(b) + 1)]
    for x in a:
        prev, row = table[-1], [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        table.append(row)
    return table


def lcs_positions(a, b):
    """The positions in a of one longest common subsequence with b. Which one matters to union-LCS;
    this is rouge-score's: walk back from the end, take a match, else step back along b only if that
    keeps a strictly longer LCS, and on a tie along a."""
    table, i, j, positions = lcs_table(a, b), len(a), len(b), []
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions[::-1]


def rouge_l(candidate, reference):
    """ROUGE-L F-measure: LCS rewards in-order matches that need not be contiguous."""
    cand, ref = rouge_tokens(candidate), rouge_tokens(reference)
    lcs = lcs_table(cand, ref)[-1][-1]
    if lcs == 0:
        return 0.0
    return f1(lcs / len(cand), lcs / len(ref))


def rouge_lsum(candidate, reference):
    """ROUGE-Lsum F-measure (rouge-score's rougeLsum): sentences are the lines of the text. Each
    reference sentence r scores the union, over candidate sentences c, of the tokens of r on an LCS
    of (r, c); a token is credited at most as often as it occurs in the candidate (ROUGE-1.5.5's rule
    against counting one candidate word for several reference words). P = hits / candidate tokens,
    R = hits / reference tokens."""
    cand = [rouge_tokens(line) for line in candidate.split("\n")]
    ref = [rouge_tokens(line) for line in reference.split("\n")]
    union_counts = Counter()
    for r in ref:
        union = set().union(*(lcs_positions(r, c) for c in cand))
        union_counts.update(r[i] for i in union)
    cand_counts = Counter(t for c in cand for t in c)
    hits = sum((union_counts & cand_counts).values())   # the clip: min(union count, candidate count)
    if hits == 0:
        return 0.0
    return f1(hits / sum(cand_counts.values()), hits / sum(map(len, ref)))


# ----------------------------------------------------------------------------- BLEU

def closest_ref_length(cand_len, ref_lens):
    """Reference length nearest the candidate's; on a tie the shorter one (as nltk does)."""
    return min(ref_lens, key=lambda r: (abs(r - cand_len), r))


def bleu4(candidate, references):
    """Sentence BLEU-4 of one candidate against a list of reference texts, smoothed (method 1)."""
    cand = words(candidate)
    refs = [words(r) for r in references]
    if not cand or not refs:
        return 0.0
    log_precision = 0.0
    for n in range(1, BLEU_MAX_N + 1):
        cand_counts = ngram_counts(cand, n)
        max_ref_counts = Counter()
        for ref in refs:
            max_ref_counts |= ngram_counts(ref, n)    # Counter | keeps the max count per n-gram
        matches = sum((cand_counts & max_ref_counts).values())
        if n == 1 and matches == 0:
            return 0.0
        # A candidate shorter than n has no n-grams; like nltk, divide by at least 1.
        total = max(1, sum(cand_counts.values()))
        log_precision += math.log((matches or BLEU_EPSILON) / total) / BLEU_MAX_N
    c, r = len(cand), closest_ref_length(len(cand), [len(ref) for ref in refs])
    brevity_penalty = 1.0 if c > r else math.exp(1 - r / c)
    return brevity_penalty * math.exp(log_precision)


# ----------------------------------------------------------------------------- diversity

def self_bleu(samples):
    """Mean BLEU-4 of each sample against the others: how much the K samples repeat each other."""
    if len(samples) < 2:
        raise ValueError(f"self_bleu needs at least 2 samples, got {len(samples)}")
    scores = [bleu4(s, samples[:i] + samples[i + 1:]) for i, s in enumerate(samples)]
    return float(np.mean(scores))


def distinct_n(samples, n):
    """Unique / total n-grams over all samples of one prompt. N-grams never span two samples."""
    pooled = Counter()
    for s in samples:
        pooled.update(ngram_counts(words(s), n))
    total = sum(pooled.values())
    return len(pooled) / total if total else 0.0


# ----------------------------------------------------------------------------- statistics

def average_ranks(values):
    """Ranks 1..n; tied values share the mean of the ranks they occupy."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[order[end + 1]] == values[order[start]]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1   # mean of ranks start+1 .. end+1
        start = end + 1
    return ranks


def spearman(x, y):
    """Spearman's rho as the Pearson correlation of average ranks (exact with ties).
    nan when undefined: fewer than 2 points or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    if denom == 0:
        return float("nan")
    return float((dx * dy).sum() / denom)


def mean_se(values):
    """(mean, standard error) with the sample std (ddof=1); s.e. is 0.0 for a single value."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise ValueError("mean_se needs at least one value")
    if len(values) == 1:
        return float(values[0]), 0.0
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
