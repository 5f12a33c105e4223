"""
The paper's experiments, small, over paired seeds: task score against diversity (its figures 2-3),
the reward analysis (Spearman of return and task score, as a function of λ), and fine-tuning a
trained model on a small shifted demonstration set (its small-data figure). Runs train.py,
sample.py and analyze_reward.py as a user would (python -m lab.experiment runs it too):

    python lab/experiment.py                    # arith, finetune, tuned, critic (--task=all)
    python lab/experiment.py --task=arith       # accuracy vs Self-BLEU of every system, rewards
    python lab/experiment.py --task=finetune    # arith's MLE models fine-tuned on few shifted demos
    python lab/experiment.py --task=small_data  # arith, 5% vs 100% of train: val curves
    python lab/experiment.py --task=tuned       # best against best: each family tuned on val
    python lab/experiment.py --task=cmudict     # the same on real data: word -> pronunciation
    python lab/experiment.py --task=shakespeare # and the next line of held-out plays
    python lab/experiment.py --task=critic      # the reward as a judge, on best against best
    python lab/experiment.py --quick            # a check: 2 seeds, short runs, fewer systems
    python lab/experiment.py --task=arith --plan > plan.txt   # the commands, one a line

Seed s of every system runs with --seed=s, so train.py starts each system from the same weights
(those of FROM_MLE from seed s's MLE run) and draws the same batches: a difference system - MLE (or
- CONTROL, MLE on the same extra steps, for those fine-tuned from MLE) is taken per seed and
reported as mean ± s.e. over seeds. The headline is accuracy at matched Self-BLEU: a run's
(Self-BLEU, accuracy) points over its temperatures (greedy as T=0, Self-BLEU 1), joined piecewise
linearly, minus its seed's MLE (or CONTROL) curve, averaged over Self-BLEU values both cover.

Best against best (task tuned: arith and finetune; cmudict and shakespeare, each a task of its own
in results/<task>/) tunes every family by random search (lab/search.py: TUNED's trials per family,
the shared settings drawn alike; a choice at the edge of a log range tried past it), then runs each
choice on the final seeds. Task critic then judges pools of candidates from each seed's MLE and IRL
runs with critic.py (CRITIC in lab/tasks.py), on the tasks whose best against best has run.
Measured with --jobs=2 on a 2-core x86 CPU: cmudict (2 blocks of width 128, window 48, batch 32;
3000 steps with an evaluation every 100) 152.8 minutes, its 30 tuning runs 72.0, its 25 final
runs, each with 14 decodings of the 500 test words and the reward analysis, 71.7, its 6 trials
past an edge 9.1; tuned finetune about 95 (results/README.md); critic on cmudict 3.2. Estimated
from their schedules: tuned arith about 3.3 hours, shakespeare 2.4 without its 250-demonstration
part (its base model alone, 2500 steps, 10.7 minutes).
Over budget, --seeds=3 cuts the final runs by 40%.

Runs go seed by seed: each is trained, sampled and analysed in one go, so a stop leaves whole runs
(their logs and summaries, which git keeps) behind. A run whose files exist is skipped, so an
interrupted experiment continues where it stopped (a run stopped mid-training resumes from its
ckpt.pt, and a finished run whose weights another run needs but a fresh clone lacks trains again);
Ctrl-C, SIGTERM, a failed run or (on Linux) a kill of the experiment stops the runs in progress.
`--seeds=3` reports over the first 3 seeds.
One experiment at a time on a --results folder (its lock: tasks read each other's runs). A finished
run that this command would train with other flags (--train_args, --quick) is refused, naming the
difference: its marker, the file `trained`, lists the flags it was trained with.
Runs go `jobs` at a time, each on one thread (OMP_NUM_THREADS=1): two one-thread runs side by side
use a 2-core CPU better than one two-thread run after another. Numbers depend on the thread count
and CPU through float rounding.

A sweep across machines: --plan prepares the data and prints every command still to run, one a
line, in waves (a line needs only lines of earlier waves; stderr says which lines each wave holds),
for GNU parallel or a Slurm job array to run wave after wave, from the folder it was made in, e.g.
`sed -n 1,20p plan.txt | parallel -j 8`. The same command without --plan then skips every run whose
files are there and draws the tables. Task tuned chooses its final runs from its tuning runs: its
plan lists them once those are done.
"""
import os
import shlex
import sys
import time
from contextlib import redirect_stdout
from functools import partial

