"""Scheduling overhead of python -m src.sweep per fit, and the throughput of 2 workers against 1 (issue 14),
against a baseline measured in the same run: the same fits as plain `python train_meso.py` commands,
one after the other.

    python bench/bench_sweep.py                    # 4 tiny fits: baseline, sweep on 1 worker, on 2 workers
    python bench/bench_sweep.py --fits 6 --out result/bench_sweep.json

overhead per fit = (wall time of the sweep on 1 worker - wall time of the baseline) / fits; it holds
everything the sweep adds: checking the grid, starting the LocalCluster, Dask, the task and the child
process (target: at most 2 s). throughput ratio = time on 1 worker / time on 2 workers (target >= 1.8
on 2 free cores). Every fit is the smallest of tests/test_sweep.py; each measurement writes into a
fresh folder. Times are wall-clock with the load average next to them: other processes share the cores.
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
TINY = ["--trial_length", "0.2", "--t_perbatch", "0.2", "--a_cutoff", "0.2", "--Emaxiters", "3", "--Mmaxiters", "3",
        "--max_EMsteps", "2", "--LOG_PER", "1000", "--threads", "1"]
END = "0.6"             # s, end of the fitted window


def timed(command):
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.time() - start


def load():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fits", type=int, default=FITS, help=f"fits per measurement (default {FITS})")
    p.add_argument("--out", default=None, help="JSON file of the figures (default: none)")
    args = p.parse_args(argv)
    restarts = [str(i) for i in range(args.fits)]
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        print(f"{args.fits} tiny fits each; load average before: {load()}")
        baseline = 0.0
        for i in restarts:
            baseline += timed([sys.executable, "train_meso.py", "--end_timepoint", END, "--train_Noinit", i,
                               "--SAVE_DIR", f"{work}/one_by_one/", *TINY])
        print(f"baseline, python train_meso.py one after the other: {baseline:.1f} s (load {load()})")
        sweeps = {}
        for workers in (1, 2):
            sweeps[workers] = timed([sys.executable, "-m", "src.sweep", "--end_timepoint", END, "--train_Noinit",
                                     *restarts, "--out", f"{work}/sweep{workers}", "--workers", str(workers),
                                     "--dashboard", "none", "--", *TINY])
            print(f"sweep on {workers} worker(s): {sweeps[workers]:.1f} s (load {load()})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    overhead = (sweeps[1] - baseline) / args.fits
    ratio = sweeps[1] / sweeps[2]
    print(f"overhead per fit: {overhead:+.2f} s (target <= 2 s); sweep on 1 worker / baseline: "
          f"{sweeps[1] / baseline:.3f}")
    print(f"throughput, 2 workers / 1 worker: {ratio:.2f}x (target >= 1.8 on 2 free cores)")
    if args.out:
        write_record(args.out, {"fits": args.fits, "tiny_fit_options": TINY, "baseline_s": baseline,
                                "sweep_1_worker_s": sweeps[1], "sweep_2_workers_s": sweeps[2],
                                "overhead_per_fit_s": overhead, "ratio_to_baseline": sweeps[1] / baseline,
                                "throughput_ratio_2_vs_1": ratio, "load_average_end": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
