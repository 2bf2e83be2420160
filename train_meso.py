"""Fit neuLVM to the spike trains of a few observed neurons by EM (shared/docs/model.md section 4).
It holds the original project's `train` (the function of that name below); the original's
scipy_Mstep and tf_EGDstep are src.em.m_step and src.em.e_step.

    python train_meso.py --train_Noinit 0                  # one run on the shipped dataset (SMC E-step)
    python train_meso.py --train_Noinit 0 --estep map      # the paper's E-step (a point estimate)
    python train_meso.py --train_Noinit 0 --resume         # continue a killed run
    python train_meso.py --trial_length 2 --t_perbatch 2 --end_timepoint 3 --max_EMsteps 2   # a quick look
    bash 3pop_neuLVM.sh                                     # the five runs of the paper's Fig. 4

Writes into {SAVE_DIR}data{end_timepoint}/{train_folderbase}{train_Noinit}/: init_param,
minimizor_result_{e}, E{e}_est_param (npz archives, read with src.results.load_arrays),
E_{e}_{step}.png, Eloss.png, summary.json and train.log.

Bad options or data end in a one-line error and exit status 2 before anything is written (--debug
shows the traceback). Every file is written atomically (complete or absent). While a run writes into
its folder it holds the lock train.lock there; a second run into the same folder is refused. Ctrl-C
(or SIGTERM) stops at once, exit status 130, and the log says how to continue with --resume.
"""
import dataclasses
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass

# A fit's BLAS calls (numpy, scipy's L-BFGS-B) work on vectors too small to gain from threads. With
# OpenBLAS's default of one thread per core, its waiting threads kept a fit at 1.5 cores on 2 and made
# it 12% slower (issue 14); one thread also keeps the sums independent of the number of cores. Set
# before numpy loads; a user's own setting wins.
for _blas_threads in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")

from src.cli import UsageError, check, option, parse  # noqa: E402  (importing src first also quiets TensorFlow)
from src.fast_np import SCHEMES  # noqa: E402

BOUNDED_METHODS = ("L-BFGS-B", "TNC", "SLSQP", "trust-constr", "Powell", "Nelder-Mead")
# --max_EMsteps and --Mmaxiters of 0 mean these. The MAP ones are the original project's. The SMC ones
# are those of every SMC fit measured in README (five fits in about 12 minutes here): longer runs
# climb log p_hat(y | theta) slowly and stay in the same region (README, "Where the SMC fits stop").
ESTEP_DEFAULTS = {"map": {"max_EMsteps": 20, "Mmaxiters": 200}, "smc": {"max_EMsteps": 10, "Mmaxiters": 50}}


