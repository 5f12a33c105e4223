"""train.py end to end on tiny models: overfitting, exact resume, flags, nanoGPT checkpoints, DDP; and what a
run does against its definition written out here: the learning-rate schedule, the accumulated gradient (one
process and DDP), MLE as F.cross_entropy."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dataset import load_dataset
from irl_loss import irl_loss, q_and_v
from model import GPT, GPTConfig
from tests.helpers import ROOT, TINY, one_thread, run_script


def train_losses(stdout):
    return {int(m[1]): m[2] for m in re.finditer(r"^iter (\d+): loss (\S+),", stdout, re.M)}


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=32, bias=False))
    idx = torch.randint(11, (4, 17))
    targets, idx = idx[:, 1:], idx[:, :-1]
    loss_mask = torch.ones(4, 16)
    loss_mask[:, :4] = 0
    done = torch.zeros(4, 16)
    done[:, -1] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):  # 250 steps land on either side of 0.05 with 1 or 2 threads
        q, v = q_and_v(model(idx), targets)
        loss, stats = irl_loss(q, v, loss_mask, done, td_coef=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert stats["nll"] < 0.05 and stats["td"] < 0.5


def test_resume_continues_exactly(tmp_path):
    common = TINY + ["--dropout=0.1", "--lr_decay_iters=10", "--warmup_iters=2", "--eval_interval=5"]
    straight = run_script(common + [f"--out_dir={tmp_path / 'a'}", "--max_iters=10"])
    run_script(common + [f"--out_dir={tmp_path / 'b'}", "--max_iters=5"])
    resumed = run_script(common + [f"--out_dir={tmp_path / 'b'}", "--max_iters=10", "--init_from=resume"])
    expected, got = train_losses(straight.stdout), train_losses(resumed.stdout)
    assert sorted(got) == [5, 6, 7, 8, 9] and all(got[i] == expected[i] for i in got)
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 10 and b["tokenizer"] == a["tokenizer"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["iter"] for r in log] == [0, 5, 10]  # the resumed run did not duplicate its eval line


@one_thread()
def test_loss_mle_equals_irl_with_td_coef_zero(tmp_path):
    args = TINY + ["--max_iters=3", "--eval_interval=3"]
    mle = run_script(args + [f"--out_dir={tmp_path / 'm'}", "--loss=mle"])
    irl0 = run_script(args + [f"--out_dir={tmp_path / 'i'}", "--loss=irl", "--td_coef=0"])
    assert train_losses(mle.stdout) == train_losses(irl0.stdout)
    # and MLE is cross-entropy: the logged val nll of the saved model is F.cross_entropy over the completion
    # tokens of the val batch (eval_iters=1: val rows 0..7), each row run through the model on its own
    checkpoint = torch.load(tmp_path / "m" / "ckpt.pt", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        _, nll = reference_loss(model, arith_examples("val")[1][:8], 0.0, 1.0)
    last = json.loads(open(tmp_path / "m" / "log.jsonl").readlines()[-1])
    assert last["iter"] == 3 and last["val/nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert last["val/loss"] == last["val/nll"]


def rows_that_fill_the_window(path):
    """A JSONL dataset whose every row fills block_size=15 exactly: [EOS] + 4 prompt chars + 10 completion
    chars + EOS (terminated at the last position), or a longer completion cut by the window (truncated).
    Every row of a batch is then a longest row, so the last flattened position is a completion token."""
    rows = [{"prompt": f"Q{i:02d}:", "completion": f" answer {i:02d}" + (" and so on" if i % 3 == 0 else "")}
            for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [f"--dataset={path}", "--block_size=15"]


@pytest.mark.parametrize("data", ["arith", "rows that fill the window"])
def test_loss_chunk_gives_the_same_run(tmp_path, data):
    """The chunked head (chunked_head.py) changes memory, not numbers: the same losses and val
    statistics (entropy and token accuracy computed chunk by chunk too), up to float rounding. On
    arith the rows vary in length (the last one is usually padded); on rows that fill the window, the
    last flattened position of every batch is a completion token, which the last chunk must reach."""
    args = TINY + ["--max_iters=3", "--eval_interval=3"]
    if data != "arith":
        args += rows_that_fill_the_window(tmp_path / "full.jsonl")
    full = run_script(args + [f"--out_dir={tmp_path / 'full'}"])
    chunked = run_script(args + [f"--out_dir={tmp_path / 'chunked'}", "--loss_chunk=37"])  # 37 divides no B*T here
    expected, got = train_losses(full.stdout), train_losses(chunked.stdout)
    assert sorted(got) == [0, 1, 2] and all(abs(float(got[i]) - float(expected[i])) <= 2e-4 for i in got)
    logs = [[json.loads(line) for line in open(tmp_path / run / "log.jsonl")] for run in ("full", "chunked")]
    assert logs[0][-1].keys() == logs[1][-1].keys()
    for key in (key for key in logs[0][-1] if key.startswith("val/")):  # (not the timings)
        assert logs[1][-1][key] == pytest.approx(logs[0][-1][key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("flag,message", [
    ("--learning_rat=0.1", "unknown flag --learning_rat; did you mean --learning_rate?"),
    ("--batch_size=abc", "--batch_size takes a whole number, not 'abc'"),
    ("--td_coef=-1", "--td_coef=-1.0 must be >= 0"),
    ("--gamma=1.5", "--gamma=1.5 must lie in [0, 1]"),
    ("--loss_chunk=-1", "--loss_chunk=-1 must be >= 0"),
    ("--init_from=nonsense", "use scratch, resume, a path ending in .pt, gpt2[-medium|-large|-xl] or a Hugging Face"),
    ("--loss=ppo", "--loss='ppo' is not a loss; use irl, mle, dft, gem or gail"),
    ("--mix_in=1.5", "--mix_in=1.5 must lie in [0, 1]"),
    ("--loss=gail", "--loss=gail fine-tunes a trained policy; pass --init_from=path/to/mle/ckpt.pt"),
])
def test_bad_flags_stop_with_one_line(tmp_path, flag, message):
    result = run_script([flag, f"--out_dir={tmp_path}"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not os.listdir(tmp_path)  # nothing written


def test_help_lists_every_flag():
    out = run_script(["--help"]).stdout
    for flag in ("out_dir", "td_coef", "gamma", "gradient_accumulation_steps", "compile", "seed"):
        assert re.search(rf"--{flag}=\S+ +\S", out), flag


def test_help_lists_the_settings_only():
    """--help lists exactly the settings assigned in train.py: an imported constant (LOCK_FILE) is no
    flag, and the comment lines that go on below a setting belong to its meaning."""
    source = open(os.path.join(ROOT, "train.py")).read()
    block = source.split("# settings:")[1].split("# -----")[0]  # the settings, under their header
    settings = re.findall(r"^(\w+) = .*?  # ", block, re.M)
    out = run_script(["--help"]).stdout
    assert re.findall(r"^  --(\w+)=", out, re.M) == settings
    init_from = next(line for line in out.splitlines() if line.startswith("  --init_from="))
    assert init_from.endswith("Qwen2/2.5 or Qwen3 (resume: may change)")
    refused = run_script(["--LOCK_FILE=x", "--out_dir=unused"], check=False)
    assert "unknown flag --LOCK_FILE" in refused.stderr


def test_a_bad_flag_is_named_before_the_out_dir(tmp_path):
    """A flag that is wrong on its own is reported first, even in a folder that holds a run; a path
    given to --init_from that does not exist is said to be missing."""
    run_script(TINY + ["--max_iters=1", "--eval_interval=1", f"--out_dir={tmp_path}"])
    result = run_script(["--loss=irll", f"--out_dir={tmp_path}"], check=False)
    assert "--loss='irll' is not a loss" in result.stderr and "already holds a run" not in result.stderr
    missing = tmp_path / "no_such_model"
    result = run_script([f"--init_from={missing}", f"--out_dir={tmp_path / 'new'}"], check=False)
    assert result.returncode != 0 and "no such file or folder" in result.stderr
    assert not (tmp_path / "new").exists()


def test_nanogpt_checkpoint_fine_tunes(tmp_path):
    """A checkpoint in nanoGPT's layout (compiled: '_orig_mod.' names, no tokenizer) loads and trains."""
    model_args = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, bias=True, vocab_size=50304, dropout=0.0)
    state = GPT(GPTConfig(**model_args)).state_dict()
    state = {"_orig_mod." + k: v for k, v in state.items() if k != "lm_head.weight"}  # nanoGPT's tying
    state["_orig_mod.lm_head.weight"] = state["_orig_mod.transformer.wte.weight"]
    torch.save(dict(model=state, model_args=model_args, iter_num=5000, best_val_loss=1.0, config={}),
               tmp_path / "nano.pt")
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": f" answer {i}"}) + "\n" for i in range(30)))
    args = TINY + [f"--init_from={tmp_path / 'nano.pt'}", f"--dataset={data}", "--max_iters=2", "--eval_interval=2",
                   f"--out_dir={tmp_path / 'out'}"]
    no_tokenizer = run_script(args, check=False)
    assert no_tokenizer.returncode != 0 and "--tokenizer=gpt2" in no_tokenizer.stderr
    run_script(args + ["--tokenizer=gpt2"])
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["tokenizer"] == {"kind": "gpt2"}


