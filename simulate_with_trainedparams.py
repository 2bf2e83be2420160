"""Run a fitted neuLVM model on its own (free simulation, shared/docs/model.md section 5) and plot it.

    python simulate_with_trainedparams.py                         # best run of result/3pop example/data11, 100 s
    python simulate_with_trainedparams.py --run train3 --duration 20 --seed 4
    python simulate_with_trainedparams.py --input pulses --pulse_amplitude 10 --pulse_onsets 20 60 --pulse_target 1
    python simulate_with_trainedparams.py --input ou --ou_sigma 100
    python simulate_with_trainedparams.py --result_dir /tmp/res/data3

The best run is the one with the lowest final loss (src/runs.py); --run picks one (a run name in
--result_dir, or the path of a run folder). The model is rebuilt from the run alone: the fitted theta
and its scheme, dt and a_cutoff from its summary.json (a run of the earlier format, without a scheme,
is forward Euler: said once), the fixed parameters (N, asyn, conmat, ref_t, eps, initial
rates) from the recording it was fitted to (if that file is gone: the winner-take-all network of
model.md, with a note). Writes into the run folder:
    simulation_{input}_seed{seed}.png and .svg   population activity as spike counts per bin, smoothed,
                                                 and the input
    simulation_{input}_seed{seed}.json           seed, options, theta, command, versions, mean rates
The model's random draws come from --seed; the OU input's from the seed pair (seed, 1).
"""
import argparse
import dataclasses
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field

import src  # noqa: F401  (imported before TensorFlow, it quiets it: src/__init__.py)

PROG = "simulate_with_trainedparams.py"


@dataclass
class Options:
    result_dir: str = "result/3pop example/data11"  # folder with the runs train0..train4
    run: str = ""                 # one run (name in result_dir, or a run folder); default: lowest final loss
    duration: float = 100.0       # s simulated
    seed: int = 1                 # seed of every random draw of the model
    input: str = "none"           # external input: none, pulses or ou
    pulse_amplitude: float = 10.0  # potential units per s (2.5 mV/s; 50 raises V by one unit at steady state)
    pulse_onsets: list = field(default_factory=lambda: [20.0, 60.0])  # s
    pulse_duration: float = 0.5   # s
    pulse_target: int = 1         # population receiving the pulses (0-based; 1 = E2)
    ou_mean: float = 0.0          # OU input mean, potential units per s
    ou_sigma: float = 100.0       # OU input standard deviation, potential units per s
    smooth: float = 80.0          # ms, s.d. of the Gaussian smoothing of the plotted activity
    debug: bool = False           # show tracebacks


HELP = {
    "result_dir": "folder with the runs (train0, train1, ...)",
    "run": "one run: its name in --result_dir or the path of its folder (default: lowest final loss)",
    "duration": "simulated time (s)", "seed": "seed of every random draw",
    "input": "external input: none, pulses or ou",
    "pulse_amplitude": "pulse amplitude (potential units per s; 50 raises V by one unit, 2.5 mV)",
    "pulse_onsets": "pulse onsets (s)", "pulse_duration": "pulse duration (s)",
    "pulse_target": "population receiving the pulses (0-based)",
    "ou_mean": "OU input mean (potential units per s)", "ou_sigma": "OU input s.d. (potential units per s)",
    "smooth": "s.d. of the Gaussian smoothing of the plot (ms)", "debug": "show tracebacks",
}


class UsageError(ValueError):
    """Bad options: one line, exit status 2."""


