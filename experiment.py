"""
The paper's experiments, small, over paired seeds: task score against diversity (its figures 2-3),
the reward analysis (Spearman of return and task score, as a function of λ), and fine-tuning a
trained model on a small shifted demonstration set (its small-data figure). Runs train.py,
sample.py and analyze_reward.py as a user would.

    python experiment.py                          # arith, then finetune (--task=all)
    python experiment.py --task=arith             # accuracy vs Self-BLEU of every system, reward analysis
    python experiment.py --task=finetune          # arith's MLE models fine-tuned on 250 / 1000 shifted demos
    python experiment.py --task=small_data        # arith, 5% vs 100% of train: val curves
    python experiment.py --task=tuned             # best against best: every family tuned on val, scored on test
    python experiment.py --task=cmudict           # the same on real data: word -> pronunciation (translation)
    python experiment.py --task=shakespeare       # and the next line of held-out plays, from a pre-trained base
    python experiment.py --quick                  # a check: 2 seeds, short runs, fewer systems, into results_quick/

Seed s of every system runs with --seed=s, so train.py starts each system from the same weights (those
of FROM_MLE from seed s's MLE run) and draws the same batches: a difference system - MLE (or - CONTROL,
MLE on the same extra steps, for those fine-tuned from MLE) is taken per seed and reported as mean ±
s.e. over seeds. The headline is accuracy at matched Self-BLEU: a run's (Self-BLEU, accuracy) points
over its temperatures (greedy as T=0, Self-BLEU 1), joined piecewise linearly, minus its seed's MLE
(or CONTROL) curve, averaged over Self-BLEU values both cover.

cmudict and shakespeare are task tuned's comparison on real language, each a task of its own (results/<task>/);
with --jobs=2 on an idle 2-core x86 CPU they take 145 minutes together, measured part by part (TUNED: 5 families x 3
configurations on one tuning seed, then 5 x 5 final runs and 2 x 5 on the smaller train set):
- cmudict, 2 blocks of width 128, window 48, batch 32: a 1500-step run trains in about 70 s at one thread, and its 8
  decodings of the 500 test prompts and the reward analysis take 45 s: 47 minutes.
- shakespeare: the base model (4 blocks of width 192, window 256, batch 8), 2500 steps alone (every other run needs
  it): 10.7 minutes; a fine-tuning run, 400 steps with 9 evaluations of val nll, about 2.2 minutes beside another,
  its 6 decodings of 150 test prompts (at most 80 characters: a model this small loops instead of ending a line)
  and the reward analysis about 2 more: tuning 18.2 minutes, the final runs 51.9 and 17.8, 99 in all.
Over budget, --seeds=3 cuts the final runs by 40%.

Runs go seed by seed: each is trained, sampled and analysed in one go, so a stop leaves whole runs
(their logs and summaries, which git keeps) behind. A run whose files exist is skipped, so an
interrupted experiment continues where it stopped (a run stopped mid-training resumes from its
ckpt.pt, and a finished run whose weights another run needs but a fresh clone lacks trains again);
Ctrl-C, SIGTERM, a failed run or (on Linux) a kill of experiment.py stops the runs in progress.
`--seeds=3` reports over the first 3 seeds.
Runs go `jobs` at a time, each on one thread (OMP_NUM_THREADS=1): two one-thread runs side by side
use a 2-core CPU better than one two-thread run after another. Numbers depend on the thread count
and CPU through float rounding.
"""
import concurrent.futures  # its FIRST_EXCEPTION, a str imported by name, would become a --flag below
import ctypes
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial

import numpy as np

from checkpoint import BEST_IS_HIGHER, check_out_dir, lock_out_dir, save_figure, write_atomically
from configurator import configure, parse_list, stop_on_interrupt
import data.shakespeare.prepare as shakespeare_data  # a module: its int PRETRAIN_CHARS would become a --flag
from metrics import mean_se

# -----------------------------------------------------------------------------
task = "all"  # all (arith, finetune, then tuned) | arith | finetune | tuned | small_data | cmudict | shakespeare
systems = ""  # '' = the task's own; or some of mle,ent0.01,ent0.1,irl0.1,irl1,online0.01,online0.1,online1,gail,mle+ft
seeds = 5  # paired seeds per system
temperatures = "0.25,0.5,0.75,1.0"  # sampling temperatures (greedy and beam search come on top)
num_samples = 4  # K samples per prompt at each temperature
beam_size = 4  # beams of the beam-search decoding
max_prompts = 500  # val prompts sampled (arith's val split has 500: all of it)
jobs = 2  # runs at a time, one thread each
train_args = ""  # extra train.py flags for every run, shell-quoted, e.g. "--device=cuda --dataset='my data.jsonl'"
results = "results"  # where runs, tables and figures go
quick = False  # check that it all works: 2 seeds, short runs, 100 prompts, fewer systems, into results_quick/
# -----------------------------------------------------------------------------
settings = {k: v for k, v in globals().items() if not k.startswith("_")
            and isinstance(v, (bool, int, float, str, type(None)))}
argv = ["--quick=True" if arg == "--quick" else arg for arg in sys.argv[1:]]  # --quick reads as a switch
config, given = configure(settings, __file__, argv, with_given=True, ranges=dict(
    seeds=(1, None), jobs=(1, None), num_samples=(2, None), max_prompts=(1, None), beam_size=(1, None)))
QUICK = dict(seeds=2, max_prompts=100, temperatures="0.5,1", results="results_quick")  # unless a flag sets it
QUICK_NOTE = ("**--quick checks that every part runs (2 seeds, runs of 150 steps, 100 prompts, fewer systems): "
              "its numbers say nothing about the methods.**")
if config["quick"]:
    config.update({k: v for k, v in QUICK.items() if k not in given})
globals().update(config)
HERE = os.path.dirname(os.path.abspath(__file__))  # the scripts it runs; a path the user gives is the user's (cwd)

# arith from scratch (and the base model of finetune): train.py's default model and schedule, evaluated more often,
# so a run is what `python train.py` does; --quick appends its own schedule (later flags win)
ARITH_FLAGS = ["--dataset=arith", "--eval_interval=250"]
QUICK_SCRATCH = ["--max_iters=150", "--lr_decay_iters=150", "--eval_interval=75", "--eval_prompts=50"]
QUICK_FINE_TUNE = ["--max_iters=50", "--lr_decay_iters=50", "--eval_interval=25", "--eval_prompts=50"]
# online IQ-Learn, GAIL (docs/method.md section 5) and their control fine-tune each seed's MLE run on this schedule,
# as the paper's methods fine-tune a trained model
FINE_TUNE = ["--learning_rate=1e-4", "--min_lr=1e-5", "--warmup_iters=10", "--max_iters=300",
             "--lr_decay_iters=300", "--eval_interval=100"]
FINETUNE = dict(  # task finetune: the shifted distribution (prepare.py's constants), demo set sizes, systems, schedule
    shifted=dict(MAX_OPERAND=40),  # operands 1..40, not 1..20: most of them are new to the base model
    shift_label="problems with operands up to 40 (the base model's went up to 20)",
    sizes=[250, 1000], systems="mle,irl0.1,ent0.1",
    flags=["--learning_rate=1e-3", "--min_lr=1e-4", "--warmup_iters=20", "--max_iters=500",  # long enough that
           "--lr_decay_iters=500", "--eval_interval=50"])  # MLE overfits 250 demos: its val nll turns up
if quick:  # the schedules cut short: from scratch, and fine-tuning (from MLE, and task finetune)
    ARITH_FLAGS = ARITH_FLAGS + QUICK_SCRATCH
    FINE_TUNE, FINETUNE["flags"] = FINE_TUNE + QUICK_FINE_TUNE, FINETUNE["flags"] + QUICK_FINE_TUNE
