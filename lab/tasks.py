"""
The experiments' tasks as data: the systems compared, the schedules they train on and the families
that task tuned tunes. lab/experiment.py reads them; nothing here runs.

A system is (label, train.py flags). train.py reads flags left to right and the last value of a
flag wins: a run's command is the task's flags, then the system's, then the run's own (--out_dir,
--seed, --init_from); under --quick a short schedule follows the task's and the system's flags.
"""
from data.shakespeare.prepare import PRETRAIN_CHARS, prepare_pretrain

# arith from scratch (and the base model of finetune): train.py's default model and schedule,
# evaluated more often, so that a run is what `python train.py` does
ARITH_FLAGS = ["--dataset=arith", "--eval_interval=250"]
# online IQ-Learn, GAIL (docs/method.md section 5) and their control fine-tune each seed's MLE run
# on this schedule, as the paper's methods fine-tune a trained model
FINE_TUNE = ["--learning_rate=1e-4", "--min_lr=1e-5", "--warmup_iters=10", "--max_iters=300",
             "--lr_decay_iters=300", "--eval_interval=100"]
# --quick: the schedules cut short, from scratch and fine-tuning
QUICK_SCRATCH = ["--max_iters=150", "--lr_decay_iters=150", "--eval_interval=75",
                 "--eval_prompts=50"]
QUICK_FINE_TUNE = ["--max_iters=50", "--lr_decay_iters=50", "--eval_interval=25",
                   "--eval_prompts=50"]

ONLINE = ["--loss=irl", "--mix_in=0.1", "--sample_fraction=0.25", "--sample_every=4",
          "--max_new_tokens=32"] + FINE_TUNE
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
# these start from the same seed's MLE checkpoint, on FINE_TUNE (QUICK_FINE_TUNE under --quick)
FROM_MLE = ["online0.01", "online0.1", "online1", "gail", "mle+ft"]
CONTROL = "mle+ft"  # what the others of FROM_MLE are compared with: MLE on their schedule
# the reward analysis: λ = 0 (from scratch, and on the schedule from MLE), online IQ-Learn by λ,
# offline IRL
REWARD = ["mle", "mle+ft", "online0.01", "online0.1", "online1", "irl0.1", "irl1"]

# task finetune: each seed's MLE model of task arith, fine-tuned on a few demonstrations of a
# shifted distribution: data/arith/prepare.py with these of its constants
SHIFTED = dict(MAX_OPERAND=40)  # operands 1..40, not 1..20: most of them are new to the base model
SHIFT_LABEL = "problems with operands up to 40 (the base model's went up to 20)"
DEMO_SIZES = [250, 1000]  # the shifted train split cut to its first n examples
# its schedule: long enough that MLE overfits 250 demonstrations (its val nll turns up)
FINETUNE_FLAGS = ["--learning_rate=1e-3", "--min_lr=1e-4", "--warmup_iters=20", "--max_iters=500",
                  "--lr_decay_iters=500", "--eval_interval=50"]

TASKS = {  # the systems by default and with --quick; task arith's metric
    "arith": dict(systems="mle,ent0.01,ent0.1,irl0.1,online0.01,online0.1,online1,gail,mle+ft",
                  quick_systems="mle,ent0.1,irl0.1,online0.1,gail,mle+ft", metric="accuracy"),
    "finetune": dict(systems="mle,irl0.1,ent0.1", quick_systems="mle,irl0.1"),
    "small_data": dict(systems="mle,irl0.1", quick_systems="mle,irl0.1"),
}

# ---------------------------------------------------------------------- best against best (tuned)
# What every family shares, on one search space per kind of schedule (lab/search.py draws it);
# min_lr follows the learning rate, a tenth of it as in train.py's defaults
SHARED = dict(
    scratch=dict(learning_rate=("log", 3e-4, 6e-3), dropout=("choice", [0.0, 0.1, 0.2]),
                 weight_decay=("choice", [0.0, 0.1, 1.0])),
    fine_tune=dict(learning_rate=("log", 3e-5, 2e-3), dropout=("choice", [0.0, 0.1, 0.2]),
                   weight_decay=("choice", [0.0, 0.1, 1.0])))