@dataclass
class Options:
    # data
    dataset: str = option("dataset/3pop_noinput_small.npz", "recording file (.npz written by `python -m src.microsim` "
                                                            "or `python -m src.dataset import`)")
    trial_length: float = option(10.0, "length of the fitted window (s)")
    with_input: int = option(0, "1: the recording's external input enters the model; 0: none")
    t_perbatch: float = option(10.0, "length of each batch (s)")
    end_timepoint: float = option(11.0, "end of the fitted window in the recording (s)")
    dt: float = option(0.004, "mesoscopic time bin (s)")
    scheme: str = option("exact", "integrator of the potentials over a bin (model.md 3.2): exact (leak integrated "
                                  "exactly) or euler (forward Euler, the original project's); --resume takes the run's own")
    M: int = option(3, "number of populations")
    N: str = option("", "neurons per population, comma separated (default: from the recording)")
    Nsampled: int = option(3, "observed neurons per population")
    B: int = option(1, "batches (= trial_length / t_perbatch)")
    a_cutoff: float = option(1.0, "age cutoff and history length (s)")
    # prior: initial parameters ~ Uniform(lb, ub) x centre, and the M-step's box
    lb: float = option(0.4, "lower bound of prior and box, x centre")
    ub: float = option(2.0, "upper bound of prior and box, x centre")
    amem: str = option("", "prior centre of 1/tau_m (1/s), comma separated (default: the recording's truth; "
                           "--amem, --J, --rp, --ft are required for a recording without ground truth)")
    J: str = option("", "prior centre of the couplings J_b, potential units x s (default: the recording's truth)")
    rp: str = option("", "prior centre of the resting potentials (units of 2.5 mV)")
    ft: str = option("", "prior centre of the firing thresholds (units of 2.5 mV)")
    # fitting
    sampled_spike_history_smoothed_w: float = option(400.0, "s.d. of the Gaussian smoothing of the initial latent (ms)")
    train_folderbase: str = option("train", "run folder prefix")
    train_Noinit: int = option(0, "run index; seed of the initial parameters")
    init: str = option("prior", "initial parameters: prior (a draw from Uniform(lb, ub) x centre, seeded by "
                                "train_Noinit) or centre (the prior centre itself: with the default centre, the "
                                "truth, to see where the estimator drifts from it; give such a run its own "
                                "--SAVE_DIR, since the report and the simulation take the best run of a folder)")
    E_LR: float = option(1e-3, "Adam learning rate of the E-step")
    E_itertol: int = option(3, "E-step patience (steps without a new best loss)")
    Emaxiters: int = option(200, "maximum Adam steps per E-step")
    Mmaxiters: int = option(0, "maximum M-step iterations (0: the E-step's default, 200 for map, 50 for smc)")
    max_EMsteps: int = option(0, "maximum EM iterations (0: the E-step's default, 20 for map, 10 for smc)")
    method: str = option("L-BFGS-B", "scipy.optimize.minimize method of the M-step (bounded)")
    mstep_grad: str = option("exact", "exact: TensorFlow autodiff gradient; numeric: finite differences of the "
                                      "numpy reference, as the original")
    estep: str = option("smc", "E-step: smc (draws of the latent from its posterior by particle Gibbs; Monte Carlo "
                               "EM by stochastic approximation) or map (the paper's point estimate, by Adam); "
                               "--resume takes the run's own")
    particles: int = option(500, "--estep smc: particles of the particle filter")
    draws: int = option(1, "--estep smc: posterior draws (particle Gibbs sweeps) per EM step")
    SAVE_DIR: str = option("result/3pop example/", "result folder")
    plot_act_smoothw: float = option(4.0, "s.d. of the smoothing of the activity plots (ms)")
    LOG_PER: int = option(100, "an activity plot every LOG_PER E-step iterations")
    threads: int = option(0, "TensorFlow intra-op threads (0: TensorFlow's default; 1 is fastest here)")
    resume: bool = option(False, "continue a killed run from its last complete EM step")
    debug: bool = option(False, "show tracebacks on errors")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; the message says where it stopped and how to continue."""


def parse_options(argv=None):
    opt = parse(Options, argv, "train_meso.py", __doc__)
    check([
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
        (opt.Mmaxiters >= 0, f"--Mmaxiters must be >= 1 (or 0 for the E-step's default), got {opt.Mmaxiters}"),
        (opt.max_EMsteps >= 0, f"--max_EMsteps must be >= 1 (or 0 for the E-step's default), got {opt.max_EMsteps}"),
        (opt.method in BOUNDED_METHODS, f"--method must be one of {', '.join(BOUNDED_METHODS)}, got {opt.method!r}"),
        (opt.scheme in SCHEMES, f"--scheme must be one of {', '.join(SCHEMES)}, got {opt.scheme!r}"),
        (opt.mstep_grad in ("exact", "numeric"), f"--mstep_grad must be exact or numeric, got {opt.mstep_grad!r}"),
        (opt.estep in ("map", "smc"), f"--estep must be map or smc, got {opt.estep!r}"),
        (opt.init in ("prior", "centre"), f"--init must be prior or centre, got {opt.init!r}"),
        (opt.particles >= 2, f"--particles must be >= 2, got {opt.particles}"),
        (opt.draws >= 1, f"--draws must be >= 1, got {opt.draws}"),
        (opt.with_input in (0, 1), f"--with_input must be 0 or 1, got {opt.with_input}"),
        (opt.LOG_PER >= 1, f"--LOG_PER must be >= 1, got {opt.LOG_PER}"),
        (opt.threads >= 0, f"--threads must be >= 0, got {opt.threads}"),
        (abs(opt.B * opt.t_perbatch - opt.trial_length) < 1e-9,
         f"--B ({opt.B}) must equal trial_length / t_perbatch ({opt.trial_length} / {opt.t_perbatch})"),
    ])
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
    missing = [f"--{name}" for name in ("amem", "J", "rp", "ft") if not getattr(opt, name)]
    if not rec.has_truth and missing:
        raise UsageError(f"{opt.dataset} has no ground truth (no true parameters): give the prior centre with "
                         f"--amem, --J, --rp, --ft (missing: {', '.join(missing)})")
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


def main(argv=None):
    """Check the options and the data, then train in the run folder, holding its lock. Returns the
    run's src.results.RunSummary."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opt = parse_options(argv)
    from src.dataset import load_recording
    from src.results import folder_lock, remove_temporaries
    from src.runs import resume_state, training_log

    # -- data and options, all checked before anything is written -----------------------------------
    rec = load_recording(opt.dataset)
    window, centre = check_data(opt, rec)
    folder = run_folder(opt)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"the run folder {folder} exists and is not a folder (--SAVE_DIR, --train_folderbase)")
    os.makedirs(folder, exist_ok=True)

    with folder_lock(folder):
        resumed = None
        if opt.resume:
            given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
            resumed = resume_state(folder, asdict(opt), rec.seed, (4 * window.M,), (window.B, window.M, window.T),
                                   given)
            if resumed is not None:             # the run continues with its own integrator and E-step
                opt.scheme, opt.estep = resumed[0].scheme, resumed[0].estep
        for name, value in ESTEP_DEFAULTS[opt.estep].items():
            setattr(opt, name, getattr(opt, name) or value)
        removed = remove_temporaries(folder)      # left by a killed writer: never a complete file
        with training_log(folder) as log:
            log.info(f"start (PID {os.getpid()}): python train_meso.py {shlex.join(argv)}")
            if removed:
                log.info(f"removed {len(removed)} unfinished temporary files of a killed run: {', '.join(removed)}")
            # where the run is, for the message of an interrupt; from the EM's start also its clock (with_costs)
            progress = {"at": "start-up", "steps": []}
            try:
                return train(opt, rec, window, centre, folder, resumed, log, progress)
            except KeyboardInterrupt:
                steps = [s["em_step"] for s in progress["steps"]]
                done = f"EM steps 0..{steps[-1]} are complete" if steps else "no EM step is complete yet"
                message = (f"interrupted during {progress['at']}; {done} in {folder}; continue with: "
                           f"{resume_command(argv)}")
                log.warning(message)
                raise Interrupted(message) from None


