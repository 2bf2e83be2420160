"""The marginal likelihood along a line in parameter space (issue 13's landscape):

    python bench/ridge.py "result/3pop example/data11/smc2"            # truth to fit, s = 0, 0.25, ..., 1
    python bench/ridge.py RUN --s -0.25 0 0.5 1 1.25 --repeats 5 --particles 2000
    python bench/ridge.py RUN --em_steps 1 2 --s 1 2 4 8 16 --repeats 2 --particles 500   # over-relaxed EM
    python bench/ridge.py RUN --drive_of 3 --s 1 0.8 0.6 0.45 0.4 --repeats 2      # J_3 at constant drive
    python bench/ridge.py RUN --drive_of 3 --from_fit --s 0.41 0.6 0.8 1 1.2 --repeats 2

theta(s) = truth + s (theta_fit - truth): s = 0 is the truth, s = 1 the fit. With --em_steps A B, theta(s)
= theta_A + s (theta_B - theta_A), the parameters after EM steps A and B of the run, clipped to the run's
box: s = 1 is EM step B, s > 1 an EM step made s times longer. With --drive_of b, the curve on which
J_b is s times the truth's and the mean drive that b gives every population a is kept: rp_a moves by
-(J_b(s) - J_b) conmat[b, a] A_b / amem_a, A_b the mean activity of b over the window (the truth's; with
--from_fit, the curve through the fit, and A_b the mean of its last latent). If A_b is flat, as the I
population's is in the winner-take-all network, only the fluctuations of A_b tell J_b from rp. At each
point, --repeats independent passes of the particle filter give log p_hat(y | theta(s)) on the run's own window and scheme: mean and
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


def constant_drive(theta, b, J_b, Z, window):
    """theta (amem, J, rp, ft) with J_b set to J_b and each rp_a moved so that the drive b gives a at
    its mean activity, J_b conmat[b, a] mean(A_b) / amem_a (model.md section 1, at rest), stays."""
    M = window.M
    theta = np.array(theta, float)
    A_b = float(np.mean(Z[:, b])) / window.dt              # Hz, over batches and bins
    amem, dJ = theta[:M], J_b - theta[M + b]
    theta[M + b] = J_b
    theta[2 * M:3 * M] -= dJ * window.net.conmat[b] * A_b / amem
    return theta


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
    p.add_argument("--drive_of", type=int, metavar="b",
                   help="the curve of J_b = s x the truth's at constant mean drive from population b (1-based)")
    p.add_argument("--from_fit", action="store_true", help="with --drive_of: the curve through the fit")
    p.add_argument("--out", default=None, help="JSON output (default RUN/ridge.json)")
    args = p.parse_args()
    from src.dataset import load_recording
    from src.helper import run_window
    from src.results import RunSummary, load_arrays

    run = RunSummary.load(os.path.join(args.run, "summary.json"))
    M = len(run.theta_names) // 4
    rec = load_recording(os.path.join(ROOT, run.options["dataset"]))
    window = run_window(rec, run)
    truth, fit = np.asarray(rec.network.theta, float), np.asarray(run.theta_final, float)
    if args.em_steps:
        a, b = (np.asarray(load_arrays(os.path.join(args.run, f"E{e}_est_param"))["theta"], float)
                for e in args.em_steps)
        centre = np.asarray(run.prior_centre, float)
        points = [np.clip(a + s * (b - a), run.options["lb"] * centre, run.options["ub"] * centre) for s in args.s]
    elif args.drive_of:
        start = fit if args.from_fit else truth
        Z = (load_arrays(os.path.join(args.run, f"E{len(run.em_steps) - 1}_est_param"))["Z"] if args.from_fit
             else window.Z_true)
        points = [constant_drive(start, args.drive_of - 1, s * truth[M + args.drive_of - 1], Z, window)
                  for s in args.s]
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
    print("| s | J_1 J_2 J_3 | rp_1 rp_2 rp_3 | log p_hat (mean +- s.e.) | minus the truth, same seeds |")
    print("|---|---|---|---|---|")
    for s, theta, values in zip(args.s, points, table):
        J, rp = theta[M:2 * M], theta[2 * M:3 * M]
        diff = values - at_truth
        rows.append({"s": s, "theta": theta.tolist(), "log_p_hat": values.tolist(),
                     "mean": float(values.mean()), "se": se(values),
                     "minus_truth_mean": float(diff.mean()), "minus_truth_se": se(diff)})
        print(f"| {s:g} | {' '.join(f'{x:.2f}' for x in J)} | {' '.join(f'{x:.2f}' for x in rp)} | "
              f"{values.mean():.1f} +- {se(values):.1f} | {diff.mean():+.1f} +- {se(diff):.1f} |")
    out = args.out or os.path.join(args.run, "ridge.json")
    with open(out, "w") as f:
        json.dump({"run": args.run, "scheme": run.scheme, "particles": args.particles, "repeats": args.repeats,
                   "seed": args.seed, "em_steps": args.em_steps, "drive_of": args.drive_of, "from_fit": args.from_fit,
                   "truth": truth.tolist(), "fit": fit.tolist(),
                   "truth_log_p_hat": at_truth.tolist(), "points": rows}, f, indent=1)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