ONLINE = ["--loss=irl", "--mix_in=0.1", "--sample_fraction=0.25", "--sample_every=4", "--max_new_tokens=32"] + FINE_TUNE
SYSTEMS = {  # name: (label, train.py flags)
    "mle": ("MLE", ["--loss=mle"]),
    "ent0.01": ("MLE + entropy β=0.01", ["--loss=mle", "--entropy_coef=0.01"]),
    "ent0.1": ("MLE + entropy β=0.1", ["--loss=mle", "--entropy_coef=0.1"]),
    "irl0.1": ("IRL λ=0.1", ["--loss=irl", "--td_coef=0.1"]),
    "irl1": ("IRL λ=1", ["--loss=irl", "--td_coef=1"]),
    "online0.01": ("online IQ-Learn α=0.1 λ=0.01 (from MLE)", ONLINE + ["--td_coef=0.01"]),
    "online0.1": ("online IQ-Learn α=0.1 λ=0.1 (from MLE)", ONLINE + ["--td_coef=0.1"]),
    "online1": ("online IQ-Learn α=0.1 λ=1 (from MLE)", ONLINE + ["--td_coef=1"]),
    "gail": ("GAIL (from MLE)", ["--loss=gail", "--max_new_tokens=32"] + FINE_TUNE),
    "mle+ft": ("MLE fine-tuned (control)", ["--loss=mle"] + FINE_TUNE),
}
FROM_MLE = {"gail", "mle+ft", "online0.01", "online0.1", "online1"}  # these start from the same seed's mle checkpoint
CONTROL = "mle+ft"  # what the others of FROM_MLE are compared with: MLE on their schedule
# the reward analysis: λ = 0 (from scratch, and on the schedule from MLE), online IQ-Learn by λ, offline IRL
REWARD = ["mle", CONTROL] + [s for p in ("online", "irl") for s in SYSTEMS if s.startswith(p)]
TASKS = {  # train.py flags, the task metric sample.py reports, systems by default (and with --quick)
    "arith": (ARITH_FLAGS, "accuracy", ",".join(s for s in SYSTEMS if s != "irl1"),
              "mle,ent0.1,irl0.1,online0.1,gail,mle+ft"),
    "finetune": (ARITH_FLAGS, "accuracy", FINETUNE["systems"], "mle,irl0.1"),
    "small_data": (ARITH_FLAGS, "accuracy", "mle,irl0.1", "mle,irl0.1"),
}
TUNED_TASKS = ["finetune", "arith"]  # task tuned: best against best on these (the short fine-tuning runs first)
TUNED_TEMPERATURES = [1.25, 1.5]  # on top of --temperatures: every curve reaches the most diverse one's Self-BLEU
FAMILIES = dict(  # best against best: {family: (label, loss, three settings of its knob)}, from scratch or fine-tuning
    scratch=dict(
        mle=("MLE", "mle", [["--learning_rate=1e-3"], ["--learning_rate=2e-3"], ["--weight_decay=1.0"]]),
        ent=("MLE + entropy", "mle", [[f"--entropy_coef={b}"] for b in (0.01, 0.03, 0.1)]),
        dft=("DFT", "dft", [[f"--learning_rate={lr}"] for lr in ("1e-3", "2e-3", "4e-3")]),
        gem=("GEM", "gem", [[f"--gem_beta={b}"] for b in (0.5, 0.7, 0.9)]),
        irl=("IRL", "irl", [[f"--td_coef={t}"] for t in (0.03, 0.1, 0.3)])),
    fine_tune=dict(
        mle=("MLE", "mle", [["--learning_rate=1e-3"], ["--learning_rate=3e-4"], ["--weight_decay=1.0"]]),
        ent=("MLE + entropy", "mle", [[f"--entropy_coef={b}"] for b in (0.01, 0.03, 0.1)]),
        dft=("DFT", "dft", [[f"--learning_rate={lr}"] for lr in ("3e-4", "1e-3", "3e-3")]),
        gem=("GEM", "gem", [[f"--gem_beta={b}"] for b in (0.5, 0.7, 0.9)]),
        irl=("IRL", "irl", [[f"--td_coef={t}"] for t in (0.03, 0.1, 0.3)])))
# Best against best, per setting: flags (train.py's, every run), dropouts (every knob setting runs at each),
# tuning_seeds (configurations are tried on these, never on the final seeds 0..seeds-1), families, and optionally
# metric (the task's score; default accuracy), early_stop (what --keep_best tracks and the configurations are chosen
# by: the run's best val/nll, or by default val/<metric>, the greedy val score of its best.pt), reward (the finals get the
# reward analysis), data and size (the run's data: that built-in dataset, its train split cut to its first size
# examples), base (one model every run fine-tunes: base["prepare"](folder) writes its data, base["flags"] train it),
# prompts (sampled, at most --max_prompts), temperatures (beyond --temperatures; TUNED_TEMPERATURES by default),
# also_scored (more of sample.py's scores for the task, beside metric in the table of decodings), max_new_tokens
# (sample.py's, for every decoding; its default if absent), final_flags
# (train.py's, on top of flags for the final runs only; not with --quick, whose short schedule they would replace),
# and runs of the chosen configurations beyond the finals on a smaller train set: smaller=(families, size).
TUNED = dict(
    arith=dict(  # from scratch, early-stopped on val: tuned at 6000 steps (50% longer than task arith), and the
        # choices run twice that, since at 6000 MLE, MLE + entropy and IRL still rise; both fit in the 4-hour budget
        flags=["--dataset=arith", "--eval_interval=250", "--max_iters=6000"] + (QUICK_SCRATCH if quick else []),
        final_flags=["--max_iters=12000"], dropouts=[0, 0.1], tuning_seeds=[100], reward=True,
        families=FAMILIES["scratch"]),
    finetune=dict(  # task finetune's 250 shifted demonstrations, from arith's MLE model of the seed
        flags=FINETUNE["flags"], size=250, dropouts=[0, 0.1], tuning_seeds=[100] if quick else [100, 101],
        families={f: FAMILIES["fine_tune"][f] for f in ("mle", "dft", "gem", "irl")}),
    # Real language, each a task of its own (results/<name>/). One configuration per knob setting, at dropout 0.1
    # only (half arith's grid, the same for every family) and 1 tuning seed, so that both fit in 2.5 hours of a
    # 2-core CPU: measured per step at 1 thread, wall time with --jobs=2 in the docstring.
    cmudict=dict(  # word -> pronunciation, the paper's translation task small: from scratch on 3000 words, as a base
        # could pre-train only on more of the dictionary, which is more demonstrations, not a prior; block 48 fits all
        flags=["--block_size=48", "--eval_interval=250", "--max_iters=1500"] + (QUICK_SCRATCH if quick else []),
        data="cmudict", dropouts=[0.1], tuning_seeds=[100], reward=True, families=FAMILIES["scratch"],
        also_scored=["phoneme_error_rate", "bleu"],  # BLEU over phonemes, against the word's every pronunciation
        smaller=(["mle", "irl"], 750)),  # a quarter of the words: does MLE overfit them, and IRL not?
    shakespeare=dict(  # the next line of held-out plays (the paper's summarising, small), fine-tuned from a base
        # model that learnt the raw text of the train plays by MLE; its window of 256 holds a prompt of 3 lines and
        # the next line whole but for 1.3% of train examples and 0.2% of val (the start of their prompt is cut)
        base=dict(prepare=shakespeare_data.prepare_pretrain, flags=[
            f"--block_size={shakespeare_data.PRETRAIN_CHARS}", "--batch_size=8", "--n_layer=4", "--n_embd=192",
            "--loss=mle", "--learning_rate=2e-3", "--min_lr=2e-4", "--max_iters=2500", "--eval_interval=500"]
            + (QUICK_SCRATCH if quick else [])),
        # every family at 3e-4: 1e-3 undoes part of the base (val nll 1.71 against 1.66 after 300 steps)
        flags=[f"--block_size={shakespeare_data.PRETRAIN_CHARS}", "--batch_size=8", "--learning_rate=3e-4",
               "--min_lr=3e-5", "--warmup_iters=20", "--max_iters=400", "--eval_interval=50"]
        + (QUICK_FINE_TUNE if quick else []),
        # greedy decoding of a model this small loops ('the shall the shall the ...', base and fine-tuned alike),
        # so greedy ROUGE-L measures the loop, not the model: early stopping and the choice go by val nll
        data="shakespeare", size=2000, metric="rougeL", early_stop="val/nll", dropouts=[0.1], tuning_seeds=[100],
        reward=True,
        also_scored=["rouge1", "rouge2"],
        prompts=150,  # of the 500 test prompts: sampling a line costs 10x a pronunciation (3x the tokens, 4x the model)
        max_new_tokens=80,  # a line has at most 72 characters (train; val 65, test 63): a looping decoding stops here
        temperatures=[],  # at T = 1 the samples of a prompt already share almost no 4-grams (Self-BLEU near 0)
        families=FAMILIES["fine_tune"], smaller=(["mle", "irl"], 250)),  # 400 steps of 8 = 13 passes over 250
)
OWN_TASKS = [n for n in TUNED if n not in TUNED_TASKS]  # best against best, each a task of its own: results/<name>/
HEADINGS = dict(self_bleu="Self-BLEU", distinct_2="distinct-2", phoneme_error_rate="phoneme error rate",
                bleu="BLEU (phonemes)", rouge1="ROUGE-1", rouge2="ROUGE-2")  # a column's name for sample.py's key
