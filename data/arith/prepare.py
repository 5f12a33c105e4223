"""
Multi-step arithmetic, a tiny char-level stand-in for GSM8k: no prose, just numbers and operators.

    python data/arith/prepare.py        # writes data/arith/{train,val,test}.jsonl and meta.json
    python data/arith/prepare.py --out_dir=folder   # the same files in another folder

A prompt is an expression; a completion does one operation per step, then states the answer:

    "4+9+11="        ->  "4+11=15;15+9=24#24"  or  "9+11=20;4+20=24#24"  or  "4+9=13;13+11=24#24"
    "(12+7)*(8-3)="  ->  "8-3=5;12+7=19;19*5=95#95"  or  "12+7=19;8-3=5;19*5=95#95"   (4 operands)

Steps are separated by ";", the final answer follows "#" (GSM8k's "####"). Several orders are valid,
so that the expert is diverse and a model can be accurate *and* diverse: a step may do a "-" once
both its sides are numbers, or combine any two numbers of a chain of "+" (or of "*"), whose terms
may be taken in any order (written as in the prompt; the result takes the left term's place). A
demonstration picks uniformly among the possible steps at each point (seeded). Every value in a
demonstration is a whole number in 0..MAX_VALUE; problems that would break this are drawn again.
With the defaults a row fits block_size 64 (tests/test_data_prepare.py checks it).

API: prepare(out_dir=None), verify(prompt, completion), final_answer(completion), evaluate(prompt),
solve(prompt, rng) (a random valid completion), solutions(prompt) (all), corrupt(completion, rng),
canonical(prompt) and reorderings(train_prompts, prompts) (problems that reorder a train problem).
"""
import ast
import json
import os
import random
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run as a script, python data/arith/prepare.py: the repository's modules
    sys.path.insert(0, ROOT)
from runfiles import write_atomically  # noqa: E402 (a temporary file, then a rename)

out_dir = ""  # where python data/arith/prepare.py writes train/val/test.jsonl and meta.json;
#   '' = data/arith

# difficulty: tuned so that train.py's default model and schedule (4000 steps, a few CPU minutes)
# level off at a greedy val accuracy well between "never" and "always" right (results/README.md):
# the train split is a small share of the problems, so what the model can learn from it, not the
# steps, sets the level
MIN_OPERANDS, MAX_OPERANDS = 3, 3  # operands per problem (4 allows many more step orders, and is
                                   # much harder)
MAX_OPERAND = 20                   # operands are drawn from 1..MAX_OPERAND
OPERATORS = "+-*"                  # any of "+-*/"; "/" is kept only where it divides exactly
MAX_VALUE = 999                    # largest value in a demonstration (keeps the steps short)
SPLIT_SIZES = {"train": 3000, "val": 500, "test": 500}  # of about 78000 distinct problems
SEED = 1337
ANSWER = "#"  # the verifier reads the final answer after this marker

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def apply(op, a, b):
    if op == "/" and (b == 0 or a % b):
        raise ValueError(f"{a}/{b} is not a whole number")
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]


