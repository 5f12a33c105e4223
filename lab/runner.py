"""
Runs the experiments' scripts as a user would: train.py, sample.py and analyze_reward.py, each in a
process of its own on one thread (OMP_NUM_THREADS=1), `jobs` at a time. A run whose files exist is
skipped and one stopped mid-training resumes from its ckpt.pt, so an interrupted experiment goes on
where it stopped; Ctrl-C, SIGTERM, a failed run or (on Linux) a kill of the experiment stops the
runs in progress.

A finished run's marker (its file `trained`) lists the train.py flags it ran with; a later command
that would run it with other flags is refused, naming the difference, and so is one that would start
again a run that another process is training (its folder locked).

With plan=True nothing runs (--plan): each command becomes a shell line instead, in a wave one after
the highest wave of the lines whose outputs it reads, so a line needs only lines of earlier waves.
"""
import ctypes
import fcntl
import itertools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from runfiles import LOCK_FILE, read_text, write_atomically

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py & co. are
try:  # Linux: a run gets SIGTERM when the experiment dies, even by SIGKILL (PR_SET_PDEATHSIG)
    PRCTL, PR_SET_PDEATHSIG = ctypes.CDLL(None, use_errno=True).prctl, 1
except AttributeError:  # elsewhere (macOS) stop() covers every stop but SIGKILL
    PRCTL = None
RUN_OWN = ("--out_dir", "--seed", "--init_from")  # where a run is and what it starts from


def run_dir(root, system, seed):
    return os.path.join(root, f"{system}_s{seed}")


def decoding_file(out_dir, decoding, split="val"):
    """sample.py's summary of one decoding (its default name)."""
    name = "t0" if decoding == "greedy" else decoding
    return os.path.join(out_dir, f"samples_{split}_{name}.json")


def reward_file(out_dir):
    return os.path.join(out_dir, "reward", "reward_summary.json")


def last_wins(command):
    """The command with one --name=value per name: the last one given (the one train.py uses), in
    the place of the first (so the echoed command reads as what runs)."""
    named = {}
    for arg in command:
        named[arg.split("=")[0] if arg.startswith("--") else arg] = arg
    return list(named.values())


def flag_lines(command, out_dir):
    """What a finished run's marker holds: its train.py flags one a line, less those of RUN_OWN; a
    value that names an existing file or folder relative to the run's folder (the same from another
    working folder, or in a moved clone)."""
    lines = []
    for arg in command[1:]:
        name, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if name not in RUN_OWN:
            value = os.path.relpath(value, out_dir) if value and os.path.exists(value) else value
            lines.append(name + sep + value)
    return lines


def flag_changes(before, now):
    """'--a=1, not --a=2 as now' for each flag (or config file) that differs between two markers'
    lines."""
    def keyed(lines):
        files = iter(range(len(lines)))
        return {line.partition("=")[0] if line.startswith("--") else f"file {next(files)}": line
                for line in lines}
    old, new = keyed(before), keyed(now)
    return [f"{old.get(key, 'no ' + key)}, not {new.get(key, 'no ' + key)} as now"
            for key in dict.fromkeys([*new, *old]) if old.get(key) != new.get(key)]


def in_use(folder):
    """Whether another process holds folder's lock: a train.py running into it."""
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # no lock file there (or not one of these scripts'): no run holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def first_failure(futures):
    """Wait until one of futures fails or all are done: the first failure's exception, or None. The
    wait wakes twice a second, so that a signal's handler (Ctrl-C) runs: one that comes as this
    thread starts to block on a lock would otherwise wait for a run to end, maybe hours."""
    ended = threading.Event()
    failed = lambda f: f.done() and not f.cancelled() and f.exception() is not None

    def on_done(future):  # in the thread that ran it
        if failed(future) or all(f.done() for f in futures):
            ended.set()

    for future in futures:
        future.add_done_callback(on_done)
    while not ended.wait(0.5):
        pass
    return next((f.exception() for f in futures if failed(f)), None)


def same_flags(marker, lines):
    """ValueError naming the difference when the finished run of marker ran with flags other than
    lines (an empty marker, made before markers listed them, is taken as it is)."""
    before = [line for line in read_text(marker, "marker").splitlines() if line]
    changes = flag_changes(before, lines) if before else []
    if changes:
        more = f" (and {len(changes) - 2} more)" if len(changes) > 2 else ""
        raise ValueError(f"{os.path.dirname(marker)} was trained with {'; '.join(changes[:2])}"
                         f"{more}: pass the flags it was trained with (its file trained lists "
                         f"them), another --results, or remove the folder to train it again")


