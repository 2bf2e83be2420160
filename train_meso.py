"""Fit neuLVM to the spike trains of a few observed neurons by EM (shared/docs/model.md section 4).

    python train_meso.py --train_Noinit 0                  # one run on the shipped dataset
    python train_meso.py --train_Noinit 0 --resume         # continue a killed run
    python train_meso.py --trial_length 2 --end_timepoint 3 --max_EMsteps 2   # a quick look
    bash 3pop_neuLVM.sh                                     # the five runs of the paper's Fig. 4

Writes into {SAVE_DIR}data{end_timepoint}/{train_folderbase}{train_Noinit}/: init_param,
minimizor_result_{e}, E{e}_est_param (npz archives, read with src.results.load_arrays),
E_{e}_{step}.png, Eloss.png, summary.json and train.log.
"""
import argparse
import dataclasses
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Options:
    # data
    dataset: str = "dataset/3pop_noinput_small.npz"  # recording written by `python -m src.microsim`
    trial_length: float = 10.0     # s of data fitted
    with_input: int = 0            # 1: the recording's external input enters the model; 0: none
    t_perbatch: float = 10.0       # s per batch; B = trial_length / t_perbatch
    end_timepoint: float = 11.0    # s, end of the fitted window in the recording
    dt: float = 0.004              # s, mesoscopic time bin
    M: int = 3                     # populations
    N: str = ""                    # neurons per population, comma separated (default: the recording's)
    Nsampled: int = 3              # observed neurons per population
    B: int = 1                     # batches; must equal trial_length / t_perbatch
    a_cutoff: float = 1.0          # s, age cutoff = history length
    # prior: initial parameters ~ Uniform(lb, ub) x centre, and the M-step's box
    lb: float = 0.4
    ub: float = 2.0
    amem: str = ""                 # prior centre of 1/tau_m (1/s), comma separated (default: the recording's)
    J: str = ""                    # prior centre of the couplings (potential units x s)
    rp: str = ""                   # prior centre of the resting potentials (units of 2.5 mV)
    ft: str = ""                   # prior centre of the firing thresholds (units of 2.5 mV)
    # fitting
    sampled_spike_history_smoothed_w: float = 400.0  # ms, s.d. of the Gaussian of the initial latent
    train_folderbase: str = "train"
    train_Noinit: int = 0          # run index; seeds the initial parameters
    E_LR: float = 1e-3             # Adam learning rate of the E-step
    E_itertol: int = 3             # E-step stops after this many steps without a new best loss
    Emaxiters: int = 200           # Adam steps per E-step at most
    Mmaxiters: int = 200           # L-BFGS-B iterations per M-step at most
    max_EMsteps: int = 20          # EM iterations at most
    method: str = "L-BFGS-B"       # scipy.optimize.minimize method of the M-step
    mstep_grad: str = "exact"      # exact (TensorFlow autodiff) or numeric (finite differences, as the original)
    SAVE_DIR: str = "result/3pop example/"
    plot_act_smoothw: float = 4.0  # ms, s.d. of the smoothing in the activity plots
    LOG_PER: int = 100             # an activity plot every LOG_PER E-step iterations
    threads: int = 0               # TensorFlow threads (0: all cores)
    resume: bool = False           # continue from the last complete EM step in the run folder
    debug: bool = False            # show tracebacks


