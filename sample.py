"""
Sample from a trained checkpoint and score the samples: task metric and diversity (docs/method.md
section 8).

    python sample.py --out_dir=out                          # K=4 samples for 100 val prompts
    python sample.py --out_dir=out --temperature=0 --num_samples=1   # greedy
    python sample.py --out_dir=out --beam_size=4 --num_samples=1     # beam search, best of 4 beams
    python sample.py --out_dir=out --start="12+7*3="         # one prompt of your own
    python sample.py --out_dir=out --start=FILE:prompts.txt  # one prompt per line of a file
    python sample.py --out_dir=out --compile=True           # on a GPU: a CUDA graph per new token

Writes out_dir/samples_<split>_t<temperature>.jsonl (prompt, sample, reference, per-sample metrics;
_beam<N> with beam search, which keeps the best of N beams by length-normalised log-probability)
and the same name .json with the averages: accuracy (tasks with a verifier) or ROUGE-1/2/L (text),
Self-BLEU and distinct-1/2 over the K samples of each prompt, mean length in tokens, tokens/s, and
reference_entropy: the policy's mean per-token entropy (nats) on the split's reference completions.
The summary records how it decoded (decoding: sampling, greedy or beam) and only the knobs that
decoding used (temperature is null for beam search, top_k null unless sampling). Last, per_prompt:
each prompt's mean of each score over its K samples (and its Self-BLEU): a bootstrap over prompts.
"""
import json
import os
import time

import torch

from checkpoint import check_fits_decoding, load_checkpoint, model_from_checkpoint, tokenizer_of
from checks import check_device
from configurator import SEED_RANGE, configure, settings_of
from dataset import dataset_inputs, encode_example, encode_split, load_dataset, make_batch
from generate import beam_search, generate
from irl_loss import policy_stats
import metrics
from runfiles import (RUN_FILES, check_output_path, check_outputs, fail, json_text, read_text,
                      run_inputs, stop_on_interrupt, write_atomically)

# -----------------------------------------------------------------------------
out_dir = "out"  # the run to sample from (its ckpt.pt); results are written here too
init_from = ""  # '' = out_dir/ckpt.pt; or a path to any ckpt.pt
dataset = ""  # '' = the dataset the checkpoint was trained on
tokenizer = ""  # only for nanoGPT checkpoints, which carry none: gpt2
split = "val"  # prompts from this split: val | test | train
max_prompts = 100  # how many prompts of the split (0 = all)
start = ""  # instead of a split: a prompt, or FILE:path with one prompt per line
num_samples = 4  # K samples per prompt
temperature = 1.0  # 0 = greedy
beam_size = 0  # >0: beam search with this many beams, the best completion per prompt (length-normalised);
#   needs num_samples=1
top_k = 0  # sample only from the k most likely tokens (0 = all)
max_new_tokens = 128  # per sample (generation also stops at EOS and at block_size)
batch_size = 256  # sequences generated together
use_cache = True  # key/value cache (False recomputes the whole prefix for every token)
compile = False  # torch.compile the decoding step: a CUDA graph per token on a GPU; compiles per batch shape
out_file = ""  # '' = out_dir/samples_<split>_t<temperature>.jsonl
seed = 1337  # seed of the sampling generator
device = ""  # '' = cuda if available, else mps, else cpu; or cpu | cuda | cuda:1 | mps
# -----------------------------------------------------------------------------
stop_on_interrupt("sample.py")
settings = settings_of(globals(), __file__)
globals().update(configure(settings, __file__, ranges=dict(
    num_samples=(1, None), max_new_tokens=(1, None), batch_size=(1, None), temperature=(0, None),
    top_k=(0, None), max_prompts=(0, None), beam_size=(0, None), seed=SEED_RANGE)))


def prompt_file_lines(path):
    """(line number, prompt) of each non-blank line; Windows line ends and a BOM are fine."""
    lines = read_text(path, "prompt file").removeprefix("\ufeff").split("\n")
    return [(n, line.removesuffix("\r")) for n, line in enumerate(lines, 1) if line.strip()]


def read_prompts(tok, data_name):
    """(data, [(prompt, reference)]): the split's first max_prompts pairs, or the user's own prompts
    (--start: no data, no references, no metrics but diversity)."""
    if start.startswith("FILE:"):
        pairs = [(line, None) for _, line in prompt_file_lines(start[5:])]
        if not pairs:
            raise ValueError(f"{start[5:]} has no prompts; write one prompt per line")
        return None, pairs
    if start:
        return None, [(start, None)]
    data = load_dataset(data_name, tok)
    if split not in data["splits"] or not data["splits"][split]:
        fail(f"the dataset has no {split!r} split; use --split=val or --split=test")
    return data, data["splits"][split][:max_prompts or None]


