"""Where the mesoscopic model's excess switching comes from (issue 11, point 5): variants of the
model's approximations, one at a time, in the winner-take-all network with the true parameters.

    python bench/switching.py                         # every variant, 20 x 100 s each (about 5 minutes)
    python bench/switching.py --only base lambda_0 --batches 40

Each variant changes one piece of the exact 4 ms model (model.md sections 3 and 5) and runs
--batches independent free simulations of --duration s (numpy, src/fast_np.BinStep, all batches
advanced together), from the network's initial rates; the first second of each is discarded.
Printed per variant: rates while dominant (winner / loser / I, Hz), switches per s with its
standard error, mean dominance duration and CV (src/report.dwell_times). The microscopic network's
figures (bench/physics.py, micro row, 1,000 s, seed 1) are printed for reference.

Variants:
  base          the model as specified (exact leak, Gaussian Z with variance Zbar/N, Lambda, 1 s cutoff)
  var_x0.8/1.2  the transition variance times 0.8 / 1.2
  binomial      variance Zbar (1 - Zbar) / N
  poisson       Z = Poisson(N Zbar) / N: integer spike counts, the right tails of a count
  lambda_0      no finite-size correction: the mass outside the cohorts' mean never fires (Lambda = 0)
  lambda_mean   Lambda = the cohorts' mean firing probability, weighted by their mass m, not by v
  cutoff_0.5/2  age cutoff 0.5 s / 2 s (K = 125 / 500)
  J_x0.99/1.01  every J times 0.99 / 1.01 (how sensitive switching is to the per-spike effect)
  delay_2       the synaptic drive of bin t from Z(t-2) instead of Z(t-1) (one bin more delay)
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.peers import switch_rate_se, write_record  # noqa: E402
from src import fast_np  # noqa: E402
from src.network import winner_take_all  # noqa: E402
from src.report import dwell_summary, dwell_times  # noqa: E402

DT = 0.004
SKIP = 1.0
# bench/physics.py, micro row (0.2 ms, 1,000 s, seed 1): winner / loser / I while dominant, switches per s
MICRO = {"winner_hz": 18.73, "loser_hz": 6.08, "inhibitory_hz": 24.49, "switches_per_s": 0.098}
VARIANTS = ("base", "var_x0.8", "var_x1.2", "binomial", "poisson", "lambda_0", "lambda_mean",
            "cutoff_0.5", "cutoff_2", "J_x0.99", "J_x1.01", "delay_2")


class VariantStep(fast_np.BinStep):
    """fast_np.BinStep with the finite-size correction Lambda replaced (variant lambda_0 or lambda_mean)."""

    def __init__(self, *args, lambda_kind="v", **kwargs):
        super().__init__(*args, **kwargs)
        self.lambda_kind = lambda_kind

    def cohorts(self, h, Z_past):
        if self.lambda_kind == "v":
            return super().cohorts(h, Z_past)
        self.V = self.potential_step(self.V, h)
        self.V[..., self.cohort_refractory] = 0.0
        lam, P = fast_np.escape(self.V, self.net.ft[:, None], self.cohort_refractory, self.dt)
        m = np.exp(self.logS) * Z_past
        if self.lambda_kind == "0":
            Lambda = 0.0
        else:  # "mean": the firing probability of the mass that is there, averaged over cohorts
            Lambda = (P * m).sum(-1) / np.maximum(m.sum(-1), 1e-300)
        Zbar = (P * m).sum(-1) + Lambda * (1 - m.sum(-1))
        return np.clip(Zbar, 0.0, 1.0), lam


def simulate_variant(variant, batches, duration, seed):
    """Z (batches, M, T) of the free simulation of one variant."""
    net = winner_take_all()
    K, delay, noise, lambda_kind = int(round(1.0 / DT)), 1, "gauss", "v"
    var_scale = {"var_x0.8": 0.8, "var_x1.2": 1.2}.get(variant, 1.0)
    if variant.startswith("cutoff_"):
        K = int(round(float(variant.split("_")[1]) / DT))
    if variant.startswith("J_x"):
        net = replace(net, J=net.J * float(variant[3:]))
    if variant == "delay_2":
        delay = 2
    if variant in ("binomial", "poisson"):
        noise = variant
    if variant.startswith("lambda_"):
        lambda_kind = variant.split("_")[1]
    rng = np.random.default_rng(seed)
    T = int(round(duration / DT))
    A0 = np.repeat(net.init_rates[None], batches, 0)
    B, M = A0.shape
    Z_full = np.concatenate([np.broadcast_to((A0 * DT)[..., None], (B, M, K)), np.zeros((B, M, T))], -1)
    step = VariantStep(net, DT, K, A0, "exact", 0, np.zeros((B, M, 0), int), lambda_kind=lambda_kind)
    no_spikes = np.zeros((B, M, 0))
    N = net.N
    for t in range(T):
        h = step.drive(Z_full[..., K + t - delay], 0.0, first=(t == 0))
        Zbar, lam = step.cohorts(h, Z_full[..., t:K + t][..., ::-1])
        if noise == "poisson":
            Z = rng.poisson(N * Zbar) / N
        else:
            var = Zbar * (1 - Zbar) / N if noise == "binomial" else var_scale * Zbar / N
            Z = np.maximum(Zbar + np.sqrt(var) * rng.standard_normal((B, M)), 0.0)
        Z_full[..., K + t] = Z
        step.advance(lam, no_spikes)
    return Z_full[..., K:], net


def measure(variant, batches, duration, seed):
    Z, net = simulate_variant(variant, batches, duration + SKIP, seed)
    skip = int(round(SKIP / DT))
    d = dwell_times([z[:, skip:] * net.N[:, None] for z in Z], net.N, DT)
    n, mean, _, cv = dwell_summary(d["durations"])
    row = {"winner_hz": d["rate_winner"], "loser_hz": d["rate_loser"], "inhibitory_hz": float(d["rate_others"][0]),
           "switches_per_s": d["switches"] / d["seconds"], "duration_s": d["seconds"],
           "dwell_mean_s": mean, "dwell_cv": cv, "n_dwell": n}
    return {**row, "switches_se": switch_rate_se(row)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--batches", type=int, default=20, help="independent runs per variant (default 20)")
    p.add_argument("--duration", type=float, default=100.0, help="s per run, after the first second (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of every variant (default 1)")
    p.add_argument("--out", default="result/switching.json")
    args = p.parse_args(argv)
    rows = {}
    print(f"{'variant':<12} {'winner':>7} {'loser':>6} {'I':>6} {'switches/s':>13} {'dwell s':>7} {'CV':>5}")
    print(f"{'micro':<12} {MICRO['winner_hz']:>7.2f} {MICRO['loser_hz']:>6.2f} {MICRO['inhibitory_hz']:>6.2f} "
          f"{MICRO['switches_per_s']:>6.3f}", flush=True)
    for variant in args.only:
        r = rows[variant] = measure(variant, args.batches, args.duration, args.seed)
        print(f"{variant:<12} {r['winner_hz']:>7.2f} {r['loser_hz']:>6.2f} {r['inhibitory_hz']:>6.2f} "
              f"{r['switches_per_s']:>6.3f}±{r['switches_se']:.3f} {r['dwell_mean_s']:>7.2f} {r['dwell_cv']:>5.2f}",
              flush=True)
    write_record(args.out, {"config": vars(args) | {"dt": DT, "skip_s": SKIP}, "micro": MICRO, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
