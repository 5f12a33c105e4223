"""
The files the scripts read and write, handled safely.

Writing: every file is written to a temporary file in the same folder, with a name no other
process shares (tempfile.mkstemp, with the writer's pid in it), fsynced, then renamed over the old
one: a crash, Ctrl-C, SIGTERM or a full disk leaves either the old file or the new one, whole, and
no temporary file behind. Only SIGKILL (or a power cut) can leave one: the next write into that
folder, or the next lock of it, removes the temporaries of processes that no longer run.

Where outputs go: check_out_dir() / check_output_path() before any work, check_outputs() so that no
output replaces an input, lock_out_dir() so that one process at a time writes a run's folder.

Reading: read_text() and read_json() name the file and line of a bad byte or bad JSON.
"""
import errno
import fcntl
import json
import os
import re
import signal
import stat
import sys
import tempfile

LOCK_FILE = "run.lock"  # in an out_dir: held (flock) by the process that trains into it
RUN_FILES = ("ckpt.pt", "best.pt", "log.jsonl")  # what train.py writes into its out_dir
# mkstemp makes files only the owner can read; renamed files get the usual mode
UMASK = os.umask(0o022)
os.umask(UMASK)
# the open lock files: a lock lasts as long as the process (the kernel drops it at exit)
held_locks = []
made_by_lock = []  # what lock_out_dir(undo_on_fail=True) made: fail() removes it
script = "python"  # the script that runs, which stop_on_interrupt() names: its errors start with it
# .ckpt.pt.pid4242.k3j_x9a2.tmp (.gitignore: *.tmp)
TEMPORARY = re.compile(r"\..+\.pid(\d+)\.\w{8}\.tmp")


def pid_runs(pid):
    """Whether a process with this pid runs (on this machine)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid at all): not ours to judge
    return True


def remove_stale_temporaries(folder):
    """Remove the temporary files in folder that a killed process (SIGKILL) left: those whose pid no
    longer runs. A live writer's are kept, whoever it is."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = TEMPORARY.fullmatch(name)
        if match and not pid_runs(int(match.group(1))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def replace_atomically(path, write):
    """write(tmp_path) a temporary file next to path, fsync it, rename it to path. ValueError with
    one line when the write fails (a full disk, a read-only folder); path is then untouched."""
    folder = os.path.dirname(path) or "."
    remove_stale_temporaries(folder)
    try:
        fd, tmp_path = tempfile.mkstemp(dir=folder,
                                        prefix=f".{os.path.basename(path)}.pid{os.getpid()}.",
                                        suffix=".tmp")
    except OSError as err:
        raise ValueError(f"cannot write {path} ({err.strerror})") from None
    try:
        os.close(fd)
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    except BaseException as err:  # an error, a full disk, Ctrl-C: no temporary file stays behind
        try:
            os.remove(tmp_path)
        except OSError:
            pass
        # torch.save reports a failed write as a RuntimeError
        if isinstance(err, (OSError, RuntimeError)):
            message = (err.strerror if isinstance(err, OSError) and err.strerror
                       else str(err).splitlines()[0])
            kept = "the previous file is kept" if os.path.exists(path) else "nothing was written"
            raise ValueError(f"cannot write {path} ({message}); {kept}") from None
        raise


def write_atomically(path, text):
    """Write a text file (a log, results) through a temporary file and a rename: never half a
    file."""
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write(text)
    replace_atomically(path, write)


def json_text(record):
    """A summary's JSON text: indented as json.dumps(indent=2) does, but a list that holds no list
    or object on one line (a value per prompt would otherwise take a line each)."""
    def text(value, margin):
        inner = margin + "  "
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(k)}: {text(v, inner)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{margin}}}"
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            return "[\n" + ",\n".join(inner + text(v, inner) for v in value) + f"\n{margin}]"
        return json.dumps(value)
    return text(record, "") + "\n"


def save_figure(fig, path, **savefig_args):
    """A matplotlib figure saved the same way: a temporary file, then a rename."""
    # from the name (.png): the temporary's ends in .tmp
    image_format = os.path.splitext(path)[1][1:] or None
    replace_atomically(path, lambda tmp_path: fig.savefig(tmp_path, format=image_format,
                                                          **savefig_args))


