"""The runs of a fit: find them, compare them, pick the best (lowest final loss); take up one
that was interrupted (resume_state, for train_meso.py --resume).

    python -m src.runs "result/3pop example/data11"
"""
import contextlib
import logging
import os
import sys
import warnings

import numpy as np

from .results import ResultFileError, RunSummary


SMC_REPORT_DIR = "report_smc"      # src.report --estep smc writes here, beside the runs: not a run


def find_runs(folder):
    """{run name: src.results.RunSummary} of the runs in folder with a readable summary.json and a
    final loss (at least one complete EM step). Missing or partial runs are skipped with a warning."""
    runs = {}
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
        if not os.path.isdir(os.path.join(folder, name)) or name == SMC_REPORT_DIR:
            continue
        try:
            summary = RunSummary.load(os.path.join(folder, name, "summary.json"))
        except ResultFileError as err:
            warnings.warn(f"skipping {os.path.join(folder, name)}: no complete summary.json ({err})")
            continue
        if summary.final_loss is None or not np.isfinite(summary.final_loss):
            warnings.warn(f"skipping {os.path.join(folder, name)}: no complete EM step (final loss "
                          f"{summary.final_loss})")
            continue
        if not summary.finished:
            warnings.warn(f"{os.path.join(folder, name)} did not finish; using its last complete EM step")
        runs[name] = summary
    return runs


# Options that define a fit: --resume refuses to continue a run with other values.
FIT_OPTIONS = ("trial_length", "with_input", "t_perbatch", "end_timepoint", "dt", "M", "N", "Nsampled", "B",
               "a_cutoff", "lb", "ub", "amem", "J", "rp", "ft", "sampled_spike_history_smoothed_w", "train_Noinit",
               "method", "mstep_grad", "estep", "particles", "draws", "init")
# what a run written before an option existed did (every such run was fitted with a MAP E-step from a
# draw of the prior)
FIT_OPTIONS_BEFORE = {"estep": "map", "init": "prior"}


def resume_state(folder, options, recording_seed, shape_theta, shape_Z, given=()):
    """What --resume continues from: (summary, last) with the run's RunSummary, its complete EM
    steps only, and the arrays of its last complete EM step (None if there is none); None if the
    folder holds no summary.json.

    options: the options of this call (a dict); given: the names of those on the command line. The
    run continues with its own scheme and E-step, unless one was given and differs. ResultFileError
    or UsageError, before anything is written, if the files are not a run of this kind or the run
    used other options."""
    from .cli import UsageError
    from .results import load_arrays

    path = os.path.join(folder, "summary.json")
    if not os.path.exists(path):
        return None
    summary = RunSummary.load(path)
    options = dict(options)
    for name, own in (("scheme", summary.scheme), ("estep", summary.estep)):
        if name in given and options[name] != own:
            raise UsageError(f"--resume: --{name} is {options[name]!r} but the run in {folder} was fitted with "
                             f"{own!r}; resume without --{name}, or start a new run without --resume")
        options[name] = own
    for name in FIT_OPTIONS:
        before, now = summary.options.get(name, FIT_OPTIONS_BEFORE.get(name)), options[name]
        if name in ("particles", "draws") and options["estep"] != "smc":
            continue                                          # unused by a MAP fit
        if before != now:
            raise UsageError(f"--resume: --{name} is {now!r} but the run in {folder} used {before!r}; resume with "
                             "the same options, or start a new run without --resume")
    if summary.dataset.get("seed") != recording_seed:
        raise UsageError(f"--resume: {options['dataset']} (seed {recording_seed}) is not the recording the run in "
                         f"{folder} was fitted to (seed {summary.dataset.get('seed')})")
    theta_init = np.asarray(summary.theta_init, float)
    if theta_init.shape != shape_theta:
        raise ResultFileError(f"{path}: theta_init must be {shape_theta[0]} finite numbers")
    done, last = [], None
    for step in summary.em_steps:
        e = step.get("em_step") if isinstance(step, dict) else None
        if e != len(done) or not os.path.exists(os.path.join(folder, f"E{e}_est_param")):
            break
        last = load_arrays(os.path.join(folder, f"E{e}_est_param"))
        for key, shape in (("theta", shape_theta), ("Z", shape_Z)):
            value = np.asarray(last.get(key))
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ResultFileError(f"{folder}/E{e}_est_param: field {key!r} must be finite with shape {shape}, "
                                      f"got shape {value.shape}")
        done.append(step)
    # what counts is what the complete steps left: the histories up to them, their last theta
    summary.em_steps, summary.theta_init = done, theta_init
    summary.e_history = [h for h in summary.e_history if h[0] < len(done)]
    summary.m_points = summary.m_points[:len(done)]
    if done:
        summary.theta_final, summary.final_loss, summary.last_em_step = last["theta"], done[-1]["loss"], len(done) - 1
    return summary, last