import numpy as np

if __package__ != "lab":  # run as a script, python lab/experiment.py: the repository's modules
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure, parse_list, settings_of  # noqa: E402
from lab import critic_report, report, search
from lab.demonstrations import arith_fraction, builtin, finetune_data, fresh
from lab.runner import Runner, decoding_file, reward_file, run_dir
from lab.stats import best
from lab.tasks import (ARITH_FLAGS, CRITIC, DEMO_SIZES, FAMILIES, FINETUNE_FLAGS, FROM_MLE,
                       OWN_TASKS, QUICK_FINE_TUNE, QUICK_SCRATCH, REWARD, SEARCH_SEED, SHARED,
                       SHIFT_LABEL, SYSTEMS, TASKS, TUNED, TUNED_PARTS, search_space)
from runfiles import check_out_dir, lock_out_dir, stop_on_interrupt, write_atomically

# -----------------------------------------------------------------------------
task = "all"  # all (arith, finetune, tuned, then critic) | arith | finetune | tuned | small_data |
#   cmudict | shakespeare | critic
systems = ""  # '' = the task's own; or some of
#   mle,ent0.01,ent0.1,irl0.1,irl1,online0.01,online0.1,online1,gail,mle+ft
seeds = 5  # paired seeds per system
temperatures = "0.25,0.5,0.75,1.0"  # task arith's sampling temperatures (greedy and beam search
#   come on top); the tuned tasks decode at their own
num_samples = 4  # K samples per prompt at each temperature
beam_size = 4  # beams of the beam-search decoding
max_prompts = 500  # val prompts sampled (arith's val split has 500: all of it)
jobs = 2  # runs at a time, one thread each
train_args = ""  # extra train.py flags for every run, shell-quoted, e.g. "--device=cuda
#   --dataset='my data.jsonl'"
results = "results"  # where runs, tables and figures go
quick = False  # check that it all works: 2 seeds, short runs, 100 prompts, fewer systems, into
#   results_quick/
plan = False  # print the train.py / sample.py / analyze_reward.py commands still to run, one a
#   line in dependency order, instead of running them (a sweep across machines)
# -----------------------------------------------------------------------------
stop_on_interrupt("experiment.py")
settings = settings_of(globals(), __file__)
switches = {"--quick": "--quick=True", "--plan": "--plan=True"}  # these read as switches
config, given = configure(settings, __file__, [switches.get(arg, arg) for arg in sys.argv[1:]],
                          with_given=True, ranges=dict(seeds=(1, None), jobs=(1, None),
                                                       num_samples=(2, None), max_prompts=(1, None),
                                                       beam_size=(1, None)))
QUICK = dict(seeds=2, max_prompts=100, temperatures="0.5,1", results="results_quick")  # unless set
QUICK_NOTE = ("**--quick checks that every part runs (2 seeds, runs of 150 steps, 100 prompts, "
              "fewer systems): its numbers say nothing about the methods.**")
if config["quick"]:
    config.update({k: v for k, v in QUICK.items() if k not in given})
globals().update(config)

READ_BY = {  # the flags that only some tasks read: refused for the others
    "systems": list(TASKS),
    "temperatures": ["arith"],  # the tuned tasks decode at their own (TUNED's temperatures)
    "num_samples": ["arith", *TUNED_PARTS, *OWN_TASKS],  # those that sample at every decoding
    **dict.fromkeys(["beam_size", "max_prompts"], ["arith", *TUNED_PARTS, *OWN_TASKS, "critic"]),
}
OWNED = {  # train.py flags that tell one run from another: set here, refused in --train_args
    "--out_dir": "one folder per run under --results; pass --results=FOLDER",
    "--seed": "seed s of every system runs with --seed=s; pass --seeds=N",
    "--init_from": "for each run (from scratch, from its seed's MLE run, or resumed); drop it",
}


def fail(message):
    sys.exit(f"experiment.py: error: {message}")


def systems_of(name):
    """The systems of task `name`, mle first; ValueError for a name not in SYSTEMS or not for this
    task."""
    own = TASKS[name]["quick_systems" if quick else "systems"]
    chosen = [s for s in (systems or own).split(",") if s]
    allowed = [s for s in SYSTEMS if name == "arith" or s not in FROM_MLE]
    for system in chosen:
        if system not in allowed:
            raise ValueError(f"--systems={systems!r}: {system!r} is not a system of task {name}; "
                             f"use {', '.join(allowed)}")
    return ["mle"] + [s for s in dict.fromkeys(chosen) if s != "mle"]


