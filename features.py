"""
Instructed features (docs/method.md section 7): explain a learned per-token reward with a few features
that an analyst names, by least squares. Used by analyze_reward.py.

A feature is a plain Python function of one token in its completion:

    def is_digit(tokens, t):
        '''the token is a digit'''          # the first docstring line is its description
        return tokens[t].strip().isdigit()   # a bool or a number

tokens is the completion as a list of decoded token texts (one character each for a char
tokenizer, pieces like " the" for GPT-2 BPE), ending with EOS (the string features.EOS) when the
completion terminated; t indexes the token whose reward r_t is explained. Your own features go in
a file, `python analyze_reward.py --features=my_features.py`: every public function *defined* in
that file (not imported into it) is one feature, in the order of the file.

The fit is r_t = b + sum_k w_k phi_k(tokens, t) + noise by ordinary least squares over the tokens
of the completions, with the usual standard errors, se = sqrt(diag(s^2 (X'X)^-1)),
s^2 = RSS / (n - p), and 95% intervals w +- 1.96 se (normal quantile: n is thousands of tokens).
The intervals assume independent noise per token; tokens of one completion are not independent,
so read them as a lower bound on the uncertainty. R^2 = 1 - RSS / TSS is the share of the reward's
variance that the analyst's vocabulary explains.

Each default set leaves one kind of token out (a digit of an operand, a letter), so the intercept
is that kind's reward and each weight is the difference from it: with every kind as a feature
the columns would sum to the intercept and no weight would be identifiable.
"""
import inspect
import math
import os
import string

import numpy as np

from runfiles import read_text

EOS = "<|endoftext|>"  # the text of the EOS token in `tokens` (no single BPE or char token decodes to it)
Z_95 = 1.959964  # two-sided 95% quantile of the normal distribution
# a feature's largest magnitude: far above a bool, count or position, and X'X of such values keeps
# the precision least squares needs (of 1e300, its squares overflow)
LARGEST = 1e6


def token_texts(tok, ids):
    """The `tokens` a feature sees: each token id decoded on its own, EOS as the string EOS."""
    return [EOS if i == tok.eos_id else tok.decode([i]) for i in ids]


# ----------------------------------------------------------------------------- every task

def is_eos(tokens, t):
    """the token is EOS (ends the completion)"""
    return tokens[t] == EOS


def relative_position(tokens, t):
    """position in the completion, 0 at the first token, 1 at the last"""
    return t / max(1, len(tokens) - 1)


def repeats_previous(tokens, t):
    """the token repeats the one before it"""
    return t > 0 and tokens[t] == tokens[t - 1]


# ----------------------------------------------------------------------------- arith

def step_part(tokens, t):
    """Which part of "a+b=c;...#answer" token t ends in: 'operands', 'result' or 'answer'. Read
    from the last marker ("=", ";", "#") before the token's end, so BPE pieces like "19;" work."""
    before = "".join(tokens[:t]) + tokens[t].rstrip(";#=")
    markers = (("=", "result"), (";", "operands"), ("#", "answer"))
    where = {before.rfind(marker): part for marker, part in markers}
    return where[max(where)] if max(where) >= 0 else "operands"  # no marker yet: the first step's operands


def is_operator(tokens, t):
    """the token is an operator (+ - * /)"""
    return tokens[t].strip() in ("+", "-", "*", "/")


def is_equals(tokens, t):
    """the token is "=" (a step's result comes next)"""
    return tokens[t].strip() == "="


def step_separator(tokens, t):
    """the token closes a reasoning step (";")"""
    return ";" in tokens[t]


def answer_marker(tokens, t):
    """the token is the answer marker ("#")"""
    return "#" in tokens[t]


def in_result(tokens, t):
    """a digit of a step's result (after "="): where a slip would happen"""
    return tokens[t].strip().isdigit() and step_part(tokens, t) == "result"


def in_answer(tokens, t):
    """a digit of the final answer (after "#")"""
    return tokens[t].strip().isdigit() and step_part(tokens, t) == "answer"


# ----------------------------------------------------------------------------- text

def is_space(tokens, t):
    """the token is whitespace"""
    return tokens[t] != EOS and tokens[t].isspace()


def is_punctuation(tokens, t):
    """the token is punctuation"""
    text = tokens[t].strip()
    return tokens[t] != EOS and bool(text) and all(ch in string.punctuation for ch in text)


def word_start(tokens, t):
    """the token starts a word (char: after a space; BPE: a piece with a leading space)"""
    text = tokens[t]
    if text == EOS or not text.strip()[:1].isalnum():
        return False
    return t == 0 or text[0] == " " or tokens[t - 1][-1:] == " "


def capitalised(tokens, t):
    """the token starts with a capital letter"""
    return tokens[t] != EOS and tokens[t].strip()[:1].isupper()


