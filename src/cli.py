"""The command line of every script: options from a dataclass, one-line errors, exit codes, versions.

Each script declares its options once, as a dataclass whose fields are made with option():

    @dataclass
    class Options:
        duration: float = option(100.0, "simulated time (s)")
        pulse_onsets: list = option([20.0, 60.0], "pulse onsets (s)")    # a list: --pulse_onsets 1 2

and gets them with parse(Options, argv, prog, __doc__). Unknown or abbreviated options, and values
of the wrong type, raise UsageError in one line. run(prog, main, argv) turns the errors of a script
into a one-line message on stderr and its exit status: 1 no result to work on, 2 bad options or
files, 130 interrupted. --debug shows the traceback instead.
"""
import argparse
import dataclasses
import math
import platform
import sys


class UsageError(ValueError):
    """Bad options or data: one line on stderr, exit status 2."""


class NoResult(ValueError):
    """There is nothing to work on yet (no trained run): one line on stderr, exit status 1."""


REQUIRED = object()   # option(REQUIRED, ...): an option that must be given


def option(default, help, items=None):
    """A dataclass field: its default (REQUIRED: none, it must be given) and the one line of --help
    that documents it. An option of type list takes one or more values of type `items` (float)."""
    metadata = {"help": help, "items": items or float}
    if default is REQUIRED:
        return dataclasses.field(default=None, metadata={**metadata, "required": True})
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):                      # one line, not argparse's usage block
        raise UsageError(f"{message} ({self.prog} --help lists the options)")


def parse(options_class, argv, prog, description, presets=None):
    """options_class(...) from the command line argv.

    presets: {name of a bool option: {option: default}}: giving that flag changes those defaults
    (src.report's --quick); an option given on the command line always wins. Every float given must
    be finite. UsageError for anything else."""
    presets = presets or {}
    parser = _OneLineParser(prog=prog, description=description, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(options_class):
        # argparse %-formats help texts: a % sign of ours is doubled
        kind, default, text = f.type, default_of(f), f.metadata["help"].replace("%", "%%")
        shown = "[required]" if f.metadata.get("required") else f"[default: {default!r}" + "".join(
            f"; --{flag}: {values[f.name]!r}" for flag, values in presets.items() if f.name in values) + "]"
        shown = shown.replace("%", "%%")
        if kind in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action="store_true", default=argparse.SUPPRESS, help=text)
        elif kind in (list, "list"):
            parser.add_argument(f"--{f.name}", type=f.metadata["items"], nargs="+", default=argparse.SUPPRESS,
                                help=f"{text} {shown}", required=f.metadata.get("required", False))
        else:
            kind = {"int": int, "float": float, "str": str}.get(kind, kind)
            parser.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, help=f"{text} {shown}",
                                required=f.metadata.get("required", False))
    given = vars(parser.parse_args(argv))
    values = {}
    for flag, preset in presets.items():
        if given.get(flag):
            values.update(preset)
    values.update(given)
    for name, value in values.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"--{name} must be a finite number, got {v}")
    return options_class(**values)


def check(conditions):
    """UsageError with the message of the first (ok, message) pair that is not ok."""
    for ok, message in conditions:
        if not ok:
            raise UsageError(message)


def run(prog, main, argv=None, interrupted="interrupted"):
    """Exit status of main(argv), with the errors of a script as one line on stderr (see above);
    `interrupted` is the message of a KeyboardInterrupt that has none."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status = main(argv)
        return status if isinstance(status, int) else 0    # a main may return its result instead
    except (ValueError, OSError) as err:          # UsageError, NoResult, unreadable or foreign files
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NoResult) else 2
    except KeyboardInterrupt as err:
        print(f"{prog}: {str(err) or interrupted}", file=sys.stderr)
        return 130


def software_versions(*modules):
    """{name: version} of neuLVM, Python, numpy and scipy, then of each named module ('not installed'
    if it cannot be imported), for the record kept next to every result."""
    import numpy
    import scipy

    from . import __version__
    versions = {"neulvm": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "scipy": scipy.__version__}
    for module in modules:
        try:
            versions[module] = getattr(__import__(module), "__version__", "unknown")
        except ImportError:
            versions[module] = "not installed"
    return versions