def parse(expression):
    """Parse "(12+7)*(8-3)" into a tree with Python's parser (ast), never eval: a number is an int,
    an operation a list [op, kid, kid, ...]. A chain of "+" (or "*") is one node, as its terms may
    be combined in any order; "-" and "/" nodes have exactly two kids (left, right)."""
    if not re.fullmatch(r"[0-9+*/() -]+", expression):
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    def convert(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if not isinstance(node, ast.BinOp) or type(node.op) not in AST_OPS:
            raise ValueError(f"unsupported: {ast.dump(node)}")
        op, left, right = AST_OPS[type(node.op)], convert(node.left), convert(node.right)
        if op in "-/":
            return [op, left, right]
        terms = [t for kid in (left, right)
                 for t in (kid[1:] if isinstance(kid, list) and kid[0] == op else [kid])]
        return [op] + terms  # a+(b+c) and (a+b)+c are both the chain a+b+c
    return convert(ast.parse(expression, mode="eval").body)


def next_steps(tree):
    """Every (tree after one step, that step written "a+b=c") that is possible now."""
    if isinstance(tree, int):
        return []
    op, kids = tree[0], tree[1:]
    after = [([op] + kids[:k] + [new_kid] + kids[k + 1:], text)  # a step inside one of the kids
             for k, kid in enumerate(kids) for new_kid, text in next_steps(kid)]
    numbers = [k for k, kid in enumerate(kids) if isinstance(kid, int)]
    if op in "+*":  # any two numbers of the chain
        pairs = [(i, j) for i in numbers for j in numbers if i < j]
    else:  # a-b or a/b once both sides are numbers
        pairs = [(0, 1)] if len(numbers) == 2 else []
    for i, j in pairs:
        result = apply(op, kids[i], kids[j])
        rest = kids[:i] + [result] + kids[i + 1:j] + kids[j + 1:]
        after.append((rest[0] if len(rest) == 1 else [op] + rest,
                      f"{kids[i]}{op}{kids[j]}={result}"))
    return after


def evaluate(prompt):
    """The true value of a prompt like "(12+7)*(8-3)=" (every order gives the same)."""
    tree = parse(prompt.removesuffix("="))
    while isinstance(tree, list):
        tree = next_steps(tree)[0][0]
    return tree


def solve(prompt, rng):
    """A valid completion, choosing uniformly among the possible steps at each point."""
    tree, steps = parse(prompt.removesuffix("=")), []
    while isinstance(tree, list):
        tree, text = rng.choice(next_steps(tree))
        steps.append(text)
    return ";".join(steps) + f"{ANSWER}{tree}"


def solutions(prompt):
    """All distinct valid completions of a prompt, sorted."""
    def walk(tree, steps):
        if isinstance(tree, int):
            return {";".join(steps) + f"{ANSWER}{tree}"}
        return set().union(*(walk(after, steps + [text]) for after, text in next_steps(tree)))
    return sorted(walk(parse(prompt.removesuffix("=")), []))


def final_answer(completion):
    """What follows the answer marker, or None without one."""
    return completion.split(ANSWER, 1)[1] if ANSWER in completion else None


def verify(prompt, completion):
    """True iff the completion's final answer is the prompt's true value. Never raises: garbage is
    False."""
    try:
        answer = final_answer(completion)
        return bool(answer and re.fullmatch(r"-?[0-9]+", answer)
                    and int(answer) == evaluate(prompt))
    except Exception:
        return False


def corrupt(completion, rng):
    """The completion with exactly one step's result wrong (off by 1..10), the way a chain of
    reasoning slips. The later steps that use that value are recomputed from it, so the chain stays
    consistent after the slip and its final answer is wrong. completion must be a well-formed
    solution."""
    step_texts = completion.split(ANSWER)[0].split(";")
    steps = [re.fullmatch(r"([0-9]+)([-+*/])([0-9]+)=([0-9]+)", text) for text in step_texts]
    if not all(steps):
        raise ValueError(f"not a solution: {completion!r}")
    steps = [[int(m[1]), m[2], int(m[3]), int(m[4])] for m in steps]
    for _ in range(100):  # a slip can be absorbed (x*0) or make a value negative: then try another
        new = [list(step) for step in steps]
        k = rng.randrange(len(new))
        old, wrong = new[k][3], max(0, new[k][3] + rng.choice([-1, 1]) * rng.randint(1, 10))
        new[k][3] = wrong
        try:
            for step in new[k + 1:]:  # carry the slip into the step that uses the value, and so on
                side = 0 if step[0] == old else 2 if step[2] == old else None
                if side is not None:
                    step[side] = wrong
                    old, wrong = step[3], apply(step[1], step[0], step[2])
                    step[3] = wrong
        except ValueError:  # a division that no longer comes out even
            continue
        if new[-1][3] != steps[-1][3] and all(step[3] >= 0 for step in new):
            return ";".join(f"{a}{op}{b}={c}" for a, op, b, c in new) + f"{ANSWER}{new[-1][3]}"
    raise ValueError(f"could not corrupt {completion!r}")


def signed_terms(tree):
    """(positive terms, negative terms) of a sum of parse()'s tree: a chain of "+" gives its terms,
    a-b gives a's and -b, and a sum that is added merges in (a+(b-c) is a+b-c); a subtracted one
    stays one negative term (a-(b-c): no sign is distributed)."""
    if isinstance(tree, list) and tree[0] == "+":
        split = [signed_terms(kid) for kid in tree[1:]]
        return [t for pos, _ in split for t in pos], [t for _, neg in split for t in neg]
    if isinstance(tree, list) and tree[0] == "-":
        positive, negative = signed_terms(tree[1])
        return positive, negative + [tree[2]]
    return [tree], []


def render(tree):
    """The fully parenthesised text of parse()'s tree with the factors of each product and the
    terms of each sum (positive ones, then negative ones) sorted: a valid Python expression."""
    if isinstance(tree, int):
        return str(tree)
    if tree[0] == "*":
        return "(" + "*".join(sorted(map(render, tree[1:]))) + ")"
    if tree[0] == "/":
        return f"({render(tree[1])}/{render(tree[2])})"
    positive, negative = (sorted(map(render, terms)) for terms in signed_terms(tree))
    return "(" + "+".join(positive) + "".join("-" + t for t in negative) + ")"


def canonical(prompt):
    """The canonical form of a prompt like "1*8*11=" under commutativity and associativity of + and
    *: a string, the same for "1*11*8=" and "(11*1)*8=". parse() makes a chain of "*" one node,
    whose factors are sorted; a sum of "+" and "-" is one signed sum, a+b-c being +a +b -c, whose
    positive terms are sorted and so are its negative ones (just what reordering a sum allows; a-b
    and b-a differ, and a-(b-c) keeps its bracket). The result is a fully parenthesised Python
    expression of the same value, e.g. "((11*7)+9)" for "9+11*7=" and "7*11+9="."""
    try:
        return render(parse(prompt.removesuffix("=")))
    except SyntaxError:  # unbalanced brackets, a dangling operator
        raise ValueError(f"not an arithmetic expression: {prompt!r}") from None


def reorderings(train_prompts, prompts):
    """The indices (ascending) of the prompts whose canonical form is that of some train prompt:
    problems a model may answer from memory of a reordered train problem."""
    seen = {canonical(p) for p in train_prompts}
    return [k for k, prompt in enumerate(prompts) if canonical(prompt) in seen]


def random_expression(rng, n, max_operand, operators):
    """(text, precedence of its last operator) of a random expression of n operands."""
    if n == 1:
        return str(rng.randint(1, max_operand)), 3
    k, op = rng.randint(1, n - 1), rng.choice(operators)
    (left, lp) = random_expression(rng, k, max_operand, operators)
    (right, rp) = random_expression(rng, n - k, max_operand, operators)
    left = left if lp >= PRECEDENCE[op] else f"({left})"  # parentheses only where they are needed
    right = right if rp > PRECEDENCE[op] or (rp == PRECEDENCE[op] and op in "+*") else f"({right})"
    return left + op + right, PRECEDENCE[op]


def settings(**knobs):
    """The knobs the data is made with: the constants above, but for those passed by name (e.g.
    MAX_OPERAND=30). meta.json keeps them: data prepared with others is made again."""
    made_with = dict(MIN_OPERANDS=MIN_OPERANDS, MAX_OPERANDS=MAX_OPERANDS, MAX_OPERAND=MAX_OPERAND,
                     OPERATORS=OPERATORS, MAX_VALUE=MAX_VALUE, SPLIT_SIZES=SPLIT_SIZES, SEED=SEED)
    unknown = sorted(set(knobs) - set(made_with))
    if unknown:
        raise ValueError(f"arith has no knob {unknown[0]}; its knobs are {', '.join(made_with)}")
    return dict(made_with, **knobs)


def prepare(out_dir=None, **knobs):
    """Write train/val/test.jsonl and meta.json into out_dir (default: this folder), made with
    settings(**knobs)."""
    out_dir = out_dir or os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out_dir, exist_ok=True)
    k = settings(**knobs)
    split_sizes = k["SPLIT_SIZES"]
    rng, rows = random.Random(k["SEED"]), {}  # prompt -> completion: a problem is in one split only
    # draws since the last new problem: the knobs may allow fewer problems than the splits need
    tries = 0
    while len(rows) < sum(split_sizes.values()):
        tries += 1
        if tries > 20_000:
            raise ValueError(f"found only {len(rows)} distinct problems of the "
                             f"{sum(split_sizes.values())} that SPLIT_SIZES asks for: "
                             f"raise MAX_OPERAND or MAX_VALUE, or lower SPLIT_SIZES")
        n_operands = rng.randint(k["MIN_OPERANDS"], k["MAX_OPERANDS"])
        prompt = random_expression(rng, n_operands, k["MAX_OPERAND"], k["OPERATORS"])[0] + "="
        try:
            completion = solve(prompt, rng)
        except ValueError:  # a division that is not exact
            continue
        if prompt not in rows and "=-" not in completion \
                and max(map(int, re.findall(r"[0-9]+", completion))) <= k["MAX_VALUE"]:
            rows[prompt] = completion
            tries = 0
    rows, start = list(rows.items()), 0
    for split, size in split_sizes.items():
        lines = [json.dumps({"prompt": p, "completion": c}) + "\n"
                 for p, c in rows[start:start + size]]
        write_atomically(os.path.join(out_dir, f"{split}.jsonl"), "".join(lines))
        start += size
    chars = "".join(sorted(set("".join(p + c for p, c in rows))))
    meta = {"name": "arith", "task": "arith", "tokenizer": {"kind": "char", "chars": chars},
            "settings": k}
    write_atomically(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return out_dir


if __name__ == "__main__":
    from dataset import prepare_main
    prepare_main(prepare, __file__)