@contextlib.contextmanager
def training_log(folder, name="train_meso"):
    """A logger that writes to stdout and to folder/train.log while the block runs."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(folder, "train.log"))]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    try:
        yield log
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


# What a run's final loss is the loss of: the window of the recording, the observed neurons, the bins.
# Runs that differ in one of these (or in the recording, or the scheme) fitted other data or another
# model, and their losses do not compare.
SETTING_OPTIONS = ("end_timepoint", "trial_length", "t_perbatch", "B", "Nsampled", "with_input", "dt", "a_cutoff")


def ranked(runs, estep, folder):
    """{name: summary} of the runs {name: summary} (find_runs) fitted with --estep `estep`, the best
    (lowest final loss) first: for map the joint loss, for smc -log p_hat(y | theta) / (B*M*T); the two
    kinds are never compared. src.cli.UsageError, naming the two runs and the option, if they were
    not all fitted to the same data and model."""
    from .cli import UsageError

    def setting(r):
        values = {f"--{k}": r.options[k] for k in SETTING_OPTIONS if k in r.options}
        path = r.dataset.get("path", r.options.get("dataset"))
        return values | {"the recording": (os.path.basename(str(path)), r.dataset.get("seed")), "--scheme": r.scheme}

    runs = {n: r for n, r in runs.items() if r.estep == estep}
    names = list(runs)
    first = setting(runs[names[0]]) if names else {}
    for name in names[1:]:
        other = setting(runs[name])
        for key in (k for k in first if k in other and first[k] != other[k]):
            raise UsageError(f"{folder}: {names[0]} and {name} were fitted with {key} {first[key]!r} and "
                             f"{other[key]!r}, so their losses do not compare; give each setting its own "
                             "--SAVE_DIR")
    return dict(sorted(runs.items(), key=lambda item: item[1].final_loss))


def default_estep(runs):
    """The E-step whose best run stands for a folder of runs {name: summary}: map if there are runs and
    all were fitted with it, smc otherwise (the default of train_meso.py, and the only E-step whose
    fitted model switches like the network)."""
    return "map" if runs and all(r.estep == "map" for r in runs.values()) else "smc"


def best_run(folder, estep=None):
    """(name, summary) of the best run in folder fitted with --estep `estep` (ranked; None: the folder's
    default_estep). src.cli.NoResult if there is none, src.cli.UsageError if its runs do not compare."""
    from .cli import NoResult
    every_run = find_runs(folder)
    estep = estep or default_estep(every_run)
    runs = ranked(every_run, estep, folder)
    if not runs:
        raise NoResult(f"no run fitted with --estep {estep} in {folder!r} (a run of train_meso.py writes one): "
                       "run bash 3pop_neuLVM.sh first")
    name = next(iter(runs))
    return name, runs[name]


def parameter_table(runs):
    """Text table: true, initial, fitted theta and relative error of each run (true and error n/a for a
    recording without ground truth)."""
    lines = []
    for name, s in runs.items():
        lines.append(f"{name}: final loss {s.final_loss:.6f}, EM steps {len(s.em_steps)}")
        lines.append(f"  {'param':8s} {'true':>9s} {'init':>9s} {'fit':>9s} {'rel.err':>8s}")
        truth = s.theta_true if s.theta_true is not None else [None] * len(s.theta_names)
        for n, t, i, f in zip(s.theta_names, truth, s.theta_init, s.theta_final):
            if t is None:
                lines.append(f"  {n:8s} {'n/a':>9s} {i:9.4f} {f:9.4f} {'n/a':>8s}")
            else:
                lines.append(f"  {n:8s} {t:9.4f} {i:9.4f} {f:9.4f} {(f - t) / t:+8.3f}")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print("usage: python -m src.runs RESULT_FOLDER", file=sys.stderr)
        return 2
    runs = find_runs(argv[0])
    esteps = sorted({r.estep for r in runs.values()})
    if not esteps:
        print(f"error: no trained run in {argv[0]!r}: run `bash 3pop_neuLVM.sh` (or train_meso.py) first",
              file=sys.stderr)
        return 1
    print(parameter_table(runs))
    from .cli import UsageError
    for estep in esteps:
        try:
            name = next(iter(ranked(runs, estep, argv[0])))
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        kind = "" if esteps == ["map"] else f" (--estep {estep})"
        print(f"best run{kind}: {os.path.join(argv[0], name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
