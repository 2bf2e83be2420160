"""Speed and memory of the neuLVM likelihood and of the free simulation, each next to the sequential
numpy loop (src/fast_np.py) measured in the same run.

    python bench/bench_likelihood.py --threads 1           # everything (~5 min on 2 cores); the fast setting
    python bench/bench_likelihood.py                       # TensorFlow's default threads
    python bench/bench_likelihood.py --long /tmp/rec100.npz   # reuse the 102 s recording
    python bench/bench_likelihood.py --threads 1 --only bins  # the schemes at 4 ms, and 2 and 1 ms bins

The long recording (102 s, for the 10/30/100 s windows) is made with the microscopic simulator if
the file is missing: `python -m src.microsim --out /tmp/rec100.npz --duration 102 --seed 3`.
Times are wall-clock medians (and minima, the cost of the code when nobody else runs) after one
compiling call; the load average is printed with them, since other processes share the cores.
Peak memory (ru_maxrss) is measured in a fresh subprocess per configuration, next to the same
process's baseline (imports and data only).
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import src  # noqa: E402,F401  (sets TensorFlow's environment, as every entry point does, before it is imported)

# defaults
DATASET = ROOT / "dataset" / "3pop_noinput_small.npz"   # shipped 11 s recording: the default window
LONG = "/tmp/rec100.npz"        # 102 s recording for the 10, 30 and 100 s windows
LONG_SEED = 3                   # seed of the microscopic simulation that makes it
REPEATS = 21                    # timed calls per figure on the default window (median reported)
REPEATS_LONG = 5                # timed calls per window in the time-vs-T series
NUMPY_REPEATS = 3               # calls of the sequential numpy loop per figure
T_SERIES = (10.0, 30.0, 100.0)  # window lengths (s) of the time-vs-T series
SIM_SECONDS = 100.0             # length of the free simulation (s)
SIM_SEED = 1
SCHEME = "exact"                # the default integrator; the "bins" section compares it with euler
BINS = (0.004, 0.002, 0.001)    # s, the bins of the "bins" section (age cutoff 1 s at each)


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow intra-op threads (0: TensorFlow's default; 1 is fastest, see src/LIFmesoCell.py)")
    p.add_argument("--long", default=LONG, help=f"102 s recording (made if missing; default {LONG})")
    p.add_argument("--only", choices=("bins",), help="bins: only the schemes at 4 ms and the 2 and 1 ms bins")
    p.add_argument("--child", nargs=3, metavar=("WHAT", "SECONDS", "DT"), help=argparse.SUPPRESS)
    return p.parse_args()


def load():
    return os.popen("uptime").read().strip().split("load average:")[-1].strip()


def timed(f, repeats):
    """Wall seconds of `repeats` calls after one warm-up call: (median, min, first call, median CPU
    seconds of this process per call, all threads; CPU < wall: waiting for the cores, CPU > wall:
    both cores used)."""
    start = time.perf_counter()
    f()
    first = time.perf_counter() - start
    walls, cpus = ([first], [np.nan]) if repeats == 0 else ([], [])
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        f()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(min(walls)), first, float(np.median(cpus))


def paired_ratio(f, g, repeats):
    """Median over `repeats` pairs of wall(f) / wall(g), f and g called back to back in alternating
    order after a warm-up call of each: the ratio of two codes under the same load."""
    f(), g()
    ratios = []
    for r in range(repeats):
        walls = {}
        for name, h in ((("f", f), ("g", g)) if r % 2 == 0 else (("g", g), ("f", f))):
            start = time.perf_counter()
            h()
            walls[name] = time.perf_counter() - start
        ratios.append(walls["f"] / walls["g"])
    return float(np.median(ratios))


def window_of(path, seconds, dt=0.004, a_cutoff=1.0):
    from src import neulvm
    if seconds is None:
        return neulvm.load_window(str(path), dt=dt, a_cutoff=a_cutoff)
    return neulvm.load_window(str(path), trial_length=seconds, t_perbatch=seconds, end_timepoint=1.0 + seconds,
                              dt=dt, a_cutoff=a_cutoff)


def configure_threads(n):
    """n intra-op threads (the inter-op threads, which run the time chunks concurrently, keep their default)."""
    if n:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(n)


def child(what, seconds, dt, args):
    """One configuration in a fresh process: print the peak resident memory (MiB) once the data and
    the model are loaded (the baseline), and after one evaluation (including XLA's compilation); or,
    for what = "time_theta", the median wall time (ms) of loss + gradient wrt theta (the process's
    environment, e.g. TF_ENABLE_ONEDNN_OPTS, is the point). seconds 0: the default window."""
    from src import fast_np
    window = window_of(DATASET, None, dt) if seconds == 0 else window_of(args.long, seconds, dt)
    Z = np.clip(window.Z_true, 1e-5, 1)
    if what == "time_theta":
        configure_threads(args.threads)
        from src.LIFmesoCell import MesoModel
        model = MesoModel(window, window.net.theta, Z, SCHEME)
        print(f"{timed(lambda: model.value_and_grad('theta')[2].numpy(), REPEATS)[0] * 1e3:.1f}")
        return
    if what == "numpy":
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024    # MiB (Linux reports KiB)
        fast_np.losses(window.net, window, Z, SCHEME)
    else:
        configure_threads(args.threads)
        from src.LIFmesoCell import MesoModel
        model = MesoModel(window, window.net.theta, Z, SCHEME)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        model.value_and_grad(what)[2].numpy()
    print(f"{base:.0f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def child_figures(what, seconds, args, dt=0.004, env=None):
    """What child(what, ...) prints, run in a fresh process: (baseline, peak) MiB, or for "time_theta"
    the median in ms."""
    cmd = [sys.executable, __file__, "--child", what, str(seconds), str(dt), "--long", args.long,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.split()
    return float(out[-1]) if what == "time_theta" else (float(out[-2]), float(out[-1]))


def make_long(args):
    if not os.path.exists(args.long):
        print(f"\nmaking {args.long} with the microscopic simulator (102 s, seed {LONG_SEED}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "src.microsim", "--out", args.long, "--duration", "102",
                        "--seed", str(LONG_SEED)], cwd=ROOT, check=True, capture_output=True)


def main():
    args = parse()
    if args.child:
        what, seconds, dt = args.child
        return child(what, float(seconds), float(dt), args)
    print(f"{os.cpu_count()} cores, intra-op threads {args.threads or 'default'}; load average at start: {load()}")
    if args.only == "bins":
        return bins(args)
    make_long(args)
    # first, while this process is small: a child's ru_maxrss starts at its parent's peak (Linux keeps
    # the larger of the two across fork and exec)
    print(f"peak resident memory (ru_maxrss) on the {T_SERIES[-1]:g} s window, each in a fresh process "
          f"(baseline = imports and data):")
    peaks = {what: child_figures(what, T_SERIES[-1], args) for what in ("numpy", "Z", "theta")}
    for what, (base, peak) in peaks.items():
        label = "numpy loop, loss" if what == "numpy" else f"TF loss + gradient wrt {what}"
        print(f"  {label:28s}: peak {peak:7.0f} MiB (baseline {base:.0f} MiB, +{peak - base:.0f})  "
              f"{peak / peaks['numpy'][1]:.2f}x the numpy loop's peak   load {load()}")

    configure_threads(args.threads)
    import tensorflow as tf
    from src import fast_np, neulvm
    from src.LIFmesoCell import MesoModel
    print(f"\nTensorFlow {tf.__version__}, numpy {np.__version__}")

    # -- the default window: loss + gradient, against the numpy loop ---------------------------
    window = window_of(DATASET, None)
    Z, theta = np.clip(window.Z_true, 1e-5, 1), window.net.theta
    n_grad_Z = 2 * window.B * window.M * window.T + 1      # evaluations of a central-difference gradient in Z
    n_grad_theta = theta.size + 1                           # forward differences, as the original M-step
    print(f"\ndefault window: B={window.B}, M={window.M}, T={window.T} bins, K={window.K} ages, "
          f"{window.M * window.Nobs} observed neurons")
    np_med, np_min, _, _ = timed(lambda: fast_np.losses(window.net, window, Z, SCHEME), NUMPY_REPEATS)
    print(f"  numpy loop (src/fast_np.losses), loss only:   median {np_med * 1e3:7.1f} ms  (min {np_min * 1e3:.1f})"
          f"   load {load()}")
    model = MesoModel(window, theta, Z, SCHEME)
    for wrt, n_eval in (("Z", n_grad_Z), ("theta", n_grad_theta)):
        med, fastest, first, cpu = timed(lambda: model.value_and_grad(wrt)[2].numpy(), REPEATS)
        print(f"  TF loss + gradient wrt {wrt:5s}:               median {med * 1e3:7.1f} ms  (min {fastest * 1e3:.1f}, "
              f"CPU {cpu * 1e3:.1f}; first call with compilation {first:.1f} s)   load {load()}")
        print(f"      vs one numpy loss: {np_med / med:6.1f}x;  vs a finite-difference gradient with the numpy loop "
              f"({n_eval} losses, {n_eval * np_med:.4g} s): {n_eval * np_med / med:.3g}x")
    med, fastest, _, cpu = timed(model.losses, REPEATS)
    print(f"  TF loss only:                              median {med * 1e3:7.1f} ms  (min {fastest * 1e3:.1f}, "
          f"CPU {cpu * 1e3:.1f})  {np_med / med:.1f}x the numpy loop")

    # -- free simulation of 100 s ----------------------------------------------------------------
    net = window.net
    sim_med, sim_min, sim_first, _ = timed(lambda: neulvm.simulate(net, SIM_SECONDS, seed=SIM_SEED), 3)
    T_sim, K_sim = int(round(SIM_SECONDS / neulvm.DT)), int(round(neulvm.A_CUTOFF / neulvm.DT))
    start = time.perf_counter()
    fast_np.simulate(net, neulvm.DT, K_sim, T_sim, net.init_rates[None], np.random.default_rng(SIM_SEED), Nobs=3,
                     scheme=SCHEME)
    np_sim = time.perf_counter() - start
    print(f"\nfree simulation of {SIM_SECONDS:g} s ({T_sim} bins, 3 observed neurons per population):")
    print(f"  TF (src/neulvm.simulate): median {sim_med:.2f} s (min {sim_min:.2f}; first call with compilation "
          f"{sim_first:.2f} s);  numpy loop (src/fast_np.simulate) {np_sim:.2f} s: {np_sim / sim_med:.1f}x   load {load()}")

    # -- longer windows: time vs T ---------------------------------------------------------------
    print(f"\ntime vs window length ({args.long}, loss + gradient wrt Z; numpy: one loss):")
    per_second = []
    for seconds in T_SERIES:
        w = window_of(args.long, seconds)
        Zw = np.clip(w.Z_true, 1e-5, 1)
        m = MesoModel(w, w.net.theta, Zw, SCHEME)
        med, fastest, _, cpu = timed(lambda: m.value_and_grad("Z")[2].numpy(), REPEATS_LONG)
        np_t = timed(lambda: fast_np.losses(w.net, w, Zw, SCHEME), 0)[0]
        per_second.append(med / seconds)
        print(f"  {seconds:5.0f} s (T={w.T:6d}): TF median {med * 1e3:7.1f} ms (min {fastest * 1e3:.1f}, CPU {cpu * 1e3:.0f}) = "
              f"{med / seconds * 1e3:5.2f} ms per s of window;  numpy loss {np_t:.2f} s: {np_t / med:.1f}x   load {load()}")
    print(f"  ms per s of window, 100 s / 10 s: {per_second[-1] / per_second[0]:.2f} (1 = linear in T)")

    print(f"\nload average at the end: {load()}")


def bins(args):
    """Both schemes at 4 ms on the default window (same run, then alternating call by call), then
    the exact scheme at 2 and 1 ms (the same 10 s of data, 1 s age cutoff: 4 and 16 times the
    grid), speed and peak memory; the 100 s window's peak at 4 ms; the loss at the true parameters
    with a 0.5 s age cutoff; the speed with TensorFlow's oneDNN operations on (src/__init__ turns
    them off)."""
    make_long(args)
    print("peak resident memory of loss + gradient wrt theta, each in a fresh process:")
    for seconds, dt in [(0, dt) for dt in BINS] + [(T_SERIES[-1], 0.004)]:
        base, peak = child_figures("theta", seconds, args, dt)
        label = "default window" if seconds == 0 else f"{seconds:g} s window"
        print(f"  {label}, dt = {dt * 1e3:g} ms: peak {peak:6.0f} MiB (baseline {base:.0f} MiB, +{peak - base:.0f})"
              f"   load {load()}")
    print(f"loss + gradient wrt theta, default window, 4 ms, {SCHEME}, median of {REPEATS} in a fresh process:")
    onednn = {flag: child_figures("time_theta", 0, args, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag})
              for flag in ("0", "1")}
    print(f"  oneDNN off (the default) {onednn['0']:.1f} ms, on {onednn['1']:.1f} ms: on / off = "
          f"{onednn['1'] / onednn['0']:.2f}   load {load()}")
    configure_threads(args.threads)
    from src.LIFmesoCell import MesoModel
    print("loss_y + loss_Z at the true parameters and the true activity, default window, by age cutoff:")
    for dt in (0.004, 0.001):
        loss = {}
        for a_cutoff in (1.0, 0.5):
            window = window_of(DATASET, None, dt, a_cutoff)
            loss[a_cutoff] = sum(MesoModel(window, window.net.theta, np.clip(window.Z_true, 1e-5, 1), SCHEME).losses())
        print(f"  dt = {dt * 1e3:g} ms: 1 s {loss[1.0]:.6f}, 0.5 s {loss[0.5]:.6f} (difference {loss[0.5] - loss[1.0]:+.2e}, "
              f"relative {(loss[0.5] - loss[1.0]) / abs(loss[1.0]):+.1e})")
    medians, models = {}, {}
    for dt, scheme in [(0.004, "euler"), (0.004, "exact"), (0.002, "exact"), (0.001, "exact")]:
        window = window_of(DATASET, None, dt)
        Z = np.clip(window.Z_true, 1e-5, 1)
        model = models[dt, scheme] = MesoModel(window, window.net.theta, Z, scheme)
        for wrt in ("Z", "theta"):
            repeats = REPEATS if dt == 0.004 else REPEATS_LONG
            med, fastest, first, _ = timed(lambda: model.value_and_grad(wrt)[2].numpy(), repeats)
            medians[dt, scheme, wrt] = med
            ratio = (f"{med / medians[0.004, 'euler', wrt]:.2f}x euler at 4 ms" if dt == 0.004 else
                     f"{med / medians[0.004, 'exact', wrt]:.2f}x exact at 4 ms")
            print(f"  dt = {dt * 1e3:g} ms (T={window.T}, K={window.K}) {scheme:5s} loss + gradient wrt {wrt:5s}: "
                  f"median {med * 1e3:7.1f} ms (min {fastest * 1e3:.1f}; first call {first:.1f} s)  {ratio}   "
                  f"load {load()}")
        if (dt, scheme) == (0.004, "exact"):      # the two schemes again, alternating call by call
            for wrt in ("Z", "theta"):
                ratio = paired_ratio(lambda: models[0.004, "exact"].value_and_grad(wrt)[2].numpy(),
                                     lambda: models[0.004, "euler"].value_and_grad(wrt)[2].numpy(), REPEATS)
                print(f"  dt = 4 ms exact / euler wrt {wrt:5s}, alternating calls: median of {REPEATS} paired "
                      f"ratios {ratio:.3f}   load {load()}")
        if (dt, scheme) == (0.002, "exact"):      # the 2 ms target is a ratio to 4 ms: measured the same way
            for wrt in ("Z", "theta"):
                ratio = paired_ratio(lambda: models[0.002, "exact"].value_and_grad(wrt)[2].numpy(),
                                     lambda: models[0.004, "exact"].value_and_grad(wrt)[2].numpy(), REPEATS)
                print(f"  dt = 2 ms / 4 ms (exact) wrt {wrt:5s}, alternating calls: median of {REPEATS} paired "
                      f"ratios {ratio:.2f} (the grid is 4x)   load {load()}")


if __name__ == "__main__":
    main()
