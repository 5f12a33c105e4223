"""
Flags for the scripts, nanoGPT style: every module-level setting of a script is a flag.

    python train.py --batch_size=32 --loss=mle
    python train.py config/arith_sweep.py --td_coef=0.3     # a config file of overrides, then flags
    python train.py --help                                   # each flag, its default and meaning

A script lists its settings as plain assignments with a trailing comment, e.g.
    batch_size = 32  # examples per micro-batch
and calls `globals().update(configure(settings, __file__))`. The comments are the --help text,
so the help can never drift from the code. A value is parsed as a Python literal and must have
the default's type (an int is fine for a float; a float must be finite); anything else stops
with one line. A config file is Python: it may import modules and define helpers, and every
plain value (bool, number, string, None) it assigns must be a setting.

This is where input enters, so the checks every script shares live here too: check_device(),
parse_list() for comma-separated flags, check_settings() for a checkpoint's settings (the flags'
own checks), read_text() for any text file a user names (file and line of a bad byte), read_json()
for a JSON object in one, and stop_on_interrupt(), which configure() installs: Ctrl-C or SIGTERM
ends a script with one line, not a traceback.
"""
import ast
import difflib
import json
import math
import os
import re
import signal
import sys

PLAIN = (bool, int, float, str, type(None))  # the types a setting can have
SEED_RANGE = (0, 2**32 - 1)  # a seed's range: what torch, numpy and random all accept


def help_lines(script_path):
    """{name: meaning} from the `name = value  # meaning` lines of a script."""
    pattern = re.compile(r"^(\w+)\s*=\s*.*?#\s*(.*)$")
    with open(script_path, encoding="utf-8") as f:
        return {m.group(1): m.group(2) for m in map(pattern.match, f) if m}


def read_text(path, what="file"):
    """The text of a UTF-8 file; ValueError naming the file (and the line of a bad byte) otherwise."""
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
    """The JSON object in a file (a model's config.json); ValueError naming the file and line otherwise."""
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


def check_value(key, value, default, shown=None, label="--{}"):
    """value as a setting of default's type (an int is fine for a float), or ValueError naming it.
    shown: how the user wrote it (the flag's text), for the message; label: how the message names
    the key (a flag, or a field of a checkpoint: "config[{!r}]")."""
    shown = repr(value) if shown is None else repr(shown)
    if isinstance(default, str):
        ok = isinstance(value, str)
        kind = "a string"
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
        kind = "True or False"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        kind = "a number"
    else:  # a None default (e.g. compile = None: decided later) takes any plain value
        ok = isinstance(value, PLAIN)
        kind = "True, False, a number or a string"
    if not ok:
        raise ValueError(f"{label.format(key)} takes {kind}, not {shown}")
    return value