# every flag is checked before the first run trains
try:
    task_names = {"all": ["arith", "finetune", *TUNED_PARTS, "critic"],
                  "tuned": TUNED_PARTS}.get(task, [task])
    if task_names[0] not in list(TASKS) + TUNED_PARTS + OWN_TASKS + ["critic"]:
        names = list(TASKS)[:2] + ["tuned"] + list(TASKS)[2:] + OWN_TASKS + ["critic"]
        raise ValueError(f"--task={task!r}; use all, {', '.join(names)}")
    task_systems = {name: systems_of(name) for name in task_names if name in TASKS}
    for flag, readers in READ_BY.items():
        if flag in given and not set(task_names) & set(readers):
            raise ValueError(f"--{flag} is read by tasks {', '.join(readers)} only, not by "
                             f"--task={task}; drop it")
    temperature_values = parse_list("temperatures", temperatures, float, low=0)
    check_out_dir(results, "results")
    try:
        train_flags = shlex.split(train_args)
    except ValueError as err:
        raise ValueError(f"--train_args={train_args!r} does not parse ({err}); it takes shell "
                         f"quoting") from None
    for name in (arg.split("=")[0] for arg in train_flags):
        if name in OWNED:
            raise ValueError(f"--train_args: {name} is experiment.py's to set, {OWNED[name]}")
except ValueError as err:
    fail(err)
stop_on_interrupt("experiment.py", "the runs in progress were stopped; finished runs and the "
                                   "checkpoints of the others are kept: run the same command to "
                                   "continue")
DECODINGS = ["greedy", f"beam{beam_size}"] + [f"t{t:g}" for t in temperature_values if t > 0]
runner = Runner(jobs, train_flags, num_samples, max_prompts, plan)


def schedule(flags, short):
    """flags, then under --quick the short schedule (the last value of a flag wins)."""
    return flags + short if quick else flags


arith_flags = schedule(ARITH_FLAGS, QUICK_SCRATCH)  # arith from scratch (task arith's MLE runs...)


# ----------------------------------------------------------------------------- score vs diversity
def train_run(spec, system, seed, made):
    """Seconds spent training spec's run of system and seed (spec as compare()'s) from its start,
    itself trained first if need be; none when the run finished and every file of made (what its
    weights made, or the weights themselves) is there."""
    out_dir = run_dir(spec["root"], system, seed)
    finished = all(map(os.path.exists, [*made, os.path.join(out_dir, "trained")]))
    spent, start = (0.0, []) if finished else spec["start"](system, seed)
    return spent + runner.train(out_dir, spec["systems"][system][1] + start, seed, made)


def compare(name, spec, levelled=False):
    """Train, sample and analyse every run of spec, seed by seed (so that a stop leaves whole
    seeds behind), then its tables and figure (report.score_vs_diversity) and, if levelled, whether
    its runs levelled off. Table rows. spec, every key given:
    - root: the runs are root/<system>_s<seed>; systems: {name: (label, train.py flags)}, base
      first; flags None: not trained, the model the runs start from decoded as it is, on the
      runs' data (dataset: their --dataset)
    - start(system, seed) -> (seconds spent, flags that start the run from a model, trained first
      if need be)
    - sampling: sample.py's split, weights (ckpt.pt or best.pt), prompts and max_new_tokens;
      decodings; analyzed: the systems that get the reward analysis
    - metric, also_scored: sample.py's scores in the tables; early_stop: what train.py's log tracks
      (val/nll, or the greedy val score); part_of: the task it times"""
    root, sampling = spec["root"], spec["sampling"]

    def pipeline(s, seed):
        """Train one run (from its start), sample it at every decoding, analyse its reward;
        seconds spent."""
        out_dir = run_dir(root, s, seed)
        outputs = [decoding_file(out_dir, d, sampling["split"]) for d in spec["decodings"]]
        outputs += [reward_file(out_dir)] if s in spec["analyzed"] else []
        if spec["systems"][s][1] is None:  # the start, decoded as it is
            if all(map(runner.done, outputs)):
                return 0.0
            spent, start = spec["start"](s, seed)
            weights = start[0].partition("=")[2]  # the checkpoint the runs start from
            return spent + sum(runner.sample(out_dir, d, seed, **dict(
                sampling, weights=weights, dataset=spec["dataset"])) for d in spec["decodings"])
        spent = train_run(spec, s, seed, outputs)
        spent += sum(runner.sample(out_dir, d, seed, **sampling) for d in spec["decodings"])
        if s in spec["analyzed"]:
            spent += runner.analyze(out_dir, seed, sampling["split"], sampling["weights"])
        return spent

    runner.timed(spec["part_of"], f"{name}: train, sample and analyse each run", {
        (s, seed): partial(pipeline, s, seed) for seed in range(seeds) for s in spec["systems"]})
    if plan:
        return []
    rows = report.score_vs_diversity(name, spec, seeds)
    return rows + ([""] + report.levelled_rows(name, spec, seeds) if levelled else [])


