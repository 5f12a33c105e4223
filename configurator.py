"""
Flags for the scripts, nanoGPT style: every module-level setting of a script is a flag.

    python train.py --batch_size=32 --loss=mle
    python train.py config/arith_sweep.py --td_coef=0.3     # a config file of overrides, then flags
    python train.py --help                                   # each flag, its default and meaning

A script lists its settings as plain assignments with a trailing comment, e.g.
    batch_size = 32  # examples per micro-batch
and calls `globals().update(configure(settings, __file__))`. The comments are the --help text,
so the help can never drift from the code. A value is parsed as a Python literal and must have
the default's type (an int is fine for a float); anything else stops with one line.
"""
import ast
import difflib
import re
import sys


def help_lines(script_path):
    """{name: meaning} from the `name = value  # meaning` lines of a script."""
    pattern = re.compile(r"^(\w+)\s*=\s*.*?#\s*(.*)$")
    with open(script_path) as f:
        return {m.group(1): m.group(2) for m in map(pattern.match, f) if m}


def parse_value(key, text, default):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word is a string: --dataset=arith
    if isinstance(default, str):
        return value if isinstance(value, str) else text  # '5' stays the string '5'
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"--{key} takes True or False, not {text!r}")
    elif isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"--{key} takes a whole number, not {text!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"--{key} takes a number, not {text!r}")
        value = float(value)
    return value


def check_ranges(config, ranges):
    """ValueError naming the first flag outside its range; ranges: {name: (lowest, highest)}, both
    allowed, None for no bound."""
    for key, (low, high) in ranges.items():
        value = config[key]
        if (low is not None and value < low) or (high is not None and value > high):
            bound = f"lie in [{low}, {high}]" if low is not None and high is not None else \
                f"be >= {low}" if low is not None else f"be <= {high}"
            raise ValueError(f"--{key}={value} must {bound}")


def configure(settings, script_path, argv=None, ranges=None):
    """Apply config files and --key=value flags to a dict of default settings; return the result.
    ranges: {name: (lowest, highest)} that the final values must respect (None: unbounded)."""
    argv = sys.argv[1:] if argv is None else argv
    script = script_path.split("/")[-1]
    config = dict(settings)
    try:
        for arg in argv:
            if arg in ("-h", "--help"):
                meanings = help_lines(script_path)
                print(f"usage: python {script} [config.py] [--key=value ...]\n")
                for key, default in settings.items():
                    print(f"  --{key}={default!r}".ljust(34) + f" {meanings.get(key, '')}")
                sys.exit(0)
            if not arg.startswith("--"):  # a config file: python code that assigns settings
                overrides = {}
                with open(arg) as f:
                    code = f.read()
                try:
                    exec(compile(code, arg, "exec"), {}, overrides)
                except Exception as err:  # a config file is Python: any error in it stops here, named
                    raise ValueError(f"config file {arg} does not run ({type(err).__name__}: {err})") from None
                pairs = [(k, repr(v)) for k, v in overrides.items() if not k.startswith("_")]
            else:
                key, sep, text = arg[2:].partition("=")
                if not sep:
                    raise ValueError(f"flag {arg!r} needs a value: --{key}=VALUE")
                pairs = [(key, text)]
            for key, text in pairs:
                if key not in settings:
                    close = difflib.get_close_matches(key, settings, n=1)
                    hint = f"did you mean --{close[0]}? " if close else ""
                    raise ValueError(f"unknown flag --{key}; {hint}(python {script} --help lists them)")
                config[key] = parse_value(key, text, settings[key])
        check_ranges(config, ranges or {})
    except (ValueError, OSError) as err:
        sys.exit(f"{script}: error: {err}")
    return config
