"""The posterior E-step against MAP and the oracle (issue 13), on fits that exist already:

    bash 3pop_neuLVM.sh                                              # MAP runs, train0..4
    bash 3pop_neuLVM.sh -- --estep smc --train_folderbase smc        # SMC runs, smc0..4
    python bench/bench_posterior.py                                  # this table

For the best run of each E-step (MAP: lowest joint loss; SMC: highest log p_hat(y | theta)) and the
oracle (M-step on the true activity from the truth, same window and scheme): the J errors; r of the
inferred activity (SMC: the posterior mean) against the truth, 20 ms smoothing; for SMC, the coverage of
the true activity by the 90% band of the posterior at the fit, from particle Gibbs draws smoothed
20 ms (--sweeps draws); and the landscape: log p_hat(y | theta) at both end points and at the truth,
each from --repeats independent filter passes (mean and Monte Carlo standard error).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.bench_train import RESULT, SMOOTH, activity_scores, j_errors, oracle_fit  # noqa: E402
from src.helper import make_window, smooth  # noqa: E402
from src.results import load_arrays  # noqa: E402
from src.runs import find_runs  # noqa: E402


def best_of(runs, estep):
    chosen = {n: r for n, r in runs.items() if r.options.get("estep", "map") == estep}
    return min(chosen.items(), key=lambda item: item[1].final_loss) if chosen else (None, None)


def band_coverage(theta, window, particles, sweeps, seed, scheme):
    """Fraction of bins where the true activity (smoothed 20 ms) lies inside the 5-95% band of `sweeps`
    particle Gibbs draws at theta (each smoothed 20 ms), per population; and the draws' mean."""
    import tensorflow as tf

    from src import smc
    draws, _ = smc.gibbs_chain(theta, window, particles, sweeps, seed, scheme, burn_in=2, dtype=tf.float32)
    smoothed = smooth(draws[:, 0], SMOOTH, window.dt)                          # (S, M, T)
    lo, hi = np.quantile(smoothed, [0.05, 0.95], axis=0)
    true = smooth(window.Z_true[0], SMOOTH, window.dt)
    return ((true >= lo) & (true <= hi)).mean(-1), draws.mean(0)


def landscape(points, window, particles, repeats, scheme):
    """{name: (mean, standard error) of log p_hat(y | theta)} over `repeats` seeds (float32 filter)."""
    import tensorflow as tf

    from src import smc
    out = {}
    for name, theta in points.items():
        values = [smc.log_likelihood(theta, window, particles, seed, scheme, dtype=tf.float32)
                  for seed in range(repeats)]
        out[name] = (float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(repeats)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=RESULT, help="folder of the runs")
    p.add_argument("--particles", type=int, default=1000, help="particles of the filter passes")
    p.add_argument("--sweeps", type=int, default=20, help="particle Gibbs draws for the band")
    p.add_argument("--repeats", type=int, default=3, help="filter passes per point of the landscape")
    p.add_argument("--no_oracle", action="store_true", help="skip the oracle M-step (about a minute)")
    args = p.parse_args()
    from src.dataset import load_recording

    runs = find_runs(args.folder)
    (map_name, map_run), (smc_name, smc_run) = best_of(runs, "map"), best_of(runs, "smc")
    if smc_run is None:
        sys.exit(f"bench_posterior: no run with --estep smc in {args.folder}")
    o = smc_run.options
    rec = load_recording(os.path.join(ROOT, o["dataset"]))             # an absolute path stays as it is
    window = make_window(rec, o["dt"], o["trial_length"], o["t_perbatch"], o["end_timepoint"], o["a_cutoff"],
                         o["Nsampled"], with_input=bool(o["with_input"]))
    truth, scheme = rec.network.theta, smc_run.scheme
    rows = {}
    for name, run in ((map_name, map_run), (smc_name, smc_run)):
        if run is None:
            continue
        Z = load_arrays(os.path.join(args.folder, name, f"E{run.last_em_step}_est_param"))["Z"]
        rows[f"{run.options.get('estep', 'map').upper()} ({name}, {len(runs)} runs in folder)"] = {
            "theta": np.asarray(run.theta_final), "r": activity_scores(window, Z)[0]}
    if not args.no_oracle:
        theta_oracle, _ = oracle_fit(window)
        rows["oracle (true activity)"] = {"theta": theta_oracle, "r": np.full(window.M, np.nan)}
    start = time.time()
    coverage, draws_mean = band_coverage(np.asarray(smc_run.theta_final), window, 500, args.sweeps, 1, scheme)
    print(f"band: {args.sweeps} particle Gibbs draws at the SMC fit, {time.time() - start:.0f} s")
    print("\n| fit | J errors (%) | r of the activity (E1, E2, I) |\n|---|---|---|")
    for name, row in rows.items():
        J = " / ".join(f"{100 * e:+.0f}" for e in j_errors(row["theta"], truth))
        print(f"| {name} | {J} | {' / '.join(f'{x:.2f}' for x in row['r'])} |")
    print(f"\ncoverage of the true activity (20 ms) by the 90% band at the SMC fit: "
          f"{' / '.join(f'{100 * c:.0f}%' for c in coverage)} (E1 / E2 / I); target 80-95% for E1 and E2")
    points = {"truth": truth, f"SMC end point {smc_name}": np.asarray(smc_run.theta_final)}
    if map_run is not None:
        points[f"MAP end point {map_name}"] = np.asarray(map_run.theta_final)
    start = time.time()
    for name, (mean, se) in landscape(points, window, args.particles, args.repeats, scheme).items():
        print(f"log p_hat(y | theta) at {name}: {mean:.1f} +- {se:.1f} (P = {args.particles}, {args.repeats} seeds)")
    print(f"landscape: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
