"""The marginal likelihood along a line in parameter space (issue 13's landscape):

    python bench/ridge.py "result/3pop example/data11/smc2"            # truth to fit, s = 0, 0.25, ..., 1
    python bench/ridge.py RUN --s -0.25 0 0.5 1 1.25 --repeats 5 --particles 2000
    python bench/ridge.py RUN --em_steps 1 2 --s 1 2 4 8 16 --repeats 2 --particles 500   # over-relaxed EM

theta(s) = truth + s (theta_fit - truth): s = 0 is the truth, s = 1 the fit. With --em_steps A B, theta(s)
= theta_A + s (theta_B - theta_A), the parameters after EM steps A and B of the run, clipped to the run's
box: s = 1 is EM step B, s > 1 an EM step made s times longer. At each point, --repeats independent
passes of the particle filter give log p_hat(y | theta(s)) on the run's own window and scheme: mean and
Monte Carlo standard error, and the difference to the truth's passes. The passes of the same repeat
share their seed, so the differences between points are less noisy than each value. Prints a table and
writes it as JSON (--out, default RUN/ridge.json).

Why: EM moves slowly along directions in which the observed spikes say little, so where a fit stops
need not be where the likelihood peaks. This measures how much the spikes prefer the truth over the
fit, and over the points between them; and how far along its own direction an EM step could go.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def paired_passes(theta, window, particles, repeats, seed, scheme):
    """log p_hat(y | theta) of `repeats` float32 filter passes, pass i seeded [seed, i]: the same seeds at
    every theta, so that differences between points are paired."""
    import tensorflow as tf

    from src import smc
    return smc.log_likelihood_passes(theta, window, particles, [[seed, i] for i in range(repeats)], scheme,
                                     dtype=tf.float32)


def standard_error(x):
    """Monte Carlo standard error of the mean of the passes x (nan for one pass)."""
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (with summary.json)")
    p.add_argument("--s", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1], help="points on the line")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="filter passes per point")
    p.add_argument("--seed", type=int, default=7, help="seed of the passes (repeat i uses [seed, i])")
    p.add_argument("--em_steps", type=int, nargs=2, metavar=("A", "B"),
                   help="the line through the parameters after EM steps A and B instead (clipped to the box)")
    p.add_argument("--out", default=None, help="JSON output (default RUN/ridge.json)")
    args = p.parse_args()
    from src.dataset import load_recording
    from src.helper import run_window
    from src.results import RunSummary, load_arrays

    run = RunSummary.load(os.path.join(args.run, "summary.json"))
    rec = load_recording(os.path.join(ROOT, run.options["dataset"]))
    window = run_window(rec, run)
    truth, fit = np.asarray(rec.network.theta, float), np.asarray(run.theta_final, float)
    if args.em_steps:
        a, b = (np.asarray(load_arrays(os.path.join(args.run, f"E{e}_est_param"))["theta"], float)
                for e in args.em_steps)
        centre = np.asarray(run.prior_centre, float)
        points = [np.clip(a + s * (b - a), run.options["lb"] * centre, run.options["ub"] * centre) for s in args.s]
    else:
        points = [truth + s * (fit - truth) for s in args.s]
    start = time.time()
    passes = lambda theta: paired_passes(theta, window, args.particles, args.repeats, args.seed, run.scheme)  # noqa: E731
    at_truth = passes(truth)
    table = np.array([passes(theta) for theta in points])                           # (points, repeats)
    se = standard_error
    rows = []
    print(f"{args.run}: scheme {run.scheme}, {args.particles} particles, {args.repeats} passes per point, "
          f"{time.time() - start:.0f} s")
    print("| s | J_1 J_2 J_3 | log p_hat (mean +- s.e.) | minus the truth, same seeds |")
    print("|---|---|---|---|")
    for s, theta, values in zip(args.s, points, table):
        J = theta[3:6]
        diff = values - at_truth
        rows.append({"s": s, "theta": theta.tolist(), "log_p_hat": values.tolist(),
                     "mean": float(values.mean()), "se": se(values),
                     "minus_truth_mean": float(diff.mean()), "minus_truth_se": se(diff)})
        print(f"| {s:g} | {J[0]:.2f} {J[1]:.2f} {J[2]:.2f} | {values.mean():.1f} +- {se(values):.1f} | "
              f"{diff.mean():+.1f} +- {se(diff):.1f} |")
    out = args.out or os.path.join(args.run, "ridge.json")
    with open(out, "w") as f:
        json.dump({"run": args.run, "scheme": run.scheme, "particles": args.particles, "repeats": args.repeats,
                   "seed": args.seed, "em_steps": args.em_steps, "truth": truth.tolist(), "fit": fit.tolist(),
                   "truth_log_p_hat": at_truth.tolist(), "points": rows}, f, indent=1)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