COMMON = [is_eos, relative_position, repeats_previous]
DEFAULT_FEATURES = {  # by the dataset's task; any other task (e.g. a JSONL of text) gets "text"
    "arith": [is_operator, is_equals, step_separator, answer_marker, in_result, in_answer] + COMMON,
    "text": [is_space, is_punctuation, word_start, capitalised] + COMMON,
}


def load_features(path="", task="text"):
    """[(name, description, function)]: the functions defined in the file at path, or the
    default set of the task. ValueError (with the fix) when the file defines none."""
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"no feature file {path}; write one (see features.py) or leave --features out")
        namespace = {"__name__": "<features>", "__file__": path}  # the analyst's own code: run it as a script
        code = read_text(path, "feature file")  # bad bytes: the file and line, not Python's decoding rules
        try:
            exec(compile(code, path, "exec"), namespace)
        except (Exception, SystemExit) as err:  # sys.exit() too: it must not end analyze_reward.py
            raise ValueError(f"{path} does not run ({type(err).__name__}: {err}); fix it or leave "
                             f"--features out") from None
        functions = [f for name, f in namespace.items() if inspect.isfunction(f)
                     and not name.startswith("_") and f.__module__ == namespace["__name__"]]
        if not functions:
            raise ValueError(f"{path} defines no feature functions; define e.g. "
                             f"def is_digit(tokens, t): return tokens[t].isdigit()")
    else:
        functions = DEFAULT_FEATURES.get(task, DEFAULT_FEATURES["text"])
    return [(f.__name__, (inspect.getdoc(f) or "").split("\n")[0], f) for f in functions]


def feature_value(feature, tokens, t):
    """feature(tokens, t) as a float; ValueError naming the feature and its file when it raises
    (or calls sys.exit) or returns anything but a bool or a number within +-LARGEST."""
    try:
        value = feature(tokens, t)
    except (Exception, SystemExit) as err:
        problem = f"raises {type(err).__name__}: {err}"
    else:
        if not isinstance(value, (bool, int, float, np.number, np.bool_)):
            problem = f"returns {value!r:.40}, not a bool or a number"
        elif not -LARGEST <= value <= LARGEST:  # nan and inf too; compared: float(10**400) overflows
            shown = (f"about {'-' * (value < 0)}10^{int(abs(value).bit_length() * math.log10(2))}"
                     if isinstance(value, int) else repr(value))  # (repr of 10**5000 is refused too)
            problem = f"returns {shown}, not a finite number within +-{LARGEST:g}; scale it"
        else:
            return float(value)
    raise ValueError(f"{feature.__code__.co_filename}: feature {feature.__name__}(tokens, t={t}) {problem} "
                     f"(tokens {tokens[:8]!r:.60})")


def feature_matrix(completions, features):
    """(n_tokens, n_features) float array: one row per token of each completion (lists of token
    texts), in order."""
    rows = [[feature_value(f, tokens, t) for _, _, f in features]
            for tokens in completions for t in range(len(tokens))]
    return np.array(rows, dtype=float).reshape(-1, len(features))


def least_squares(X, y):
    """OLS fit of y = b + X w. Returns dict(intercept, weights, se, ci_low, ci_high, r2, n, dependent).
    A feature that is constant on this data cannot be told from the intercept, nor one that is a
    linear combination of the intercept and the features before it (dependent: their columns): its
    weight, s.e. and interval are nan, and the others are fitted without it."""
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    n, k = X.shape
    varies = [int(j) for j in np.flatnonzero(X.std(axis=0) > 0)]
    used = []  # the columns that add a direction to the intercept and the columns used before them
    for j in varies:
        if np.linalg.matrix_rank(np.column_stack([np.ones(n), X[:, used + [j]]])) == len(used) + 2:
            used.append(j)
    design = np.column_stack([np.ones(n), X[:, used]])  # intercept first
    p = design.shape[1]
    if n <= p:
        raise ValueError(f"{n} tokens cannot fit {p} coefficients; use more prompts (--max_prompts)")
    coef, _, _, _ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    rss, tss = float(residual @ residual), float(((y - y.mean()) ** 2).sum())
    sigma2 = rss / (n - p)                                            # s^2 = RSS / (n - p)
    se_all = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))  # sqrt(diag(s^2 (X'X)^-1))
    weights, se = np.full(k, np.nan), np.full(k, np.nan)
    weights[used], se[used] = coef[1:], se_all[1:]
    return dict(intercept=float(coef[0]), weights=weights, se=se,
                ci_low=weights - Z_95 * se, ci_high=weights + Z_95 * se,
                r2=1.0 - rss / tss if tss > 0 else float("nan"), n=n,
                dependent=[j for j in varies if j not in used])
