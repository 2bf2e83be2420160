"""The posterior E-step against MAP and the oracle (issue 13), on fits that exist already:

    bash 3pop_neuLVM.sh                                              # SMC runs (the default), train0..4
    bash 3pop_neuLVM.sh -- --estep map --train_folderbase map        # MAP runs, map0..4
    python bench/bench_posterior.py                                  # this table

For the best run of each E-step (MAP: lowest joint loss; SMC: highest log p_hat(y | theta)) and the
oracle (M-step on the true activity from the truth, same window and scheme): the J errors; the
distance to threshold h0 - ft at the window's mean activity against the truth's; r of the
inferred activity (SMC: the posterior mean) against the truth, 20 ms smoothing; for SMC, the coverage of
the true activity by the 90% band of the posterior at the fit, from particle Gibbs draws smoothed
20 ms (--sweeps draws); and the landscape: log p_hat(y | theta) at both end points and at the truth,
each from --repeats independent filter passes (mean and Monte Carlo standard error). The band and the
landscape are src.report's (section 1b of the SMC report, `python -m src.report`), here with --particles
for both.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.bench_train import RESULT, activity_scores, j_errors  # noqa: E402
from src.em import oracle_fit  # noqa: E402
from src.helper import run_window  # noqa: E402
from src.report import measure_posterior, posterior_samples, posterior_seeds  # noqa: E402
from src.results import load_arrays  # noqa: E402
from src.cli import NoResult  # noqa: E402
from src.runs import best_run, find_runs  # noqa: E402


def best_of(folder, estep):
    """src.runs.best_run, or (None, None) if the folder has no run of that E-step."""
    try:
        return best_run(folder, estep)
    except NoResult:
        return None, None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=RESULT, help="folder of the runs")
    p.add_argument("--particles", type=int, default=1000, help="particles of the filter passes")
    p.add_argument("--sweeps", type=int, default=20, help="particle Gibbs draws for the band")
    p.add_argument("--seed", type=int, default=2022, help="seed of the chain and the passes (src.report's)")
    p.add_argument("--repeats", type=int, default=3, help="filter passes per point of the landscape")
    p.add_argument("--no_oracle", action="store_true", help="skip the oracle M-step (about a minute)")
    args = p.parse_args()
    from src.dataset import load_recording

    runs = find_runs(args.folder)
    (map_name, map_run), (smc_name, smc_run) = best_of(args.folder, "map"), best_of(args.folder, "smc")
    if smc_run is None:
        sys.exit(f"bench_posterior: no run with --estep smc in {args.folder}")
    o = smc_run.options
    rec = load_recording(os.path.join(ROOT, o["dataset"]))             # an absolute path stays as it is
    window = run_window(rec, smc_run)
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
    points = {"truth": truth, f"SMC end point {smc_name}": np.asarray(smc_run.theta_final)}
    if map_run is not None:
        points[f"MAP end point {map_name}"] = np.asarray(map_run.theta_final)
    start = time.time()
    draws, log_p = posterior_samples(np.asarray(smc_run.theta_final), points, window, scheme, args.particles,
                                     args.sweeps, posterior_seeds(args.seed, args.repeats))
    posterior = measure_posterior(draws, window.Z_true, window.dt, log_p)
    print(f"band and landscape: {time.time() - start:.0f} s")

    def drive(theta):
        return rec.network.with_theta(theta).distance_to_threshold(window.A_true_mean)

    print("\n| fit | J errors (%) | drive h0 - ft, fitted - true (E1, E2, I) "
          "| r of the activity (E1, E2, I) |\n|---|---|---|---|")
    for name, row in rows.items():
        J = " / ".join(f"{100 * e:+.0f}" for e in j_errors(row["theta"], truth))
        d = " / ".join(f"{x:+.2f}" for x in drive(row["theta"]) - drive(truth))
        print(f"| {name} | {J} | {d} | {' / '.join(f'{x:.2f}' for x in row['r'])} |")
    print(f"\ncoverage of the true activity (20 ms) by the 90% band at the SMC fit ({args.sweeps} particle Gibbs "
          f"draws): {' / '.join(f'{100 * c:.0f}%' for c in posterior['coverage'])} (E1 / E2 / I); target 80-95% "
          "for E1 and E2")
    for name, (mean, se, n) in posterior["log_p"].items():
        print(f"log p_hat(y | theta) at {name}: {mean:.1f} +- {se:.1f} (P = {args.particles}, {n} passes)")


if __name__ == "__main__":
    main()
