"""
The reward at work: does the reward IQ-Learn implies pick better answers than likelihood, majority
vote or GAIL's discriminator, with no labels? (docs/method.md section 11)

    python critic.py --policy=out/ckpt.pt                    # the policy judges its own samples
    python critic.py --policy=out-mle/ckpt.pt --irl=out/ckpt.pt --gail=out-gail/ckpt.pt \\
        --likelihood=out-mle/ckpt.pt,out-gem/ckpt.pt,out/ckpt.pt --beam_size=4

For each prompt of the split, one pool of num_candidates completions is drawn from --policy at
--temperature (a seeded generator), and every scorer scores that same pool:
    return[irl], return_mean[irl]  the return R = sum_k gamma^k r_k of --irl's implied reward
                     r_t = q_t - gamma (1 - done_t) v_{t+1} (irl_loss.token_rewards, as
                     analyze_reward.py reads it), and R over the tokens that have a reward
    logp[m], logp_mean[m]   log p(completion | prompt) under each --likelihood model, and per token
    vote             majority vote over the final answer (tasks with exact answers; arith: the text
                     after '#'): a candidate's votes are the pool's candidates with its answer
    gail[g], gail_mean[g]   the discriminator's log-odds d_t of a --gail run summed (gamma^k) over
                     the completion (GAIL's policy maximises this return), and per token
    oracle           the task's verifier (1 right, 0 wrong), or ROUGE-L against the reference
Each scorer reads a candidate's text with its own model's tokenizer (an ended one with its EOS).

Best-of-N, for N = 1, 2, 4, ... up to num_candidates: the oracle score of the candidate a scorer
ranks first among N drawn from the pool without replacement, its expectation over the sub-pools
computed exactly (combinatorics, best_of_n and vote_best_of_n), averaged over prompts. Ties go to
the candidate drawn first (the earliest in the pool): among equal scores, and in a vote among
answers with equally many votes in the sub-pool, whose first candidate there wins; a candidate with
no answer (arith: no '#') abstains, and a sub-pool without answers falls to its first candidate.
N = 1 is the pool's mean for every scorer; the oracle's curve bounds every other.
Pairwise AUC: within a prompt, over pairs of candidates whose oracle scores differ (right against
wrong), how often the scorer ranks the better one higher, ties 1/2; mean +- s.e. over the prompts
that have such a pair (vote: a candidate's votes in the whole pool).
--beam_size=K: also the oracle score of beam search on --irl's model by log-probability (sum of
log p / length ** length_penalty) and by its implied reward summed so far (a process reward,
generate.reward_beam_search), at equal width K.

Writes into --results: critic_summary.json (every number, each prompt's too), critic_candidates.jsonl
(each candidate with its answer, oracle and every scorer's score) and, with --beam_size,
critic_beam.jsonl.
"""
import importlib
import json
import math
import os
from math import comb

import numpy as np
import torch

from checkpoint import (check_fits_decoding, check_weights, load_checkpoint, meta_model,
                        model_from_checkpoint, shapes, strip_compile_prefix, tokenizer_of)
from checks import check_device
from configurator import SEED_RANGE, configure, parse_list, settings_of
from dataset import dataset_inputs, encode_example, encode_scored, load_dataset, make_batch
from gail import discriminator_scores
from generate import beam_search, generate, reward_beam_search
from irl_loss import q_and_v, td_mask_of, token_rewards
import metrics
from model import GPT
from runfiles import (check_out_dir, check_outputs, fail, json_text, run_inputs,
                      stop_on_interrupt, write_atomically)

