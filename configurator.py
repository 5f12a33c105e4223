"""
Flags for the scripts, nanoGPT style: every module-level setting of a script is a flag.

    python train.py --batch_size=32 --loss=mle
    python train.py config/arith_sweep.py --td_coef=0.3     # a config file of overrides, then flags
    python train.py --help                                   # each flag, its default and meaning

A script lists its settings as plain assignments with a trailing comment, e.g.
    batch_size = 32  # examples per micro-batch
and calls `globals().update(configure(settings_of(globals(), __file__), __file__))`. The comments
are the --help text, so the help can never drift from the code. A value is parsed as a Python
literal and must have the default's type (an int is fine for a float; a float must be finite);
anything else stops with one line. A config file is Python: it may import modules and define
helpers, and every plain value (bool, number, string, None) it assigns must be a setting.

Also here: parse_list() for comma-separated flags, check_settings() for a checkpoint's settings
(the flags' own checks), and TRAIN_RANGES, the ranges of train.py's flags.
"""
import ast
import difflib
import math
import os
import re
import sys

from runfiles import read_text, same_path

PLAIN = (bool, int, float, str, type(None))  # the types a setting can have
SEED_RANGE = (0, 2**32 - 1)  # a seed's range: what torch, numpy and random all accept
# train.py's flags: (lowest, highest) allowed, None = no bound; a checkpoint's config too
TRAIN_RANGES = {
    **{k: (0, 1) for k in ("gamma", "mix_in", "sample_fraction")},
    "gem_beta": (0.01, 1),
    **{k: (0, 0.99) for k in ("dropout", "beta1", "beta2")},
    **{k: (0, None) for k in ("td_coef", "entropy_coef", "learning_rate", "min_lr",
                              "weight_decay", "grad_clip", "mle_weight", "kl_coef",
                              "disc_learning_rate", "warmup_iters", "lr_decay_iters",
                              "eval_prompts", "loss_chunk")},
    **{k: (1, None) for k in ("batch_size", "gradient_accumulation_steps", "n_layer", "n_head",
                              "n_embd", "sample_every", "max_new_tokens", "disc_n_layer",
                              "eval_interval", "eval_iters", "log_interval",
                              "max_iters")},  # max_iters=0 would train nothing and save nothing
    # a prompt token and a completion token: the fewest a row can learn from
    "block_size": (2, None),
    "seed": SEED_RANGE,
}


def settings_of(namespace, script_path):
    """A script's settings: {name: value} of the plain values (PLAIN) that its own lines assign at
    module level (`name = value`), in order; names it imports are not settings."""
    with open(script_path, encoding="utf-8") as f:
        assigned = {m.group(1) for m in map(re.compile(r"^(\w+)\s*=").match, f) if m}
    return {k: v for k, v in namespace.items() if k in assigned and not k.startswith("_")
            and isinstance(v, PLAIN)}


def help_lines(script_path):
    """{name: meaning} from the `name = value  # meaning` lines of a script; a meaning goes on in
    the comment lines right below it that start with '#   ' (three spaces)."""
    meanings, name = {}, None
    with open(script_path, encoding="utf-8") as f:
        for line in f:
            setting, more = (re.match(r"^(\w+)\s*=\s*.*?#\s*(.*)$", line),
                             re.match(r"^#   (.*)$", line))
            if setting:
                name = setting.group(1)
                meanings[name] = setting.group(2)
            elif more and name:
                meanings[name] += " " + more.group(1).strip()
            else:
                name = None
    return meanings





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
    """ValueError naming the first setting outside its range; ranges: {name: (lowest, highest)},
    both allowed, None for no bound. A float must be finite unless a bound is infinite. Settings
    that config lacks are not checked (a checkpoint's config may hold a few)."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value) and \
                value not in ranges.get(key, ()):
            raise ValueError(f"{label.format(key)}={value} must be a finite number")
    for key, (low, high) in ranges.items():
        value = config.get(key)
        if key in config and ((low is not None and value < low)
                              or (high is not None and value > high)):
            bound = f"lie in [{low}, {high}]" if low is not None and high is not None else \
                f"be >= {low}" if low is not None else f"be <= {high}"
            raise ValueError(f"{label.format(key)}={value} must {bound}")


def check_settings(values, settings, ranges, label="--{}"):
    """values (a checkpoint's config) checked as flags are: each of its setting's type (check_value)
    and in its range (check_ranges); names that are not settings are left out. ValueError naming
    the first bad one."""
    checked = {k: check_value(k, v, settings[k], label=label) for k, v in values.items()
               if k in settings}
    check_ranges(checked, ranges, label)
    return checked



def same_setting(a, b):
    """Do two values of a setting mean the same: equal, or two names of one file or folder
    (data/ and ./data)?"""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return a == b
    return same_path(a, b)


def parse_list(key, text, kind=float, low=None):
    """The comma-separated values of --key=text, each a finite `kind` >= low; ValueError
    otherwise."""
    values = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (low is not None and value < low):
            need = (f"{'whole numbers' if kind is int else 'finite numbers'}"
                    + (f" >= {low}" if low is not None else ""))
            raise ValueError(f"--{key}={text!r}: {item.strip()!r} is not one of the "
                             f"comma-separated {need}")
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
    # sys.exit() in the file too: it is not the script's own exit
    except (Exception, SystemExit) as err:
        where = next((f":{tb.tb_lineno}" for tb in traceback_of(err)
                      if tb.tb_frame.f_code.co_filename == path), "")
        where = f":{err.lineno}" if isinstance(err, SyntaxError) and err.lineno else where
        raise ValueError(f"config file {path}{where} does not run "
                         f"({type(err).__name__}: {err})") from None
    return [(k, v) for k, v in namespace.items() if not k.startswith("_") and isinstance(v, PLAIN)]


def traceback_of(err):
    """The frames of an exception's traceback, outermost first."""
    tb, frames = err.__traceback__, []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames


def configure(settings, script_path, argv=None, ranges=None, with_given=False, notes=None):
    """Apply config files and --key=value flags to a dict of default settings; return the result.
    ranges: {name: (lowest, highest)} that the final values must respect (None: unbounded).
    with_given: return (config, the names a config file or flag set, even to their default), e.g.
    for a resumed run to tell a flag that contradicts its checkpoint from one left out.
    notes: {name: text} that --help adds to a setting's meaning (train.py's "(resume: may change)").
    """
    argv = sys.argv[1:] if argv is None else argv
    script = os.path.basename(script_path)  # what its errors start with
    here = os.path.dirname(os.path.abspath(__file__))
    # how to run it: lab/experiment.py
    command = os.path.relpath(os.path.abspath(script_path), here)
    config, given = dict(settings), set()
    try:
        for arg in argv:
            if arg in ("-h", "--help"):
                meanings = help_lines(script_path)
                print(f"usage: python {command} [config.py] [--key=value ...]\n")
                for key, default in settings.items():
                    note = f" {notes[key]}" if key in (notes or {}) else ""
                    print(f"  --{key}={default!r}".ljust(34) + f" {meanings.get(key, '')}{note}")
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
                        raise ValueError(f"unknown flag --{key}; {hint}(python {command} "
                                         f"--help lists them)")
                    config[key] = check_value(key, value, settings[key]) if source else \
                        parse_value(key, value, settings[key])
                    given.add(key)
                except ValueError as err:
                    raise ValueError(f"{source}{err}") from None
        check_ranges(config, ranges or {})
    except ValueError as err:
        sys.exit(f"{script}: error: {err}")
    return (config, given) if with_given else config