def arith_system(s):
    """Task arith's train.py flags of system s (those of FROM_MLE on QUICK_FINE_TUNE under
    --quick, appended as the task's short schedule is)."""
    return arith_flags + SYSTEMS[s][1] + (QUICK_FINE_TUNE if quick and s in FROM_MLE else [])


def arith_start(s, seed):
    """(seconds spent, flags) that start task arith's run of system s: those of FROM_MLE start
    from the seed's MLE run (trained first if its weights are gone)."""
    if s not in FROM_MLE:
        return 0.0, []
    mle = run_dir(os.path.join(results, "arith"), "mle", seed)
    return (runner.train(mle, arith_system("mle"), seed),
            [f"--init_from={os.path.join(mle, 'ckpt.pt')}"])


def task_comparison(name):
    """Task `name` (arith): its systems from scratch, or from their seed's MLE run (FROM_MLE),
    scored on val."""
    root, chosen, metric = os.path.join(results, name), task_systems[name], TASKS[name]["metric"]
    compared = {s: (SYSTEMS[s][0], arith_system(s)) for s in chosen}
    return compare(name, dict(
        root=root, systems=compared, start=arith_start, decodings=DECODINGS,
        sampling=dict(split="val", weights="ckpt.pt", prompts=max_prompts, max_new_tokens=None),
        analyzed=[s for s in REWARD if s in chosen], metric=metric, also_scored=[],
        early_stop=f"val/{metric}", part_of=name))


# ----------------------------------------------------------------------------- val curves
def small_data():
    """MLE vs IRL on 5% and 100% of arith's train split. The 100% runs are arith's own
    (results/arith/)."""
    name, chosen = "small_data", task_systems["small_data"]
    root, arith = os.path.join(results, name), os.path.join(results, "arith")
    fraction = arith_fraction(os.path.join(root, "arith_5pct"))
    runs = {(s, data): partial(run_dir, folder, s + suffix) for s in chosen
            for data, folder, suffix in (("100%", arith, ""), ("5%", root, "_5pct"))}
    extra = {"100%": [], "5%": [f"--dataset={fraction}"]}
    runner.timed(name, "train", {
        (key, seed): partial(runner.train, dirs(seed), arith_system(key[0])
                             + extra[key[1]], seed, [os.path.join(dirs(seed), "log.jsonl")])
        for key, dirs in runs.items() for seed in range(seeds)})
    if plan:
        return []
    groups = {key: [dirs(seed) for seed in range(seeds)] for key, dirs in runs.items()}
    return report.val_curves(name, groups, "arith, 5% vs 100% of the train split", seeds,
                             os.path.join(root, "figure.png"))