# -----------------------------------------------------------------------------
policy = "out/ckpt.pt"  # the checkpoint that draws the pool of candidates
irl = ""  # the checkpoint whose implied reward scores them (and runs --beam_size); '' = --policy
likelihood = ""  # comma-separated checkpoints whose log p scores them; '' = --policy and --irl
gail = ""  # a train.py --loss=gail run's ckpt.pt: its discriminator scores them ('' = none)
dataset = ""  # '' = the dataset --policy was trained on
tokenizer = ""  # only for nanoGPT checkpoints, which carry none: gpt2
split = "test"  # prompts from this split: test | val | train
max_prompts = 100  # how many prompts of the split (0 = all)
num_candidates = 16  # the pool: candidates drawn per prompt
best_of = ""  # comma-separated N of best-of-N, each <= num_candidates; '' = 1, 2, 4, ... up to it
temperature = 1.0  # of the pool's sampling
top_k = 0  # sample the pool from the k most likely tokens only (0 = all)
max_new_tokens = 128  # per candidate (generation also stops at EOS and at block_size)
beam_size = 0  # >0: beam search by log p against by the implied reward, this many beams each
expand = 0  # reward beam search: tokens each beam proposes besides EOS (0 = beam_size)
length_penalty = 0.0  # log-p beam search: sum log p / length ** this (0: plain sum; sample.py: 1)
batch_size = 256  # sequences generated or scored together
results = ""  # where the outputs go; '' = the folder of --policy
seed = 1337  # seed of the pool's sampling generator
device = ""  # '' = cuda if available, else mps, else cpu; or cpu | cuda | cuda:1 | mps
# -----------------------------------------------------------------------------
OUTPUTS = ("critic_summary.json", "critic_candidates.jsonl", "critic_beam.jsonl")
RULES = dict(  # how ties fall, as the summary records them
    scores="equal scores: the candidate earlier in the pool wins",
    vote="the answer with the most votes in the sub-pool wins, a tie the answer whose first "
         "candidate there comes earliest; candidates without an answer abstain")


# ----------------------------------------------------------------------------- the judging maths

def ranking(scores):
    """Pool indices best first: higher score first, a tie to the earlier candidate."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def best_of_n(scores, oracle, n):
    """The expected oracle score of the candidate that scores highest among n drawn from the pool
    without replacement, exactly: the candidate ranked i-th (from 0) is picked in the
    C(size - 1 - i, n - 1) sub-pools that hold it and none ranked above it, of C(size, n)."""
    size = len(scores)
    return sum(comb(size - 1 - i, n - 1) * oracle[j]
               for i, j in enumerate(ranking(scores))) / comb(size, n)


def times(a, b, degree):
    """The product of two polynomials (coefficient lists, x^0 first) up to x^degree."""
    out = [0] * min(len(a) + len(b) - 1, degree + 1)
    for i, x in enumerate(a[:degree + 1]):
        for j, y in enumerate(b[:degree + 1 - i]):
            out[i + j] += x * y
    return out


def vote_best_of_n(answers, oracle, n):
    """The expected oracle score of majority vote (RULES['vote']) over n candidates drawn from the
    pool without replacement, exactly. It counts the sub-pools in which candidate f is the pick: f
    is the first there of its answer g, which holds c votes; every other answer h holds fewer, or
    c that all come after f (x^j counts sub-pools with j more candidates, abstainers anywhere)."""
    groups = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            groups.setdefault(answer, []).append(i)
    abstain = [i for i, a in enumerate(answers) if a is None]
    ways = 0
    for g, members in groups.items():
        for f in members:
            later = sum(i > f for i in members)  # g's candidates after f; those before are out
            for c in range(1, min(n, later + 1) + 1):
                count = [comb(len(abstain), j) for j in range(len(abstain) + 1)]
                for h, others in groups.items():
                    if h != g:
                        after = sum(i > f for i in others)
                        fewer = [comb(len(others), j) for j in range(c)]
                        count = times(count, fewer + [comb(after, c)], n - c)
                if n - c < len(count):
                    ways += comb(later, c - 1) * count[n - c] * oracle[f]
    for k, i in enumerate(abstain):  # no answer in the sub-pool: its first candidate
        ways += comb(len(abstain) - 1 - k, n - 1) * oracle[i]
    return ways / comb(len(answers), n)


def vote_counts(answers):
    """Each candidate's votes: how many candidates of the pool give its answer (0: none)."""
    return [0 if a is None else answers.count(a) for a in answers]


def pairwise_auc(scores, oracle):
    """Over the pairs of candidates whose oracle scores differ, the share the scorer orders as the
    oracle does, a tie 1/2; None without such a pair."""
    wins, pairs = 0.0, 0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if oracle[i] > oracle[j]:
                pairs += 1
                wins += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return wins / pairs if pairs else None


# ----------------------------------------------------------------------------- scoring a pool

