"""Scheduling overhead of python -m src.sweep per fit, and the throughput of 2 workers against 1 (issue 14),
against a baseline measured in the same run: the same fits as plain `python train_meso.py` commands,
one after the other.

    python bench/bench_sweep.py                    # 4 tiny fits: baselines, sweep on 1 worker, on 2 workers
    python bench/bench_sweep.py --size window      # 4 fits of 2 EM steps on the shipped window (about 15 min)
    python bench/bench_sweep.py --fits 6 --out result/bench_sweep.json

overhead per fit = (wall time of the sweep on 1 worker - wall time of the baseline) / fits; it holds
everything the sweep adds: checking the grid, starting the LocalCluster, Dask, the task and the child
process (target: at most 2 s). throughput ratio = time on 1 worker / time on 2 workers (target >= 1.8
on 2 free cores). A fit with --threads 1 still runs part of its work on a second core (TensorFlow's
inter-op threads run the likelihood's time chunks side by side), so the baseline is also measured with
every fit held to one core (sched_setaffinity, inherited by its threads): a fit's own speedup s from
the second core bounds the ratio by 2 / s. The sweep on 1 worker held to one core gives the ratio
per core. The fits are SIZES[--size]; each measurement writes into a fresh folder. Times are
wall-clock with the load average next to them: other processes share the cores.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peers import write_record  # noqa: E402

# defaults
FITS = 4                # fits of each measurement (restarts 0 .. FITS-1 of one window)
SIZES = {               # the fits: train_meso.py options and the end of the fitted window (s)
    # the smallest fit of tests/test_sweep.py, about 10 s, most of it TensorFlow's import and compilation
    "tiny": (["--trial_length", "0.2", "--t_perbatch", "0.2", "--a_cutoff", "0.2", "--Emaxiters", "3",
              "--Mmaxiters", "3", "--max_EMsteps", "2", "--LOG_PER", "1000", "--threads", "1"], "0.6"),
    # two EM steps of the default fit on the shipped window, about 40 s
    "window": (["--max_EMsteps", "2", "--LOG_PER", "1000", "--threads", "1"], "11"),
}
SIZE = "tiny"


def timed(command, core=None):
    """Wall seconds of the command; core: run it on that core only."""
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}))
    return time.time() - start


def load():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fits", type=int, default=FITS, help=f"fits per measurement (default {FITS})")
    p.add_argument("--size", choices=SIZES, default=SIZE, help=f"the fits (default {SIZE}; see SIZES)")
    p.add_argument("--out", default=None, help="JSON file of the figures (default: none)")
    args = p.parse_args(argv)
    restarts = [str(i) for i in range(args.fits)]
    fit_options, end = SIZES[args.size]
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    first_core = min(os.sched_getaffinity(0))
    walls = {}                                   # wall seconds of each measurement, by its key in the record
    try:
        print(f"{args.fits} {args.size} fits each; load average before: {load()}")
        for key, label, core in (("baseline_free_s", "free", None), ("baseline_one_core_s", "one core", first_core)):
            walls[key] = sum(timed([sys.executable, "train_meso.py", "--end_timepoint", end, "--train_Noinit", i,
                                    "--SAVE_DIR", f"{work}/{key}/", *fit_options], core) for i in restarts)
            print(f"baseline, python train_meso.py one after the other, {label}: {walls[key]:.1f} s (load {load()})")
        for key, label, workers, core in (("sweep_1_worker_s", "1 worker", 1, None),
                                          ("sweep_2_workers_s", "2 workers", 2, None),
                                          ("sweep_1_worker_one_core_s", "1 worker, one core", 1, first_core)):
            walls[key] = timed([sys.executable, "-m", "src.sweep", "--end_timepoint", end, "--train_Noinit",
                                *restarts, "--out", f"{work}/{key}", "--workers", str(workers),
                                "--dashboard", "none", "--", *fit_options], core)
            print(f"sweep on {label}: {walls[key]:.1f} s (load {load()})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "overhead_per_fit_s": (walls["sweep_1_worker_s"] - walls["baseline_free_s"]) / args.fits,
        "throughput_ratio_2_vs_1": walls["sweep_1_worker_s"] / walls["sweep_2_workers_s"],
        "own_speedup_of_a_fit": walls["baseline_one_core_s"] / walls["baseline_free_s"],
        "throughput_ratio_2_vs_1_on_one_core": walls["sweep_1_worker_one_core_s"] / walls["sweep_2_workers_s"],
    }
    print(f"overhead per fit: {figures['overhead_per_fit_s']:+.2f} s (target <= 2 s)")
    print(f"throughput, 2 workers / 1 worker: {figures['throughput_ratio_2_vs_1']:.2f}x (target >= 1.8 on 2 free "
          f"cores); a fit alone runs {figures['own_speedup_of_a_fit']:.2f}x faster free than on one core, which "
          f"bounds the ratio by {2 / figures['own_speedup_of_a_fit']:.2f}; 2 workers / 1 worker held to one core: "
          f"{figures['throughput_ratio_2_vs_1_on_one_core']:.2f}x")
    if args.out:
        write_record(args.out, {"fits": args.fits, "size": args.size, "fit_options": fit_options, **walls,
                                **figures, "load_average_end": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