class NoResult(ValueError):
    """No trained run: exit status 1."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_options(argv=None):
    parser = _OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Options):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action="store_true", help=HELP[f.name])
        elif f.type in (list, "list"):
            parser.add_argument(f"--{f.name}", type=float, nargs="+", default=default,
                                help=f"{HELP[f.name]} [default: {default}]")
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(f"--{f.name}", type=kind, default=default, help=f"{HELP[f.name]} [default: {default!r}]")
    opt = Options(**vars(parser.parse_args(argv)))
    for ok, message in [
            (opt.duration > 0, f"--duration must be > 0 s, got {opt.duration!r}"),
            (opt.input in ("none", "pulses", "ou"), f"--input must be none, pulses or ou, got {opt.input!r}"),
            (opt.pulse_duration > 0, f"--pulse_duration must be > 0 s, got {opt.pulse_duration!r}"),
            (all(t >= 0 for t in opt.pulse_onsets), f"--pulse_onsets must be >= 0 s, got {opt.pulse_onsets}"),
            (opt.ou_sigma >= 0, f"--ou_sigma must be >= 0, got {opt.ou_sigma!r}"),
            (opt.smooth >= 0, f"--smooth must be >= 0 ms, got {opt.smooth!r}")]:
        if not ok:
            raise UsageError(message)
    return opt


def pick_run(opt):
    """(run folder, summary) of --run, or of the best run in --result_dir. A relative --result_dir
    that is not in the current folder is looked up next to this script (the repository)."""
    from src.results import load_json
    from src.runs import best_run

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), opt.result_dir)
    if not os.path.isabs(opt.result_dir) and not os.path.isdir(opt.result_dir) and os.path.isdir(here):
        opt = dataclasses.replace(opt, result_dir=here)

    if opt.run:
        folder = opt.run if os.path.isdir(opt.run) else os.path.join(opt.result_dir, opt.run)
        path = os.path.join(folder, "summary.json")
        if not os.path.isdir(folder):
            raise UsageError(f"--run {opt.run!r}: no such run folder (looked for {folder!r})")
        try:
            summary = load_json(path)
            float(summary["final_loss"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise NoResult(f"{folder} has no complete summary.json ({err}): run bash 3pop_neuLVM.sh first") from None
        return folder, summary
    try:
        name, summary = best_run(opt.result_dir)
    except ValueError:
        raise NoResult(f"no trained run in {opt.result_dir!r}: run bash 3pop_neuLVM.sh first") from None
    return os.path.join(opt.result_dir, name), summary


def fitted_network(summary):
    """The fitted network and a note on where its fixed parameters came from."""
    import numpy as np

    from src.dataset import DatasetError, load_recording
    from src.network import winner_take_all

    path = summary.get("dataset", {}).get("path") or summary["options"]["dataset"]
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (path, os.path.join(here, path)):
        try:
            net = load_recording(candidate).network
            return net.with_theta(summary["theta_final"]), f"fixed parameters from {candidate}"
        except DatasetError:
            continue
    net = winner_take_all()
    if len(summary["theta_final"]) != 4 * net.M:
        raise UsageError(f"the recording {path!r} is gone and the fit has {len(summary['theta_final'])} "
                         "parameters, not those of the winner-take-all network: cannot rebuild the model")
    if not np.allclose(summary.get("theta_true", net.theta), net.theta):
        print(f"note: {path} not found and its true theta is not the winner-take-all network's", file=sys.stderr)
    return net.with_theta(summary["theta_final"]), f"{path} not found: fixed parameters of model.md's network"


def external_input(opt, M, T, dt):
    """(M, T) input per bin of dt: built at the microscopic step and averaged over each bin, as the
    data is binned (src.helper.bin_recording)."""
    import numpy as np

    from src.microsim import H, ou_input, pulse_input

    if opt.input == "none":
        return np.zeros((M, T))
    steps = int(round(dt / H))
    n = T * steps
    if opt.input == "pulses":
        if not 0 <= opt.pulse_target < M:
            raise UsageError(f"--pulse_target must be a population index in [0, {M}), got {opt.pulse_target!r}")
        fine = pulse_input(M, n, opt.pulse_amplitude, opt.pulse_onsets, opt.pulse_duration, opt.pulse_target, H)
    else:
        fine = ou_input(M, n, np.random.default_rng((opt.seed, 1)), mean=opt.ou_mean, sigma=opt.ou_sigma, h=H)
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
        axes[a].plot(t, smooth(counts[a], smooth_ms * 1e-3, dt), color=f"C{a}", lw=0.8)
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


def main(argv=None):
    """Exit status: 0 done, 1 no trained run, 2 bad options or files."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return simulate(parse_options(argv), argv)
    except NoResult as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError) as err:
        if "--debug" in argv:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def simulate(opt, argv):
    import numpy as np

    from src import __version__, neulvm
    from src.microsim import dominance
    from src.results import save_json
    from src.runs import fit_discretisation, parameter_table

    # -- the fitted model ------------------------------------------------------------------------
    folder, summary = pick_run(opt)
    name = os.path.basename(os.path.normpath(folder))
    net, source = fitted_network(summary)
    scheme, dt, a_cutoff = fit_discretisation(summary, os.path.join(folder, "summary.json"))
    print(parameter_table({name: summary}))
    print(f"run {folder}: final loss {summary['final_loss']:.6f}; scheme {scheme}, dt {dt * 1e3:g} ms, "
          f"age cutoff {a_cutoff:g} s; {source}")

    # -- free simulation ------------------------------------------------------------------------
    T = int(round(opt.duration / dt))
    I_ext = external_input(opt, net.M, T, dt)
    sim = neulvm.simulate(net, T * dt, opt.seed, I_ext=I_ext, dt=dt, a_cutoff=a_cutoff, scheme=scheme)
    rates = sim["A"].mean(axis=1)
    switches = dominance(sim["Z"] * net.N[:, None], net.N, dt)[1] if net.M >= 2 else np.array([])

    # -- save -----------------------------------------------------------------------------------
    base = os.path.join(folder, f"simulation_{opt.input}_seed{opt.seed}")
    title = (f"{name} (final loss {summary['final_loss']:.5f}): free simulation, {opt.duration:g} s, "
             f"seed {opt.seed}, input {opt.input}, scheme {scheme}, dt {dt * 1e3:g} ms\ntheta (amem, J, rp, ft) = "
             + " ".join(f"{x:.3g}" for x in net.theta))
    plot(base, sim, net, title, opt.smooth)
    import matplotlib
    import scipy
    save_json(base + ".json", {
        "run": folder, "final_loss": summary["final_loss"], "theta": net.theta, "theta_names": summary["theta_names"],
        "fixed_parameters": source, "seed": opt.seed, "options": dataclasses.asdict(opt), "scheme": scheme,
        "dt": dt, "a_cutoff": a_cutoff, "command": f"python {PROG} {shlex.join(argv)}", "mean_rates_Hz": rates,
        "E_switch_times_s": switches,
        "versions": {"neulvm": __version__, "python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__, "matplotlib": matplotlib.__version__}})
    print(f"simulated {opt.duration:g} s (seed {opt.seed}, input {opt.input}): mean rates "
          + ", ".join(f"{r:.2f}" for r in rates) + f" Hz; {len(switches)} switches of the winning E population")
    print(f"wrote {base}.png, {base}.svg, {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
