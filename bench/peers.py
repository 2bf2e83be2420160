"""Our simulators against NEST and Brian2 on long runs of the winner-take-all network (issue 7).

    python bench/peers.py                                   # 1,000 s in each: ours micro and meso, NEST micro and meso
    python bench/peers.py --brian2_python /tmp/brian2-env/bin/python   # and Brian2, under that interpreter
    python bench/peers.py --duration 40 --only ours_meso nest_meso     # a quick look
    python bench/peers.py --duration 300 --seed 11 --only ours_micro_nestJ   # ours with NEST's per-spike effect
    python bench/peers.py --only ours_meso nest_meso --meso_dt 0.0005  # both mesoscopic models at one step

Needs `pip install -r requirements-peers.txt` (NEST). Brian2 runs in this process when it imports
here, otherwise under --brian2_python (an environment with numpy < 2.4 and brian2 2.9, see README),
otherwise it is left out with the reason printed. Every simulator runs alone, one after the other,
on one thread (NEST: one thread; TensorFlow: one thread), so wall times compare.

Prints, per simulator: wall time of the run (build and compile excluded and printed apart), its
CPU time (the fairer figure when other processes share the cores), wall time per 20 s simulated, rates while dominant (winner, loser, I) in Hz, switches per second with
its standard error, and the mean and CV of the complete dominance durations; then the ratios the
issue sets targets for. Writes the same figures, the configuration and the versions to --out (JSON).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from src import __version__, neulvm, peers  # noqa: E402
from src.cli import software_versions  # noqa: E402
from src.microsim import MICRO_DT, simulate, use_one_tf_thread  # noqa: E402
from src.network import winner_take_all  # noqa: E402

DURATION = 1000.0  # s simulated by each simulator
SEED = 1           # seed of every simulator (each uses it in its own random number generator)
SKIP = 1.0         # s discarded at the start before the statistics (NEST starts from its own state)
SIMULATORS = ("ours_micro", "ours_meso", "nest_micro", "nest_meso", "brian2")
DIAGNOSTICS = ("ours_micro_nestJ",)  # ours with J times peers.nest_coupling_factor (NEST's per-spike effect)
TARGETS = {"speed micro (NEST / ours)": 3.0, "speed meso (NEST / ours)": 10.0}  # at least
SWITCH_TOLERANCE = 0.25  # switching rates of ours and NEST (micro; meso) within 25%


def run_ours_micro(net, duration, seed):
    use_one_tf_thread()
    start = time.perf_counter()
    simulate(net, int(round(0.2 / MICRO_DT)), np.random.default_rng(seed), n_recorded=0)  # compiles the XLA loop
    compiled, cpu = time.perf_counter(), time.process_time()
    counts = simulate(net, int(round(duration / MICRO_DT)), np.random.default_rng(seed), n_recorded=0).pop_spike_counts
    return (counts, MICRO_DT, compiled - start, time.perf_counter() - compiled, time.process_time() - cpu,
            "src " + __version__)


def run_ours_meso(net, duration, seed, dt=neulvm.DT):
    start, cpu = time.perf_counter(), time.process_time()
    sim = neulvm.simulate(net, duration, seed, dt=dt, Nobs=0)
    return (sim["Z"] * net.N[:, None], sim["dt"], 0.0, time.perf_counter() - start, time.process_time() - cpu,
            "src " + __version__)


def run_brian2(net, duration, seed, brian2_python):
    try:
        import brian2  # noqa: F401
    except Exception as error:  # Brian2 2.9 fails on import with numpy >= 2.4 (AttributeError)
        if brian2_python is None:
            raise RuntimeError(f"Brian2 does not import here ({type(error).__name__}: {error}); give --brian2_python")
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "brian2.npz")
            subprocess.run([brian2_python, "-m", "src.peers", "--simulator", "brian2", "--brian2_target",
                            "cpp_standalone", "--duration", str(duration), "--seed", str(seed), "--out", out],
                           check=True, cwd=Path(__file__).resolve().parents[1])
            peer = peers.load_run(out)
    else:
        peer = peers.brian2_micro(net, duration, seed, target="cpp_standalone")
    return peer.pop_spike_counts, peer.h, peer.wall_build, peer.wall_run, peer.cpu_run, "brian2 " + peer.version


def run_nest(name, net, duration, seed, h=MICRO_DT):
    peer = peers.run(name, net, duration, seed, h=h)
    return peer.pop_spike_counts, peer.h, peer.wall_build, peer.wall_run, peer.cpu_run, "nest " + peer.version


def ratio(a, b):
    """a / b, nan when b is 0 (no switch in a run)."""
    return a / b if b != 0 else float("nan")


def switch_rate_se(summary):
    """SE of switches per second: n switches of a renewal process with dwell CV c have variance
    about c^2 n (Cox & Lewis), so SE = c sqrt(n) / T."""
    n = summary["switches_per_s"] * summary["duration_s"]
    cv = summary["dwell_cv"] if np.isfinite(summary["dwell_cv"]) else 1.0
    return cv * np.sqrt(n) / summary["duration_s"]


def write_record(out, record):
    """Write a bench's figures and configuration, with the software versions, to the JSON file out."""
    record = {**record, "versions": software_versions()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=DURATION, help=f"s simulated by each (default {DURATION:g})")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED})")
    p.add_argument("--only", nargs="+", choices=SIMULATORS + DIAGNOSTICS, default=list(SIMULATORS),
                   help="simulators to run (default all but the diagnostic ours_micro_nestJ)")
    p.add_argument("--meso_dt", type=float, default=None,
                   help="one step (s) for both mesoscopic models (default: ours at the model's 4 ms, NEST at 0.2 ms); "
                        "their statistics depend on the step, so this is the like-for-like comparison")
    p.add_argument("--brian2_python", default=None, help="interpreter with Brian2, when it does not import here")
    p.add_argument("--out", default="result/peers_bench.json", help="JSON file of the figures (default result/peers_bench.json)")
    args = p.parse_args(argv)
    use_one_tf_thread()  # before anything starts TensorFlow (src.neulvm may use it too)
    net = winner_take_all()
    results = {}
    for name in args.only:
        print(f"running {name} for {args.duration:g} s ...", flush=True)
        try:
            if name == "ours_micro":
                counts, h, build, wall, cpu, version = run_ours_micro(net, args.duration, args.seed)
            elif name == "ours_micro_nestJ":
                nestJ = replace(net, J=net.J * peers.nest_coupling_factor(net))
                counts, h, build, wall, cpu, version = run_ours_micro(nestJ, args.duration, args.seed)
            elif name == "ours_meso":
                counts, h, build, wall, cpu, version = run_ours_meso(net, args.duration, args.seed,
                                                                     args.meso_dt or neulvm.DT)
            elif name == "brian2":
                counts, h, build, wall, cpu, version = run_brian2(net, args.duration, args.seed, args.brian2_python)
            else:
                step = args.meso_dt if name == "nest_meso" and args.meso_dt else MICRO_DT
                counts, h, build, wall, cpu, version = run_nest(name, net, args.duration, args.seed, step)
        except (ImportError, RuntimeError, subprocess.CalledProcessError) as error:
            print(f"  {name} left out: {error}")
            continue
        summary = peers.wta_summary(counts, net.N, h, skip=SKIP)
        summary.update(wall_build_s=build, wall_run_s=wall, wall_per_20s=wall * 20.0 / args.duration, cpu_run_s=cpu,
                       version=version, step_s=h, switches_se=switch_rate_se(summary))
        results[name] = {k: float(v) if isinstance(v, (float, np.floating, int, np.integer)) else v
                         for k, v in summary.items()}
        print(f"  done: {wall:.1f} s wall, {cpu:.1f} s CPU (+ {build:.1f} s build)", flush=True)

    print(f"\n{args.duration:g} s of the winner-take-all network per simulator, seed {args.seed}, statistics after {SKIP:g} s")
    header = (f"{'simulator':<11} {'version':<13} {'step ms':>7} {'wall s':>8} {'cpu s':>7} {'build s':>7} {'s/20s':>6} {'winner':>7} "
              f"{'loser':>6} {'I':>6} {'switch/s':>12} {'dwell s':>7} {'CV':>5} {'n':>4}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<11} {r['version']:<13} {r['step_s'] * 1000:>7.1f} {r['wall_run_s']:>8.1f} {r['cpu_run_s']:>7.1f} {r['wall_build_s']:>7.1f} "
              f"{r['wall_per_20s']:>6.2f} {r['winner_hz']:>7.2f} {r['loser_hz']:>6.2f} {r['inhibitory_hz']:>6.2f} "
              f"{r['switches_per_s']:>6.3f}±{r['switches_se']:.3f} {r['dwell_mean_s']:>7.2f} {r['dwell_cv']:>5.2f} "
              f"{int(r['n_dwell']):>4}")

    ratios = {}
    pairs = [("micro", "ours_micro", "nest_micro"), ("meso", "ours_meso", "nest_meso"), ("brian2", "ours_micro", "brian2")]
    for label, ours, peer in pairs:
        if ours not in results or peer not in results:
            continue
        a, b = results[ours], results[peer]
        if label != "brian2":
            ratios[f"speed {label} (NEST / ours)"] = ratio(b["wall_run_s"], a["wall_run_s"])
            ratios[f"CPU time {label} (NEST / ours)"] = ratio(b["cpu_run_s"], a["cpu_run_s"])
        ratios[f"switches {label} ({ours} / {peer})"] = ratio(a["switches_per_s"], b["switches_per_s"])
        for key in ("winner_hz", "loser_hz", "inhibitory_hz", "dwell_mean_s", "dwell_cv"):
            ratios[f"{key} {label} ({ours} / {peer})"] = ratio(a[key], b[key])
    print("\nratios" + " " * 46 + "value  target")
    for key, value in ratios.items():
        if not np.isfinite(value):
            verdict = "not measurable (no switch or no dwell)" if key.startswith(("switches", "dwell")) else ""
        elif key in TARGETS:
            verdict = f">= {TARGETS[key]:g}: {'met' if value >= TARGETS[key] else 'NOT met'}"
        elif key.startswith("switches") and "brian2" not in key:
            verdict = f"within {SWITCH_TOLERANCE:.0%}: {'met' if abs(value - 1) <= SWITCH_TOLERANCE else 'NOT met'}"
        else:
            verdict = ""
        print(f"  {key:<50} {value:>6.3f}  {verdict}")

    write_record(args.out, {"config": {"duration_s": args.duration, "seed": args.seed, "skip_s": SKIP,
                                       "meso_dt": args.meso_dt, "network": {
                                           k: np.asarray(v).tolist() for k, v in net.to_dict().items()}},
                            "results": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