def train(opt, rec, window, centre, folder, resumed, log, progress):
    """The fit: initial parameters and latent, the model, EM, with every file written as it goes.

    resumed: None, or (summary, last) of src.runs.resume_state to take up an interrupted run.
    progress["at"] says what the run is doing and progress["steps"] lists the complete EM steps."""
    import numpy as np
    import tensorflow as tf

    from src.cli import software_versions
    from src.em import em
    from src.helper import init_Z
    from src.LIFmesoCell import MesoModel
    from src.plots import plot_activity, plot_losses
    from src.results import RunSummary, save_arrays, save_figure

    check_stop()
    net = rec.network
    if opt.threads:
        # intra-op only: the likelihood's time chunks run as concurrent stages (inter-op), and XLA's
        # per-row work is too small to gain from splitting it across threads (src/LIFmesoCell.py)
        tf.config.threading.set_intra_op_parallelism_threads(opt.threads)
    tf.config.experimental.enable_op_determinism()
    fmt = lambda v: " ".join(f"{x:.4g}" for x in v)  # noqa: E731
    model_config = {"scheme": opt.scheme, "dt": opt.dt, "a_cutoff": opt.a_cutoff}   # in every result file
    path = lambda name: os.path.join(folder, name)  # noqa: E731

    # -- initial parameters from the prior, initial latent from the observed spikes ------------------
    bounds = list(zip(opt.lb * centre, opt.ub * centre))
    theta_init = (np.random.default_rng(opt.train_Noinit).uniform(opt.lb, opt.ub, centre.shape) * centre
                  if opt.init == "prior" else centre.copy())
    Z_init = init_Z(window, opt.sampled_spike_history_smoothed_w * 1e-3)
    theta, Z = theta_init, Z_init
    if resumed is None:
        if opt.resume:
            log.info(f"nothing to resume in {folder} (no summary.json): starting the run")
        summary = RunSummary(
            options=asdict(opt), run_folder=folder, seed=opt.train_Noinit,
            dataset={"path": opt.dataset, "seed": rec.seed, "version": rec.version},
            network=rec.network_record(),         # the recording's network: the fixed parameters and the truth
            theta_names=[f"{g}_{a + 1}" for g in ("amem", "J", "rp", "ft") for a in range(net.M)],
            theta_true=rec.theta_true, prior_centre=centre, theta_init=theta_init,
            versions=software_versions("tensorflow"))
        summary.save(path("summary.json"))        # first, so --resume never reads an older run's
    else:
        summary, last = resumed
        if summary.finished and len(summary.em_steps) >= opt.max_EMsteps:
            log.info(f"{folder} has finished already; nothing to resume")
            return summary
        if summary.finished:                      # a larger --max_EMsteps extends it (unless EM had converged)
            log.info(f"{folder} finished after {len(summary.em_steps)} EM steps: going on to --max_EMsteps "
                     f"{opt.max_EMsteps}")
            summary = dataclasses.replace(summary, finished=False)
        summary.options, summary.versions = asdict(opt), software_versions("tensorflow")
        theta_init = theta = summary.theta_init
        if last is not None:
            theta, Z = np.asarray(last["theta"], float), np.asarray(last["Z"], float)
        log.info(f"resuming {folder} at EM step {len(summary.em_steps)} (scheme {opt.scheme})")
    progress["steps"] = summary.em_steps
    if resumed is None or not os.path.exists(path("init_param")):
        truth = {"theta_true": net.theta} if rec.has_truth else {}
        save_arrays(path("init_param"), theta=theta_init, Z=Z_init, seed=opt.train_Noinit, **truth,
                    prior_centre=centre, **model_config)
    if not os.path.exists(path("init.png")):
        save_figure(path("init.png"), plot_activity, window, Z_init, opt.plot_act_smoothw * 1e-3,
                    "data-driven initial estimate")

    if opt.estep == "smc":
        return train_smc(opt, rec, window, folder, summary, theta, Z_init, resumed, log, progress, bounds,
                         model_config)

    # -- the model ---------------------------------------------------------------------------------
    check_stop()
    model = MesoModel(window, theta, Z, opt.scheme)
    log.info(f"{folder}: {window.B} x {window.T} bins of {opt.dt * 1e3:g} ms ({window.K} age bins, scheme "
             f"{opt.scheme}), {window.Nobs} observed neurons per population, theta_init {fmt(theta_init)}")

    # -- EM, saving every step as it completes ------------------------------------------------------
    def on_m_step(e, theta, Z, info):
        save_arrays(path(f"minimizor_result_{e}"), x=theta, Z=Z, fun=info["loss"], loss_y=info["loss_y"],
                    loss_Z=info["loss_Z"], nit=info["nit"], nfev=info["nfev"], **model_config)
        log.info(f"M-step {e}: loss {info['loss']:.6f} (y {info['loss_y']:.6f}, Z {info['loss_Z']:.6f}) "
                 f"{info['nit']} it {info['nfev']} evals {info['seconds']:.1f} s | theta {fmt(theta)}")

    def on_e_iteration(e, i, Z, loss_y, loss_Z):
        if i % opt.LOG_PER == 0:
            save_figure(path(f"E_{e}_{i}.png"), plot_activity, window, Z, opt.plot_act_smoothw * 1e-3,
                        f"EM step {e}, E-step iteration {i}: loss {loss_y + loss_Z:.5f}")

    def on_em_step(step, Z):
        nonlocal summary
        e, loss_y, loss_Z = step["em_step"], step["loss_y"], step["loss_Z"]
        save_arrays(path(f"E{e}_est_param"), theta=step["theta"], Z=Z, loss_y=loss_y, loss_Z=loss_Z, **model_config)
        log.info(f"E-step {e}: loss {loss_y + loss_Z:.6f} (y {loss_y:.6f}, Z {loss_Z:.6f}) "
                 f"{step['E_steps']} steps {step['E_seconds']:.1f} s")
        summary = complete_step(summary, step, path("summary.json"), progress)
        save_figure(path("Eloss.png"), plot_losses, summary.e_history, summary.m_points)

    progress.update(started=time.time(), seconds_before=summary.seconds or 0)
    em(model, theta, Z, bounds, opt.max_EMsteps,
       m_options={"maxiter": opt.Mmaxiters, "method": opt.method, "grad": opt.mstep_grad},
       e_options={"lr": opt.E_LR, "maxiters": opt.Emaxiters, "itertol": opt.E_itertol},
       done=summary.em_steps, check_stop=check_stop, log=log.info,
       on_phase=lambda what: progress.update(at=what),
       on_m_step=on_m_step, on_e_iteration=on_e_iteration, on_em_step=on_em_step)

    return finish(summary, rec, folder, progress, log, opt)