def parse_value(key, text, default):
    """The value of --key=text as a setting of default's type."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = text  # a bare word is a string: --dataset=arith
    if isinstance(default, str) and not isinstance(value, str):
        return text  # '5' stays the string '5'
    if isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    return check_value(key, value, default, text)


def check_ranges(config, ranges, label="--{}"):
    """ValueError naming the first setting outside its range; ranges: {name: (lowest, highest)}, both
    allowed, None for no bound. A float must be finite unless a bound is infinite. Settings that
    config lacks are not checked (a checkpoint's config may hold a few)."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value) and value not in ranges.get(key, ()):
            raise ValueError(f"{label.format(key)}={value} must be a finite number")
    for key, (low, high) in ranges.items():
        value = config.get(key)
        if key in config and ((low is not None and value < low) or (high is not None and value > high)):
            bound = f"lie in [{low}, {high}]" if low is not None and high is not None else \
                f"be >= {low}" if low is not None else f"be <= {high}"
            raise ValueError(f"{label.format(key)}={value} must {bound}")


def check_settings(values, settings, ranges, label="--{}"):
    """values (a checkpoint's config) checked as flags are: each of its setting's type (check_value)
    and in its range (check_ranges); names that are not settings are left out. ValueError naming
    the first bad one."""
    checked = {k: check_value(k, v, settings[k], label=label) for k, v in values.items() if k in settings}
    check_ranges(checked, ranges, label)
    return checked


def same_path(a, b):
    """Do two paths reach the same file or folder: the same after '..', './', a trailing '/' and symbolic
    links are resolved, or two hard links of one file? A path that does not exist (yet) is no other name."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def same_setting(a, b):
    """Do two values of a setting mean the same: equal, or two names of one file or folder (data/ and ./data)?"""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return a == b
    return same_path(a, b)


def parse_list(key, text, kind=float, low=None):
    """The comma-separated values of --key=text, each a finite `kind` >= low; ValueError otherwise."""
    values = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (low is not None and value < low):
            need = f"{'whole numbers' if kind is int else 'finite numbers'}" + (f" >= {low}" if low is not None else "")
            raise ValueError(f"--{key}={text!r}: {item.strip()!r} is not one of the comma-separated {need}")
        values.append(value)
    return values


def config_file_pairs(path):
    """[(name, value)] that a config file assigns. It runs as Python; an error in it, sys.exit,
    or Ctrl-C stops here with one line naming the file. Modules it imports, functions it defines
    and other non-plain values are its own helpers, not settings."""
    code = read_text(path, "config file")
    namespace = {}
    try:
        exec(compile(code, path, "exec"), namespace)
    except (Exception, SystemExit) as err:  # sys.exit() in the file too: it is not the script's own exit
        where = next((f":{tb.tb_lineno}" for tb in traceback_of(err) if tb.tb_frame.f_code.co_filename == path), "")
        where = f":{err.lineno}" if isinstance(err, SyntaxError) and err.lineno else where
        raise ValueError(f"config file {path}{where} does not run ({type(err).__name__}: {err})") from None
    return [(k, v) for k, v in namespace.items() if not k.startswith("_") and isinstance(v, PLAIN)]


def traceback_of(err):
    """The frames of an exception's traceback, outermost first."""
    tb, frames = err.__traceback__, []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames


def check_device(device):
    """The device to run on: '' = cuda if available, else mps, else cpu; a name (cpu, cuda,
    cuda:N, mps) must exist here. ValueError with one line otherwise."""
    import torch  # imported here: the flags of a script are read before its heavy imports matter
    if not device:
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", device):
        raise ValueError(f"--device={device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device={device} but no CUDA GPU is visible; use --device=cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(f"--device={device} but only cuda:0 to cuda:{torch.cuda.device_count() - 1} are visible")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device=mps but no Apple GPU (MPS) is available; use --device=cpu")
    return device


def stop_on_interrupt(script, kept="each file it wrote is whole (written to a temporary file, then "
                                   "renamed); the others are as they were"):
    """Ctrl-C ends the script with one line saying what was kept (exit status 1), not a traceback;
    and so does SIGTERM (kill, a job scheduler, a parent stopping its runs), which would otherwise end
    it on the spot. The exit unwinds the stack, so an atomic write in progress removes its temporary."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(f"{script}: interrupted; {kept}"))


def configure(settings, script_path, argv=None, ranges=None, with_given=False):
    """Apply config files and --key=value flags to a dict of default settings; return the result.
    ranges: {name: (lowest, highest)} that the final values must respect (None: unbounded).
    with_given: return (config, the names a config file or flag set, even to their default), e.g.
    for a resumed run to tell a flag that contradicts its checkpoint from one left out.
    Also installs stop_on_interrupt() for the script, and lets it print any text on any terminal."""
    argv = sys.argv[1:] if argv is None else argv
    script = script_path.split("/")[-1]
    stop_on_interrupt(script)
    if hasattr(sys.stdout, "reconfigure"):  # a character the terminal's encoding lacks (LC_ALL=C) is
        sys.stdout.reconfigure(errors="backslashreplace")  # escaped, as Python does on stderr, not an error
    config, given = dict(settings), set()
    try:
        for arg in argv:
            if arg in ("-h", "--help"):
                meanings = help_lines(script_path)
                print(f"usage: python {script} [config.py] [--key=value ...]\n")
                for key, default in settings.items():
                    print(f"  --{key}={default!r}".ljust(34) + f" {meanings.get(key, '')}")
                sys.exit(0)
            source = ""  # a config file names itself in an error
            if not arg.startswith("--"):  # a config file: python code that assigns settings
                pairs, source = config_file_pairs(arg), f"config file {arg}: "
            else:
                key, sep, text = arg[2:].partition("=")
                if not sep:
                    raise ValueError(f"flag {arg!r} needs a value: --{key}=VALUE")
                pairs = [(key, text)]
            for key, value in pairs:
                try:
                    if key not in settings:
                        close = difflib.get_close_matches(key, settings, n=1)
                        hint = f"did you mean --{close[0]}? " if close else ""
                        raise ValueError(f"unknown flag --{key}; {hint}(python {script} --help lists them)")
                    config[key] = check_value(key, value, settings[key]) if source else \
                        parse_value(key, value, settings[key])
                    given.add(key)
                except ValueError as err:
                    raise ValueError(f"{source}{err}") from None
        check_ranges(config, ranges or {})
    except ValueError as err:
        sys.exit(f"{script}: error: {err}")
    return (config, given) if with_given else config