def padded_batches(model, tok, candidates, rows, device):
    """(batch, first) per chunk of `rows` candidates (dicts with prompt, completion, terminated),
    on device; first: each row's position whose target is the first completion token."""
    examples = [encode_scored(tok, c["prompt"], c["completion"], c["terminated"],
                       model.config.block_size) for c in candidates]
    for i in range(0, len(examples), rows):
        chunk = examples[i:i + rows]
        batch = {k: v.to(device) for k, v in make_batch(chunk, tok.eos_id).items()}
        yield batch, [len(p) - 1 for p, _ in chunk]


def per_token(total, count):
    """total / count; -inf where no token counts (such a candidate ranks last)."""
    return total / count if count else float("-inf")


@torch.no_grad()
def model_scores(model, tok, candidates, gamma, device, rows=64):
    """Per candidate: its return R = sum_k gamma^k r_k and R per rewarded token
    (irl_loss.token_rewards), log p and log p per token, and v_0 with the discounted log p, for
    the telescoping check R = sum_k gamma^k log pi_k + v_0 of an ended completion."""
    out = []
    for batch, first in padded_batches(model, tok, candidates, rows, device):
        mask, done = batch["loss_mask"], batch["done"]
        q, v = q_and_v(model(batch["idx"]), batch["targets"])
        rewards, returns = token_rewards(q, v, mask, done, gamma)
        log_pi = (q - v) * mask
        rewarded = td_mask_of(mask, done)  # the tokens that have a reward
        discount = gamma ** (mask.cumsum(1) - 1).clamp(min=0)
        for b, f in enumerate(first):
            n_rewarded, n_tokens = int(rewarded[b].sum()), int(mask[b].sum())
            ret, logp = returns[b].item(), log_pi[b].sum().item()
            out.append(dict(ret=ret, ret_mean=per_token(ret, n_rewarded), logp=logp,
                            logp_mean=per_token(logp, n_tokens), v0=v[b, f].item(),
                            discounted_logp=(log_pi[b] * discount[b]).sum().item(),
                            terminated=bool(done[b].any())))
    return out


@torch.no_grad()
def discriminator_returns(discriminator, tok, candidates, gamma, device, rows=64):
    """Per candidate: sum_k gamma^k d_k over its completion tokens, d_t GAIL's discriminator
    log-odds (gail.discriminator_scores), and their mean per token."""
    out = []
    for batch, _ in padded_batches(discriminator, tok, candidates, rows, device):
        mask = batch["loss_mask"]
        d = discriminator_scores(discriminator, batch) * mask
        discount = gamma ** (mask.cumsum(1) - 1).clamp(min=0)
        for b in range(len(d)):
            total = (d[b] * discount[b]).sum().item()
            out.append(dict(gail=total, gail_mean=per_token(d[b].sum().item(), int(mask[b].sum()))))
    return out


def answer_reader(task):
    """The function that reads a completion's final answer, for the vote: the task's final_answer
    (arith: after '#'), else the completion with its spaces normalised (cmudict); None where the
    task has no exact answers (text). An empty answer is None: it abstains."""
    if task == "text":
        return None
    module = importlib.import_module(f"data.{task}.prepare")
    read = getattr(module, "final_answer", lambda completion: " ".join(completion.split()))
    return lambda completion: read(completion) or None


# ----------------------------------------------------------------------------- the command

def name_checkpoints(paths):
    """{path: name}: each named for its folder (and its file, if not ckpt.pt), uniquely."""
    names = {}
    for path in paths:
        folder = os.path.basename(os.path.dirname(os.path.abspath(path))) or "run"
        stem = os.path.splitext(os.path.basename(path))[0]
        name = folder if stem == "ckpt" else f"{folder}/{stem}"
        while name in names.values():
            name += "_"
        names[path] = name
    return names


def load_model(path, flag, device, models):
    """(model, tokenizer, config) of a checkpoint, loaded once per path into models."""
    if path not in models:
        try:
            checkpoint = load_checkpoint(path)
            models[path] = (model_from_checkpoint(checkpoint).to(device).eval(),
                            tokenizer_of(checkpoint, tokenizer), checkpoint.get("config", {}))
        except ValueError as err:
            raise ValueError(f"--{flag}={path}: {err}") from None
    return models[path]