def finetune():
    """The paper's setting: a base model per seed (MLE on arith: task arith's own MLE run),
    fine-tuned by each system on a small demonstration set of a shifted distribution (SHIFTED); val
    nll and accuracy on the shifted val split."""
    name, chosen, root = "finetune", task_systems["finetune"], os.path.join(results, "finetune")
    t0 = time.time()
    folders, made = finetune_data(os.path.join(root, "data"))
    runner.parts.append((name, "data", made, 2, (time.time() - t0) / 60))  # base and shifted
    base = partial(run_dir, os.path.join(results, "arith"), "mle")
    dirs = lambda s, n, seed: os.path.join(root, f"{s}_n{n}_s{seed}")
    flags = schedule(FINETUNE_FLAGS, QUICK_FINE_TUNE)

    def fine_tune(s, n, seed):
        """The base model of the seed (trained first if its weights are gone), then its fine-tuning
        run."""
        out_dir = dirs(s, n, seed)
        started = any(os.path.exists(os.path.join(out_dir, f)) for f in ("trained", "ckpt.pt"))
        spent = 0.0 if started else runner.train(base(seed), arith_system("mle"), seed)
        start = [f"--init_from={os.path.join(base(seed), 'ckpt.pt')}"]
        return spent + runner.train(out_dir, [f"--dataset={folders[n]}"] + flags + SYSTEMS[s][1]
                                    + start, seed, [os.path.join(out_dir, "log.jsonl")])

    runner.timed(name, "fine-tune arith's MLE run of each seed", {
        (s, n, seed): partial(fine_tune, s, n, seed)
        for seed in range(seeds) for n in DEMO_SIZES for s in chosen})
    if plan:
        return []
    groups = {(s, f"{n} demos"): [dirs(s, n, seed) for seed in range(seeds)]
              for n in DEMO_SIZES for s in chosen}
    return report.val_curves(name, groups, f"fine-tuning arith's MLE model on demonstrations of "
                             f"{SHIFT_LABEL}", seeds, os.path.join(root, "figure.png"))


# ----------------------------------------------------------------------------- best against best
def trials(setting):
    """{family: {trial name: {setting: value}}}: each family's random-search trials (lab/search.py),
    as many for every family (--quick: MLE and IRL, their first trial)."""
    shared = SHARED[setting["space"]]
    drawn = {}
    for family in setting["families"]:
        if quick and family not in ("mle", "irl"):
            continue
        values = search.draw(shared, FAMILIES[family][2], setting["trials"], SEARCH_SEED)
        drawn[family] = {f"{family}_t{k}": v for k, v in enumerate(values[:1] if quick else values)}
    return drawn


def trial_flags(family, values):
    """train.py's flags of a family's trial: its loss, the drawn values, min_lr a tenth of the
    learning rate."""
    flags = [f"--loss={FAMILIES[family][1]}"]
    flags += [f"--{name}={search.flag_value(value)}" for name, value in values.items()]
    return flags + [f"--min_lr={search.flag_value(values['learning_rate'] / 10)}"]


def demonstration_flags(setting, root, size):
    """The --dataset flag of a setting's runs: task finetune's shifted demonstrations, or a
    built-in dataset (its train split cut to its first size examples, if size)."""
    if setting["data"] == "finetune":
        folders, _ = finetune_data(os.path.join(results, "finetune", "data"))
        return [f"--dataset={folders[size]}"]
    return builtin(setting["data"], root, size)


def base_model(setting, root):
    """start(system, seed) -> (seconds spent, flags) of a setting's runs: from scratch, or from the
    seed's base model, trained first if its weights are not there: the seed's MLE run of task arith
    (a tuning seed's own in root/tuning), or one base model for every seed, seed 0's, in root/base:
    the question is the fine-tuning loss, not how base models differ by seed, and one base costs
    half a family's five final runs."""
    base = setting["base"]
    if base is None:
        return lambda system, seed: (0.0, [])
    if base == "arith":
        out_dir = lambda seed: (run_dir(os.path.join(results, "arith"), "mle", seed) if seed < seeds
                                else run_dir(os.path.join(root, "tuning"), "base", seed))
        flags, seed_of = arith_system("mle"), lambda seed: seed
    else:
        folder = os.path.join(root, "data", "pretrain")
        if not os.path.exists(os.path.join(folder, "meta.json")):
            base["prepare"](folder)
        out_dir, seed_of = lambda seed: os.path.join(root, "base"), lambda seed: 0
        flags = [f"--dataset={folder}"] + schedule(base["flags"], base["quick"])
    return lambda system, seed: (runner.train(out_dir(seed), flags, seed_of(seed)),
                                 [f"--init_from={os.path.join(out_dir(seed), 'ckpt.pt')}"])