FAMILIES = {  # family: (label, loss, its own knob's range)
    "mle": ("MLE", "mle", {}),
    "ent": ("MLE + entropy", "mle", dict(entropy_coef=("log", 1e-3, 0.3))),
    "dft": ("DFT", "dft", {}),
    "gem": ("GEM", "gem", dict(gem_beta=("uniform", 0.1, 1.0))),  # 1: MLE's gradient
    "irl": ("IRL", "irl", dict(td_coef=("log", 1e-3, 1.0))),
}
def search_space(setting, family):
    """Every range a family's trials draw from in a tuned setting: the shared ones, then its own."""
    return {**SHARED[setting["space"]], **FAMILIES[family][2]}


TUNED_TASKS = ["finetune", "arith"]  # task tuned: these two (the short fine-tuning runs first)
TUNED_PARTS = [f"tuned/{name}" for name in TUNED_TASKS]  # each: results/tuned/<name>/table.md
SEARCH_SEED = 0  # the trials' draws (lab/search.py): the same for every task
# A setting of best against best, every key given:
# - data: a built-in dataset (prepared first) or "finetune", task finetune's shifted demonstrations;
#   size: its train split cut to the first size examples (None: all of it)
# - base: None (from scratch), "arith" (each seed's MLE run of task arith), or one model that every
#   run fine-tunes: base["prepare"](folder) writes its data, base["flags"] train it
# - flags: train.py's for every run, their evaluations at least 8 in the last quarter of the run
#   (the levelled-off test's window); quick: appended under --quick; final_flags: on top, for the
#   final runs only (not under --quick, whose short schedule they would replace)
# - space: SHARED's; trials: random-search trials per family, each on every tuning seed (never
#   one of the final seeds 0..seeds-1; --quick: the first trial and seed only); families: FAMILIES'
# - metric: sample.py's task score; early_stop: what --keep_best tracks; choose_by: the decoding
#   of best.pt whose val metric chooses a family's trial
# - reward: the final runs get the reward analysis; prompts: sampled, at most --max_prompts (None:
#   that many); temperatures: the final runs' decodings beyond greedy and beam search, adjacent
#   ones about 0.1 apart in Self-BLEU; also_scored: more of sample.py's scores in the table;
#   max_new_tokens: sample.py's, for every decoding (None: its default)
# - smaller: (families, size): the chosen configurations again on a smaller train split, or None
QUARTERS = [t / 4 for t in range(1, 7)]  # T = 0.25 to 1.5: arith's Self-BLEU falls slowly
EIGHTHS = [t / 8 for t in range(1, 13)]  # T = 0.125 to 1.5
TUNED = dict(
    arith=dict(  # from scratch, early-stopped on val; tuned at 6000 steps and the choices run
        # twice that, since at 6000 steps most runs still rise
        data="arith", size=None, base=None,
        flags=["--eval_interval=200", "--max_iters=6000"], quick=QUICK_SCRATCH,
        final_flags=["--max_iters=12000", "--eval_interval=375"],
        space="scratch", trials=6, tuning_seeds=[100], families=list(FAMILIES),
        metric="accuracy", early_stop="val/accuracy", choose_by="greedy", reward=True,
        prompts=None, temperatures=QUARTERS, also_scored=[], max_new_tokens=None, smaller=None),
    finetune=dict(  # task finetune's 250 shifted demonstrations, from arith's MLE model of the seed
        data="finetune", size=250, base="arith",
        flags=FINETUNE_FLAGS + ["--max_iters=640", "--lr_decay_iters=640", "--eval_interval=20"],
        quick=QUICK_FINE_TUNE, final_flags=[],
        space="fine_tune", trials=6, tuning_seeds=[100, 101], families=list(FAMILIES),
        metric="accuracy", early_stop="val/accuracy", choose_by="greedy", reward=False,
        prompts=None, temperatures=QUARTERS, also_scored=[], max_new_tokens=None, smaller=None),
    # Real language, each a task of its own (results/<name>/), on one tuning seed.
    cmudict=dict(  # word -> pronunciation, the paper's translation task small: from scratch on 3000
        # words, as a base could pre-train only on more of the dictionary, which is more
        # demonstrations, not a prior; block 48 fits all. 3000 steps: at 1500 most runs still rose
        data="cmudict", size=None, base=None,
        flags=["--block_size=48", "--eval_interval=100", "--max_iters=3000"],
        quick=QUICK_SCRATCH, final_flags=[],
        space="scratch", trials=6, tuning_seeds=[100], families=list(FAMILIES),
        metric="accuracy", early_stop="val/accuracy", choose_by="greedy", reward=True,
        prompts=None, temperatures=EIGHTHS, max_new_tokens=None,
        also_scored=["phoneme_error_rate", "bleu"],  # BLEU over phonemes, against every
        smaller=None),  # pronunciation of the word
    shakespeare=dict(  # the next line of held-out plays (the paper's summarising, small),
        # fine-tuned from a base model that learnt the raw text of the train plays by MLE; its
        # window of 256 holds a prompt of 3 lines and the next line whole but for 1.3% of train
        # examples and 0.2% of val (the start of their prompt is cut)
        data="shakespeare", size=2000,
        base=dict(prepare=prepare_pretrain, quick=QUICK_SCRATCH, flags=[
            f"--block_size={PRETRAIN_CHARS}", "--batch_size=8", "--n_layer=4", "--n_embd=192",
            "--loss=mle", "--learning_rate=2e-3", "--min_lr=2e-4", "--max_iters=2500",
            "--eval_interval=500"]),
        flags=[f"--block_size={PRETRAIN_CHARS}", "--batch_size=8", "--warmup_iters=20",
               "--max_iters=400", "--eval_interval=12"],
        quick=QUICK_FINE_TUNE, final_flags=[],
        space="fine_tune", trials=6, tuning_seeds=[100], families=list(FAMILIES),
        # greedy decoding of a model this small loops ('the shall the shall the ...', base and
        # fine-tuned alike), so greedy ROUGE-L measures the loop, not the model: early stopping
        # goes by val nll, the choice by ROUGE-L of samples at a low temperature
        metric="rougeL", early_stop="val/nll", choose_by="t0.1", reward=True,
        # of the 500 test prompts: a line costs 10x a pronunciation (3x the tokens, 4x the model)
        prompts=150,
        # greedy has Self-BLEU 1 and T = 0.25 about 0.09: the span lies at low temperatures
        temperatures=[0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0],
        also_scored=["rouge1", "rouge2"],
        # a line has at most 72 characters (train; val 65, test 63): a looping decoding stops here
        max_new_tokens=80,
        smaller=(["mle", "irl"], 250)),  # 400 steps of 8 = 13 passes over 250
)
OWN_TASKS = [n for n in TUNED if n not in TUNED_TASKS]  # best against best, each a task of its own

# ---------------------------------------------------------------------- the reward as a judge
# critic.py on the best-against-best final runs of each task: for each seed, one pool of
# candidates per test prompt from a family's model at temperature 1, judged by IRL's return, the
# log-likelihood of MLE, GEM and IRL, the vote and (arith) GAIL's discriminator, and beam search
# (--beam_size beams) by IRL's reward against by its log p (each seed once: with the pool from IRL)
CRITIC = dict(
    tasks={"arith": "tuned/arith", "cmudict": "cmudict", "shakespeare": "shakespeare"},  # root
    pools=["mle", "irl"], likelihood=["mle", "gem", "irl"], candidates=16, temperature=1.0,
    gail="arith",  # task arith's GAIL runs (fine-tuned from its MLE runs): a discriminator there
)