def load_discriminator(path, device):
    """(GAIL's discriminator, the run's tokenizer, its gamma) from a --loss=gail run's ckpt.pt."""
    try:
        checkpoint = load_checkpoint(path)
    except ValueError as err:
        raise ValueError(f"--gail={path}: {err}") from None
    parts, config = checkpoint.get("gail"), checkpoint.get("config", {})
    if not isinstance(parts, dict) or not isinstance(parts.get("discriminator"), dict) \
            or "disc_n_layer" not in config:
        raise ValueError(f"--gail={path} holds no GAIL discriminator; pass the ckpt.pt of a "
                         f"train.py --loss=gail run (its best.pt keeps the policy only)")
    args = dict(checkpoint["model_args"], n_layer=config["disc_n_layer"], dropout=0.0)
    check_weights(parts["discriminator"], shapes(meta_model(args)), path, "gail['discriminator']")
    discriminator = GPT.from_args(args)
    discriminator.load_state_dict(strip_compile_prefix(parts["discriminator"]))
    return (discriminator.to(device).eval(), tokenizer_of(checkpoint, tokenizer),
            float(config.get("gamma", 1.0)))


def pool_sizes(text, pool):
    """The N of best-of-N: --best_of's, or 1, 2, 4, ... and pool itself."""
    if not text:
        return sorted({2 ** k for k in range(pool.bit_length()) if 2 ** k <= pool} | {pool})
    sizes = parse_list("best_of", text, int, low=1)
    if max(sizes) > pool:
        raise ValueError(f"--best_of={text}: {max(sizes)} is more than the pool's "
                         f"--num_candidates={pool}; draw more candidates or drop it")
    return sorted(set(sizes))


