"""Run a fitted neuLVM model on its own (free simulation, shared/docs/model.md section 5) and plot it.

    python simulate_with_trainedparams.py                         # best run of result/3pop example/data11, 100 s
    python simulate_with_trainedparams.py --run train3 --duration 20 --seed 4
    python simulate_with_trainedparams.py --input pulses --pulse_amplitude 10 --pulse_onsets 20 60 --pulse_target 1
    python simulate_with_trainedparams.py --input ou --ou_sigma 100
    python simulate_with_trainedparams.py --result_dir /tmp/res/data3

It holds what the original project's script of that name did. The best run is the one with the
lowest final loss among the folder's SMC runs, or among its MAP runs if it has no SMC run
(src/runs.py; the two losses do not compare); --run picks one (a run name in --result_dir, or the
path of a run folder). The model is rebuilt from the run's summary.json alone (src.results.RunSummary): the fixed
parameters (N, asyn, conmat, ref_t, eps, initial rates), the fitted theta, and the scheme, dt and
a_cutoff of the fit (a run of the earlier format, without a scheme, is forward Euler: said once).
The recording it was fitted to is not needed. Writes into the run folder:
    simulation_{input}_seed{seed}.png and .svg   population activity as spike counts per bin, smoothed,
                                                 and the input
    simulation_{input}_seed{seed}.json           seed, options, theta, command, versions, mean rates
The model's random draws come from --seed; the OU input's from the seed pair (seed, 1).
"""
import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass

from src.cli import NoResult, UsageError, check, option, parse   # src first: it quiets TensorFlow

PROG = "simulate_with_trainedparams.py"


@dataclass
class Options:
    result_dir: str = option("result/3pop example/data11", "folder with the runs (train0, train1, ...)")
    run: str = option("", "one run: its name in --result_dir or the path of its folder (default: lowest final loss)")
    duration: float = option(100.0, "simulated time (s)")
    seed: int = option(1, "seed of every random draw of the model")
    input: str = option("none", "external input: none, pulses or ou")
    pulse_amplitude: float = option(10.0, "pulse amplitude (potential units per s; 50 raises V by one unit, 2.5 mV)")
    pulse_onsets: list = option([20.0, 60.0], "pulse onsets (s)")
    pulse_duration: float = option(0.5, "pulse duration (s)")
    pulse_target: int = option(1, "population receiving the pulses (0-based; 1 = E2)")
    ou_mean: float = option(0.0, "OU input mean (potential units per s)")
    ou_sigma: float = option(100.0, "OU input standard deviation (potential units per s)")
    smooth: float = option(80.0, "s.d. of the Gaussian smoothing of the plotted activity (ms)")
    debug: bool = option(False, "show tracebacks")


def parse_options(argv=None):
    opt = parse(Options, argv, PROG, __doc__)
    check([(opt.duration > 0, f"--duration must be > 0 s, got {opt.duration!r}"),
           (opt.input in ("none", "pulses", "ou"), f"--input must be none, pulses or ou, got {opt.input!r}"),
           (opt.pulse_duration > 0, f"--pulse_duration must be > 0 s, got {opt.pulse_duration!r}"),
           (all(t >= 0 for t in opt.pulse_onsets), f"--pulse_onsets must be >= 0 s, got {opt.pulse_onsets}"),
           (opt.ou_sigma >= 0, f"--ou_sigma must be >= 0, got {opt.ou_sigma!r}"),
           (opt.smooth >= 0, f"--smooth must be >= 0 ms, got {opt.smooth!r}")])
    return opt


def pick_run(opt):
    """(run folder, src.results.RunSummary) of --run, or of the best run in --result_dir. A relative
    --result_dir that is not in the current folder is looked up next to this script (the repository)."""
    from src.results import ResultFileError, RunSummary
    from src.runs import best_run

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), opt.result_dir)
    if not os.path.isabs(opt.result_dir) and not os.path.isdir(opt.result_dir) and os.path.isdir(here):
        opt = dataclasses.replace(opt, result_dir=here)

    if opt.run:
        folder = opt.run if os.path.isdir(opt.run) else os.path.join(opt.result_dir, opt.run)
        if not os.path.isdir(folder):
            raise UsageError(f"--run {opt.run!r}: no such run folder (looked for {folder!r})")
        try:
            summary = RunSummary.load(os.path.join(folder, "summary.json"))
        except ResultFileError as err:
            raise NoResult(f"{folder} has no complete summary.json ({err}): run bash 3pop_neuLVM.sh first") from None
        if summary.final_loss is None:
            raise NoResult(f"{folder} has no complete EM step yet: run bash 3pop_neuLVM.sh first")
        return folder, summary
    name, summary = best_run(opt.result_dir)        # NoResult if there is none: run bash 3pop_neuLVM.sh first
    return os.path.join(opt.result_dir, name), summary