RESOLVE = 0.02  # the tables' 'seeds': how many bring the 95% half-width 1.96 sd / sqrt(n) down to this
# (that is 50% power against a true difference of RESOLVE, normal quantile; 80% power needs about twice as many)


OWNED = {  # train.py flags that tell one run from another: set by experiment.py, refused in --train_args
    "--out_dir": "one folder per run under --results; pass --results=FOLDER",
    "--seed": "seed s of every system runs with --seed=s; pass --seeds=N",
    "--init_from": "for each run (from scratch, from its seed's MLE run, or resumed); drop it",
}


def fail(message):
    sys.exit(f"experiment.py: error: {message}")


def systems_of(name):
    """The systems of task `name`, mle first; ValueError for a name not in SYSTEMS or not for this task."""
    chosen = [s for s in (systems or TASKS[name][3 if quick else 2]).split(",") if s]
    for system in chosen:
        if system not in SYSTEMS or (name != "arith" and system in FROM_MLE):
            raise ValueError(f"--systems={systems!r}: {system!r} is not a system of task {name}; use "
                             f"{', '.join(s for s in SYSTEMS if name == 'arith' or s not in FROM_MLE)}")
    return ["mle"] + [s for s in dict.fromkeys(chosen) if s != "mle"]


# every flag is checked before the first run trains
try:
    task_names = ["arith", "finetune", "tuned"] if task == "all" else [task]
    if task_names[0] not in list(TASKS) + ["tuned"] + OWN_TASKS:
        names = list(TASKS)[:2] + ["tuned"] + list(TASKS)[2:] + OWN_TASKS
        raise ValueError(f"--task={task!r}; use all, {', '.join(names)}")
    task_systems = {name: systems_of(name) for name in task_names if name in TASKS}
    temperature_values = parse_list("temperatures", temperatures, float, low=0)
    check_out_dir(results, "results")
    try:
        train_flags = shlex.split(train_args)
    except ValueError as err:
        raise ValueError(f"--train_args={train_args!r} does not parse ({err}); it takes shell quoting") from None
    for name in (arg.split("=")[0] for arg in train_flags):
        if name in OWNED:
            raise ValueError(f"--train_args: {name} is experiment.py's to set, {OWNED[name]}")
except ValueError as err:
    fail(err)
stop_on_interrupt("experiment.py", "the runs in progress were stopped; finished runs and the checkpoints of the "
                                   "others are kept: run the same command to continue")
DECODINGS = ["greedy", f"beam{beam_size}"] + [f"t{t:g}" for t in temperature_values if t > 0]
children, children_lock = set(), threading.Lock()  # the train.py / sample.py processes now running
stopping = threading.Event()  # set once the experiment stops: no new run starts
parts = []  # (task, part, runs done, runs in all, minutes of wall time) of this invocation
train_locks = {}  # out_dir -> a lock: one thread trains a run (a fine-tuning run may need its base trained again)
try:  # Linux: a run gets SIGTERM when experiment.py dies, even by SIGKILL (PR_SET_PDEATHSIG): none trains on alone
    PRCTL, PR_SET_PDEATHSIG = ctypes.CDLL(None, use_errno=True).prctl, 1
except AttributeError:  # elsewhere (macOS) stop_children() covers every stop but SIGKILL
    PRCTL = None


def stop_children():
    """End the runs in progress (their last checkpoint stays: saves are atomic) and start no new one."""
    with children_lock:
        stopping.set()
        running = list(children)
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(command, done_file):
    """Run a script on one thread unless done_file exists; returns seconds spent (0 when skipped)."""
    if os.path.exists(done_file):
        return 0.0
    with children_lock:  # no new process once stop_children() began
        if stopping.is_set():
            sys.exit("experiment.py: stopped")
        print("$", " ".join(command), flush=True)
        t0 = time.time()
        # the death signal is tied to the thread that starts the run: this one, which waits for it to end
        process = subprocess.Popen([sys.executable, os.path.join(HERE, command[0])] + command[1:],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                   preexec_fn=partial(PRCTL, PR_SET_PDEATHSIG, signal.SIGTERM) if PRCTL else None)
        children.add(process)
    _, stderr = process.communicate()
    with children_lock:
        children.discard(process)
    if process.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"
        fail(f"{' '.join(command)} failed: {last}")
    return time.time() - t0


def last_wins(command):
    """The command with one --name=value per name: the last one given (the one train.py uses), in the place
    of the first (so the echoed command reads as what runs)."""
    named = {}
    for arg in command:
        named[arg.split("=")[0] if arg.startswith("--") else arg] = arg
    return list(named.values())


def train(out_dir, flags, seed, outputs=()):
    """train.py into out_dir unless it finished before and its ckpt.pt is there, or every file of
    outputs (what was made from its weights) is; a run with a checkpoint resumes, one that died before
    its first checkpoint starts afresh, and so does a finished one whose weights are needed but gone
    (git keeps a run's logs and summaries, not its weights). flags: the task's first (a config file sets
    an out_dir of its own), then the system's: later flags win."""
    command = ["train.py", *flags, f"--out_dir={out_dir}", f"--seed={seed}", *train_flags]
    trained, ckpt, log = (os.path.join(out_dir, f) for f in ("trained", "ckpt.pt", "log.jsonl"))
    with train_locks.setdefault(out_dir, threading.Lock()):  # setdefault is atomic
        if os.path.exists(trained) and (os.path.exists(ckpt) or (outputs and all(map(os.path.exists, outputs)))):
            return 0.0
        if os.path.exists(ckpt):
            command.append("--init_from=resume")  # the last --init_from wins
        else:
            for stale in (trained, log):  # a start that saved nothing, or a finished run without its weights
                if os.path.exists(stale):
                    os.remove(stale)
        seconds = run(last_wins(command), trained)
        open(trained, "w").close()
        return seconds


def decoding_file(out_dir, decoding, split="val"):
    """sample.py's summary of one decoding (its default name)."""
    return os.path.join(out_dir, f"samples_{split}_{'t0' if decoding == 'greedy' else decoding}.json")


