"""Fit neuLVM to the spike trains of a few observed neurons by EM (shared/docs/model.md section 4).

    python train_meso.py --train_Noinit 0                  # one run on the shipped dataset
    python train_meso.py --train_Noinit 0 --resume         # continue a killed run
    python train_meso.py --trial_length 2 --end_timepoint 3 --max_EMsteps 2   # a quick look
    bash 3pop_neuLVM.sh                                     # the five runs of the paper's Fig. 4

Writes into {SAVE_DIR}data{end_timepoint}/{train_folderbase}{train_Noinit}/: init_param,
minimizor_result_{e}, E{e}_est_param (npz archives, read with src.results.load_arrays),
E_{e}_{step}.png, Eloss.png, summary.json and train.log.

Bad options or data end in a one-line error and exit status 2 before anything is written (--debug
shows the traceback). Every file is written atomically (complete or absent). While a run writes into
its folder it holds the lock train.lock there; a second run into the same folder is refused. Ctrl-C
(or SIGTERM) stops at once, exit status 130, and the log says how to continue with --resume.
"""
import argparse
import dataclasses
import logging
import math
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import dataclass

from src.fast_np import SCHEMES   # importing src first also quiets TensorFlow (src/__init__.py)


@dataclass
class Options:
    # data
    dataset: str = "dataset/3pop_noinput_small.npz"  # recording written by `python -m src.microsim`
    trial_length: float = 10.0     # s of data fitted
    with_input: int = 0            # 1: the recording's external input enters the model; 0: none
    t_perbatch: float = 10.0       # s per batch; B = trial_length / t_perbatch
    end_timepoint: float = 11.0    # s, end of the fitted window in the recording
    dt: float = 0.004              # s, mesoscopic time bin
    scheme: str = "exact"          # integrator of the potentials over a bin: exact or euler (model.md 3.2)
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
    threads: int = 0               # TensorFlow intra-op threads (0: TensorFlow's default)
    resume: bool = False           # continue from the last complete EM step in the run folder
    debug: bool = False            # show tracebacks


HELP = {
    "dataset": "recording file (.npz written by `python -m src.microsim`)",
    "trial_length": "length of the fitted window (s)", "with_input": "1: use the recording's input; 0: none",
    "t_perbatch": "length of each batch (s)", "end_timepoint": "end of the window in the recording (s)",
    "dt": "mesoscopic time bin (s)", "M": "number of populations",
    "scheme": "integrator of the potentials over a bin: exact (leak integrated exactly) or euler (forward "
              "Euler, the original project's); --resume takes the run's own",
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
    "threads": "TensorFlow intra-op threads (0: TensorFlow's default; 1 is fastest here)", "resume": "continue a killed run",
    "debug": "show tracebacks on errors",
}
BOUNDED_METHODS = ("L-BFGS-B", "TNC", "SLSQP", "trust-constr", "Powell", "Nelder-Mead")