def tuned_finals(name, root, part_of):
    """Tune every family of TUNED[name] on val by random search (its runs in root/tuning; part_of:
    the task that times them): (setting, the spec of compare() that runs each family's choice on
    the final seeds, scored on the test split against the tuned MLE, the search as
    report.trials_table's arguments); (setting, None, None) under --plan until the tuning runs are
    done."""
    written = TUNED[name]
    setting = dict(written,  # as this invocation runs it
                   flags=schedule(written["flags"], written["quick"]),
                   final_flags=[] if quick else written["final_flags"],
                   tuning_seeds=written["tuning_seeds"][:1] if quick else written["tuning_seeds"],
                   prompts=min(max_prompts, written["prompts"] or max_prompts))
    metric, prompts, choose_by = setting["metric"], setting["prompts"], setting["choose_by"]
    drawn, keep = trials(setting), f"--keep_best={setting['early_stop']}"
    temperatures = setting["temperatures"][::4] if quick else setting["temperatures"]
    max_new_tokens = setting["max_new_tokens"]
    part = "" if part_of.endswith(name) else f"{name}: "  # critic times this setting's parts
    data = demonstration_flags(setting, root, setting["size"])
    start = base_model(setting, root)
    one_base = isinstance(setting["base"], dict)
    if one_base and not os.path.exists(os.path.join(root, "base", "trained")):
        # alone, before the runs that need it; once finished, only a run that needs its weights and
        # lacks them trains it again (a clone whose runs are all there redraws its tables without)
        runner.timed(part_of, f"{part}pre-train the base model",
                     {"base": lambda: start(None, 0)[0]})

    tuning_dirs = lambda trial: [run_dir(os.path.join(root, "tuning"), trial, seed)
                                 for seed in setting["tuning_seeds"]]

    tried = {family: dict(named) for family, named in drawn.items()}  # and those past an edge

    def tuning_run(family, trial, seed):
        """One trial on one tuning seed: trained, early-stopped, its best.pt decoded on val as
        choose_by says."""
        out_dir = run_dir(os.path.join(root, "tuning"), trial, seed)
        chosen_by = decoding_file(out_dir, choose_by, "val")
        spent, start_flags = (0.0, []) if os.path.exists(chosen_by) else start(trial, seed)
        flags = trial_flags(family, tried[family][trial])
        spent += runner.train(out_dir, data + setting["flags"] + start_flags + flags + [keep], seed,
                              [chosen_by])
        return spent + runner.sample(out_dir, choose_by, seed, "val", "best.pt", prompts,
                                     max_new_tokens)

    def tune(trials_of, what):
        """Every trial of {family: {trial: values}} on every tuning seed; False under --plan
        until all are done (the choice waits for them)."""
        runner.timed(part_of, f"{part}{what}", {
            (trial, seed): partial(tuning_run, family, trial, seed)
            for seed in setting["tuning_seeds"] for family, named in trials_of.items()
            for trial in named})
        if plan and not all(os.path.exists(decoding_file(d, choose_by, "val")) for named in
                            trials_of.values() for trial in named for d in tuning_dirs(trial)):
            print(f"tuned {name}: its final runs come from its tuning runs; once those are done, "
                  f"--plan lists them", file=sys.stderr)
            return False
        return True

    if not tune(drawn, "tune each family on val"):
        return setting, None, None
    scores, picks = choose(drawn, tuning_dirs, choose_by, metric)
    # a choice at the edge of a log range: its family tries past that edge (lab/search.py)
    past = {family: {f"{family}_p{k}": values for k, values in
                     enumerate(search.beyond(named[picks[family]], search_space(setting, family)))}
            for family, named in drawn.items()}
    past = {family: named for family, named in past.items() if named}
    if past:
        for family, named in past.items():
            tried[family].update(named)
        if not tune(past, "try past the edges"):
            return setting, None, None
        scores, picks = choose(tried, tuning_dirs, choose_by, metric)
    flags_of = lambda family, trial: trial_flags(family, tried[family][trial]) + [keep]
    searched = dict(drawn=drawn, past=past, flags_of=flags_of, tuning_dirs=tuning_dirs,
                    scores=scores, picks=picks)  # what report.trials_table draws
    compared = {}  # each family's choice
    for family, named in tried.items():
        # the label in words: "MLE (learning rate 0.00123, dropout 0.1, ...)"
        values = named[picks[family]]
        words = ", ".join(f"{k.replace('_', ' ')} {search.flag_value(v)}"
                          for k, v in values.items())
        compared[family] = (f"{FAMILIES[family][0]} ({words})", data + setting["flags"]
                            + trial_flags(family, values) + [keep] + setting["final_flags"])
    finals = dict(root=root, systems=compared, start=start,
                  decodings=DECODINGS[:2] + [f"t{t:g}" for t in temperatures],
                  sampling=dict(split="test", weights="best.pt", prompts=prompts,
                                max_new_tokens=max_new_tokens),
                  analyzed=list(compared) if setting["reward"] else [], metric=metric,
                  also_scored=setting["also_scored"], early_stop=setting["early_stop"],
                  part_of=part_of)
    dataset = data[0].partition("=")[2]
    if setting["base"] == "arith":  # and the base models as they are, on the same test prompts
        finals["systems"]["base"] = ("base model (not fine-tuned)", None)
        finals["dataset"] = dataset
    if setting["data"] in ("arith", "finetune"):  # also on the problems a model cannot recall
        finals["fresh"] = fresh(dataset, "test", prompts)
    return setting, finals, searched