def encode_prompt(tok, prompt, i):
    """A prompt's token ids; ValueError naming where a prompt it cannot encode comes from."""
    try:
        return encode_example(tok, prompt)
    except ValueError as err:
        if not start.startswith("FILE:"):
            raise
        line_no = prompt_file_lines(start[5:])[i][0]
        raise ValueError(f"{start[5:]}:{line_no}: {err}") from None


def check_inputs(device):
    """Check the flags, the device, where the results go, the checkpoint, that no output replaces
    what it is made from, and the prompts, in this order; stop with the first problem. Returns
    (device, tokenizer, model, data, [(prompt, reference)], the prompts' token ids)."""
    if beam_size and num_samples > 1:
        fail(f"--beam_size={beam_size} gives one completion per prompt (beam search is "
             f"deterministic); pass --num_samples=1")
    if beam_size and (compile or not use_cache):
        fail("--beam_size runs eagerly with the key/value cache; drop --compile and --use_cache")
    if compile and not use_cache:
        fail("--compile=True compiles the decoding step of the key/value cache; "
             "drop --use_cache=False")
    try:
        device = check_device(device)
        check_output_path(name)
        checkpoint = load_checkpoint(ckpt_path)
        data_name = dataset or checkpoint.get("config", {}).get("dataset", "arith")
        data_flag = f"--dataset={dataset}" if dataset else f"the checkpoint's dataset {data_name}"
        run_flag = f"--init_from={init_from}" if init_from else f"--out_dir={out_dir}"
        check_outputs(  # no output replaces what it is made from: the run, its data, the prompts
            [(f"--out_file={name}", name, "give --out_file another name"),
             (f"the summary of --out_file={name} ({summary_name})", summary_name,
              "give --out_file a name ending in .jsonl")],
            run_inputs(ckpt_path, run_flag)
            + ([] if start else dataset_inputs(data_name, data_flag))
            + ([("the prompt file of --start", start[5:])] if start.startswith("FILE:") else []))
        if os.path.basename(name) in RUN_FILES:  # another run's, then
            raise ValueError(f"--out_file={name} is named as a run's {os.path.basename(name)}; give the "
                             f"samples another name, e.g. --out_file="
                             f"{os.path.join(os.path.dirname(name), 'samples.jsonl')}")
        tok = tokenizer_of(checkpoint, tokenizer)
        model = model_from_checkpoint(checkpoint).to(device).eval()
        del checkpoint  # the model holds the weights now
        data, pairs = read_prompts(tok, data_name)
        prompts = [encode_prompt(tok, p, i) for i, (p, _) in enumerate(pairs)]
        check_fits_decoding(model, min(len(pairs), prompts_per_batch) * (beam_size or num_samples),
                            max(map(len, prompts)) + max_new_tokens, device)
    except (ValueError, OSError) as err:
        fail(err)
    return device, tok, model, data, pairs, prompts


