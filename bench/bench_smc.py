"""Seconds per pass of the bootstrap particle filter (src/smc.py) on the default window, next to the numpy
free simulation of the same P batches (src/fast_np.simulate), measured in the same run.

    python bench/bench_smc.py                      # P = 1,000 on the shipped window, one pass of each
    python bench/bench_smc.py --particles 200 --repeats 3

The free simulation runs the same per-bin step (fast_np.BinStep) on P rows with no weights, so the
ratio is the cost of weighting, resampling and keeping the genealogy. Times are wall-clock, with the
load average printed next to them since other processes share the cores; --out FILE also writes them,
with the configuration and the software versions, as JSON.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.bench_likelihood import load  # noqa: E402
from bench.peers import write_record  # noqa: E402

# defaults
DATASET = ROOT / "dataset" / "3pop_noinput_small.npz"   # shipped 11 s recording: the default window
PARTICLES = 1000        # particles per pass
REPEATS = 1             # timed passes of each (median reported)
SEED = 0                # seed of the filter and of the free simulation
SCHEME = "exact"        # integrator of model.md section 3.2
OUT = None              # JSON record of the figures (none by default: the figures are printed)


def timed(f, repeats):
    """(median wall seconds, list of wall seconds, last result) of `repeats` calls."""
    walls, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = f()
        walls.append(time.perf_counter() - start)
    return float(np.median(walls)), walls, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--particles", type=int, default=PARTICLES, help=f"P (default {PARTICLES})")
    p.add_argument("--repeats", type=int, default=REPEATS, help=f"timed passes of each (default {REPEATS})")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED})")
    p.add_argument("--out", default=OUT, help="JSON file for the figures (default: print only)")
    args = p.parse_args(argv)
    from src import fast_np, neulvm, smc

    window = neulvm.load_window(str(DATASET))
    theta, P = window.net.theta, args.particles
    print(f"window: B={window.B}, M={window.M}, T={window.T}, K={window.K}, Nobs={window.Nobs}; P={P}; "
          f"load before: {load()}", flush=True)
    t_smc, walls_smc, result = timed(lambda: smc.filter_window(theta, window, P, args.seed, SCHEME),
                                     args.repeats)
    print(f"particle filter: {t_smc:.1f} s per pass  (log p_hat = {result.log_p_hat:.1f}, "
          f"resampled in {result.resampled.mean():.0%} of bins, min ESS {result.ess.min():.0f})", flush=True)
    A0 = np.repeat(window.A0, P, 0)
    I_ext = np.repeat(window.I_ext, P, 0)
    t_sim, walls_sim, _ = timed(lambda: fast_np.simulate(window.net, window.dt, window.K, window.T, A0,
                                                         np.random.default_rng(args.seed), I_ext, window.Nobs,
                                                         scheme=SCHEME), args.repeats)
    print(f"numpy free simulation of the same {P} batches: {t_sim:.1f} s", flush=True)
    print(f"ratio filter / free simulation: {t_smc / t_sim:.2f}   (load after: {load()})")
    if args.out is None:
        return
    write_record(args.out, {"particles": P, "T": window.T, "K": window.K, "B": window.B, "scheme": SCHEME,
                            "seed": args.seed, "smc_seconds": walls_smc, "free_simulation_seconds": walls_sim,
                            "ratio": t_smc / t_sim, "log_p_hat": result.log_p_hat, "load_after": load()})


if __name__ == "__main__":
    main()