HELP = {
    "dataset": "recording file (.npz written by `python -m src.microsim`)",
    "trial_length": "length of the fitted window (s)", "with_input": "1: use the recording's input; 0: none",
    "t_perbatch": "length of each batch (s)", "end_timepoint": "end of the window in the recording (s)",
    "dt": "mesoscopic time bin (s)", "M": "number of populations",
    "N": "neurons per population, comma separated (default: from the recording)",
    "Nsampled": "observed neurons per population", "B": "batches (= trial_length / t_perbatch)",
    "a_cutoff": "age cutoff and history length (s)", "lb": "lower bound of prior and box, x centre",
    "ub": "upper bound of prior and box, x centre",
    "amem": "prior centre of 1/tau_m (1/s), comma separated (default: the recording's truth)",
    "J": "prior centre of the couplings J_b (default: the recording's truth)",
    "rp": "prior centre of the resting potentials (units of 2.5 mV)",
    "ft": "prior centre of the firing thresholds (units of 2.5 mV)",
    "sampled_spike_history_smoothed_w": "s.d. of the Gaussian smoothing of the initial latent (ms)",
    "train_folderbase": "run folder prefix", "train_Noinit": "run index; seed of the initial parameters",
    "E_LR": "Adam learning rate", "E_itertol": "E-step patience (steps without a new best)",
    "Emaxiters": "maximum Adam steps per E-step", "Mmaxiters": "maximum M-step iterations",
    "max_EMsteps": "maximum EM iterations", "method": "scipy.optimize.minimize method (bounded)",
    "mstep_grad": "exact: autodiff gradient; numeric: finite differences of the numpy reference",
    "SAVE_DIR": "result folder", "plot_act_smoothw": "smoothing of the activity plots (ms)",
    "LOG_PER": "activity plot every LOG_PER E-step iterations",
    "threads": "TensorFlow threads (0: all cores)", "resume": "continue a killed run",
    "debug": "show tracebacks on errors",
}
BOUNDED_METHODS = ("L-BFGS-B", "TNC", "SLSQP", "trust-constr", "Powell", "Nelder-Mead")