prompts_per_batch = max(1, batch_size // (beam_size or num_samples))  # a beam or a sample is a row
decoding = f"beam{beam_size}" if beam_size else f"t{temperature:g}"
name = out_file or os.path.join(out_dir, f"samples_{'start' if start else split}_{decoding}.jsonl")
summary_name = os.path.splitext(name)[0] + ".json"
ckpt_path = init_from or os.path.join(out_dir, "ckpt.pt")
device, tok, model, data, pairs, prompts = check_inputs(device)
block_size = model.config.block_size

# ---------------------------------------------------------------------------- generate
generator = torch.Generator(device=device).manual_seed(seed)
n_cut = sum(len(p) > block_size - 1 for p in prompts)
if n_cut:  # keep each prompt's end, as training does (dataset.fit_to_block), and say so
    print(f"{n_cut} of {len(prompts)} prompts are longer than block_size - 1 = {block_size - 1} "
          f"tokens: their start is cut")
prompts = [p[-(block_size - 1):] for p in prompts]
jobs = [i for i in range(len(prompts)) for _ in range(num_samples)]  # prompt index of each sample
completions = []
t0 = time.time()
for i in range(0, len(prompts), prompts_per_batch):
    chunk = prompts[i:i + prompts_per_batch]
    if beam_size:
        completions += beam_search(model, chunk, max_new_tokens, beam_size, eos_id=tok.eos_id)
    else:  # each prompt runs through the model once, its K samples from copies of its keys and values
        completions += generate(model, chunk, max_new_tokens, temperature=temperature,
                                top_k=top_k or None, eos_id=tok.eos_id, generator=generator,
                                use_cache=use_cache, compile=compile, num_samples=num_samples)
seconds = time.time() - t0
n_tokens = sum(len(c) for c in completions)
print(f"generated {len(completions)} samples, {n_tokens} tokens in {seconds:.1f}s "
      f"({n_tokens / seconds:.0f} tok/s)")

# ---------------------------------------------------------------------------- score
verify = data["verify"] if data else None
rows = []
for j, completion in zip(jobs, completions):
    prompt, reference = pairs[j]
    text = tok.decode(completion)
    row = dict(prompt=prompt, sample=text, reference=reference, length=len(completion),
               terminated=bool(completion) and completion[-1] == tok.eos_id)
    if verify is not None:
        row["correct"] = bool(verify(prompt, text))
        row.update(data["scores"](prompt, text) if data["scores"] else {})
    elif reference is not None:
        row.update(rouge1=metrics.rouge_n(text, reference, 1),
                   rouge2=metrics.rouge_n(text, reference, 2),
                   rougeL=metrics.rouge_l(text, reference))
    rows.append(row)

# what made the completions, and only the knobs it used
method = "beam" if beam_size else "sampling" if temperature > 0 else "greedy"
summary = dict(checkpoint=ckpt_path, split=None if start else split,
               prompts=len(pairs), num_samples=num_samples, decoding=method,
               temperature=None if beam_size else temperature,
               top_k=top_k if method == "sampling" else None, beam_size=beam_size or None,
               tokens_per_second=n_tokens / seconds,
               length=sum(r["length"] for r in rows) / len(rows))
scores = {"accuracy" if key == "correct" else key: key  # summary's key: the rows' key
          for key in ("correct", "rouge1", "rouge2", "rougeL", "phoneme_error_rate", "bleu")
          if key in rows[0]}
for key, row_key in scores.items():
    summary[key] = sum(r[row_key] for r in rows) / len(rows)
if num_samples > 1:  # diversity among the K samples of each prompt, averaged over prompts
    groups = [[r["sample"] for r in rows[i:i + num_samples]]
              for i in range(0, len(rows), num_samples)]
    self_bleus = list(map(metrics.self_bleu, groups))
    summary["self_bleu"] = sum(self_bleus) / len(groups)
    summary["distinct_1"] = sum(metrics.distinct_n(g, 1) for g in groups) / len(groups)
    summary["distinct_2"] = sum(metrics.distinct_n(g, 2) for g in groups) / len(groups)
if data is not None:  # the policy's entropy on the split's reference completions, not on what it
    # decoded: a property of the model, the same for every decoding, hence the name
    examples, _ = encode_split(tok, pairs, block_size)
    entropies = []
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            batch = {k: v.to(device) for k, v in make_batch(examples[i:i + 64], tok.eos_id).items()}
            stats = policy_stats(model(batch["idx"]), batch["targets"], batch["loss_mask"])
            entropies.append(stats["entropy"])
    summary["reference_entropy"] = sum(entropies) / len(entropies)
if scores:  # each prompt's mean of each score over its K samples, in prompt order: for a bootstrap
    # over prompts (the samples .jsonl is not kept); last, after the means a reader looks for
    summary["per_prompt"] = {
        key: [round(sum(r[row_key] for r in rows[i:i + num_samples]) / num_samples, 4)
              for i in range(0, len(rows), num_samples)] for key, row_key in scores.items()}
    if num_samples > 1:
        summary["per_prompt"]["self_bleu"] = [round(b, 4) for b in self_bleus]

# ---------------------------------------------------------------------------- write
try:
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    for path, text in ((name, "".join(json.dumps(r) + "\n" for r in rows)),
                       (summary_name, json_text(summary))):
        write_atomically(path, text)
except (ValueError, OSError) as err:
    fail(err)
for r in rows[: min(len(rows), 2 * num_samples)]:
    verdict = f" ({'correct' if r['correct'] else 'wrong'})" if "correct" in r else ""
    print(f"--- {r['prompt']!r} -> {r['sample']!r}{verdict}")
# the summary less per_prompt (a number per prompt: too long to print; the .json has it)
print(json.dumps({k: v for k, v in summary.items() if k != "per_prompt"}))
print(f"wrote {name} and {summary_name}")
