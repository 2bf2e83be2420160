"""The physics table of README "The bins" (issue 11): how close each integrator of the mesoscopic
model, at each bin, comes to the microscopic network it describes.

    python bench/physics.py                                   # the whole table (about 6 minutes)
    python bench/physics.py --wta_duration 200 --only exact_4ms micro   # a quick look

Rows: our mesoscopic model (model.md section 5, free simulation with the true parameters) with the
`euler` and `exact` integrators at 4, 2 and 1 ms; NEST's `gif_pop_psc_exp` at 4 and 1 ms (needs
`pip install -r requirements-peers.txt`, left out with the reason otherwise); the microscopic
network (src/microsim, 0.2 ms), the reference row.
Columns:
  - one uncoupled population of 1,000 neurons at the loser's (rp = 6.0, 6.7 Hz) and the winner's
    (rp = 8.4, 19 Hz) drive: its mean rate over --single_duration s after the first second, and
    its error against the microscopic row;
  - the winner-take-all network with the true parameters, --wta_duration s after the first second:
    rates while dominant (winner, loser, I; Hz), switches per s with its standard error, mean
    dominance duration and its CV (src.peers.wta_summary).
Every row uses --seed. Writes the figures, the configuration and the versions to --out (JSON).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.peers import switch_rate_se, write_record  # noqa: E402
from src import neulvm, peers  # noqa: E402
from src.microsim import MICRO_DT, simulate, use_one_tf_thread  # noqa: E402
from src.network import Network, winner_take_all  # noqa: E402

SKIP = 1.0                     # s discarded at the start of every run (NEST starts from its own state)
SINGLE_DRIVES = {"6.7 Hz": (6.0, 6.7), "19 Hz": (8.4, 19.0)}   # label: (rp, starting rate in Hz)
ROWS = {"micro": ("micro", None, MICRO_DT),
        **{f"{scheme}_{ms}ms": ("ours", scheme, ms / 1000) for scheme in ("euler", "exact") for ms in (4, 2, 1)},
        **{f"nest_{ms}ms": ("nest", None, ms / 1000) for ms in (4, 1)}}


def single_population(rp, rate):
    """One uncoupled population of 1,000 neurons of the winner-take-all type under the drive rp."""
    return Network(N=[1000], amem=[50.0], rp=[rp], ft=[3.7], J=[0.0], conmat=np.zeros((1, 1)),
                   asyn=[1000 / 3], ref_t=0.004, eps=1.0, init_rates=[rate])


def spike_counts(kind, scheme, step, net, duration, seed):
    """(M, n_steps) spike counts per step of `step` s of one run, and its wall time."""
    start = time.perf_counter()
    if kind == "micro":
        counts = simulate(net, int(round(duration / MICRO_DT)), np.random.default_rng(seed), n_recorded=0).pop_spike_counts
    elif kind == "ours":
        counts = neulvm.simulate(net, duration, seed, dt=step, Nobs=0, scheme=scheme)["Z"] * net.N[:, None]
    else:
        counts = peers.nest_meso(net, duration, seed, h=step).pop_spike_counts
    return np.asarray(counts, float), time.perf_counter() - start


def measure(name, single_duration, wta_duration, seed):
    kind, scheme, step = ROWS[name]
    row, wall = {"step_ms": step * 1000}, 0.0
    for label, (rp, rate) in SINGLE_DRIVES.items():
        net = single_population(rp, rate)
        counts, seconds = spike_counts(kind, scheme, step, net, single_duration + SKIP, seed)
        row[f"rate {label}"] = counts[0, int(round(SKIP / step)):].sum() / (net.N[0] * single_duration)
        wall += seconds
    net = winner_take_all()
    counts, seconds = spike_counts(kind, scheme, step, net, wta_duration + SKIP, seed)
    wta = peers.wta_summary(counts, net.N, step, skip=SKIP)
    row.update({k: float(v) for k, v in wta.items()}, switches_se=switch_rate_se(wta), wall_s=wall + seconds)
    return row


def table(rows):
    reference = rows.get("micro")
    lines = ["| model | step | 6.7 Hz population | 19 Hz population | winner / loser / I (Hz) | switches per s "
             "| dwell mean (s), CV |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        def rate(label):
            text = f"{r[f'rate {label}']:.2f} Hz"
            if reference is not None and name != "micro":
                text += f" ({r[f'rate {label}'] / reference[f'rate {label}'] - 1:+.1%})"
            return text
        lines.append(f"| {name.split('_')[0]} | {r['step_ms']:g} ms | {rate('6.7 Hz')} | {rate('19 Hz')} "
                     f"| {r['winner_hz']:.1f} / {r['loser_hz']:.1f} / {r['inhibitory_hz']:.1f} "
                     f"| {r['switches_per_s']:.3f} ± {r['switches_se']:.3f} "
                     f"| {r['dwell_mean_s']:.2f}, {r['dwell_cv']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run (default all)")
    p.add_argument("--single_duration", type=float, default=40.0, help="s of each single-population run (default 40)")
    p.add_argument("--wta_duration", type=float, default=1000.0, help="s of each winner-take-all run (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of every run (default 1)")
    p.add_argument("--out", default="result/physics.json", help="JSON file of the figures (default result/physics.json)")
    args = p.parse_args(argv)
    use_one_tf_thread()
    rows = {}
    for name in args.only:
        print(f"running {name} ...", flush=True)
        try:
            rows[name] = measure(name, args.single_duration, args.wta_duration, args.seed)
        except ImportError as error:
            print(f"  {name} left out: {error}")
            continue
        print(f"  done in {rows[name]['wall_s']:.0f} s", flush=True)
    print(f"\nseed {args.seed}; single populations {args.single_duration:g} s, winner-take-all "
          f"{args.wta_duration:g} s, each after {SKIP:g} s\n")
    print(table(rows))
    write_record(args.out, {"config": {"single_duration_s": args.single_duration, "wta_duration_s": args.wta_duration,
                                       "seed": args.seed, "skip_s": SKIP, "a_cutoff_s": neulvm.A_CUTOFF,
                                       "single_drives": SINGLE_DRIVES, "wta_network": {
                                           k: np.asarray(v).tolist() for k, v in winner_take_all().to_dict().items()}},
                            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
