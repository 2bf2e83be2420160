"""The runs of a fit: find them, compare them, pick the best (lowest final loss).

    python -m src.runs "result/3pop example/data11"
"""
import json
import os
import sys
import warnings

import numpy as np

from .results import load_json

SUMMARY_KEYS = ("final_loss", "em_steps", "theta_names", "theta_true", "theta_init", "theta_final")


def find_runs(folder):
    """{run name: summary} of the runs in folder that have a readable summary.json with a final loss.
    Missing or partial runs are skipped with a warning."""
    runs = {}
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
        path = os.path.join(folder, name, "summary.json")
        if not os.path.isdir(os.path.join(folder, name)):
            continue
        try:
            summary = load_json(path)
            loss = float(summary["final_loss"])
            missing = [key for key in SUMMARY_KEYS if key not in summary]
            if missing:
                raise KeyError(f"missing {', '.join(missing)}")
            lengths = {len(summary[key]) for key in ("theta_names", "theta_true", "theta_init", "theta_final")}
            if len(lengths) != 1:
                raise ValueError("theta_names, theta_true, theta_init and theta_final differ in length")
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            warnings.warn(f"skipping {os.path.join(folder, name)}: no complete summary.json ({err})")
            continue
        if not np.isfinite(loss):
            warnings.warn(f"skipping {os.path.join(folder, name)}: final loss is {loss}")
            continue
        if not summary.get("finished", False):
            warnings.warn(f"{os.path.join(folder, name)} did not finish; using its last complete EM step")
        runs[name] = summary
    return runs


# A run written before the integrator was an option (no options.scheme) was fitted with forward Euler.
LEGACY_SCHEME = "euler"
_said = set()


def fit_discretisation(summary, where):
    """(scheme, dt, a_cutoff) a run was fitted with, from its summary; a run of the earlier format
    (no scheme recorded) is read as LEGACY_SCHEME, which is said once per process on stderr.
    ValueError naming `where` for a scheme this version does not know."""
    from .fast_np import check_scheme
    options = summary["options"]
    scheme = options.get("scheme")
    if scheme is None:
        if where not in _said:
            _said.add(where)
            print(f"note: {where} was written before the integrator was recorded: read as scheme "
                  f"{LEGACY_SCHEME!r}, the only one there was", file=sys.stderr)
        scheme = LEGACY_SCHEME
    try:
        check_scheme(scheme)
    except ValueError as err:
        raise ValueError(f"{where}: options.scheme: {err}") from None
    return scheme, float(options["dt"]), float(options["a_cutoff"])


def best_run(folder):
    """(name, summary) of the run with the lowest final loss; ValueError if there is none."""
    runs = find_runs(folder)
    if not runs:
        raise ValueError(f"no trained run in {folder!r}: run `bash 3pop_neuLVM.sh` (or train_meso.py) first")
    name = min(runs, key=lambda n: runs[n]["final_loss"])
    return name, runs[name]


def parameter_table(runs):
    """Text table: true, initial, fitted theta and relative error of each run."""
    lines = []
    for name, s in runs.items():
        lines.append(f"{name}: final loss {s['final_loss']:.6f}, EM steps {len(s['em_steps'])}")
        lines.append(f"  {'param':8s} {'true':>9s} {'init':>9s} {'fit':>9s} {'rel.err':>8s}")
        for n, t, i, f in zip(s["theta_names"], s["theta_true"], s["theta_init"], s["theta_final"]):
            lines.append(f"  {n:8s} {t:9.4f} {i:9.4f} {f:9.4f} {(f - t) / t:+8.3f}")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print("usage: python -m src.runs RESULT_FOLDER", file=sys.stderr)
        return 2
    try:
        name, _ = best_run(argv[0])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(parameter_table(find_runs(argv[0])))
    print(f"best run: {os.path.join(argv[0], name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