def external_input(opt, M, T, dt):
    """(M, T) input per bin of dt: built at the microscopic step and averaged over each bin, as the
    data is binned (src.helper.bin_recording)."""
    import numpy as np

    from src.microsim import MICRO_DT, ou_input, pulse_input

    if opt.input == "none":
        return np.zeros((M, T))
    steps = int(round(dt / MICRO_DT))
    n = T * steps
    if opt.input == "pulses":
        if not 0 <= opt.pulse_target < M:
            raise UsageError(f"--pulse_target must be a population index in [0, {M}), got {opt.pulse_target!r}")
        fine = pulse_input(M, n, opt.pulse_amplitude, opt.pulse_onsets, opt.pulse_duration, opt.pulse_target, MICRO_DT)
    else:
        fine = ou_input(M, n, np.random.default_rng((opt.seed, 1)), mean=opt.ou_mean, sigma=opt.ou_sigma, h=MICRO_DT)
    return fine.reshape(M, T, steps).mean(-1)


def plot(path_base, sim, net, title, smooth_ms):
    """Spike counts per bin (n = N * Z), smoothed, for every population, then the input."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from src import plots
    from src.helper import smooth

    names = plots.population_names(net.M)
    dt = sim["dt"]
    counts = sim["Z"] * net.N[:, None]                                      # (M, T) spikes per bin
    t = (np.arange(counts.shape[1]) + 0.5) * dt
    fig, axes = plt.subplots(net.M + 1, 1, figsize=(12, 1.9 * (net.M + 1)), sharex=True)
    for a in range(net.M):
        axes[a].plot(t, smooth(counts[a], smooth_ms * 1e-3, dt, mode="reflect"), color=f"C{a}", lw=0.8)
        axes[a].set_ylabel(f"{names[a]}\nspikes / {dt * 1e3:g} ms")
        right = axes[a].secondary_yaxis("right", functions=(lambda n, a=a: n / (net.N[a] * dt),
                                                             lambda r, a=a: r * net.N[a] * dt))
        right.set_ylabel("Hz")
    for a in range(net.M):
        axes[-1].plot(t, sim["I_ext"][a], color=f"C{a}", lw=0.8, label=names[a])
    axes[-1].set_ylabel("input\n(units / s)")
    axes[-1].legend(loc="upper right", fontsize=8, frameon=False, ncol=net.M)
    axes[-1].set_xlabel(f"time (s); activity smoothed with a {smooth_ms:g} ms Gaussian")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(f"{path_base}.{ext}", dpi=100)
    plt.close(fig)


def main(argv):
    """Exit status: 0 done, 1 no trained run, 2 bad options or files."""
    return simulate(parse_options(argv), argv)


def simulate(opt, argv):
    import numpy as np

    from src import neulvm
    from src.cli import software_versions
    from src.microsim import dominance
    from src.results import save_json
    from src.runs import parameter_table

    # -- the fitted model, from the run's summary alone ---------------------------------------------
    folder, summary = pick_run(opt)
    name = os.path.basename(os.path.normpath(folder))
    net, scheme, dt, a_cutoff = summary.fitted_network(), summary.scheme, summary.dt, summary.a_cutoff
    source = f"fixed parameters from {summary.path} (the network of the recording {summary.dataset['path']})"
    print(parameter_table({name: summary}))
    print(f"run {folder}: final loss {summary.final_loss:.6f}; scheme {scheme}, dt {dt * 1e3:g} ms, "
          f"age cutoff {a_cutoff:g} s; {source}")

    # -- free simulation ------------------------------------------------------------------------
    T = int(round(opt.duration / dt))
    I_ext = external_input(opt, net.M, T, dt)
    sim = neulvm.simulate(net, T * dt, opt.seed, I_ext=I_ext, dt=dt, a_cutoff=a_cutoff, scheme=scheme)
    rates = sim["A"].mean(axis=1)
    switches = dominance(sim["Z"] * net.N[:, None], net.N, dt)[1] if net.M >= 2 else np.array([])

    # -- save -----------------------------------------------------------------------------------
    base = os.path.join(folder, f"simulation_{opt.input}_seed{opt.seed}")
    title = (f"{name} (final loss {summary.final_loss:.5f}): free simulation, {opt.duration:g} s, "
             f"seed {opt.seed}, input {opt.input}, scheme {scheme}, dt {dt * 1e3:g} ms\ntheta (amem, J, rp, ft) = "
             + " ".join(f"{x:.3g}" for x in net.theta))
    plot(base, sim, net, title, opt.smooth)
    save_json(base + ".json", {
        "run": folder, "final_loss": summary.final_loss, "theta": net.theta, "theta_names": summary.theta_names,
        "fixed_parameters": source, "network": net.to_dict(), "seed": opt.seed, "options": dataclasses.asdict(opt),
        "scheme": scheme,
        "dt": dt, "a_cutoff": a_cutoff, "command": f"python {PROG} {shlex.join(argv)}", "mean_rates_Hz": rates,
        "E_switch_times_s": switches,
        "versions": software_versions("matplotlib", "tensorflow")})
    print(f"simulated {opt.duration:g} s (seed {opt.seed}, input {opt.input}): mean rates "
          + ", ".join(f"{r:.2f}" for r in rates) + f" Hz; {len(switches)} switches of the winning E population")
    print(f"wrote {base}.png, {base}.svg, {base}.json")
    return 0


if __name__ == "__main__":
    from src.cli import run
    sys.exit(run(PROG, main))