def tuned_setting(name, root, part_of):
    """Best against best on TUNED[name]: every family tuned on val, then its choice run on the
    final seeds and scored on test (tuned_finals), into root. Table rows."""
    setting, finals, searched = tuned_finals(name, root, part_of)
    if finals is None:
        return []
    rows = [] if plan else report.trials_table(name, root, setting, **searched)
    rows += [""] + compare(f"tuned {name}", finals, levelled=True)
    if setting["smaller"]:  # the same choices again (no new tuning) on fewer demonstrations
        families, size = setting["smaller"]
        flags, what = demonstration_flags(setting, root, size), f"{size} demonstrations"
        compared = finals["systems"]
        rows += [""] + compare(f"tuned {name}, {what}", dict(
            finals, root=os.path.join(root, f"train{size}"), analyzed=[],
            systems={f: (f"{compared[f][0]}, {what}", compared[f][1] + flags) for f in families
                     if f in compared}), levelled=True)
    return rows


def choose(drawn, tuning_dirs, decoding, metric):
    """Each family's choice: ({trial: its score, the mean over its tuning runs of the val metric of
    their best.pt at decoding}, {family: the trial of the best score, the first of ties});
    tuning_dirs(trial): its runs' folders."""
    read = lambda d: report.read_summary(decoding_file(d, decoding, "val"), [metric])[metric]
    scores = {trial: float(np.mean([read(d) for d in tuning_dirs(trial)]))
              for named in drawn.values() for trial in named}
    picks = {family: best(named, f"val/{metric}", lambda t: scores[t])
             for family, named in drawn.items()}
    return scores, picks


# ------------------------------------------------------------------------- the reward as a judge
def judge_pool(name, finals, pool, seed):
    """critic.py on the test prompts of task name: a pool drawn from the seed's final run of family
    `pool`, judged by the seed's IRL run (its return, and beam search by its reward when pool is
    IRL), the log p of CRITIC's likelihood families and, on arith, the discriminator of task
    arith's GAIL run of the seed; the runs trained again first where their weights are gone.
    Seconds spent."""
    out_dir = os.path.join(results, "critic", name, f"{pool}_s{seed}")
    if runner.done(os.path.join(out_dir, "critic_summary.json")):
        return 0.0
    def weights(spec, system, file="best.pt"):
        return os.path.join(run_dir(spec["root"], system, seed), file)

    likelihood = [f for f in CRITIC["likelihood"] if f in finals["systems"]]  # --quick: no GEM
    spent = sum(train_run(finals, f, seed, [weights(finals, f)])
                for f in dict.fromkeys([pool, "irl", *likelihood]))
    command = ["critic.py", f"--policy={weights(finals, pool)}", f"--irl={weights(finals, 'irl')}",
               f"--likelihood={','.join(weights(finals, f) for f in likelihood)}",
               "--split=test", f"--max_prompts={finals['sampling']['prompts']}",
               f"--num_candidates={CRITIC['candidates']}",
               f"--temperature={CRITIC['temperature']:g}", f"--seed={seed}", f"--results={out_dir}"]
    if finals["sampling"]["max_new_tokens"]:
        command.append(f"--max_new_tokens={finals['sampling']['max_new_tokens']}")
    if pool == "irl":
        command.append(f"--beam_size={beam_size}")
    if name == CRITIC["gail"]:
        arith = dict(root=os.path.join(results, "arith"), start=arith_start,
                     systems={"gail": (SYSTEMS["gail"][0], arith_system("gail"))})
        discriminator = weights(arith, "gail", "ckpt.pt")  # best.pt keeps the policy only
        spent += train_run(arith, "gail", seed, [discriminator])
        command.append(f"--gail={discriminator}")
    return spent + runner.run(command, os.path.join(out_dir, "critic_summary.json"))