class UsageError(ValueError):
    """Bad options or data: reported in one line, exit status 2."""


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Options):
        if f.type is bool or f.type == "bool":
            parser.add_argument(f"--{f.name}", action="store_true", help=HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(f"--{f.name}", type=kind, default=f.default,
                                help=f"{HELP[f.name]} [default: {f.default!r}]")
    opt = Options(**vars(parser.parse_args(argv)))
    checks = [
        (opt.trial_length > 0, f"--trial_length must be > 0 s, got {opt.trial_length}"),
        (opt.t_perbatch > 0, f"--t_perbatch must be > 0 s, got {opt.t_perbatch}"),
        (opt.dt > 0, f"--dt must be > 0 s, got {opt.dt}"),
        (opt.a_cutoff >= opt.dt, f"--a_cutoff must be >= dt ({opt.dt} s), got {opt.a_cutoff}"),
        (opt.M >= 1, f"--M must be >= 1, got {opt.M}"),
        (opt.Nsampled >= 1, f"--Nsampled must be >= 1, got {opt.Nsampled}"),
        (0 < opt.lb < opt.ub, f"--lb and --ub must satisfy 0 < lb < ub, got lb={opt.lb}, ub={opt.ub}"),
        (opt.E_LR > 0, f"--E_LR must be > 0, got {opt.E_LR}"),
        (opt.E_itertol >= 1, f"--E_itertol must be >= 1, got {opt.E_itertol}"),
        (opt.Emaxiters >= 1 and opt.Mmaxiters >= 1 and opt.max_EMsteps >= 1,
         "--Emaxiters, --Mmaxiters and --max_EMsteps must be >= 1"),
        (opt.method in BOUNDED_METHODS, f"--method must be one of {', '.join(BOUNDED_METHODS)}, got {opt.method!r}"),
        (opt.mstep_grad in ("exact", "numeric"), f"--mstep_grad must be exact or numeric, got {opt.mstep_grad!r}"),
        (opt.with_input in (0, 1), f"--with_input must be 0 or 1, got {opt.with_input}"),
        (opt.LOG_PER >= 1, f"--LOG_PER must be >= 1, got {opt.LOG_PER}"),
        (opt.threads >= 0, f"--threads must be >= 0, got {opt.threads}"),
        (abs(opt.B * opt.t_perbatch - opt.trial_length) < 1e-9,
         f"--B ({opt.B}) must equal trial_length / t_perbatch ({opt.trial_length} / {opt.t_perbatch})"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return opt


def parse_vector(text, name, M):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--{name} must be {M} comma-separated numbers, got {text!r}") from None
    if len(values) != M:
        raise UsageError(f"--{name} must have {M} values (one per population), got {len(values)}")
    return values


def run_folder(opt):
    end = f"{opt.end_timepoint:g}"
    return os.path.join(opt.SAVE_DIR, f"data{end}", f"{opt.train_folderbase}{opt.train_Noinit}")


def main(argv=None):
    opt = parse_options(argv)
    import numpy as np
    import scipy
    import tensorflow as tf

    from src import __version__
    from src.dataset import load_recording
    from src.em import e_step, m_step
    from src.helper import init_Z, make_window
    from src.LIFmesoCell import MesoModel
    from src.plots import plot_activity, plot_losses
    from src.results import load_arrays, load_json, save_arrays, save_json

    # -- data ---------------------------------------------------------------------------------
    rec = load_recording(opt.dataset)
    net = rec.network
    if net.M != opt.M:
        raise UsageError(f"--M is {opt.M} but {opt.dataset} holds {net.M} populations")
    if opt.N and [int(n) for n in parse_vector(opt.N, "N", opt.M)] != list(net.N):
        raise UsageError(f"--N {opt.N} does not match the population sizes {list(net.N)} in {opt.dataset}")
    centre = net.theta.reshape(4, net.M).copy()
    for row, name in enumerate(("amem", "J", "rp", "ft")):
        if getattr(opt, name):
            centre[row] = parse_vector(getattr(opt, name), name, net.M)
    centre = centre.ravel()
    if np.any(centre <= 0):
        raise UsageError(f"the prior centre (amem, J, rp, ft) must be > 0, got {centre.tolist()}")
    window = make_window(rec, opt.dt, opt.trial_length, opt.t_perbatch, opt.end_timepoint, opt.a_cutoff,
                         opt.Nsampled, with_input=bool(opt.with_input))
    bounds = list(zip(opt.lb * centre, opt.ub * centre))

    folder = run_folder(opt)
    os.makedirs(folder, exist_ok=True)
    log = logging.getLogger("train_meso")
    log.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(folder, "train.log"))):
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    if opt.threads:
        tf.config.threading.set_intra_op_parallelism_threads(opt.threads)
        tf.config.threading.set_inter_op_parallelism_threads(opt.threads)
    tf.config.experimental.enable_op_determinism()
    fmt = lambda v: " ".join(f"{x:.4g}" for x in v)  # noqa: E731

    # -- model: initial parameters from the prior, latent from the observed spikes -----------------
    rng = np.random.default_rng(opt.train_Noinit)
    theta_init = rng.uniform(opt.lb, opt.ub, centre.shape) * centre
    Z_init = init_Z(window, opt.sampled_spike_history_smoothed_w * 1e-3)
    model = MesoModel(window, theta_init, Z_init)
    summary = {"options": dataclasses.asdict(opt), "run_folder": folder, "seed": opt.train_Noinit,
               "dataset": {"path": opt.dataset, "seed": rec.seed, "version": rec.version},
               "theta_names": [f"{g}_{a + 1}" for g in ("amem", "J", "rp", "ft") for a in range(net.M)],
               "theta_true": net.theta, "prior_centre": centre, "theta_init": theta_init,
               "versions": {"neulvm": __version__, "python": platform.python_version(), "numpy": np.__version__,
                            "scipy": scipy.__version__, "tensorflow": tf.__version__},
               "em_steps": [], "e_history": [], "m_points": [], "finished": False}
    theta, Z, first_step = theta_init, Z_init, 0
    if opt.resume and os.path.exists(os.path.join(folder, "summary.json")):
        previous = load_json(os.path.join(folder, "summary.json"))
        if previous.get("finished"):
            log.info(f"{folder} has finished already; nothing to resume")
            return previous
        done = [s["em_step"] for s in previous["em_steps"]
                if os.path.exists(os.path.join(folder, f"E{s['em_step']}_est_param"))]
        if done:
            last = load_arrays(os.path.join(folder, f"E{done[-1]}_est_param"))
            theta, Z, first_step = last["theta"], last["Z"], done[-1] + 1
            summary["em_steps"] = previous["em_steps"][:first_step]
            summary["e_history"] = [h for h in previous["e_history"] if h[0] < first_step]
            summary["m_points"] = previous["m_points"][:first_step]
            theta_init = summary["theta_init"] = np.asarray(previous["theta_init"])
        log.info(f"resuming {folder} at EM step {first_step}")
    else:
        save_arrays(os.path.join(folder, "init_param"), theta=theta_init, Z=Z_init, seed=opt.train_Noinit,
                    theta_true=net.theta, prior_centre=centre)
        plot_activity(os.path.join(folder, "init.png"), window, Z_init, opt.plot_act_smoothw * 1e-3,
                      "data-driven initial estimate")
    log.info(f"{folder}: {window.B} x {window.T} bins of {opt.dt * 1e3:g} ms, {window.Nobs} observed neurons "
             f"per population, theta_init {fmt(theta_init)}")

    # -- EM -------------------------------------------------------------------------------------
    start = time.time()
    for e in range(first_step, opt.max_EMsteps):
        # M-step
        theta, info_M = m_step(model, theta, Z, bounds, opt.Mmaxiters, opt.method, opt.mstep_grad)
        save_arrays(os.path.join(folder, f"minimizor_result_{e}"), x=theta, Z=Z, fun=info_M["loss"],
                    loss_y=info_M["loss_y"], loss_Z=info_M["loss_Z"], nit=info_M["nit"], nfev=info_M["nfev"])
        log.info(f"M-step {e}: loss {info_M['loss']:.6f} (y {info_M['loss_y']:.6f}, Z {info_M['loss_Z']:.6f}) "
                 f"{info_M['nit']} it {info_M['nfev']} evals {info_M['seconds']:.1f} s | theta {fmt(theta)}")
        m_point = (len(summary["e_history"]), info_M["loss_y"], info_M["loss_Z"])

        # E-step
        def on_step(i, Z_i, loss_y, loss_Z):
            summary["e_history"].append((e, loss_y, loss_Z))
            if i % opt.LOG_PER == 0:
                plot_activity(os.path.join(folder, f"E_{e}_{i}.png"), window, Z_i, opt.plot_act_smoothw * 1e-3,
                              f"EM step {e}, E-step iteration {i}: loss {loss_y + loss_Z:.5f}")
        Z, info_E = e_step(model, theta, Z, opt.E_LR, opt.Emaxiters, opt.E_itertol, on_step)
        loss_y, loss_Z = model.losses(theta=theta, Z=Z)
        save_arrays(os.path.join(folder, f"E{e}_est_param"), theta=theta, Z=Z, loss_y=loss_y, loss_Z=loss_Z)
        log.info(f"E-step {e}: loss {loss_y + loss_Z:.6f} (y {loss_y:.6f}, Z {loss_Z:.6f}) "
                 f"{info_E['steps']} steps {info_E['seconds']:.1f} s")

        summary["em_steps"].append({"em_step": e, "M": {k: v for k, v in info_M.items()}, "theta": theta,
                                    "loss_y": loss_y, "loss_Z": loss_Z, "loss": loss_y + loss_Z,
                                    "E_steps": info_E["steps"], "E_seconds": info_E["seconds"]})
        summary["m_points"].append(m_point)
        summary.update(theta_final=theta, final_loss=loss_y + loss_Z, last_em_step=e)
        save_json(os.path.join(folder, "summary.json"), summary)
        plot_losses(os.path.join(folder, "Eloss.png"), summary["e_history"], summary["m_points"])
        losses = [s["loss"] for s in summary["em_steps"]]
        if len(losses) > 1 and losses[-1] >= losses[-2]:
            log.info(f"EM step {e} did not improve the loss: stop")
            break

    summary.update(finished=True, seconds=summary.get("seconds", 0) + time.time() - start)
    save_json(os.path.join(folder, "summary.json"), summary)
    names = summary["theta_names"]
    log.info("done in %.1f s; final loss %.6f\n%s", time.time() - start, summary["final_loss"], "\n".join(
        f"  {n:7s} true {t:8.4f}  init {i:8.4f}  fit {f:8.4f}  rel.err {(f - t) / t:+.3f}"
        for n, t, i, f in zip(names, net.theta, summary["theta_init"], summary["theta_final"])))
    return summary


if __name__ == "__main__":
    debug = "--debug" in sys.argv
    try:
        main()
    except (UsageError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"train_meso.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("train_meso.py: interrupted; files of complete EM steps are kept, continue with --resume",
              file=sys.stderr)
        sys.exit(130)