class UsageError(ValueError):
    """Bad options or data: reported in one line, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; the message says where it stopped and how to continue."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, not argparse's usage block
        raise UsageError(f"{message} (python train_meso.py --help lists the options)")


# Options that define the fit: --resume refuses to continue a run with other values.
RESUME_MUST_MATCH = ("trial_length", "with_input", "t_perbatch", "end_timepoint", "dt", "M", "N", "Nsampled",
                     "B", "a_cutoff", "lb", "ub", "amem", "J", "rp", "ft", "sampled_spike_history_smoothed_w",
                     "train_Noinit", "method", "mstep_grad")


def parse_options(argv=None):
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     allow_abbrev=False)
    for f in dataclasses.fields(Options):
        if f.type is bool or f.type == "bool":
            parser.add_argument(f"--{f.name}", action="store_true", help=HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(f"--{f.name}", type=kind, default=f.default,
                                help=f"{HELP[f.name]} [default: {f.default!r}]")
    opt = Options(**vars(parser.parse_args(argv)))
    for f in dataclasses.fields(Options):
        value = getattr(opt, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{f.name} must be a finite number, got {value}")
    checks = [
        (opt.trial_length > 0, f"--trial_length must be > 0 s, got {opt.trial_length}"),
        (opt.t_perbatch > 0, f"--t_perbatch must be > 0 s, got {opt.t_perbatch}"),
        (opt.end_timepoint > 0, f"--end_timepoint must be > 0 s, got {opt.end_timepoint}"),
        (opt.dt > 0, f"--dt must be > 0 s, got {opt.dt}"),
        (opt.a_cutoff >= opt.dt, f"--a_cutoff must be >= dt ({opt.dt} s), got {opt.a_cutoff}"),
        (opt.M >= 1, f"--M must be >= 1, got {opt.M}"),
        (opt.Nsampled >= 1, f"--Nsampled must be >= 1, got {opt.Nsampled}"),
        (opt.B >= 1, f"--B must be >= 1, got {opt.B}"),
        (0 < opt.lb < opt.ub, f"--lb and --ub must satisfy 0 < lb < ub, got lb={opt.lb}, ub={opt.ub}"),
        (opt.sampled_spike_history_smoothed_w >= 0,
         f"--sampled_spike_history_smoothed_w must be >= 0 ms, got {opt.sampled_spike_history_smoothed_w}"),
        (opt.plot_act_smoothw >= 0, f"--plot_act_smoothw must be >= 0 ms, got {opt.plot_act_smoothw}"),
        (opt.train_Noinit >= 0, f"--train_Noinit must be >= 0 (it seeds the draw), got {opt.train_Noinit}"),
        (opt.train_folderbase not in (".", "..") and "/" not in opt.train_folderbase
         and os.sep not in opt.train_folderbase,
         f"--train_folderbase must be a plain name without '/', got {opt.train_folderbase!r}"),
        (opt.SAVE_DIR != "", "--SAVE_DIR must not be empty"),
        (opt.E_LR > 0, f"--E_LR must be > 0, got {opt.E_LR}"),
        (opt.E_itertol >= 1, f"--E_itertol must be >= 1, got {opt.E_itertol}"),
        (opt.Emaxiters >= 1, f"--Emaxiters must be >= 1, got {opt.Emaxiters}"),
        (opt.Mmaxiters >= 1, f"--Mmaxiters must be >= 1, got {opt.Mmaxiters}"),
        (opt.max_EMsteps >= 1, f"--max_EMsteps must be >= 1, got {opt.max_EMsteps}"),
        (opt.method in BOUNDED_METHODS, f"--method must be one of {', '.join(BOUNDED_METHODS)}, got {opt.method!r}"),
        (opt.scheme in SCHEMES, f"--scheme must be one of {', '.join(SCHEMES)}, got {opt.scheme!r}"),
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
    for name in ("N", "amem", "J", "rp", "ft"):
        if getattr(opt, name):
            parse_vector(getattr(opt, name), name, opt.M)
    if opt.N and not all(n.is_integer() and n >= 1 for n in parse_vector(opt.N, "N", opt.M)):
        raise UsageError(f"--N must be whole numbers >= 1, got {opt.N!r}")
    return opt


def parse_vector(text, name, M):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--{name} must be {M} comma-separated numbers, got {text!r}") from None
    if len(values) != M:
        raise UsageError(f"--{name} must have {M} values (one per population, --M {M}), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"--{name} must be finite numbers, got {text!r}")
    return values


def run_folder(opt):
    end = f"{opt.end_timepoint:g}"
    return os.path.join(opt.SAVE_DIR, f"data{end}", f"{opt.train_folderbase}{opt.train_Noinit}")


def resume_command(argv):
    return shlex.join(["python", "train_meso.py", *[a for a in argv if a != "--resume"], "--resume"])


def no_improvement(em_steps):
    """EM stops when an iteration no longer lowers the loss (model.md section 4.2)."""
    return len(em_steps) > 1 and em_steps[-1]["loss"] >= em_steps[-2]["loss"]


def check_data(opt, rec):
    """The window and the prior centre; UsageError naming the dataset and the option if they disagree."""
    import numpy as np

    from src.helper import make_window

    net = rec.network
    if net.M != opt.M:
        raise UsageError(f"--M is {opt.M} but {opt.dataset} holds {net.M} populations (field 'N')")
    if opt.N and [int(n) for n in parse_vector(opt.N, "N", opt.M)] != list(net.N):
        raise UsageError(f"--N {opt.N} does not match the population sizes {net.N.tolist()} of {opt.dataset} "
                         "(field 'N')")
    centre = net.theta.reshape(4, net.M).copy()
    for row, name in enumerate(("amem", "J", "rp", "ft")):
        if getattr(opt, name):
            centre[row] = parse_vector(getattr(opt, name), name, net.M)
    centre = centre.ravel()
    if np.any(centre <= 0):
        raise UsageError(f"the prior centre (amem, J, rp, ft) must be > 0, got {centre.tolist()}; give it with "
                         f"--amem, --J, --rp, --ft (default: the true parameters stored in {opt.dataset})")
    try:
        window = make_window(rec, opt.dt, opt.trial_length, opt.t_perbatch, opt.end_timepoint, opt.a_cutoff,
                             opt.Nsampled, with_input=bool(opt.with_input))
    except ValueError as err:
        raise UsageError(f"{opt.dataset}: {err}") from None
    return window, centre


def read_resume_state(opt, folder, rec, window, scheme_given):
    """What --resume continues from: the previous summary.json and its last complete EM step.

    The run continues with its own scheme (opt.scheme is set to it; a run of the earlier format is
    euler), unless --scheme was given (scheme_given) with another one. None if the folder holds no
    summary.json. ResultFileError or UsageError, before anything is written, if the files are not a
    run of this kind or the run used other options."""
    import numpy as np

    from src.results import ResultFileError, load_arrays, load_json

    path = os.path.join(folder, "summary.json")
    if not os.path.exists(path):
        return None
    previous = load_json(path)
    keys = ("options", "em_steps", "e_history", "m_points", "theta_init", "finished", "dataset")
    if not isinstance(previous, dict) or any(k not in previous for k in keys):
        raise ResultFileError(f"{path}: not the summary of a train_meso.py run (expected the keys "
                              f"{', '.join(keys)})")
    from src.runs import fit_discretisation
    scheme, _, _ = fit_discretisation(previous, path)
    if scheme_given and opt.scheme != scheme:
        raise UsageError(f"--resume: --scheme is {opt.scheme!r} but the run in {folder} was fitted with {scheme!r}; "
                         "resume without --scheme, or start a new run without --resume")
    opt.scheme = scheme
    for name in RESUME_MUST_MATCH:
        before, now = previous["options"].get(name), getattr(opt, name)
        if before != now:
            raise UsageError(f"--resume: --{name} is {now!r} but the run in {folder} used {before!r}; resume with "
                             "the same options, or start a new run without --resume")
    if previous["dataset"].get("seed") != rec.seed:
        raise UsageError(f"--resume: {opt.dataset} (seed {rec.seed}) is not the recording the run in {folder} "
                         f"was fitted to (seed {previous['dataset'].get('seed')})")
    theta_init = np.asarray(previous["theta_init"], float)
    shape_theta, shape_Z = (4 * window.M,), (window.B, window.M, window.T)
    if theta_init.shape != shape_theta or not np.all(np.isfinite(theta_init)):
        raise ResultFileError(f"{path}: theta_init must be {shape_theta[0]} finite numbers")
    done, last = [], None
    for step in previous["em_steps"]:
        e = step.get("em_step") if isinstance(step, dict) else None
        if e != len(done) or not os.path.exists(os.path.join(folder, f"E{e}_est_param")):
            break
        last = load_arrays(os.path.join(folder, f"E{e}_est_param"))
        for key, shape in (("theta", shape_theta), ("Z", shape_Z)):
            value = np.asarray(last.get(key))
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ResultFileError(f"{folder}/E{e}_est_param: field {key!r} must be finite with shape {shape}, "
                                      f"got shape {value.shape}")
        done.append(step)
    return {"previous": previous, "done": done, "last": last, "theta_init": theta_init}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opt = parse_options(argv)
    from src.dataset import load_recording
    from src.results import folder_lock, remove_temporaries

    # -- data and options, all checked before anything is written -----------------------------------
    rec = load_recording(opt.dataset)
    window, centre = check_data(opt, rec)
    folder = run_folder(opt)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"the run folder {folder} exists and is not a folder (--SAVE_DIR, --train_folderbase)")
    os.makedirs(folder, exist_ok=True)

    with folder_lock(folder):
        scheme_given = any(a == "--scheme" or a.startswith("--scheme=") for a in argv)
        state = read_resume_state(opt, folder, rec, window, scheme_given) if opt.resume else None
        removed = remove_temporaries(folder)      # left by a killed writer: never a complete file
        log = logging.getLogger("train_meso")
        log.setLevel(logging.INFO)
        handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(folder, "train.log"))]
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            log.addHandler(handler)
        log.info(f"start (PID {os.getpid()}): python train_meso.py {shlex.join(argv)}")
        if removed:
            log.info(f"removed {len(removed)} unfinished temporary files of a killed run: {', '.join(removed)}")
        progress = {"at": "start-up", "summary": {"em_steps": []}}   # for the message of an interrupt
        try:
            return fit(opt, rec, window, centre, folder, state, log, progress)
        except KeyboardInterrupt:
            steps = [s["em_step"] for s in progress["summary"]["em_steps"]]
            done = f"EM steps 0..{steps[-1]} are complete" if steps else "no EM step is complete yet"
            message = (f"interrupted during {progress['at']}; {done} in {folder}; continue with: "
                       f"{resume_command(argv)}")
            log.warning(message)
            raise Interrupted(message) from None
        finally:
            for handler in handlers:
                log.removeHandler(handler)
                handler.close()


def fit(opt, rec, window, centre, folder, state, log, progress):
    """Initialise (or take up the interrupted run), then EM; files are written as the run goes.
    progress["at"] says what the run is doing and progress["summary"] is the summary so far."""
    import numpy as np
    import scipy
    import tensorflow as tf

    from src import __version__
    from src.em import e_step, m_step
    from src.helper import init_Z
    from src.LIFmesoCell import MesoModel
    from src.plots import plot_activity, plot_losses
    from src.results import save_arrays, save_figure, save_json

    check_stop()
    net = rec.network
    if opt.threads:
        # intra-op only: the likelihood's time chunks run as concurrent stages (inter-op), and XLA's
        # per-row work is too small to gain from splitting it across threads (src/LIFmesoCell.py)
        tf.config.threading.set_intra_op_parallelism_threads(opt.threads)
    tf.config.experimental.enable_op_determinism()
    fmt = lambda v: " ".join(f"{x:.4g}" for x in v)  # noqa: E731

    # -- model: initial parameters from the prior, latent from the observed spikes -----------------
    bounds = list(zip(opt.lb * centre, opt.ub * centre))
    rng = np.random.default_rng(opt.train_Noinit)
    theta_init = rng.uniform(opt.lb, opt.ub, centre.shape) * centre
    Z_init = init_Z(window, opt.sampled_spike_history_smoothed_w * 1e-3)
    summary = progress["summary"]
    summary.update({
        "options": dataclasses.asdict(opt), "run_folder": folder, "seed": opt.train_Noinit,
        "dataset": {"path": opt.dataset, "seed": rec.seed, "version": rec.version},
        "network": net.to_dict(),                 # the recording's network: the fixed parameters and the truth
        "theta_names": [f"{g}_{a + 1}" for g in ("amem", "J", "rp", "ft") for a in range(net.M)],
        "theta_true": net.theta, "prior_centre": centre, "theta_init": theta_init,
        "versions": {"neulvm": __version__, "python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__, "tensorflow": tf.__version__},
        "em_steps": [], "e_history": [], "m_points": [], "finished": False})
    theta, Z, first_step = theta_init, Z_init, 0
    model_config = {"scheme": opt.scheme, "dt": opt.dt, "a_cutoff": opt.a_cutoff}   # in every result file
    init_path = os.path.join(folder, "init_param")
    if state is not None:
        previous = state["previous"]
        if previous["finished"]:
            log.info(f"{folder} has finished already; nothing to resume")
            return previous
        theta_init = summary["theta_init"] = state["theta_init"]
        theta = theta_init
        first_step = len(state["done"])
        if state["last"] is not None:
            theta, Z = np.asarray(state["last"]["theta"], float), np.asarray(state["last"]["Z"], float)
        summary["em_steps"] = state["done"]
        summary["e_history"] = [h for h in previous["e_history"] if h[0] < first_step]
        summary["m_points"] = previous["m_points"][:first_step]
        if state["done"]:
            summary.update(theta_final=theta, final_loss=state["done"][-1]["loss"], last_em_step=first_step - 1)
        log.info(f"resuming {folder} at EM step {first_step} (scheme {opt.scheme})")
    else:
        if opt.resume:
            log.info(f"nothing to resume in {folder} (no summary.json): starting the run")
        save_json(os.path.join(folder, "summary.json"), summary)   # first, so --resume never reads an older run's
    if state is None or not os.path.exists(init_path):
        save_arrays(init_path, theta=theta_init, Z=Z_init, seed=opt.train_Noinit, theta_true=net.theta,
                    prior_centre=centre, **model_config)
    if not os.path.exists(os.path.join(folder, "init.png")):
        save_figure(os.path.join(folder, "init.png"), plot_activity, window, Z_init, opt.plot_act_smoothw * 1e-3,
                    "data-driven initial estimate")
    check_stop()
    model = MesoModel(window, theta, Z, opt.scheme)
    log.info(f"{folder}: {window.B} x {window.T} bins of {opt.dt * 1e3:g} ms ({window.K} age bins, scheme "
             f"{opt.scheme}), {window.Nobs} observed neurons per population, theta_init {fmt(theta_init)}")

    # -- EM -------------------------------------------------------------------------------------
    start = time.time()
    for e in range(first_step, opt.max_EMsteps):
        if no_improvement(summary["em_steps"]):
            log.info(f"EM step {e - 1} did not improve the loss: stop")
            break
        # M-step
        progress["at"] = f"M-step {e}"
        theta, info_M = m_step(model, theta, Z, bounds, opt.Mmaxiters, opt.method, opt.mstep_grad,
                               on_eval=check_stop)
        if info_M["nonfinite"] is not None:
            log.warning(f"M-step {e}: a non-finite loss or gradient (evaluation {info_M['nonfinite']}) was "
                        f"rejected; the M-step stopped at its best finite parameters")
        save_arrays(os.path.join(folder, f"minimizor_result_{e}"), x=theta, Z=Z, fun=info_M["loss"],
                    loss_y=info_M["loss_y"], loss_Z=info_M["loss_Z"], nit=info_M["nit"], nfev=info_M["nfev"],
                    **model_config)
        log.info(f"M-step {e}: loss {info_M['loss']:.6f} (y {info_M['loss_y']:.6f}, Z {info_M['loss_Z']:.6f}) "
                 f"{info_M['nit']} it {info_M['nfev']} evals {info_M['seconds']:.1f} s | theta {fmt(theta)}")
        m_point = (len(summary["e_history"]), info_M["loss_y"], info_M["loss_Z"])

        # E-step
        progress["at"] = f"E-step {e}"
        e_history = []

        def on_step(i, Z_i, loss_y, loss_Z, e=e, e_history=e_history):
            check_stop()
            e_history.append((e, loss_y, loss_Z))
            if i % opt.LOG_PER == 0:
                title = f"EM step {e}, E-step iteration {i}: loss {loss_y + loss_Z:.5f}"
                save_figure(os.path.join(folder, f"E_{e}_{i}.png"), plot_activity, window, Z_i,
                            opt.plot_act_smoothw * 1e-3, title)
        Z, info_E = e_step(model, theta, Z, opt.E_LR, opt.Emaxiters, opt.E_itertol, on_step)
        if info_E["nonfinite"] is not None:
            log.warning(f"E-step {e}: a non-finite loss or gradient at iteration {info_E['nonfinite']} was "
                        f"rejected; back to the best latent so far (loss {info_E['loss']:.6f})")
        loss_y, loss_Z = model.losses(theta=theta, Z=Z)

        check_stop()
        progress["at"] = f"the saving of EM step {e}"
        save_arrays(os.path.join(folder, f"E{e}_est_param"), theta=theta, Z=Z, loss_y=loss_y, loss_Z=loss_Z,
                    **model_config)
        log.info(f"E-step {e}: loss {loss_y + loss_Z:.6f} (y {loss_y:.6f}, Z {loss_Z:.6f}) "
                 f"{info_E['steps']} steps {info_E['seconds']:.1f} s")
        em_step = {"em_step": e, "M": dict(info_M), "theta": theta, "loss_y": loss_y, "loss_Z": loss_Z,
                   "loss": loss_y + loss_Z, "E_steps": info_E["steps"], "E_seconds": info_E["seconds"],
                   "E_nonfinite": info_E["nonfinite"]}
        new = dict(summary, em_steps=summary["em_steps"] + [em_step], e_history=summary["e_history"] + e_history,
                   m_points=summary["m_points"] + [m_point], theta_final=theta, final_loss=loss_y + loss_Z,
                   last_em_step=e)
        save_json(os.path.join(folder, "summary.json"), new)
        summary.update(new)                       # the step counts as complete once summary.json says so
        save_figure(os.path.join(folder, "Eloss.png"), plot_losses, summary["e_history"], summary["m_points"])
    else:
        if no_improvement(summary["em_steps"]):
            log.info(f"EM step {summary['em_steps'][-1]['em_step']} did not improve the loss: stop")

    progress["at"] = "the final save"
    if not summary["em_steps"]:
        raise UsageError(f"--max_EMsteps {opt.max_EMsteps} leaves no EM step to run in {folder}")
    summary.update(finished=True, seconds=summary.get("seconds", 0) + time.time() - start)
    save_json(os.path.join(folder, "summary.json"), summary)
    names = summary["theta_names"]
    log.info("done in %.1f s; final loss %.6f\n%s", time.time() - start, summary["final_loss"], "\n".join(
        f"  {n:7s} true {t:8.4f}  init {i:8.4f}  fit {f:8.4f}  rel.err {(f - t) / t:+.3f}"
        for n, t, i, f in zip(names, net.theta, summary["theta_init"], summary["theta_final"])))
    return summary


STOP = {"signal": None}   # set by the signal handler of the command line: stop at the next check


def _on_stop_signal(signum, frame):
    """SIGINT (Ctrl-C) or SIGTERM: the run stops at the next check_stop(), at most one evaluation of the
    model away (or one compilation, at the start). A second signal raises KeyboardInterrupt at once.

    Raising at the first signal is not reliable: Python ignores an exception raised while it runs a
    weakref callback or a __del__, which TensorFlow keeps it doing, and the run would go on."""
    if STOP["signal"] is not None:
        raise KeyboardInterrupt
    STOP["signal"] = signum


def check_stop():
    """Called between steps of the fit: raise KeyboardInterrupt if a stop signal came."""
    if STOP["signal"] is not None:
        raise KeyboardInterrupt


if __name__ == "__main__":
    debug = "--debug" in sys.argv
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)    # a polite kill stops like Ctrl-C
    try:
        main()
    except (UsageError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"train_meso.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"train_meso.py: {err or 'interrupted before the run started; nothing was written'}",
              file=sys.stderr)
        sys.exit(130)