def sample(out_dir, decoding, seed, split="val", weights="ckpt.pt", prompts=max_prompts, max_new_tokens=None):
    """sample.py on the run's weights (ckpt.pt, or best.pt: the early-stopped state) at one decoding, on the first
    `prompts` prompts of the split (at most max_new_tokens tokens each; None: sample.py's default)."""
    args = {"greedy": ["--temperature=0", "--num_samples=1"], f"beam{beam_size}": [f"--beam_size={beam_size}",
            "--num_samples=1"]}.get(decoding, [f"--temperature={decoding[1:]}", f"--num_samples={num_samples}"])
    return run(["sample.py", f"--out_dir={out_dir}", f"--init_from={os.path.join(out_dir, weights)}", *args,
                f"--split={split}", f"--max_prompts={prompts}", f"--seed={seed}"]
               + ([f"--max_new_tokens={max_new_tokens}"] if max_new_tokens else []),
               decoding_file(out_dir, decoding, split))


def reward_file(out_dir):
    return os.path.join(out_dir, "reward", "reward_summary.json")


def analyze(out_dir, seed, split="val", weights="ckpt.pt"):
    """The reward analysis of one run, on its samples at temperature 1 (drawn here if not yet)."""
    seconds = sample(out_dir, "t1", seed, split, weights)
    return seconds + run(["analyze_reward.py", f"--out_dir={os.path.join(out_dir, weights)}",
                          f"--split={split}", "--max_prompts=200",
                          f"--results={os.path.join(out_dir, 'reward')}"], reward_file(out_dir))


def timed(name, part, calls):
    """Run calls ({key: function returning seconds spent}) `jobs` at a time, in order; note the part's
    wall time."""
    t0, pool = time.time(), ThreadPoolExecutor(jobs)
    try:
        futures = [pool.submit(call) for call in calls.values()]
        wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        ran = sum(future.result() > 0 for future in futures)
    except BaseException:  # a failed run or Ctrl-C: stop the others now, not after every queued run
        stop_children()
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()
    parts.append((name, part, ran, len(calls), (time.time() - t0) / 60))
    print(f"{name}: {part}: {ran} of {len(calls)} runs in {parts[-1][4]:.1f} minutes, {jobs} at a time", flush=True)


def read(path):
    """A JSON file, or the rows of a JSONL file (a run's log.jsonl)."""
    with open(path) as f:
        return [json.loads(line) for line in f] if path.endswith(".jsonl") else json.load(f)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    return plt


# ----------------------------------------------------------------------------- statistics (tests/test_experiment.py)
def interpolate(curve, x):
    """curve: [(Self-BLEU, score)] of one run; the score at Self-BLEU x on the piecewise linear curve
    through its points sorted by Self-BLEU (points at the same Self-BLEU averaged)."""
    xs = sorted({p[0] for p in curve})
    ys = [np.mean([p[1] for p in curve if p[0] == v]) for v in xs]
    return np.interp(x, xs, ys)


def overlap(curve, reference):
    """(low, high): the Self-BLEU range both curves cover; None when they do not overlap."""
    low = max(min(p[0] for p in curve), min(p[0] for p in reference))
    high = min(max(p[0] for p in curve), max(p[0] for p in reference))
    return (low, high) if low <= high else None


def matched_difference(curve, reference, n_grid=21):
    """Mean of curve - reference over n_grid Self-BLEU values evenly spaced over the range both cover;
    None when the ranges do not overlap."""
    if overlap(curve, reference) is None:
        return None
    grid = np.linspace(*overlap(curve, reference), n_grid)
    return float(np.mean(interpolate(curve, grid) - interpolate(reference, grid)))


def paired(values, reference):
    """Per-seed differences values - reference (None where either is None): mean, s.e., sd, seeds and
    the seeds whose 95% half-width would be RESOLVE with this spread, ceil((1.96 sd / RESOLVE)^2)."""
    diffs = [v - r for v, r in zip(values, reference) if v is not None and r is not None]
    if not diffs:
        return None
    mean, se = mean_se(diffs)
    sd = se * math.sqrt(len(diffs))
    return dict(mean=mean, se=se, sd=sd, n=len(diffs), resolve=max(1, math.ceil((1.96 * sd / RESOLVE) ** 2)))


def ms(values, digits=3):
    """'mean ± s.e.' of values (None left out)."""
    values = [v for v in values if v is not None]
    return f"{mean_se(values)[0]:.{digits}f} ± {mean_se(values)[1]:.{digits}f}" if values else "—"


def diff_cells(d, digits=3):
    """A paired difference as table cells: 'mean ± s.e.' and the seeds that resolve RESOLVE."""
    return [f"{d['mean']:+.{digits}f} ± {d['se']:.{digits}f}", str(d["resolve"])] if d else ["—", "—"]


# ----------------------------------------------------------------------------- score vs diversity (arith, shakespeare)
def run_dir(root, system, seed):
    return os.path.join(root, f"{system}_s{seed}")


def learning_curves(runs, key="val/accuracy", digits=2):
    """Table rows: key (val accuracy, or ROUGE-L) at each evaluation (train.py's greedy, on its eval_prompts),
    mean ± s.e. to `digits` decimals; runs: {label: [out_dir per seed]}, one table per schedule (its evaluation
    iterations)."""
    by_schedule = {}
    for label, dirs in runs.items():
        logs = [read(os.path.join(d, 'log.jsonl')) for d in dirs]
        by_schedule.setdefault(tuple(r["iter"] for r in logs[0]), []).append((label, logs))
    rows = []
    for iters, group in by_schedule.items():
        rows += ["", "| system | " + " | ".join(f"iter {i}" for i in iters) + " |", "|---" * (len(iters) + 1) + "|"]
        rows += [f"| {label} | " + " | ".join(ms([log[k].get(key) for log in logs], digits)
                                              for k in range(len(iters))) + " |" for label, logs in group]
    return rows


def reward_table(root, analyzed, table=SYSTEMS):
    """The reward analysis over seeds: Spearman(return, metric) over all samples, the same for log p
    alone, what v_0 adds (their paired difference) and the pick rate within prompts."""
    rows = ["| system | λ | Spearman(return, metric) | Spearman(log p, metric) | return − log p | "
            "pick rate | chance | v_0 mean | seeds |", "|---" * 9 + "|"]
    for system in analyzed:
        runs = [read(os.path.join(run_dir(root, system, seed), "reward", "reward_summary.json"))["runs"]
                [f"{system}_s{seed}"] for seed in range(seeds)]
        get = lambda key: [r[key] for r in runs]
        flags = dict(f[2:].split("=", 1) for f in table[system][1] if "=" in f)
        td = flags.get("td_coef", "0.1") if flags.get("loss") == "irl" else "0"  # train.py's default λ is 0.1
        v0_adds = paired(get("spearman_return_metric"), get("spearman_log_prob_metric"))
        rows.append(f"| {table[system][0]} | {td} | {ms(get('spearman_return_metric'))} | "
                    f"{ms(get('spearman_log_prob_metric'))} | {diff_cells(v0_adds)[0]} | {ms(get('pick_rate'))} | "
                    f"{ms(get('pick_chance'))} | {ms(get('v0_mean'), 2)} | "
                    f"{sum(v is not None for v in get('spearman_return_metric'))} |")  # None: no sample right
    return rows


