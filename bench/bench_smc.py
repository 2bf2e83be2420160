"""Seconds per pass of the particle filter on the default window: compiled (src/smc_compiled.py, float32 as
the fits use it, and float64), next to the compiled free simulation of the same P batches
(src/LIFmesoCell.simulate: the same per-bin step without weights, resampling or genealogy), measured in the
same run; --numpy adds the numpy reference (src/smc.py) and the numpy free simulation (about 2 minutes each
for P = 1,000).

    python bench/bench_smc.py                      # P = 1,000 on the shipped window, one pass of each
    python bench/bench_smc.py --particles 500 --repeats 3 --numpy

The first call of each compiled function includes its compilation; it is timed apart and left out.
Times are wall-clock, with the load average printed next to them since other processes share the
cores; --out FILE also writes them, with the configuration and the software versions, as JSON.
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
    p.add_argument("--numpy", action="store_true", help="also the numpy filter and free simulation (slow)")
    p.add_argument("--out", default=OUT, help="JSON file for the figures (default: print only)")
    args = p.parse_args(argv)
    import tensorflow as tf

    from src import LIFmesoCell, fast_np, neulvm, smc

    window = neulvm.load_window(str(DATASET))
    theta, P = window.net.theta, args.particles
    print(f"window: B={window.B}, M={window.M}, T={window.T}, K={window.K}, Nobs={window.Nobs}; P={P}; "
          f"load before: {load()}", flush=True)
    A0, I_ext = np.repeat(window.A0, P, 0), np.repeat(window.I_ext, P, 0)
    runs = {
        "compiled filter, float32": lambda: smc.filter_window(theta, window, P, args.seed, SCHEME, dtype=tf.float32),
        "compiled filter, float64": lambda: smc.filter_window(theta, window, P, args.seed, SCHEME),
        "compiled free simulation": lambda: LIFmesoCell.simulate(window.net, window.dt, window.K, window.T, A0,
                                                                 np.random.default_rng(args.seed), I_ext,
                                                                 window.Nobs, scheme=SCHEME)}
    if args.numpy:
        runs["numpy filter"] = lambda: smc.filter_window(theta, window, P, args.seed, SCHEME, compiled=False)
        runs["numpy free simulation"] = lambda: fast_np.simulate(window.net, window.dt, window.K, window.T, A0,
                                                                 np.random.default_rng(args.seed), I_ext,
                                                                 window.Nobs, scheme=SCHEME)
    figures = {}
    for name, f in runs.items():
        if name.startswith("compiled"):
            first, _, _ = timed(f, 1)
            print(f"{name}: first call (with compilation) {first:.1f} s", flush=True)
        median, walls, out = timed(f, args.repeats)
        figures[name] = walls
        extra = f"  (log p_hat = {out.log_p_hat:.1f}, resampled in {out.resampled.mean():.0%} of bins)" \
            if isinstance(out, smc.FilterResult) else ""
        print(f"{name}: {median:.1f} s per pass{extra}   (load {load()})", flush=True)
    base = np.median(figures["compiled free simulation"])
    for name, walls in figures.items():
        print(f"ratio {name} / compiled free simulation: {np.median(walls) / base:.2f}")
    if args.out is not None:
        write_record(args.out, {"particles": P, "T": window.T, "K": window.K, "B": window.B, "scheme": SCHEME,
                                "seed": args.seed, "seconds": figures, "load_after": load()})


if __name__ == "__main__":
    main()
