"""
The demonstrations the experiments train on beyond the built-in datasets: task finetune's shifted
distribution, and train splits cut short (the small-data runs).
"""
import json
import os

import data.arith.prepare as arith
from dataset import DATA_DIR, prepare_task
from lab.tasks import DEMO_SIZES, SHIFTED
from runfiles import read_json, write_atomically


def cut_train(source, folder, n):
    """folder: a copy of the dataset folder source, its train split cut to the first n examples."""
    os.makedirs(folder, exist_ok=True)
    for file in ("train.jsonl", "val.jsonl", "test.jsonl", "meta.json"):
        with open(os.path.join(source, file)) as f:
            text = "".join(f.readlines()[:n]) if file == "train.jsonl" else f.read()
        write_atomically(os.path.join(folder, file), text)
    return folder


def builtin(name, root, size=None):
    """The --dataset flag of runs on a built-in dataset (prepared now, before runs read it in
    parallel), or on a copy of it with the train split cut to the first `size` examples, in
    root/data/train<size>."""
    prepare_task(name)
    if not size:
        return [f"--dataset={name}"]
    folder = os.path.join(root, "data", f"train{size}")
    return [f"--dataset={cut_train(os.path.join(DATA_DIR, name), folder, size)}"]


def arith_fraction(folder, fraction=20):
    """folder: arith as prepare.py makes it, with the train split cut to its first 1/fraction."""
    if not os.path.exists(os.path.join(folder, "train.jsonl")):
        arith.prepare(folder)
        with open(os.path.join(folder, "train.jsonl")) as f:
            lines = f.readlines()
        kept = lines[:len(lines) // fraction]
        write_atomically(os.path.join(folder, "train.jsonl"), "".join(kept))
    return folder


def finetune_data(folder):
    """The base distribution (data/arith as prepare.py makes it), the shifted one (prepare.py with
    the knobs of SHIFTED) and the shifted train split cut to each of
    DEMO_SIZES, in folder. Returns ({name: folder}, how many distributions were prepared now)."""
    folders = {"base": os.path.join(DATA_DIR, "arith"), "shifted": os.path.join(folder, "shifted")}
    folders.update({n: os.path.join(folder, f"shifted{n}") for n in DEMO_SIZES})
    made = int(prepare_task("arith"))  # as train.py's first use would
    split_sizes = dict(arith.SPLIT_SIZES, train=max(DEMO_SIZES))
    made += prepare_task("arith", folders["shifted"], **SHIFTED, SPLIT_SIZES=split_sizes)
    meta = lambda name: read_json(os.path.join(folders[name], "meta.json"))
    chars = lambda name: set(meta(name)["tokenizer"]["chars"])
    if not chars("shifted") <= chars("base"):  # the fine-tuned model keeps the base's tokenizer
        raise ValueError(f"the shifted data has characters the base data lacks: "
                         f"{sorted(chars('shifted') - chars('base'))}")
    for n in DEMO_SIZES:
        cut_train(folders["shifted"], folders[n], n)
    return folders, made


def fresh(dataset, split, prompts):
    """The indices of the first `prompts` problems of an arith split that are no reordering of a
    train problem (arith.reorderings: `1*11*8=` beside a train `1*8*11=`), which a model cannot
    answer from memory; dataset: a --dataset value, arith or a folder of it."""
    folder = dataset if os.path.isdir(dataset) else os.path.join(DATA_DIR, dataset)

    def prompts_of(name):
        with open(os.path.join(folder, f"{name}.jsonl")) as f:
            return [json.loads(line)["prompt"] for line in f if line.strip()]
    tested = prompts_of(split)[:prompts]
    seen = set(arith.reorderings(prompts_of("train"), tested))
    return [k for k in range(len(tested)) if k not in seen]