def score_vs_diversity(name, spec=None):
    """Figures 2-3: each system's curve of task score against Self-BLEU, paired differences to MLE.
    spec (task tuned): root, table {system: (label, flags)}, chosen (the base first), flags, metric,
    split, weights and prompts (sample.py's --split, ckpt.pt or best.pt, --max_prompts), decodings, start
    (seed -> (seconds, flags that start the run from its seed's base model)) and part_of (the task it times)
    in place of task `name`'s."""
    flags, metric, _, _ = TASKS.get(name, (None, None, None, None))
    spec = dict(dict(root=os.path.join(results, name), table=SYSTEMS, chosen=task_systems.get(name), flags=flags,
                     metric=metric, split="val", weights="ckpt.pt", prompts=max_prompts, decodings=DECODINGS,
                     part_of=name, start=lambda seed: (0.0, [])), **(spec or {}))
    root, table, chosen, flags, metric = (spec[k] for k in ("root", "table", "chosen", "flags", "metric"))
    split, weights, base, decodings = spec["split"], spec["weights"], spec["chosen"][0], spec["decodings"]
    prompts, max_new_tokens = spec["prompts"], spec.get("max_new_tokens")
    analyzed = spec.get("analyzed", [s for s in REWARD if s in chosen])
    label = lambda s: table[s][0]
    decoded = lambda s, d, seed: decoding_file(run_dir(root, s, seed), d, split)

    def pipeline(s, seed):
        """Train one run (from its seed's MLE run for those of FROM_MLE), sample it at every
        decoding, analyse its reward; seconds spent."""
        out_dir, spent, start = run_dir(root, s, seed), 0.0, []
        outputs = [decoded(s, d, seed) for d in decodings] + ([reward_file(out_dir)] if s in analyzed else [])
        finished = all(map(os.path.exists, outputs + [os.path.join(out_dir, "trained")]))
        if s in FROM_MLE and table is SYSTEMS and not finished:
            spent += train(run_dir(root, "mle", seed), flags + SYSTEMS["mle"][1], seed)  # its weights are needed
            start = [f"--init_from={os.path.join(run_dir(root, 'mle', seed), 'ckpt.pt')}"]
        elif not finished:
            spent, start = spec["start"](seed)  # task tuned's fine-tuning: the seed's base model
        spent += train(out_dir, flags + table[s][1] + start, seed, outputs)
        spent += sum(sample(out_dir, d, seed, split, weights, prompts, max_new_tokens) for d in decodings)
        return spent + (analyze(out_dir, seed, split, weights) if s in analyzed else 0.0)

    # seed by seed, so that a stop leaves whole seeds (their logs and summaries) behind
    timed(spec["part_of"], f"{name}: train, sample and analyse each run", {(s, seed): partial(pipeline, s, seed)
                                                       for seed in range(seeds) for s in chosen})
    summary = {(s, d, seed): read(decoded(s, d, seed)) for s in chosen for d in decodings for seed in range(seeds)}
    # per seed; the K samples of a deterministic decoding would be equal: Self-BLEU 1
    get = lambda s, d, key: [1.0 if key == "self_bleu" and d in decodings[:2] else summary[(s, d, seed)].get(key)
                             for seed in range(seeds)]
    on_curve = ["greedy"] + decodings[2:]  # the temperatures, greedy as T=0
    curve = lambda s, seed: [(get(s, d, "self_bleu")[seed], get(s, d, metric)[seed]) for d in on_curve]
    scores = [metric] + spec.get("also_scored", []) + ["self_bleu", "distinct_2"]
    rows = [f"## {name}: {metric} by decoding ({seeds} seeds, {prompts} {split} prompts, mean ± s.e.)", "",
            "| system | decoding | " + " | ".join(HEADINGS.get(key, key) for key in scores) + " |",
            "|---" * (len(scores) + 2) + "|"]
    rows += [f"| {label(s)} | {'T=' + d[1:] if d[0] == 't' else d} | "
             + " | ".join(ms(get(s, d, key)) for key in scores) + " |" for s in chosen for d in decodings]
    rows += ["", f"## {name}: paired differences, system − {label(base)}, or − the control for systems fine-tuned "
             f"from MLE (mean ± s.e. over seeds; 'seeds': how many would bring the 95% half-width 1.96 sd/√n "
             f"down to {RESOLVE}, which is 50% power against a true {RESOLVE}, 80% needs about twice as many; "
             f"'Self-BLEU range': the range both curves cover, mean over seeds)", "",
             f"| system | {metric} at matched Self-BLEU | seeds | Self-BLEU range | greedy | seeds | {decodings[1]} | "
             f"seeds | {decodings[1]} − greedy (own) |", "|---" * 9 + "|"]
    # online IQ-Learn and GAIL fine-tune MLE for a few hundred steps more: the control (MLE on the same schedule)
    # isolates their part
    against = [(s, CONTROL if s in FROM_MLE and s != CONTROL and CONTROL in chosen else base) for s in chosen[1:]]
    for s, other in against:
        matched = [matched_difference(curve(s, seed), curve(other, seed)) for seed in range(seeds)]
        ranges = [overlap(curve(s, seed), curve(other, seed)) for seed in range(seeds)]
        ranges = [r for r in ranges if r]
        span = f"{np.mean([r[0] for r in ranges]):.3f}–{np.mean([r[1] for r in ranges]):.3f}" if ranges else "none"
        name_s = label(s) + ("" if other == base else f" − {label(other)}")
        rows.append(f"| {name_s} | " + " | ".join(
            diff_cells(paired(matched, [0.0] * seeds)) + [span]
            + [cell for d in decodings[:2] for cell in diff_cells(paired(get(s, d, metric), get(other, d, metric)))]
            + diff_cells(paired(get(s, decodings[1], metric), get(s, "greedy", metric)))[:1]) + " |")
    curve_key = spec.get("early_stop", f"val/{metric}")  # what train.py evaluated: val/nll, or the greedy score
    rows += ["", f"## {name}: learning curves, {curve_key if curve_key == 'val/nll' else 'greedy val ' + metric} "
             f"at each evaluation (mean ± s.e.)"]
    rows += learning_curves({label(s): [run_dir(root, s, seed) for seed in range(seeds)] for s in chosen},
                            curve_key, 2 if metric == "accuracy" else 3)  # ROUGE-L and nll move in the third decimal
    if analyzed:
        rows += ["", f"## {name}: reward analysis (samples at T=1; at γ=1 return = log p + v_0, so within a prompt "
                 f"return ranks as log p: the pick rate is log p's, and return − log p is what v_0 adds)", ""]
        rows += reward_table(root, analyzed, table)

    # one panel of the systems that work; one that collapsed (greedy below half the base's) would squeeze the rest
    # into a strip, so it is named in a note instead
    shown = [s for s in chosen if np.mean(get(s, "greedy", metric)) >= np.mean(get(base, "greedy", metric)) / 2]
    lines = []  # per system shown: its curve (mean Self-BLEU, mean score, s.e.) from greedy to the hottest, and beam's
    for s in shown:
        points = sorted((np.mean(get(s, d, "self_bleu")), *mean_se(get(s, d, metric))) for d in on_curve)
        lines.append(dict(label=label(s), color=chosen.index(s), curve=[list(map(float, p)) for p in points],
                          beam=list(map(float, mean_se(get(s, decodings[1], metric))))))
    temps = ", ".join(d[1:] for d in decodings[2:])
    drawn = dict(metric=metric, split=split, seeds=seeds, lines=lines, title=(
        f"{name}: task score against diversity, each curve greedy (right) to T = {temps}\n"
        f"x = beam search ({decodings[1][4:]} beams); mean over {seeds} seeds, band ± s.e."), collapsed=[
        f"{label(s)} (greedy {np.mean(get(s, 'greedy', metric)):.2f})" for s in chosen if s not in shown])
    write_atomically(os.path.join(root, "curves.json"), json.dumps(drawn, indent=1) + "\n")  # for overview()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    draw_curves(ax, drawn)
    ax.set_title(drawn["title"], fontsize=10)
    fig.tight_layout()
    save_figure(fig, os.path.join(root, "figure.png"), dpi=120)
    return rows