def complete_step(summary, step, summary_path, progress):
    """The summary with EM step `step` added, saved: the step counts as complete once summary.json says so."""
    e = step["em_step"]
    m_point = (len(summary.e_history), step["M"]["loss_y"], step["M"]["loss_Z"])
    record = {k: v for k, v in step.items() if k != "E_history"}
    new = dataclasses.replace(summary, em_steps=summary.em_steps + [record],
                              e_history=summary.e_history + [(e, *h) for h in step["E_history"]],
                              m_points=summary.m_points + [m_point], theta_final=step["theta"],
                              final_loss=step["loss"], last_em_step=e)
    new = with_costs(new, progress)
    new.save(summary_path)
    progress["steps"] = new.em_steps
    return new


def with_costs(summary, progress):
    """The summary with the EM's wall time so far (s; a resumed run adds its own to the time of the
    complete steps before it) and its peak memory (MB, the largest of the run's processes)."""
    return dataclasses.replace(summary, seconds=progress["seconds_before"] + time.time() - progress["started"],
                               peak_memory_mb=max(summary.peak_memory_mb or 0, peak_memory_mb()))


def peak_memory_mb():
    """The largest resident memory of this process so far (MB): what a cluster job must be given."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1e6 if sys.platform == "darwin" else 1e3)          # bytes on macOS, kB on Linux


def finish(summary, rec, folder, progress, log, opt):
    """The final save, and the table of parameters in the log."""
    progress["at"] = "the final save"
    if not summary.em_steps:
        raise UsageError(f"--max_EMsteps {opt.max_EMsteps} leaves no EM step to run in {folder}")
    summary = dataclasses.replace(with_costs(summary, progress), finished=True)
    summary.save(os.path.join(folder, "summary.json"))
    log.info("done in %.1f s, peak memory %.0f MB; final loss %.6f\n%s", time.time() - progress["started"],
             summary.peak_memory_mb, summary.final_loss, "\n".join(
        f"  {n:7s} true {t:8.4f}  init {i:8.4f}  fit {f:8.4f}  rel.err {(f - t) / t:+.3f}" if rec.has_truth else
        f"  {n:7s} init {i:8.4f}  fit {f:8.4f}  (no ground truth)"
        for n, t, i, f in zip(summary.theta_names, rec.network.theta, summary.theta_init, summary.theta_final)))
    return summary


def train_smc(opt, rec, window, folder, summary, theta, Z_init, resumed, log, progress, bounds, model_config):
    """The fit with the posterior E-step (--estep smc): src.em.saem, saving every step as it completes.
    E{e}_est_param holds the posterior mean as Z (so that readers of MAP runs work), its 5/50/95%
    quantiles, log p_hat(y | theta), the step's draws, and the memory of draws --resume continues from."""
    import numpy as np
    import tensorflow as tf

    from src.em import SAEM_MEMORY, DrawMemory, saem
    from src.LIFmesoCell import MesoModel
    from src.plots import plot_activity
    from src.results import save_arrays, save_figure

    path = lambda name: os.path.join(folder, name)  # noqa: E731
    fmt = lambda v: " ".join(f"{x:.4g}" for x in v)  # noqa: E731
    memory, reference = DrawMemory(Z_init, opt.draws), None
    last = resumed[1] if resumed is not None else None
    if last is not None:
        memory.Z, memory.c = list(np.asarray(last["saem_Z"], float)), [float(c) for c in last["saem_c"]]
        reference = np.asarray(last["reference"], float)
    smc_options = {"particles": opt.particles, "sweeps": opt.draws, "scheme": opt.scheme, "dtype": tf.float32}
    smc_config = {"estep": "smc", "particles": opt.particles, "draws": opt.draws, "smc_dtype": "float32"}

    check_stop()
    Z_stack, weights = memory.stacked()
    model = MesoModel(window.repeated(SAEM_MEMORY * opt.draws), theta, Z_stack, opt.scheme, batch_weights=weights)
    draws_per_step = f"{opt.draws} draw{'s' if opt.draws > 1 else ''}"
    log.info(f"{folder}: {window.B} x {window.T} bins of {opt.dt * 1e3:g} ms ({window.K} age bins, scheme "
             f"{opt.scheme}), {window.Nobs} observed neurons per population, SMC E-step with {opt.particles} "
             f"particles and {draws_per_step} per EM step, theta_init {fmt(summary.theta_init)}")

    def on_m_step(e, theta, memory, info):
        save_arrays(path(f"minimizor_result_{e}"), x=theta, Z=memory.mean(), fun=info["loss"], loss_y=info["loss_y"],
                    loss_Z=info["loss_Z"], nit=info["nit"], nfev=info["nfev"], **model_config, **smc_config)
        log.info(f"M-step {e}: loss over the draws {info['loss']:.6f} (y {info['loss_y']:.6f}, Z "
                 f"{info['loss_Z']:.6f}) {info['nit']} it {info['nfev']} evals {info['seconds']:.1f} s | "
                 f"theta {fmt(theta)}")

    def on_em_step(step, info, draws, memory):
        nonlocal summary
        e = step["em_step"]
        save_arrays(path(f"E{e}_est_param"), theta=step["theta"], Z=info["mean"], Z_q05=info["q05"],
                    Z_q50=info["q50"], Z_q95=info["q95"], Z_draws=draws, log_p_hat=info["log_p_hat"],
                    loss_y=step["loss_y"], loss_Z=step["loss_Z"], saem_Z=np.stack(memory.Z),
                    saem_c=np.asarray(memory.c), reference=draws[-1], gamma=step["gamma"],
                    **model_config, **smc_config)
        log.info(f"E-step {e}: log p_hat(y | theta) {info['log_p_hat']:.2f}, {draws_per_step}, "
                 f"{info['seconds']:.1f} s, step size {step['gamma']:.3g}")
        summary = complete_step(summary, step, path("summary.json"), progress)
        save_figure(path(f"E_{e}_0.png"), plot_activity, window, info["mean"], opt.plot_act_smoothw * 1e-3,
                    f"EM step {e} (SMC): posterior mean and 90% band; log p_hat {info['log_p_hat']:.1f}",
                    band=(info["q05"], info["q95"]))

    progress.update(started=time.time(), seconds_before=summary.seconds or 0)
    saem(model, theta, memory, window, bounds, opt.max_EMsteps,
         m_options={"maxiter": opt.Mmaxiters, "method": opt.method, "grad": opt.mstep_grad},
         smc_options=smc_options, seed=opt.train_Noinit, done=summary.em_steps, reference=reference,
         check_stop=check_stop, log=log.info, on_phase=lambda what: progress.update(at=what),
         on_m_step=on_m_step, on_em_step=on_em_step)
    return finish(summary, rec, folder, progress, log, opt)


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
    from src.cli import run
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)    # a polite kill stops like Ctrl-C
    sys.exit(run("train_meso.py", main, interrupted="interrupted before the run started; nothing was written"))