def test_ddp_two_processes_on_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"] + TINY
        + ["--max_iters=4", "--eval_interval=4", "--gradient_accumulation_steps=2", f"--out_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("eval 4:") == 1  # rank 0 alone logs
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 4


def test_entropy_coef_subtracts_beta_times_the_entropy(tmp_path):
    """loss = nll + td_coef * td - entropy_coef * entropy, read off the progress lines, which print
    each term (to 4 decimals); and the chunked head refuses the flag in one line."""
    result = run_script(TINY + ["--max_iters=3", "--eval_interval=3", "--entropy_coef=0.5", "--td_coef=0.1",
                                f"--out_dir={tmp_path / 'run'}"])
    lines = re.findall(r"^iter \d+: loss (\S+), nll (\S+), td (\S+), v_mean \S+, entropy (\S+),", result.stdout, re.M)
    assert len(lines) == 3
    for loss, nll, td, entropy in (map(float, line) for line in lines):
        assert loss == pytest.approx(nll + 0.1 * td - 0.5 * entropy, abs=2e-4)
    refused = run_script(TINY + ["--entropy_coef=0.5", "--loss_chunk=8", f"--out_dir={tmp_path / 'c'}"], check=False)
    assert refused.returncode != 0 and "--entropy_coef needs the full logits" in refused.stderr


# ----------------------------------------------------------------------------- the schedule and the gradient
# checked against what they are defined to be, written out here, from what train.py writes as a user runs it

def test_learning_rate_follows_its_closed_form(tmp_path):
    """The lr of every step (log.jsonl, --eval_interval=1) against the schedule written out: linear warmup
    lr(it) = learning_rate (it + 1) / (warmup_iters + 1) for it < warmup_iters, then a cosine from
    learning_rate at warmup_iters to min_lr at lr_decay_iters, and min_lr after it; and the optimizer
    (the checkpoint's param groups) ran with the lr logged."""
    peak, low, warmup, decay, last = 1e-3, 1e-4, 3, 9, 12
    run_script(TINY + [f"--max_iters={last}", "--eval_interval=1", "--eval_prompts=0", f"--learning_rate={peak}",
                       f"--min_lr={low}", f"--warmup_iters={warmup}", f"--lr_decay_iters={decay}",
                       f"--out_dir={tmp_path}"])

    def expected(it):
        if it < warmup:
            return peak * (it + 1) / (warmup + 1)
        if it > decay:
            return low
        return low + 0.5 * (1 + math.cos(math.pi * (it - warmup) / (decay - warmup))) * (peak - low)

    lrs = {record["iter"]: record["lr"] for record in map(json.loads, open(tmp_path / "log.jsonl"))}
    assert sorted(lrs) == list(range(last + 1))
    for it, lr in lrs.items():
        assert lr == pytest.approx(expected(it), rel=1e-12), it
    # the landmarks, by hand: warmup starts above 0, reaches the peak, half way, the end and past it
    assert lrs[0] == pytest.approx(peak / 4) and lrs[2] == pytest.approx(peak * 3 / 4)
    assert lrs[warmup] == pytest.approx(peak) and lrs[6] == pytest.approx((peak + low) / 2)
    assert lrs[decay] == pytest.approx(low) and lrs[last] == pytest.approx(low)
    groups = torch.load(tmp_path / "ckpt.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [group["lr"] for group in groups] == [lrs[last]] * len(groups)


def arith_examples(split):
    """(tokenizer, [(prompt ids, completion ids)]) of an arith split, encoded here: [EOS] + prompt, and
    completion + [EOS] (every arith row fits block_size 64 whole)."""
    data = load_dataset("arith")
    tok = data["tokenizer"]
    examples = [([tok.eos_id] + tok.encode(p), tok.encode(c) + [tok.eos_id]) for p, c in data["splits"][split]]
    assert max(len(p) + len(c) for p, c in examples) <= 65
    return tok, examples


def reference_loss(model, examples, td_coef, gamma):
    """The loss of one micro-batch from its definition, each example run through the model alone (no
    padding): MLE is F.cross_entropy over the completion tokens; IRL adds td_coef times the mean over
    transitions of r_t^2, r_t = q_t - gamma v_{t+1}, and r_t = q_t for the final EOS (V after it is 0)."""
    logits, targets, rewards = [], [], []
    for p, c in examples:
        tokens = torch.tensor(p + c)
        row = model(tokens[None, :-1])[0][len(p) - 1:]  # the positions whose target is a completion token
        q = row.gather(-1, tokens[len(p):, None]).squeeze(-1)
        v = torch.logsumexp(row, -1)
        rewards.append(q - gamma * torch.cat([v[1:], v.new_zeros(1)]))
        logits.append(row)
        targets.append(tokens[len(p):])
    nll = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    return nll + td_coef * torch.cat(rewards).square().mean(), nll


@one_thread()
@pytest.mark.parametrize("processes,accumulation,loss", [(1, 3, "mle"), (2, 4, "irl")])
def test_accumulated_gradient_is_the_gradient_of_the_mean_loss(tmp_path, processes, accumulation, loss):
    """One optimizer step over `accumulation` micro-batches (in all, over `processes` DDP processes) takes
    the gradient of their mean loss. With learning_rate=0 the weights stay, and with beta1=0 AdamW's first
    moment after its first step is the gradient itself: the checkpoint holds both. The reference draws
    each process's micro-batches as train.py does (torch.randint from a generator seeded seed + rank,
    checked against the data position the checkpoint saved), computes each loss from its definition
    (reference_loss) and differentiates their mean. Dividing the loss by the number of micro-batches
    twice, or not at all, scales the gradient, which AdamW's sign-like steps would hide."""
    seed, batch_size, td_coef, gamma = 7, 8, (0.5 if loss == "irl" else 0.0), 0.9
    args = TINY + [f"--loss={loss}", f"--td_coef={td_coef}", f"--gamma={gamma}", f"--seed={seed}",
                   f"--gradient_accumulation_steps={accumulation}", "--max_iters=1", "--eval_interval=1",
                   "--eval_iters=2", "--eval_prompts=0", "--learning_rate=0", "--decay_lr=False",
                   "--weight_decay=0", "--beta1=0", "--grad_clip=0", f"--out_dir={tmp_path}"]
    if processes == 1:
        stdout = run_script(args).stdout
    else:
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
             "train.py"] + args, cwd=ROOT, capture_output=True, text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        stdout = result.stdout
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    optimizer = model.configure_optimizers(0.0, 0.0, (0.0, 0.99), "cpu")
    optimizer.load_state_dict(checkpoint["optimizer"])

    tok, train = arith_examples("train")
    losses = []
    for rank in range(processes):
        gen = torch.Generator().manual_seed(seed + rank)
        for _ in range(accumulation // processes):
            rows = torch.randint(len(train), (batch_size,), generator=gen).tolist()
            losses.append(reference_loss(model, [train[i] for i in rows], td_coef, gamma)[0])
        assert torch.equal(gen.get_state(), checkpoint["rng"]["data"][rank])  # the same draws as train.py's
        if rank == 0:  # the progress line prints the last micro-batch's loss (rank 0's)
            assert float(train_losses(stdout)[0]) == pytest.approx(losses[-1].item(), abs=2e-4)
    torch.stack(losses).mean().backward()
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        assert state["step"] == 1, name
        error = (state["exp_avg"] - p.grad).norm() / p.grad.norm()
        assert error < 1e-4, (name, error.item())

    # the evaluation: the same eval_iters val batches every time, each row i * batch_size + j of val
    _, val = arith_examples("val")
    batches = [reference_loss(model, [val[(i * batch_size + j) % len(val)] for j in range(batch_size)], td_coef,
                              gamma) for i in range(2)]
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [record["iter"] for record in log] == [0, 1]
    for record in log:  # the weights did not move: both evaluations are of the same model
        assert record["val/nll"] == pytest.approx(sum(nll.item() for _, nll in batches) / 2, rel=1e-5)
        assert record["val/loss"] == pytest.approx(sum(total.item() for total, _ in batches) / 2, rel=1e-5)