def draw_curves(ax, drawn, short=False):
    """score_vs_diversity's figure on ax, from its curves.json (drawn); short: family names only in the legend."""
    plt = pyplot()
    for line in drawn["lines"]:
        color = plt.cm.tab10(line["color"] % 10)
        x, y, se = map(np.array, zip(*line["curve"]))
        ax.plot(x, y, "o-", color=color, markersize=4, label=line["label"].split(" (")[0] if short else line["label"])
        ax.fill_between(x, y - se, y + se, color=color, alpha=0.15)
        ax.errorbar([1.0], [line["beam"][0]], yerr=[line["beam"][1]], fmt="x", color=color, markersize=8, capsize=3)
    ax.set_xlabel("Self-BLEU among the K samples of a prompt (lower = more diverse; greedy and beam search at 1)"
                  if not short else "Self-BLEU (lower = more diverse)")
    ax.set_ylabel(f"{drawn['metric']} of the completions, {drawn['split']} split")
    if drawn["collapsed"]:
        ax.text(0.01, 0.01, "not shown, collapsed: " + "; ".join(drawn["collapsed"]), transform=ax.transAxes,
                fontsize=8 if not short else 7)
    ax.legend(fontsize=9 if not short else 8, loc="best")


# ----------------------------------------------------------------------------- val curves (finetune, small_data)
def curves(name, groups, title):
    """The small-data figure: val nll and greedy val accuracy against iteration, one line per group
    {(system, data label): [out_dir per seed]}, band ± s.e.; and the table of start / final / best."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = ["| system | data | val nll: start | final | min | final − min (overfitting) | greedy val acc.: start | "
            "final | best | final acc. − MLE | seeds |", "|---" * 11 + "|"]
    systems_seen = list(dict.fromkeys(s for s, _ in groups))
    data_seen = list(dict.fromkeys(d for _, d in groups))
    logs = {key: [read(os.path.join(d, 'log.jsonl')) for d in dirs] for key, dirs in groups.items()}
    for (system, data), seed_logs in logs.items():
        iters = np.array([r["iter"] for r in seed_logs[0]])
        color, style = plt.cm.tab10(systems_seen.index(system) % 10), ["-", "--", ":", "-."][data_seen.index(data) % 4]
        for ax, key in zip(axes, ("val/nll", "val/accuracy")):
            mean, se = map(np.array, zip(*[mean_se([log[k][key] for log in seed_logs]) for k in range(len(iters))]))
            ax.plot(iters, mean, style, color=color, label=f"{SYSTEMS[system][0]}, {data}")
            ax.fill_between(iters, mean - se, mean + se, color=color, alpha=0.15)
        column = lambda key, pick: [pick([r[key] for r in log]) for log in seed_logs]
        first, last = (lambda v: v[0]), (lambda v: v[-1])
        vs_mle = paired(column("val/accuracy", last), [log[-1]["val/accuracy"] for log in logs[("mle", data)]]) \
            if system != "mle" and ("mle", data) in logs else None
        rows.append(f"| {SYSTEMS[system][0]} | {data} | " + " | ".join(
            [ms(column("val/nll", f)) for f in (first, last, min)]
            + [ms(column("val/nll", lambda v: v[-1] - min(v)))]  # per seed: how far val nll rose from its best
            + [ms(column("val/accuracy", f)) for f in (first, last, max)] + diff_cells(vs_mle)) + " |")
    for ax, key in zip(axes, ("val nll (per completion token)", "greedy val accuracy")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter
    for ticks in (axes[0].yaxis.set_major_formatter, axes[0].yaxis.set_minor_formatter):
        ticks(FormatStrFormatter("%.2g"))  # 0.6, not 6×10⁻¹
    fig.suptitle(f"{title} ({seeds} seeds, band ± s.e.)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, os.path.join(results, name, "figure.png"), dpi=120)
    return [f"## {name}: {title} ({seeds} seeds, mean ± s.e.)", ""] + rows


def small_data():
    """MLE vs IRL on 5% and 100% of arith's train split. The 100% runs are arith's own (results/arith/)."""
    name, chosen, root = "small_data", task_systems["small_data"], os.path.join(results, "small_data")
    fraction_data = os.path.join(root, "arith_5pct")
    if not os.path.exists(os.path.join(fraction_data, "train.jsonl")):
        from data.arith.prepare import prepare
        prepare(fraction_data)
        with open(os.path.join(fraction_data, "train.jsonl")) as f:
            lines = f.readlines()
        write_atomically(os.path.join(fraction_data, "train.jsonl"), "".join(lines[: len(lines) // 20]))
    arith = os.path.join(results, "arith")
    runs = {(s, data): partial(run_dir, folder, s + suffix) for s in chosen for data, folder, suffix in
            (("100%", arith, ""), ("5%", root, "_5pct"))}
    extra = {"100%": [], "5%": [f"--dataset={fraction_data}"]}
    timed(name, "train", {(key, seed): partial(train, dirs(seed), ARITH_FLAGS + SYSTEMS[key[0]][1] + extra[key[1]],
                                               seed, [os.path.join(dirs(seed), "log.jsonl")])
                          for key, dirs in runs.items() for seed in range(seeds)})
    return curves(name, {key: [dirs(seed) for seed in range(seeds)] for key, dirs in runs.items()},
                  "arith, 5% vs 100% of the train split")


def finetune_data(folder):
    """The base distribution (data/arith as prepare.py makes it), the shifted one (prepare.py with the
    constants of FINETUNE["shifted"], then put back), and the shifted train split cut to each demo set
    size. Returns ({name: folder}, how many distributions were prepared now)."""
    import data.arith.prepare as arith
    from dataset import DATA_DIR, prepare_task
    folders = {"base": os.path.join(DATA_DIR, "arith"), "shifted": os.path.join(folder, "shifted")}
    folders.update({n: os.path.join(folder, f"shifted{n}") for n in FINETUNE["sizes"]})
    made = int(prepare_task("arith"))  # as train.py's first use would
    constants = dict(FINETUNE["shifted"], SPLIT_SIZES=dict(arith.SPLIT_SIZES, train=max(FINETUNE["sizes"])))
    saved = {k: getattr(arith, k) for k in constants}
    try:
        for k, v in constants.items():
            setattr(arith, k, v)
        made += prepare_task("arith", folders["shifted"])  # new, or made with other knobs
    finally:
        for k, v in saved.items():
            setattr(arith, k, v)
    chars = lambda key: set(read(os.path.join(folders[key], "meta.json"))["tokenizer"]["chars"])
    if not chars("shifted") <= chars("base"):  # the fine-tuned model keeps the base model's tokenizer
        fail(f"the shifted data has characters the base data lacks: {sorted(chars('shifted') - chars('base'))}")
    for n in FINETUNE["sizes"]:
        cut_train(folders["shifted"], folders[n], n)
    return folders, made


def cut_train(source, folder, n):
    """folder: a copy of the dataset folder source with its train split cut to the first n examples."""
    os.makedirs(folder, exist_ok=True)
    for file in ("train.jsonl", "val.jsonl", "test.jsonl", "meta.json"):
        with open(os.path.join(source, file)) as f:
            text = "".join(f.readlines()[:n]) if file == "train.jsonl" else f.read()
        write_atomically(os.path.join(folder, file), text)
    return folder


def finetune():
    """The paper's setting: a base model per seed (MLE on arith: task arith's own MLE run), fine-tuned by
    each system on a small demonstration set of a shifted distribution (FINETUNE["shifted"]); val nll
    and accuracy on the shifted val split."""
    name, chosen, root = "finetune", task_systems["finetune"], os.path.join(results, "finetune")
    t0 = time.time()
    folders, made = finetune_data(os.path.join(root, "data"))
    parts.append((name, "data", made, 2, (time.time() - t0) / 60))  # base and shifted distributions
    base = partial(run_dir, os.path.join(results, "arith"), "mle")
    dirs = lambda s, n, seed: os.path.join(root, f"{s}_n{n}_s{seed}")

    def fine_tune(s, n, seed):
        """The base model of the seed (trained first if its weights are gone), then its fine-tuning run."""
        log = os.path.join(dirs(s, n, seed), "log.jsonl")
        started = any(os.path.exists(os.path.join(dirs(s, n, seed), f)) for f in ("trained", "ckpt.pt"))
        spent = 0.0 if started else train(base(seed), ARITH_FLAGS + SYSTEMS["mle"][1], seed)
        return spent + train(dirs(s, n, seed), [f"--dataset={folders[n]}"] + FINETUNE["flags"] + SYSTEMS[s][1]
                             + [f"--init_from={os.path.join(base(seed), 'ckpt.pt')}"], seed, [log])

    timed(name, "fine-tune arith's MLE run of each seed", {(s, n, seed): partial(fine_tune, s, n, seed)
                                                            for seed in range(seeds) for n in FINETUNE["sizes"]
                                                            for s in chosen})
    return curves(name, {(s, f"{n} demos"): [dirs(s, n, seed) for seed in range(seeds)]
                         for n in FINETUNE["sizes"] for s in chosen},
                  f"fine-tuning arith's MLE model on demonstrations of {FINETUNE['shift_label']}")


# ----------------------------------------------------------------------------- best against best (task tuned)
def configurations(setting):
    """{family: {configuration name: train.py flags}}: each family's knob settings at every dropout, in
    grid order (--quick: MLE and IRL, the first two of each)."""
    grid = {}
    for family, (_, loss_name, knob) in setting["families"].items():
        if quick and family not in ("mle", "irl"):
            continue
        flags = [[f"--loss={loss_name}", *k, f"--dropout={d}"] for k in knob for d in setting["dropouts"]]
        named = {family + "_" + "_".join(f[2:].replace("=", "") for f in fl[1:]): fl for fl in flags}
        grid[family] = dict(list(named.items())[:2] if quick else named)
    return grid


NLL_TOLERANCE = 0.01  # nats per token: val nll falling less than this over a run's last quarter has levelled off


def levelled(log_rows, key="val/accuracy", eval_prompts=200):
    """How much a line through the last quarter of a run's evaluations of key improves over that quarter (a rise
    of greedy val accuracy or ROUGE-L, a fall of val nll), and the tolerance: levelled off when the gain is below
    it. The tolerance is one evaluation's binomial s.e. for a score in [0, 1] (for ROUGE-L it bounds the s.e. of
    the mean from above), NLL_TOLERANCE for val/nll."""
    rows = [r for r in log_rows if key in r]
    tail = rows[-max(2, len(rows) // 4):]
    iters, value = np.array([r["iter"] for r in tail]), np.array([r[key] for r in tail])
    gain = np.polyfit(iters, value, 1)[0] * (iters[-1] - iters[0]) * (1 if BEST_IS_HIGHER[key] else -1)
    if not BEST_IS_HIGHER[key]:  # val nll or loss, in nats
        return float(gain), NLL_TOLERANCE
    return float(gain), float(math.sqrt(max(value.mean() * (1 - value.mean()), 1e-4) / eval_prompts))


def best_row(log_rows, key):
    """The evaluation a run's best.pt keeps under --keep_best=key: the highest score, the lowest val nll; the
    earliest of ties, as train.py keeps it."""
    rows = [r for r in log_rows if key in r]
    return (max if BEST_IS_HIGHER[key] else min)(rows, key=lambda r: r[key])


def demonstrations(setting, root, size=None):
    """The --dataset flag of a setting's runs: its built-in data (prepared now, before runs read it in parallel),
    or a copy with the train split cut to its first `size` examples, in root/data/train<size>."""
    from dataset import DATA_DIR, prepare_task
    prepare_task(setting["data"])
    if not size:
        return [f"--dataset={setting['data']}"]
    folder = cut_train(os.path.join(DATA_DIR, setting["data"]), os.path.join(root, "data", f"train{size}"), size)
    return [f"--dataset={folder}"]


def base_start(root, base):
    """start(seed) -> (seconds, flags) of a setting's runs: from scratch (base None), or fine-tuned from one base
    model, trained on its first use (base["prepare"]'s data, base["flags"]) into root/base. One base, seed 0, for
    every seed: the question is the fine-tuning loss, not how base models differ by seed, and one base costs half
    a family's five final runs."""
    if base is None:
        return lambda seed: (0.0, [])
    folder, out_dir = os.path.join(root, "data", "pretrain"), os.path.join(root, "base")
    if not os.path.exists(os.path.join(folder, "meta.json")):
        base["prepare"](folder)
    return lambda seed: (train(out_dir, [f"--dataset={folder}"] + base["flags"], 0),
                         [f"--init_from={os.path.join(out_dir, 'ckpt.pt')}"])


def tuned_setting(name, root, part_of):
    """Tune every family of TUNED[name] on val, then run each family's choice on the final seeds, scored on
    the test split against the tuned MLE (score_vs_diversity), into root; part_of: the task it times. Table rows."""
    setting, metric = TUNED[name], TUNED[name].get("metric", "accuracy")
    stop = setting.get("early_stop", f"val/{metric}")  # what best.pt keeps, and what the choice goes by
    grid, keep = configurations(setting), f"--keep_best={stop}"
    prompts, max_new_tokens = min(max_prompts, setting.get("prompts", max_prompts)), setting.get("max_new_tokens")
    part = f"{name}: " if part_of != name else ""  # task tuned times its settings' parts apart
    if name == "finetune":  # the demonstrations, and the base model of each seed (arith's MLE run; retrained if gone)
        folders, _ = finetune_data(os.path.join(results, "finetune", "data"))
        data = [f"--dataset={folders[setting['size']]}"]
        base = lambda seed: (run_dir(os.path.join(results, "arith"), "mle", seed) if seed < seeds
                             else run_dir(os.path.join(root, "tuning"), "base", seed))

        def start(seed):  # (seconds spent training the base model, the flag that starts from it)
            spent = train(base(seed), ARITH_FLAGS + SYSTEMS["mle"][1], seed)
            return spent, [f"--init_from={os.path.join(base(seed), 'ckpt.pt')}"]
    else:
        data = demonstrations(setting, root, setting.get("size")) if "data" in setting else []
        start = base_start(root, setting.get("base"))
        if "base" in setting and not os.path.exists(os.path.join(root, "base", "trained")):  # alone, before the runs
            # that need it; once finished, only a run that needs its weights and lacks them trains it again (a clone
            # whose runs are all there redraws its tables without it)
            timed(part_of, f"{part}pre-train the base model", {"base": lambda: start(0)[0]})

    by_score = stop == f"val/{metric}"  # else the choice goes by the log's lowest val nll: no decoding needed

    def tuning_run(config, flags, seed):
        """One configuration on one tuning seed: trained, early-stopped, its best.pt decoded greedily on val if
        the choice goes by that score."""
        out_dir = run_dir(os.path.join(root, "tuning"), config, seed)
        outputs = [decoding_file(out_dir, "greedy", "val")] if by_score else [os.path.join(out_dir, "trained")]
        spent, start_flags = (0.0, []) if all(map(os.path.exists, outputs)) else start(seed)
        spent += train(out_dir, data + setting["flags"] + start_flags + flags + [keep], seed, outputs)
        return spent + (sample(out_dir, "greedy", seed, "val", "best.pt", prompts, max_new_tokens) if by_score else 0.0)

    timed(part_of, f"{part}tune each family on val", {
        (c, seed): partial(tuning_run, c, flags, seed) for seed in setting["tuning_seeds"]
        for configs in grid.values() for c, flags in configs.items()})
    score, gain, tolerance = ((f"greedy {metric} of each run's best.pt on {prompts} val prompts", "rise",
                               "one evaluation's s.e.") if by_score else (f"lowest {stop} of each run", "fall",
                                                                          f"a tolerance of {NLL_TOLERANCE} nats"))
    rows = [f"## tuned {name}: the grid ({score}, mean over tuning seeds {setting['tuning_seeds']}; '{gain}': a line "
            f"through the last quarter of the run's evaluations, against {tolerance})", "",
            f"| family | configuration | {f'val {metric} (best.pt)' if by_score else stop} | best at iter | "
            f"{gain} over the last quarter | {'s.e.' if by_score else 'tolerance'} | levelled off | chosen |",
            "|---" * 8 + "|"]
    table, chosen = {}, []
    for family, configs in grid.items():
        scores = {}
        for c in configs:
            dirs = [run_dir(os.path.join(root, "tuning"), c, seed) for seed in setting["tuning_seeds"]]
            scores[c] = np.mean([read(decoding_file(d, "greedy", "val"))[metric] if by_score
                                 else best_row(read(os.path.join(d, "log.jsonl")), stop)[stop] for d in dirs])
        # the same direction as best_row's (ties: the first in grid order)
        pick = (max if BEST_IS_HIGHER[stop] else min)(configs, key=lambda c: scores[c])
        for c in configs:
            dirs = [run_dir(os.path.join(root, "tuning"), c, seed) for seed in setting["tuning_seeds"]]
            logs = [read(os.path.join(d, "log.jsonl")) for d in dirs]
            best_iters = [best_row(log, stop)["iter"] for log in logs]
            rises = [levelled(log, stop) for log in logs]
            rows.append(f"| {setting['families'][family][0]} | {c} | {scores[c]:.3f} | "
                        f"{', '.join(map(str, best_iters))} | {', '.join(f'{r:+.3f}' for r, _ in rises)} | "
                        f"{', '.join(f'{e:.3f}' for _, e in rises)} | "
                        f"{'yes' if all(r < e for r, e in rises) else 'no'} | {'✓' if c == pick else ''} |")
        # the label in tables and figures, in words: "MLE (learning rate 1e-3, dropout 0.1)" (the loss flag left out)
        words = ", ".join(f[2:].replace("_", " ").replace("=", " ") for f in configs[pick][1:])
        table[family] = (f"{setting['families'][family][0]} ({words})", data + setting["flags"] + configs[pick]
                         + [keep] + ([] if quick else setting.get("final_flags", [])))
        chosen.append(family)
    hotter = setting.get("temperatures", TUNED_TEMPERATURES)
    decodings = DECODINGS + [f"t{t:g}" for t in hotter if f"t{t:g}" not in DECODINGS]
    finals = dict(root=root, table=table, chosen=chosen, flags=[], metric=metric, split="test", weights="best.pt",
                  prompts=prompts, analyzed=chosen if setting.get("reward") else [], decodings=decodings,
                  start=start, part_of=part_of, also_scored=setting.get("also_scored", []), early_stop=stop,
                  max_new_tokens=max_new_tokens)
    rows += [""] + score_vs_diversity(f"tuned {name}", finals) + [""] + levelled_rows(f"tuned {name}", finals)
    if "smaller" in setting:  # the same choices again (no new tuning) on fewer demonstrations: the small-data question
        families, size = setting["smaller"]
        flags, what = demonstrations(setting, root, size), f"{size} demonstrations"
        spec = dict(finals, root=os.path.join(root, f"train{size}"), chosen=families, analyzed=[], table={
            f: (f"{table[f][0]}, {what}", table[f][1] + flags) for f in families})
        rows += [""] + score_vs_diversity(f"tuned {name}, {what}", spec) + [""] + levelled_rows(
            f"tuned {name}, {what}", spec)
    return rows


def levelled_rows(name, spec):
    """Table rows: per system of spec (score_vs_diversity's), the gain of a line through the last quarter of
    each final run's evaluations (levelled()), against its tolerance, and how many runs levelled off."""
    key = spec.get("early_stop", f"val/{spec['metric']}")
    what, gain, tolerance = ((f"greedy val {spec['metric']}", "rise", "one evaluation's s.e.")
                             if key == f"val/{spec['metric']}" else (key, "fall", "tolerance"))
    rows = [f"## {name}: levelled off? (the {gain} of a line through the last quarter of each run's {what}, "
            f"mean ± s.e. over seeds, against {tolerance})", "",
            f"| system | {gain} over the last quarter | {tolerance} | runs levelled off |", "|---" * 4 + "|"]
    for s in spec["chosen"]:
        rises = [levelled(read(os.path.join(run_dir(spec["root"], s, seed), "log.jsonl")), key)
                 for seed in range(seeds)]
        rows.append(f"| {spec['table'][s][0]} | {ms([r for r, _ in rises])} | {ms([e for _, e in rises])} | "
                    f"{sum(r < e for r, e in rises)} of {seeds} |")
    return rows


def tuned():
    """Best against best: every family tuned on val with the same budget, early-stopped, then compared on test."""
    return [row for name in TUNED_TASKS for row in tuned_setting(name, os.path.join(results, "tuned", name), "tuned")
            + [""]]


OVERVIEW = {  # README's figure: the paper's three kinds of task, each from its task's curves.json (best against best)
    os.path.join("tuned", "arith"): "arith: reasoning with a verifier",
    "cmudict": "cmudict: translation (spelling → pronunciation)",
    "shakespeare": "shakespeare: continuing real text (next line)"}


def overview():
    """Draw results/overview.png from the three tasks' curves.json, once all three have run; the path, or None."""
    files = [os.path.join(results, folder, "curves.json") for folder in OVERVIEW]
    if not all(map(os.path.exists, files)):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(files), figsize=(16, 5))
    for ax, path, title in zip(axes, files, OVERVIEW.values()):
        drawn = read(path)
        draw_curves(ax, drawn, short=True)
        ax.set_title(f"{title}\n{drawn['split']} split, {drawn['seeds']} seeds, band ± s.e.; x = beam search",
                     fontsize=10)
    fig.suptitle("Task score against diversity: each family's best configuration, tuned on val (greedy at the right, "
                 "then hotter samples)", fontsize=11)
    fig.tight_layout()
    path = os.path.join(results, "overview.png")
    save_figure(fig, path, dpi=100)
    return path