def check_inputs(c):
    """Check the flags, the device, --results, every checkpoint, that no output replaces an input,
    and the data, in this order; stop with the first problem. Returns (device, models: {path:
    (model, tokenizer, config)}, the discriminator or None, data, [(prompt, reference)], the
    prompts' ids for --policy, the sizes N)."""
    models, discriminator = {}, None
    try:
        sizes = pool_sizes(c["best_of"], c["num_candidates"])
        dev = check_device(c["device"])
        check_out_dir(c["results"], "results")
        for flag in ("policy", "irl"):
            load_model(c[flag], flag, dev, models)
        for path in c["likelihood"]:
            load_model(path, "likelihood", dev, models)
        if c["gail"]:
            discriminator = load_discriminator(c["gail"], dev)
        config = models[c["policy"]][2]
        data_name = c["dataset"] or config.get("dataset", "arith")
        inputs = [item for flag in ("policy", "irl", "gail") if c[flag]
                  for item in run_inputs(c[flag], f"--{flag}={c[flag]}")]
        inputs += [item for path in c["likelihood"]
                   for item in run_inputs(path, f"--likelihood={path}")]
        check_outputs([(f"{name} of --results={c['results']}", os.path.join(c["results"], name),
                        "give another --results folder") for name in OUTPUTS],
                      inputs + dataset_inputs(data_name, f"--dataset={data_name}"))
        model, tok, _ = models[c["policy"]]
        data = load_dataset(data_name, tok)
        if not data["splits"].get(c["split"]):
            raise ValueError(f"the dataset has no {c['split']!r} split; use --split=test or "
                             f"--split=val")
        pairs = data["splits"][c["split"]][:c["max_prompts"] or None]
        prompts = [encode_example(tok, p)[-(model.config.block_size - 1):] for p, _ in pairs]
        for _, other_tok, _ in models.values():  # every model reads every prompt
            for p, _ in pairs:
                encode_example(other_tok, p)
        rows = min(len(pairs), max(1, c["batch_size"] // c["num_candidates"]))
        check_fits_decoding(model, rows * c["num_candidates"],
                            max(map(len, prompts)) + c["max_new_tokens"], dev)
    except (ValueError, OSError) as err:
        fail(err)
    return dev, models, discriminator, data, pairs, prompts, sizes


def draw_pool(model, tok, prompts, c, dev):
    """num_candidates completions of each prompt (token ids), a prompt's side by side."""
    generator = torch.Generator(device=dev).manual_seed(c["seed"])
    per_batch = max(1, c["batch_size"] // c["num_candidates"])
    pool = []
    for i in range(0, len(prompts), per_batch):
        pool += generate(model, prompts[i:i + per_batch], c["max_new_tokens"],
                         temperature=c["temperature"], top_k=c["top_k"] or None, eos_id=tok.eos_id,
                         generator=generator, num_samples=c["num_candidates"])
    return pool


def oracle_of(data):
    """The oracle: the verifier (1.0 right, 0.0 wrong), or ROUGE-L against the reference."""
    if data["verify"] is not None:
        return lambda prompt, text, reference: float(bool(data["verify"](prompt, text)))
    return lambda prompt, text, reference: metrics.rouge_l(text, reference)


WHAT = dict(  # each scorer, for the summary: {model} is its checkpoint
    ret="the return sum_k gamma^k r_k of the reward {model} implies (gamma {gamma:g})",
    ret_mean="the same per token that has a reward",
    logp="log p(completion | prompt) under {model}", logp_mean="the same per completion token",
    gail="sum_k gamma^k d_k, the log-odds of {model}'s discriminator (gamma {gamma:g})",
    gail_mean="the mean of d_k over the completion tokens")
LABELS = dict(ret="return", ret_mean="return_mean")  # the scorers' names, where not their key


def add_scores(candidates, scored, keys, path, name, gamma, scorers):
    """Candidate["scores"] gets each key of its scores as "<key>[<name>]"; scorers what each is."""
    label = {key: f"{LABELS.get(key, key)}[{name}]" for key in keys}
    for cand, s in zip(candidates, scored):
        cand["scores"].update({label[key]: s[key] for key in keys})
    scorers.update({label[key]: WHAT[key].format(model=path, gamma=gamma) for key in keys})


def score_pool(candidates, c, models, discriminator, dev):
    """Every scorer's score of every candidate, in place (candidate["scores"][name]); returns
    {scorer: what it is} and the largest error of R = sum_k gamma^k log pi_k + v_0 on them."""
    paths = [c["irl"]] + c["likelihood"] + ([c["gail"]] if c["gail"] else [])
    names, scorers = name_checkpoints(dict.fromkeys(paths)), {}
    model, tok, config = models[c["irl"]]
    gamma = float(config.get("gamma", 1.0))
    scored = model_scores(model, tok, candidates, gamma, dev)
    add_scores(candidates, scored, ("ret", "ret_mean"), c["irl"], names[c["irl"]], gamma, scorers)
    error = max([abs(s["ret"] - s["discounted_logp"] - s["v0"]) for s in scored
                 if s["terminated"]], default=0.0)
    for path in c["likelihood"]:
        model, tok, _ = models[path]
        add_scores(candidates, model_scores(model, tok, candidates, 1.0, dev),
                   ("logp", "logp_mean"), path, names[path], 1.0, scorers)
    if discriminator is not None:
        model, tok, gamma = discriminator
        add_scores(candidates, discriminator_returns(model, tok, candidates, gamma, dev),
                   ("gail", "gail_mean"), c["gail"], names[c["gail"]], gamma, scorers)
    return scorers, error


def judge(groups, scorers, sizes, with_vote):
    """{scorer: dict(best_of={N: (mean, s.e.)}, auc, auc_se, auc_prompts, per_prompt)} over the
    prompts' pools (groups: a list of lists of candidates); per_prompt: each prompt's best-of-N
    for every N and its AUC (None without a pair to rank), for intervals over prompts."""
    out = {}
    for name in list(scorers) + (["vote"] if with_vote else []) + ["oracle"]:
        curves, per_prompt_auc = {N: [] for N in sizes}, []
        for pool in groups:
            oracle = [cand["oracle"] for cand in pool]
            if name == "vote":
                answers = [cand["answer"] for cand in pool]
                scores = vote_counts(answers)
                for N in sizes:
                    curves[N].append(vote_best_of_n(answers, oracle, N))
            else:
                scores = oracle if name == "oracle" else [cand["scores"][name] for cand in pool]
                for N in sizes:
                    curves[N].append(best_of_n(scores, oracle, N))
            per_prompt_auc.append(pairwise_auc(scores, oracle))
        aucs = [a for a in per_prompt_auc if a is not None]
        auc_mean, auc_se = metrics.mean_se(aucs) if aucs else (None, None)
        out[name] = dict(best_of={N: metrics.mean_se(v) for N, v in curves.items()},
                         auc=auc_mean, auc_se=auc_se, auc_prompts=len(aucs),
                         per_prompt=dict(best_of=curves, auc=per_prompt_auc))
    return out


def compare_beams(c, models, pairs, oracle, dev):
    """Per prompt, --irl's completion by log-p beam search and by reward beam search, scored."""
    model, tok, config = models[c["irl"]]
    gamma = float(config.get("gamma", 1.0))
    prompts = [encode_example(tok, p)[-(model.config.block_size - 1):] for p, _ in pairs]
    per_batch = max(1, c["batch_size"] // (c["beam_size"] * (c["expand"] or c["beam_size"])))
    rows = []
    for i in range(0, len(prompts), per_batch):
        chunk = prompts[i:i + per_batch]
        by_logp = beam_search(model, chunk, c["max_new_tokens"], c["beam_size"], tok.eos_id,
                              c["length_penalty"])
        by_reward = reward_beam_search(model, chunk, c["max_new_tokens"], c["beam_size"],
                                       tok.eos_id, gamma, c["expand"])
        for (prompt, reference), a, b in zip(pairs[i:i + per_batch], by_logp, by_reward):
            texts = tok.decode(a), tok.decode(b)
            rows.append(dict(prompt=prompt, logp_beam=texts[0], reward_beam=texts[1],
                             logp_beam_oracle=oracle(prompt, texts[0], reference),
                             reward_beam_oracle=oracle(prompt, texts[1], reference)))
    return rows


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def finite(x):
    """JSON has no infinity: None for it."""
    return x if x is None or math.isfinite(x) else None


def print_table(summary, sizes):
    metric = summary["metric"]
    print(f"best-of-N: the {metric} of the top candidate of N drawn from the pool without "
          f"replacement (exact expectation), mean over {summary['prompts']} prompts")
    print("AUC: within a prompt, how often the better of two candidates scores higher (ties 1/2),"
          " mean +- s.e. over the prompts with such a pair")
    width = max(map(len, summary["scorers"])) + 2
    print("scorer".ljust(width) + "".join(f"{'N=' + str(N):>8s}" for N in sizes) + "   AUC")
    for name, s in summary["scorers"].items():
        auc = f"{fmt(s['auc'])} +- {fmt(s['auc_se'])} ({s['auc_prompts']})" if s["auc_prompts"] \
            else "n/a"
        print(name.ljust(width) + "".join(f"{s['best_of'][str(N)]['mean']:8.3f}" for N in sizes)
              + f"   {auc}")


def make_candidates(pool, pairs, tok, c, data):
    """The pool as candidate dicts: prompt, completion, ended or not, answer and oracle score."""
    oracle, read_answer = oracle_of(data), answer_reader(data["task"])
    candidates = []
    for j, ids in enumerate(pool):
        (prompt, reference), text = pairs[j // c["num_candidates"]], tok.decode(ids)
        candidates.append(dict(prompt_index=j // c["num_candidates"], prompt=prompt,
                               candidate=j % c["num_candidates"], completion=text,
                               terminated=bool(ids) and ids[-1] == tok.eos_id, length=len(ids),
                               answer=read_answer(text) if read_answer else None,
                               oracle=oracle(prompt, text, reference), scores={}))
    return candidates


def summarise(c, data, pairs, candidates, scorers, judged, telescoping):
    """Every number of the run, for critic_summary.json."""
    return dict(
        policy=c["policy"], irl=c["irl"], likelihood=c["likelihood"], gail=c["gail"] or None,
        dataset=data["name"], task=data["task"], split=c["split"], prompts=len(pairs),
        num_candidates=c["num_candidates"], temperature=c["temperature"], top_k=c["top_k"] or None,
        seed=c["seed"], metric="accuracy" if data["verify"] else "rougeL",
        pool_mean=float(np.mean([cand["oracle"] for cand in candidates])),
        best_of_method="exact expectation over the sub-pools of N drawn without replacement",
        tie_rules=RULES, telescoping_max_abs_error=telescoping,
        scorers={name: dict(what=scorers[name], auc=s["auc"], auc_se=s["auc_se"],
                            auc_prompts=s["auc_prompts"],
                            best_of={str(N): dict(mean=m, se=se) for N, (m, se)
                                     in s["best_of"].items()},
                            per_prompt=rounded(s["per_prompt"]))
                 for name, s in judged.items()})


def rounded(per_prompt):
    """judge's per_prompt to 4 decimals, N = 1 (the pool's mean, the same for every scorer) left
    out: {"best_of": {N: [a value per prompt]}, "auc": [...]}."""
    four = lambda values: [None if v is None else round(v, 4) for v in values]
    return dict(best_of={str(N): four(v) for N, v in per_prompt["best_of"].items() if N > 1},
                auc=four(per_prompt["auc"]))


def summarise_beams(c, rows):
    """The beam comparison's numbers: each search's mean oracle score (mean, s.e.) over prompts."""
    return dict(model=c["irl"], beam_size=c["beam_size"], expand=c["expand"] or c["beam_size"],
                length_penalty=c["length_penalty"], prompts=len(rows),
                logp_beam=metrics.mean_se([r["logp_beam_oracle"] for r in rows]),
                reward_beam=metrics.mean_se([r["reward_beam_oracle"] for r in rows]),
                differ=sum(r["logp_beam"] != r["reward_beam"] for r in rows))


def print_summary(summary, c, sizes):
    print(f"{summary['prompts']} prompts of {summary['dataset']} {c['split']}, "
          f"{c['num_candidates']} candidates each from {c['policy']} at temperature "
          f"{c['temperature']:g}: pool {summary['metric']} {summary['pool_mean']:.3f}")
    print_table(summary, sizes)
    if "beam" in summary:
        b = summary["beam"]
        print(f"beam search on {c['irl']}, {c['beam_size']} beams: {summary['metric']} by log p "
              f"{b['logp_beam'][0]:.3f}, by the implied reward {b['reward_beam'][0]:.3f} "
              f"({b['differ']} of {b['prompts']} completions differ)")
    print(f"check R = sum_k gamma^k log pi_k + v0 on every ended candidate under {c['irl']}: "
          f"max abs error {summary['telescoping_max_abs_error']:.2e}")


def main():
    stop_on_interrupt("critic.py")
    c = configure(settings_of(globals(), __file__), __file__, ranges=dict(
        num_candidates=(1, None), max_prompts=(0, None), temperature=(0, None), top_k=(0, None),
        max_new_tokens=(1, None), beam_size=(0, None), expand=(0, None), batch_size=(1, None),
        seed=SEED_RANGE))
    c["irl"] = c["irl"] or c["policy"]
    c["likelihood"] = [p for p in c["likelihood"].split(",") if p] or \
        list(dict.fromkeys([c["policy"], c["irl"]]))
    c["results"] = c["results"] or os.path.dirname(c["policy"]) or "."
    dev, models, discriminator, data, pairs, prompts, sizes = check_inputs(c)

    model, tok, _ = models[c["policy"]]
    candidates = make_candidates(draw_pool(model, tok, prompts, c, dev), pairs, tok, c, data)
    scorers, telescoping = score_pool(candidates, c, models, discriminator, dev)
    with_vote = answer_reader(data["task"]) is not None
    groups = [candidates[i:i + c["num_candidates"]]
              for i in range(0, len(candidates), c["num_candidates"])]
    judged = judge(groups, scorers, sizes, with_vote)
    scorers.update(({"vote": RULES["vote"]} if with_vote else {}),
                   oracle="the verifier" if data["verify"] else "ROUGE-L against the reference")
    summary = summarise(c, data, pairs, candidates, scorers, judged, telescoping)
    outputs = {"critic_candidates.jsonl": "".join(
        json.dumps(dict(cand, scores={k: finite(v) for k, v in cand["scores"].items()})) + "\n"
        for cand in candidates)}
    if c["beam_size"]:
        rows = compare_beams(c, models, pairs, oracle_of(data), dev)
        summary["beam"] = summarise_beams(c, rows)
        outputs["critic_beam.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows)
    outputs["critic_summary.json"] = json_text(summary)
    print_summary(summary, c, sizes)
    try:
        os.makedirs(c["results"], exist_ok=True)
        for name, text in outputs.items():
            write_atomically(os.path.join(c["results"], name), text)
    except (ValueError, OSError) as err:
        fail(err)
    print(f"wrote {', '.join(outputs)} to {c['results']}")


if __name__ == "__main__":
    main()