def critic():
    """The reward as a judge (critic.py) on the best-against-best final runs of each task of
    CRITIC whose tuning is done (its trials.jsonl written), every seed and pool. Table rows."""
    judged = {}
    for name, folder in CRITIC["tasks"].items():
        root = os.path.join(results, folder)
        if not os.path.exists(os.path.join(root, "trials.jsonl")):
            print(f"critic: {name} left out: its best against best has not run yet "
                  f"(python lab/experiment.py --task={'tuned' if '/' in folder else name})")
            continue
        _, finals, _ = tuned_finals(name, root, "critic")
        if finals is not None:
            runner.timed("critic", f"{name}: draw and judge the pools", {
                (pool, seed): partial(judge_pool, name, finals, pool, seed)
                for seed in range(seeds) for pool in CRITIC["pools"]})
            judged[name] = os.path.join(results, "critic", name)
    if plan:
        return []
    if not judged:
        raise ValueError(f"no task of {', '.join(CRITIC['tasks'])} has run best against best in "
                         f"{results}: run one first (python lab/experiment.py --task=cmudict)")
    return critic_report.tables(os.path.join(results, "critic"), judged, CRITIC["pools"], seeds)


# -----------------------------------------------------------------------------
def run_task(name, root):
    """Task `name`'s runs, then its table rows (none under --plan)."""
    drivers = {"finetune": finetune, "small_data": small_data, "critic": critic}
    drivers.update({n: partial(tuned_setting, n.split("/")[-1], root, n)
                    for n in TUNED_PARTS + OWN_TASKS})
    return drivers.get(name, partial(task_comparison, name))()


def write_table(name, root, rows, t0, kept):
    """root/table.md: the rows, then the timing line: this invocation's (or, when it only redrew,
    kept, the one already there). Prints it and what it wrote."""
    mine = [p for p in runner.parts if p[0] == name]
    command = shlex.join(["python", "lab/experiment.py"] + sys.argv[1:])
    table_file = os.path.join(root, "table.md")
    if not any(ran for _, _, ran, _, _ in mine) and kept:  # only redrawn
        timing = kept
    else:
        parts = "; ".join(f"{part} {minutes:.1f} ({ran} of {total} run{'s' * (total != 1)})"
                          for _, part, ran, total, minutes in mine)
        skipped = any(ran < total for _, _, ran, total, _ in mine)
        timing = (f"`{command}`: {(time.time() - t0) / 60:.1f} minutes of wall time for {name}, "
                  f"{jobs} runs at a time ({parts})"
                  + ("; the others were done before and skipped" if skipped else ""))
    table = "\n".join(rows) + f"\n\n{timing}\n"
    write_atomically(table_file, (QUICK_NOTE + "\n\n" if quick else "") + table)
    print(table)
    drawn = report.overview(results) if name in TUNED_PARTS + OWN_TASKS else None  # once all 3 ran
    figure = os.path.join(root, "figure.png")
    print(f"wrote {', '.join([figure] + ([drawn] if drawn else []))} and {table_file}")


def print_plan():
    """--plan: the commands noted, wave by wave, and on stderr which lines each wave holds."""
    lines = sorted(runner.lines, key=lambda noted: noted[0])  # stable: dependency order in a wave
    if not lines:
        print("nothing left to run: the same command without --plan draws the tables",
              file=sys.stderr)
        return
    waves = {}
    for number, (wave, line) in enumerate(lines, 1):
        print(line)
        waves.setdefault(wave, []).append(number)
    spans = ", ".join(f"{w[0]}-{w[-1]}" for w in waves.values())
    print(f"{len(lines)} commands in {len(waves)} waves (lines {spans}): a line needs only lines "
          f"of the waves before it; once all have run, the same command without --plan draws the "
          f"tables", file=sys.stderr)


def main():
    if quick and not plan:
        print(QUICK_NOTE)
    lock_out_dir(results)  # one experiment at a time on a results folder (tasks share runs)
    for name in task_names:
        root = os.path.join(results, name)
        t0 = time.time()
        if plan:
            with redirect_stdout(sys.stderr):  # stdout holds the commands only
                run_task(name, root)
        else:
            table_file = os.path.join(root, "table.md")  # its timing line checked before any run
            kept = report.timing_line(table_file) if os.path.exists(table_file) else None
            write_table(name, root, run_task(name, root), t0, kept)
    if plan:
        print_plan()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:  # a folder in use, a file that cannot be written
        fail(err)