def main():
    for name in task_names:
        root = os.path.join(results, name)
        lock_out_dir(root)  # one experiment at a time on a results folder
        t0 = time.time()
        tasks = {"finetune": finetune, "small_data": small_data, "tuned": tuned}
        tasks.update({n: partial(tuned_setting, n, root, n) for n in OWN_TASKS})
        rows = tasks.get(name, partial(score_vs_diversity, name))()
        mine = [p for p in parts if p[0] == name]
        command = shlex.join(["python", "experiment.py"] + sys.argv[1:])
        table_file = os.path.join(root, "table.md")
        if not any(ran for _, _, ran, _, _ in mine) and os.path.exists(table_file):  # only redrawn: keep the timing
            with open(table_file) as f:
                timing = f.read().strip().splitlines()[-1]
        else:
            timing = (f"`{command}`: {(time.time() - t0) / 60:.1f} minutes of wall time for {name}, {jobs} runs at "
                      f"a time (" + "; ".join(f"{part} {minutes:.1f} ({ran} of {total} run{'s' * (total != 1)})"
                                              for _, part, ran, total, minutes in mine) + ")"
                      + ("; the others were done before and skipped" if any(r < t for _, _, r, t, _ in mine) else ""))
        if quick:
            rows = [QUICK_NOTE, ""] + rows
            print(QUICK_NOTE)
        table = "\n".join(rows) + f"\n\n{timing}\n"
        write_atomically(table_file, table)
        print(table)
        figures = [os.path.join(root, t, "figure.png") for t in TUNED_TASKS] if name == "tuned" else [
            os.path.join(root, "figure.png")]
        drawn = overview() if name in ("tuned", *OWN_TASKS) else None  # README's figure, once all three have run
        print(f"wrote {', '.join(figures + ([drawn] if drawn else []))} and {table_file}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:  # a folder in use, a file that cannot be written (a full disk)
        fail(err)