class Runner:
    """The runs of one experiment: `jobs` at a time, train_flags (--train_args) last on every
    train.py command, num_samples samples a prompt at a temperature, max_prompts prompts by default;
    plan: note each command as a shell line (self.lines) instead of running it."""

    def __init__(self, jobs, train_flags, num_samples, max_prompts, plan=False):
        self.jobs, self.train_flags = jobs, train_flags
        self.num_samples, self.max_prompts = num_samples, max_prompts
        self.plan = {} if plan else None  # --plan: {file a noted line writes: its wave}
        self.lines = []  # --plan: (wave, shell line)
        self.children, self.lock = set(), threading.Lock()  # the processes now running
        self.stopping = threading.Event()  # set once the experiment stops: no new run starts
        self.train_locks = {}  # out_dir -> a lock: one thread trains a run (a base is needed twice)
        self.parts = []  # (task, part, runs done, runs in all, minutes of wall time)

    def done(self, path):
        return os.path.exists(path) or (self.plan is not None and path in self.plan)

    def run(self, command, done_file, mark=None, reads=(), writes=()):
        """Run a script unless done_file exists; mark: lines to write into done_file once it
        succeeded. Returns the seconds spent (0 when skipped or noted). For --plan's waves: reads,
        the files it needs beyond those its flags name; writes, those it makes beside done_file."""
        if self.done(done_file):
            return 0.0
        if self.plan is not None:
            self.note(command, [done_file, *writes], reads,
                      None if mark is None else (done_file, mark))
            return 0.0
        seconds = self.launch(command)
        if mark is not None:
            write_atomically(done_file, "".join(line + "\n" for line in mark))
        return seconds

    def launch(self, command):
        """Run a script of the repository in a process of its own, on one thread; the seconds it
        took, or ValueError with the last line it wrote to stderr."""
        with self.lock:  # no new process once stop() began
            if self.stopping.is_set():
                sys.exit("experiment.py: stopped")
            print("$", " ".join(command), flush=True)
            t0 = time.time()
            # the death signal is tied to the thread that starts the run: this one, which waits
            death_signal = partial(PRCTL, PR_SET_PDEATHSIG, signal.SIGTERM) if PRCTL else None
            script = [sys.executable, os.path.join(HERE, command[0])] + command[1:]
            process = subprocess.Popen(script, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                       preexec_fn=death_signal)
            self.children.add(process)
        _, stderr = process.communicate()
        with self.lock:
            self.children.discard(process)
        if process.returncode != 0:
            last = (stderr.strip().splitlines()[-1] if stderr.strip()
                    else f"exit status {process.returncode}")
            raise ValueError(f"{' '.join(command)} failed: {last}")
        return time.time() - t0

    def note(self, command, outputs, reads, mark):
        """--plan: the command as a shell line, a wave after those of the lines that write what it
        reads; mark: (file, lines) that the line writes once the command succeeded."""
        reads = [arg.split("=", 1)[1] for arg in command if "=" in arg] + list(reads)
        wave = 1 + max((self.plan[path] for path in reads if path in self.plan), default=0)
        script = os.path.relpath(os.path.join(HERE, command[0]))
        line = "OMP_NUM_THREADS=1 " + shlex.join(["python", script, *command[1:]])
        if mark:
            line += f" && printf '%s\\n' {shlex.join(mark[1])} > {shlex.quote(mark[0])}"
        self.lines.append((wave, line))
        self.plan.update(dict.fromkeys(outputs, wave))

    def train(self, out_dir, flags, seed, outputs=()):
        """train.py into out_dir unless it finished before and its ckpt.pt is there, or every file
        of outputs (what was made from its weights) is; a run with a checkpoint resumes, one that
        died before its first checkpoint starts afresh, and so does a finished one whose weights are
        needed but gone (git keeps a run's logs and summaries, not its weights). flags: the task's
        first (a config file sets an out_dir of its own), then the system's: later flags win.
        ValueError when the run finished with other flags, or another process trains into it."""
        command = last_wins(["train.py", *flags, f"--out_dir={out_dir}", f"--seed={seed}",
                             *self.train_flags])
        trained, ckpt, best, log = (os.path.join(out_dir, f)
                                    for f in ("trained", "ckpt.pt", "best.pt", "log.jsonl"))
        lines = flag_lines(command, out_dir)  # what its marker lists once it finished
        with self.train_locks.setdefault(out_dir, threading.Lock()):  # setdefault is atomic
            if os.path.exists(trained):
                same_flags(trained, lines)
            weights_or_outputs = self.done(ckpt) or (outputs and all(map(self.done, outputs)))
            if self.done(trained) and weights_or_outputs:
                return 0.0
            if os.path.exists(ckpt):
                command.append("--init_from=resume")  # the last --init_from wins
            elif self.plan is None:
                if in_use(out_dir):
                    raise ValueError(f"{out_dir} is in use by another process (a train.py run); "
                                     f"wait for it to finish, or use another --results")
                for stale in (trained, log):  # a start that saved nothing, or a finished run
                    if os.path.exists(stale):  # without its weights
                        os.remove(stale)
            return self.run(last_wins(command), trained, mark=lines, writes=[ckpt, best])

    def sample(self, out_dir, decoding, seed, split="val", weights="ckpt.pt", prompts=None,
               max_new_tokens=None, dataset=None):
        """sample.py on the run's weights (ckpt.pt, or best.pt: the early-stopped state; or a path
        to another run's checkpoint) at one decoding (greedy, beam<N> or t<temperature>), on the
        first `prompts` prompts of the split (None: max_prompts) of dataset (None: the one the
        weights were trained on), at most max_new_tokens tokens each (None: sample.py's
        default)."""
        if decoding == "greedy":
            args = ["--temperature=0", "--num_samples=1"]
        elif decoding.startswith("beam"):
            args = [f"--beam_size={decoding[4:]}", "--num_samples=1"]
        else:
            args = [f"--temperature={decoding[1:]}", f"--num_samples={self.num_samples}"]
        init = weights if os.sep in weights else os.path.join(out_dir, weights)
        command = ["sample.py", f"--out_dir={out_dir}", f"--init_from={init}", *args,
                   f"--split={split}", f"--max_prompts={prompts or self.max_prompts}",
                   f"--seed={seed}"]
        command += [f"--max_new_tokens={max_new_tokens}"] if max_new_tokens else []
        command += [f"--dataset={dataset}"] if dataset else []
        return self.run(command, decoding_file(out_dir, decoding, split))

    def analyze(self, out_dir, seed, split="val", weights="ckpt.pt"):
        """The reward analysis of one run, on its samples at temperature 1 (drawn here if not
        yet)."""
        seconds = self.sample(out_dir, "t1", seed, split, weights)
        command = ["analyze_reward.py", f"--out_dir={os.path.join(out_dir, weights)}",
                   f"--split={split}", "--max_prompts=200",
                   f"--results={os.path.join(out_dir, 'reward')}"]
        samples = decoding_file(out_dir, "t1", split)
        return seconds + self.run(command, reward_file(out_dir), reads=[samples])

    def timed(self, name, part, calls):
        """Run calls ({key: function returning seconds spent}) `jobs` at a time, in order, saying
        "run k of N" as each that has work left starts; note the part's wall time. --plan: the
        calls note their lines, one after another."""
        if self.plan is not None:
            for call in calls.values():
                call()
            return
        left, count = self.runs_left(calls), itertools.count(1)

        def counted(key):
            if self.stopping.is_set():  # stopped: a call still queued starts nothing, says nothing
                sys.exit("experiment.py: stopped")
            if key in left:
                with self.lock:  # a line at a time
                    print(f"run {next(count)} of {len(left)}: {part}", flush=True)
            return calls[key]()

        t0, pool = time.time(), ThreadPoolExecutor(self.jobs)
        try:
            futures = [pool.submit(counted, key) for key in calls]
            failure = first_failure(futures)
            if failure:
                raise failure
            ran = sum(future.result() > 0 for future in futures)
        except BaseException:  # a failed run or Ctrl-C: stop the others now, not after the queue
            self.stop()
            pool.shutdown(cancel_futures=True)
            raise
        pool.shutdown()
        self.parts.append((name, part, ran, len(calls), (time.time() - t0) / 60))
        print(f"{name}: {part}: {ran} of {len(calls)} runs in {self.parts[-1][4]:.1f} minutes, "
              f"{self.jobs} at a time", flush=True)

    def runs_left(self, calls):
        """The keys of the calls that would start a script: each tried as --plan, nothing run."""
        left, self.plan = set(), {}
        try:
            for key, call in calls.items():
                before = len(self.lines)
                call()
                if len(self.lines) > before:
                    left.add(key)
        finally:
            self.plan, self.lines = None, []
        return left

    def stop(self):
        """End the runs in progress (their last checkpoint stays: saves are atomic) and start no new
        one."""
        with self.lock:
            self.stopping.set()
            running = list(self.children)
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
