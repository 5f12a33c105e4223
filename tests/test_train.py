"""train.py end to end on tiny models: overfitting, exact resume, flags, nanoGPT checkpoints, DDP."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from irl_loss import irl_loss, q_and_v
from model import GPT, GPTConfig
from tests.helpers import ROOT, TINY, run_script


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


def test_loss_mle_equals_irl_with_td_coef_zero(tmp_path):
    args = TINY + ["--max_iters=3", "--eval_interval=3"]
    mle = run_script(args + [f"--out_dir={tmp_path / 'm'}", "--loss=mle"])
    irl0 = run_script(args + [f"--out_dir={tmp_path / 'i'}", "--loss=irl", "--td_coef=0"])
    assert train_losses(mle.stdout) == train_losses(irl0.stdout)


def test_loss_chunk_gives_the_same_run(tmp_path):
    """The chunked head (chunked_head.py) changes memory, not numbers: the same losses and val
    statistics (entropy and token accuracy computed chunk by chunk too), up to float rounding."""
    args = TINY + ["--max_iters=3", "--eval_interval=3"]
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
    ("--loss=ppo", "--loss='ppo' is not a loss; use irl, mle or gail"),
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