def check_out_dir(folder, flag="out_dir"):
    """ValueError with one line unless folder exists as a writable folder or can be made: checked
    before any data or model is loaded, and without creating anything."""
    if not folder:
        raise ValueError(f"--{flag}='' names no folder; give one, e.g. --{flag}=out")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # the nearest folder that exists is where the rest is made
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--{flag}={folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--{flag}={folder}: {existing} is read-only; give a folder you can write")


def check_output_path(path, flag="out_file"):
    """check_out_dir() for the folder of an output file, and the file must not be a folder."""
    if os.path.isdir(path):
        raise ValueError(f"--{flag}={path} is a folder; give a file name")
    check_out_dir(os.path.dirname(path) or ".", flag)


def check_outputs(outputs, inputs):
    """ValueError with one line if an output would replace an input or an earlier output: writing
    it would destroy that file. outputs: [(what, path, fix)], inputs: [(what, path)], what naming
    the file and its flag. Paths are compared as the files they reach (same_path: symbolic
    links, '..' and hard links resolved), before any work is done."""
    for i, (what, path, fix) in enumerate(outputs):
        for other, other_path in inputs + [output[:2] for output in outputs[:i]]:
            if same_path(path, other_path):
                raise ValueError(f"{what} is {other}, which writing it would destroy; {fix}")


def run_inputs(ckpt_path, flag):
    """check_outputs()'s inputs for a checkpoint: the file, and the files train.py wrote beside
    it."""
    folder = os.path.dirname(ckpt_path) or "."
    return [(f"the checkpoint of {flag}", ckpt_path)] + [
        (f"the {name} of {flag}'s run", os.path.join(folder, name)) for name in RUN_FILES]


def fail(message):
    """Stop the script with one line, `<script>: error: <message>`. The folder and lock file that
    lock_out_dir(undo_on_fail=True) made go too, unless something was written into the folder."""
    for path in reversed(made_by_lock):
        try:
            os.remove(path) if path.endswith(LOCK_FILE) else os.rmdir(path)
        except OSError:
            pass  # the folder holds what the script wrote
    sys.exit(f"{script}: error: {message}")


def lock_out_dir(folder, undo_on_fail=False):
    """Make folder and lock it for this process (flock on folder/LOCK_FILE, held until the process
    ends, a kill included: the kernel drops the lock, so it is never stale), then remove the
    temporary files that killed writers left in it. A second process on the same folder gets
    ValueError at once. The lock file is only ever a file of its own: one that is a symbolic link,
    not a regular file, has another name (a hard link) or holds more than a pid is refused, never
    written. undo_on_fail: fail() removes the folder and lock file this call makes."""
    path = os.path.join(folder, LOCK_FILE)
    if undo_on_fail:
        made_by_lock[:] = [p for p in (folder, path) if not os.path.lexists(p)]
    os.makedirs(folder, exist_ok=True)
    foreign = (f"{path} is not a lock file of these scripts ({{}}); "
               f"move it away, or use another folder")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        raise ValueError(foreign.format("a symbolic link" if err.errno == errno.ELOOP
                                        else err.strerror)) from None
    info = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(info.st_mode)
               else "a hard link" if info.st_nlink != 1
               # empty, or a pid
               else "" if info.st_size <= 32 and re.fullmatch(rb"(\d+\n)?", os.pread(fd, 32, 0))
               else "it holds more than a pid")
    if problem:
        os.close(fd)
        raise ValueError(foreign.format(problem))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode().strip()
        os.close(fd)
        raise ValueError(f"{folder} is in use by another process"
                         f"{f' (pid {owner})' if owner else ''}; "
                         f"wait for it to finish, or use another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message above
    held_locks.append(fd)
    remove_stale_temporaries(folder)
    return fd


def read_text(path, what="file"):
    """The text of a UTF-8 file; ValueError naming the file (and the line of a bad byte)
    otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"cannot read {what} {path} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[err.start:err.start + 1]!r}); "
                         f"save the {what} as UTF-8") from None


def read_json(path, what="JSON file"):
    """The JSON object in a file (a model's config.json); ValueError naming the file and line
    otherwise."""
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        line = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{path}{line}: not valid JSON ({json_problem(err)})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must be a JSON object")
    return value


def json_problem(err):
    """Why json.loads failed, in a few words: its message and column, or Python's own limit it hit
    (a number of more than 4300 digits, nesting too deep)."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg}: column {err.colno}"
    return str(err).split(";")[0]  # the rest suggests changing an interpreter limit


def same_path(a, b):
    """Do two paths reach the same file or folder: the same after '..', './', a trailing '/' and
    symbolic links are resolved, or two hard links of one file? A path that does not exist (yet)
    is no other name."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def stop_on_interrupt(name, kept="each file it wrote is whole (written to a temporary file, then "
                                   "renamed); the others are as they were"):
    """Ctrl-C ends the script with one line saying what was kept (exit status 1), not a traceback;
    and so does SIGTERM (kill, a job scheduler, a parent stopping its runs), which would otherwise
    end it on the spot. The exit unwinds the stack, so an atomic write in progress removes its
    temporary. Every script calls it first: it names the script for fail(), and lets it print any
    text on any terminal."""
    global script
    script = name
    made_by_lock.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(f"{name}: interrupted; {kept}"))
    if hasattr(sys.stdout, "reconfigure"):  # a character the terminal's encoding lacks (LC_ALL=C)
        sys.stdout.reconfigure(errors="backslashreplace")  # is escaped, as on stderr: no error


def append_json_line(path, record):
    """One JSON line appended to a log and fsynced; a write that fails (a full disk) is cut off
    again, so the log keeps whole lines only: ValueError then."""
    size = os.path.getsize(path) if os.path.exists(path) else None
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")  # one write per line
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        os.remove(path) if size is None else os.truncate(path, size)
        raise ValueError(f"cannot write {path} ({err.strerror}); it keeps its lines before iter "
                         f"{record['iter']}") from None


def trim_log(path, last_iter):
    """Keep a log's lines up to iteration last_iter (none for -1) and drop a line a crash cut
    short, rewriting the log (atomically) only when a line goes. Returns the iterations it holds."""
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    kept = {}
    for line in lines:
        try:
            it = json.loads(line)["iter"] if line.endswith("\n") else None
        except (ValueError, KeyError, TypeError):
            it = None
        if isinstance(it, int) and it <= last_iter:
            kept[it] = line
    if list(kept.values()) != lines:
        write_atomically(path, "".join(kept.values()))
    return set(kept)
