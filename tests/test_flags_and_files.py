"""Edges of train.py and sample.py that a careless user or script meets: a best.pt that no longer
holds the best state on resume, a flag that would do nothing, Weights & Biases without a login or
with a bogus mode, a resumed online run whose saved samples are broken, and sample.py's prompt files
and output names. Each ends in one line, or in behaviour said out loud, and no earlier file changes
but those the run owns."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import load_checkpoint
from runfiles import LOCK_FILE
from tests.helpers import ROOT, TINY, run_script

RUN = TINY + ["--max_iters=4", "--eval_interval=2"]


def digests(folder):
    """{path: sha256} of every file below folder but the lock (it holds the last locker's pid)."""
    return {os.path.join(d, f): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files if f != LOCK_FILE}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny IRL run that keeps best.pt by val nll."""
    folder = tmp_path_factory.mktemp("run") / "run"
    run_script(RUN + ["--keep_best=val/nll", f"--out_dir={folder}"])
    return folder


def test_resume_rewrites_a_best_pt_that_lost_its_state(run, tmp_path):
    """A truncated best.pt is said on resume, and the next evaluation writes it again: the last
    line then names the iteration best.pt really holds."""
    work = tmp_path / "run"
    os.system(f"cp -r {run} {work}")
    recorded = torch.load(work / "ckpt.pt", weights_only=True)["best"]
    with open(work / "best.pt", "r+b") as f:
        f.truncate(100)
    out = run_script(["--init_from=resume", "--max_iters=6", f"--out_dir={work}"]).stdout
    assert f"should hold the best evaluation, val/nll {recorded['value']:.4f} at iter {recorded['iter']}" in out
    best = load_checkpoint(str(work / "best.pt"))
    assert best["iter_num"] >= 4 and best["best"]["iter"] == best["iter_num"]
    assert out.strip().splitlines()[-3].startswith(f"best val/nll {best['best']['value']:.4f} at iter "
                                                    f"{best['iter_num']}:")
    assert torch.load(work / "ckpt.pt", weights_only=True)["best"] == best["best"]


def test_resume_keeps_a_sound_best_pt(run, tmp_path):
    work = tmp_path / "run"
    os.system(f"cp -r {run} {work}")
    before = open(work / "best.pt", "rb").read()
    out = run_script(["--init_from=resume", "--max_iters=4", f"--out_dir={work}"]).stdout
    assert "should hold" not in out and open(work / "best.pt", "rb").read() == before


def test_entropy_coef_is_refused_with_gail(run, tmp_path):
    result = run_script(TINY + ["--loss=gail", "--entropy_coef=1.0", f"--init_from={run / 'ckpt.pt'}",
                                f"--out_dir={tmp_path / 'gail'}"], check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "--entropy_coef=1.0 does not act on --loss=gail" in result.stderr
    assert not (tmp_path / "gail").exists()


def fake_wandb(folder, init="return Run()"):
    """A stand-in `wandb` package (W&B is no requirement): init() records its call."""
    package = folder / "wandb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os\nclass Run:\n    def log(self, *a, **k): pass\n    def finish(self): pass\n"
        f"def init(**kwargs):\n    open(os.environ['WANDB_CALLS'], 'a').write('init\\n')\n    {init}\n")
    return folder


@pytest.mark.parametrize("mode,key,init,message", [
    ("bogus", None, "return Run()", "WANDB_MODE='bogus' is not a mode of W&B; use online, offline or disabled"),
    ("online", None, "return Run()", "W&B has no login here"),
    ("online", "k" * 40, "raise ConnectionError('no route to host')",
     "W&B did not start a run (ConnectionError: no route to host); check the network"),
])
def test_wandb_problems_are_one_line(tmp_path, mode, key, init, message):
    site, calls = fake_wandb(tmp_path / "site", init), tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "NETRC"))}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path), WANDB_MODE=mode, WANDB_CALLS=str(calls),
               OMP_NUM_THREADS="1", **({"WANDB_API_KEY": key} if key else {}))
    out_dir = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + RUN
                            + ["--wandb_log=True", f"--out_dir={out_dir}"],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("train.py: error: ") and message in result.stderr
    assert calls.exists() == (init != "return Run()")  # checked before W&B is started, or its failure
    assert not (out_dir / "ckpt.pt").exists() and not (out_dir / "run.lock").exists()


def test_wandb_offline_runs(tmp_path):
    site, calls = fake_wandb(tmp_path / "site"), tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path), WANDB_MODE="offline",
               WANDB_CALLS=str(calls), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + RUN
                   + ["--wandb_log=True", f"--out_dir={tmp_path / 'out'}"], cwd=ROOT, check=True,
                   capture_output=True, env=env)
    assert calls.read_text() == "init\n"


@pytest.mark.parametrize("samples,field", [
    ([5], "samples[0]"),
    ([{0: [([0, 1], [2, 10**6])]}], "samples[0][0]"),
    ([{0: "x"}], "samples[0][0]"),
    ({0: []}, "samples"),
])
def test_broken_saved_samples_are_refused_on_resume(run, tmp_path, samples, field):
    """An online run's saved samples are checked like every other field: one line, nothing changed."""
    work = tmp_path / "run"
    os.system(f"cp -r {run} {work}")
    checkpoint = torch.load(work / "ckpt.pt", weights_only=True)
    checkpoint["samples"] = samples
    torch.save(checkpoint, work / "ckpt.pt")
    before = digests(work)
    result = run_script(["--init_from=resume", "--max_iters=6", f"--out_dir={work}"], check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"checkpoint {work / 'ckpt.pt'}: {field} " in result.stderr
    assert digests(work) == before


@pytest.mark.parametrize("name", ["ckpt.pt", "best.pt", "log.jsonl"])
def test_sample_never_writes_over_a_run_file(run, tmp_path, name):
    """--out_file naming any run's ckpt.pt, best.pt or log.jsonl is refused, another run's too."""
    other = tmp_path / "other"
    os.system(f"cp -r {run} {other}")
    before = digests(tmp_path)
    result = run_script([f"--out_dir={run}", f"--out_file={other / name}", "--max_prompts=2"], "sample.py",
                        check=False)
    assert result.returncode == 1 and f"is named as a run's {name}" in result.stderr
    assert digests(tmp_path) == before


def test_prompt_file_with_windows_line_ends_and_a_bom(run, tmp_path):
    """A prompt file saved on Windows (BOM, CRLF) means the same prompts as a plain one."""
    plain, windows = tmp_path / "plain.txt", tmp_path / "windows.txt"
    plain.write_bytes(b"12+3=\n4*5=\n")
    windows.write_bytes(b"\xef\xbb\xbf12+3=\r\n4*5=\r\n")
    outs = []
    for path in (plain, windows):
        out_file = tmp_path / f"{path.stem}.jsonl"
        run_script([f"--out_dir={run}", f"--start=FILE:{path}", "--temperature=0", "--num_samples=1",
                    f"--out_file={out_file}"], "sample.py")
        outs.append(out_file.read_text())
    assert outs[0] == outs[1] and '"prompt": "12+3="' in outs[0]


def test_prompt_file_names_the_line_it_cannot_encode(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("12+3=\n\n4*5=\nhello\n")
    result = run_script([f"--out_dir={run}", f"--start=FILE:{prompts}"], "sample.py", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"{prompts}:4: character 'h' is not in this char vocabulary" in result.stderr


def test_num_samples_too_large_to_decode_is_refused_first(run, tmp_path):
    before = digests(run)
    result = run_script([f"--out_dir={run}", "--num_samples=1000000000"], "sample.py", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "decoding 1000000000 rows at once needs" in result.stderr and "lower --num_samples" in result.stderr
    assert digests(run) == before


def test_a_lone_surrogate_in_the_data_names_its_line(tmp_path):
    """JSON can escape half a UTF-16 pair ("\\ud800"), which no tokenizer can encode: one line."""
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "1+2=", "completion": "\\ud800"}\n')
    result = run_script(TINY + [f"--dataset={data}", f"--out_dir={tmp_path / 'out'}"], check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"{data}:2: " in result.stderr and "lone surrogate" in result.stderr
    assert not (tmp_path / "out").exists()
