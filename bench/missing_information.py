"""How fast EM can move theta: the fraction of missing information along directions of theta (issue 13).

    python bench/missing_information.py                      # shipped dataset, J and the other groups
    python bench/missing_information.py --step 0.05 --particles 2000 --repeats 5

EM converges linearly, and its rate along a direction d of theta is the fraction of the information
that the latent holds and the observed spikes do not (Dempster, Laird & Rubin 1977):
    rate(d) = 1 - d' I_obs d / d' I_complete d,
where I_complete is the curvature of -log p(y, Z | theta) (spikes and latent, the M-step's loss) and
I_obs that of -log p(y | theta) (the spikes alone, the objective). Both are measured by second
differences at theta_true x (1 -+ step) along d, the sums of the rises on both sides (which cancel the
slopes at the truth, which is the maximum of neither), so their ratio measures it:
    complete  the rise of the M-step's loss n (loss_y + loss_Z) on the true latent (what the network's
              populations did; with the right model it is a draw from the posterior);
    marginal  the fall of log p_hat(y | theta) from the particle filter, --repeats passes, the seeds
              shared between theta_true and the step.
A rate r means that EM shrinks an error along d by r per step: ln 2 / -ln r steps halve it. The
largest rate of EM is at least the largest printed here (a Rayleigh quotient is below the top
eigenvalue). Prints one line per direction.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.ridge import paired_passes, standard_error  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=os.path.join(ROOT, "dataset", "3pop_noinput_small.npz"))
    p.add_argument("--step", type=float, default=0.1, help="relative step from the truth along each direction")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="filter passes per point")
    p.add_argument("--seed", type=int, default=7, help="seed of the passes (repeat i uses [seed, i])")
    args = p.parse_args()
    from src.dataset import load_recording
    from src.helper import make_window
    from src.LIFmesoCell import MesoModel
    from src.window import Z_MAX, Z_MIN

    window = make_window(load_recording(args.dataset))
    truth = np.asarray(window.net.theta, float)
    M = window.M
    groups = {"amem": range(0, M), "J": range(M, 2 * M), "rp": range(2 * M, 3 * M), "ft": range(3 * M, 4 * M)}
    directions = {f"every {g}": list(i) for g, i in groups.items()} | {f"J_{a + 1}": [M + a] for a in range(M)}
    Z_true = np.clip(window.Z_true, Z_MIN, Z_MAX)
    model = MesoModel(window, truth, Z_true, "exact")
    n = window.B * window.M * window.T
    complete = lambda theta: n * sum(model.losses(theta=theta, Z=Z_true))  # noqa: E731
    marginal = lambda theta: paired_passes(theta, window, args.particles, args.repeats, args.seed,  # noqa: E731
                                           "exact")
    start = time.time()
    at_truth = complete(truth), marginal(truth)
    print(f"{args.dataset}: exact scheme, {window.T} bins of {window.dt * 1e3:g} ms, steps x(1 -+ {args.step:g}), "
          f"{args.particles} particles, {args.repeats} passes per point")
    print("| direction | complete-data rise, both sides (nats) | marginal fall, both sides (nats, +- s.e.) | "
          "missing fraction | EM steps to halve an error |")
    print("|---|---|---|---|---|")
    for name, index in directions.items():
        rise, falls = 0.0, 0.0
        for sign in (-1, 1):
            theta = truth.copy()
            theta[index] *= 1 + sign * args.step
            rise += complete(theta) - at_truth[0]
            falls = falls + at_truth[1] - marginal(theta)
        fall, se = falls.mean(), standard_error(falls)
        rate = 1 - fall / rise
        halve = np.log(2) / -np.log(rate) if 0 < rate < 1 else float("nan")
        print(f"| {name} | {rise:.1f} | {fall:.1f} +- {se:.1f} | {rate:.4f} | {halve:.0f} |", flush=True)
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
