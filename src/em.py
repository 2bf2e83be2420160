"""EM with a point estimate of the latent (shared/docs/model.md section 4).

Both steps minimise the same loss, loss_y + loss_Z of src/LIFmesoCell.MesoModel:
    m_step  over theta with Z fixed: scipy.optimize.minimize in a box, with the exact gradient
            (the original project's scipy_Mstep in train_meso.py)
    e_step  over Z with theta fixed: projected Adam, early stopping, return to the best Z
            (the original's tf_EGDstep)
    em      the loop: M-step, E-step, until the loss stops falling (the loop of the original's train)
"""
import copy
import time

import numpy as np
from scipy.optimize import minimize

from . import fast_np
from .window import Z_MAX, Z_MIN


L_BFGS_FTOL = 1e-13   # relative reduction of the loss per iteration below which L-BFGS-B stops
L_BFGS_GTOL = 1e-7    # largest component of the projected gradient below which it stops


class NonFiniteError(ValueError):
    """The starting point of an EM step has a non-finite loss: there is no good state to go back to."""


class _StopAtNonFinite(Exception):
    """Raised inside the objective to stop scipy.optimize.minimize at a non-finite loss or gradient."""


class _Guarded:
    """The M-step objective, wrapped: remembers the best finite point it was evaluated at, and stops the
    optimiser at the first non-finite loss or gradient, so that no step is ever taken from a NaN."""

    def __init__(self, fun, with_grad, on_eval=None):
        self.fun, self.with_grad, self.on_eval = fun, with_grad, on_eval
        self.calls, self.nonfinite_at = 0, None
        self.best_x, self.best_loss = None, np.inf

    def __call__(self, theta):
        self.calls += 1
        if self.on_eval is not None:
            self.on_eval()
        out = self.fun(theta)
        loss, grad = out if self.with_grad else (out, 0.0)
        if not (np.isfinite(loss) and np.all(np.isfinite(grad))):
            self.nonfinite_at = self.calls
            raise _StopAtNonFinite
        if loss < self.best_loss:
            self.best_x, self.best_loss = np.array(theta, dtype=float), float(loss)
        return out


def m_step(model, theta0, Z, bounds, maxiter=200, method="L-BFGS-B", grad="exact", on_eval=None):
    """Minimise the loss over theta from theta0 with Z fixed.

    grad="exact": the TensorFlow loss and its autodiff gradient; grad="numeric": the numpy reference
    with finite-difference gradients, as the original project did. Returns (theta, info) where info
    holds loss_y, loss_Z, loss, nit, nfev, message, seconds and nonfinite (None, or the evaluation at
    which a non-finite loss or gradient stopped the optimiser; theta is then the best finite point).
    The result is never worse than theta0; NonFiniteError if the loss at theta0 is not finite.
    on_eval() is called before each evaluation of the objective (train_meso.py stops there on Ctrl-C).
    """
    start = time.time()
    if grad == "exact":
        def fun(theta):
            loss_y, loss_Z, g = model.value_and_grad("theta", theta=theta, Z=Z)
            return float(loss_y + loss_Z), np.asarray(g, dtype=float)
        jac = True
    elif grad == "numeric":
        net, window = model.window.net, model.window
        weights = model.batch_weights          # the SMC E-step's weighted mean over draws, as the model's loss
        fun = lambda theta: fast_np.objective(theta, net, window, Z, model.scheme, weights)  # noqa: E731
        jac = None
    else:
        raise ValueError(f"grad must be 'exact' or 'numeric', got {grad!r}")
    theta0 = np.asarray(theta0, float)
    loss0 = sum(model.losses(theta=theta0, Z=Z))
    if not np.isfinite(loss0):
        raise NonFiniteError(f"the M-step starts from a non-finite loss ({loss0}) at theta {theta0.tolist()}")
    guarded = _Guarded(fun, with_grad=jac is True, on_eval=on_eval)
    options = {"maxiter": maxiter}
    if method == "L-BFGS-B":
        # scipy's default stops when one iteration lowers the loss by less than 2e-9 relative, which
        # ends exact-gradient fits early in the flat J-rp valley of the loss; stop on the gradient
        options.update(ftol=L_BFGS_FTOL, gtol=L_BFGS_GTOL)
    iterations = []
    try:
        res = minimize(guarded, theta0, jac=jac, method=method, bounds=bounds, options=options,
                       callback=lambda *_: iterations.append(1))
        x, fx, nit, message = res.x, res.fun, int(getattr(res, "nit", len(iterations))), str(res.message)
    except _StopAtNonFinite:
        x, fx, nit = guarded.best_x, guarded.best_loss, len(iterations)
        message = f"stopped at a non-finite loss or gradient (evaluation {guarded.nonfinite_at})"
    theta = np.array(x, dtype=float) if x is not None and np.isfinite(fx) and fx <= loss0 else theta0
    loss_y, loss_Z = model.losses(theta=theta, Z=Z)
    if not np.isfinite(loss_y + loss_Z):             # the backends disagree near an overflow: keep theta0
        theta, (loss_y, loss_Z) = theta0, model.losses(theta=theta0, Z=Z)
    return theta, {"loss_y": loss_y, "loss_Z": loss_Z, "loss": loss_y + loss_Z, "loss_start": loss0,
                   "nit": nit, "nfev": guarded.calls, "message": message,
                   "nonfinite": guarded.nonfinite_at, "seconds": time.time() - start}


def oracle_fit(window, scheme="exact", maxiter=500):
    """The M-step on the true activity of every neuron (window.Z_true), from the true parameters, in
    the prior box [0.4, 2] x truth: what the window identifies when nothing is hidden, the reference
    the fits' parameter errors are measured against. Returns m_step's (theta, info)."""
    from .LIFmesoCell import MesoModel      # the one place here that builds a model
    truth = window.net.theta
    Z = np.clip(window.Z_true, Z_MIN, Z_MAX)
    model = MesoModel(window, truth, Z, scheme)
    return m_step(model, truth, Z, list(zip(0.4 * truth, 2.0 * truth)), maxiter=maxiter)


class Adam:
    """Adam (Kingma & Ba, 2015) on a numpy array, with Keras' default constants."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-7):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, x, grad):
        if self.m is None:
            self.m, self.v = np.zeros_like(x), np.zeros_like(x)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad ** 2
        lr_t = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        return x - lr_t * self.m / (np.sqrt(self.v) + self.eps)


def e_step(model, theta, Z0, lr=1e-3, maxiters=200, itertol=3, on_step=None):
    """Minimise the loss over Z from Z0 with theta fixed, by Adam projected on [Z_MIN, Z_MAX].

    Stops after `itertol` steps without a new best loss, after `maxiters` steps, or at the first
    non-finite loss or gradient (never stepping from it), and returns the best Z seen (Z0 included)
    with info: loss, steps, history of (loss_y, loss_Z), seconds, nonfinite (None or the iteration
    that was rejected). on_step(i, Z, loss_y, loss_Z) is called after each finite evaluation, for
    logging and plots. NonFiniteError if the loss at Z0 is not finite.
    """
    start = time.time()
    adam = Adam(lr)
    Z = np.asarray(Z0, float)
    best_Z, best_loss, since_best, history, nonfinite = Z, np.inf, 0, [], None
    for i in range(maxiters):
        loss_y, loss_Z, grad = model.value_and_grad("Z", theta=theta, Z=Z)
        loss_y, loss_Z, grad = float(loss_y), float(loss_Z), np.asarray(grad)
        if not (np.isfinite(loss_y + loss_Z) and np.all(np.isfinite(grad))):
            if i == 0:
                raise NonFiniteError(f"the E-step starts from a non-finite loss ({loss_y + loss_Z}) or gradient")
            nonfinite = i
            break                                      # keep the best Z so far; never step on NaN
        history.append((loss_y, loss_Z))
        if on_step is not None:
            on_step(i, Z, loss_y, loss_Z)
        if loss_y + loss_Z < best_loss:
            best_Z, best_loss, since_best = Z, loss_y + loss_Z, 0
        else:
            since_best += 1
            if since_best >= itertol:
                break
        Z = np.clip(adam.step(Z, grad), Z_MIN, Z_MAX)
    return best_Z, {"loss": best_loss, "steps": len(history), "history": history, "nonfinite": nonfinite,
                    "seconds": time.time() - start}


def no_improvement(steps):
    """EM stops when an iteration no longer lowers the loss (model.md section 4.2)."""
    return len(steps) > 1 and steps[-1]["loss"] >= steps[-2]["loss"]


def em(model, theta, Z, bounds, max_steps, m_options, e_options, done=(), check_stop=None, log=print,
       on_phase=None, on_m_step=None, on_e_iteration=None, on_em_step=None):
    """EM from (theta, Z): an M-step, then an E-step, until an iteration no longer lowers the loss or
    max_steps iterations are complete (model.md section 4).

    m_options: keyword arguments of m_step (maxiter, method, grad); e_options: of e_step (lr, maxiters,
    itertol). done: the EM steps already complete (a resumed run), EM goes on at step len(done).
    Hooks, for saving and plots: check_stop() before every evaluation of the loss (it may raise
    KeyboardInterrupt), on_phase(what) as a phase begins ("M-step 3"), on_m_step(e, theta, Z, info_M),
    on_e_iteration(e, i, Z, loss_y, loss_Z), and on_em_step(step, Z) once EM step e is complete.

    Returns (theta, Z, steps): steps = done + one dict per new EM step: em_step, M (m_step's info),
    theta, loss_y, loss_Z, loss, E_steps, E_seconds, E_nonfinite, E_history (loss_y, loss_Z) per
    E-step iteration."""
    check_stop = check_stop or (lambda: None)
    on_phase = on_phase or (lambda what: None)
    steps = list(done)
    for e in range(len(steps), max_steps):
        if no_improvement(steps):
            break
        # M-step
        on_phase(f"M-step {e}")
        theta, info_M = m_step(model, theta, Z, bounds, **m_options, on_eval=check_stop)
        if info_M["nonfinite"] is not None:
            log(f"M-step {e}: a non-finite loss or gradient (evaluation {info_M['nonfinite']}) was rejected; "
                "the M-step stopped at its best finite parameters")
        if on_m_step is not None:
            on_m_step(e, theta, Z, info_M)

        # E-step
        on_phase(f"E-step {e}")

        def on_step(i, Z_i, loss_y, loss_Z, e=e):
            check_stop()
            if on_e_iteration is not None:
                on_e_iteration(e, i, Z_i, loss_y, loss_Z)
        Z, info_E = e_step(model, theta, Z, **e_options, on_step=on_step)
        if info_E["nonfinite"] is not None:
            log(f"E-step {e}: a non-finite loss or gradient at iteration {info_E['nonfinite']} was rejected; "
                f"back to the best latent so far (loss {info_E['loss']:.6f})")
        loss_y, loss_Z = model.losses(theta=theta, Z=Z)
        check_stop()
        on_phase(f"the saving of EM step {e}")
        steps.append({"em_step": e, "M": dict(info_M), "theta": theta, "loss_y": loss_y, "loss_Z": loss_Z,
                      "loss": loss_y + loss_Z, "E_steps": info_E["steps"], "E_seconds": info_E["seconds"],
                      "E_nonfinite": info_E["nonfinite"], "E_history": info_E["history"]})
        if on_em_step is not None:
            on_em_step(steps[-1], Z)
    if no_improvement(steps):
        log(f"EM step {steps[-1]['em_step']} did not improve the loss: stop")
    return theta, Z, steps


# -- Monte Carlo EM with a posterior E-step (issue 13) -------------------------------------------------
SAEM_BURN_IN = 3     # EM steps with step size 1 (plain Monte Carlo EM: the M-step sees only the newest draws)
SAEM_MEMORY = 4      # EM steps whose draws the M-step's objective keeps; older ones are dropped
SAEM_TOL = 2e-3      # after the burn-in, stop when no parameter moved by more than this, relative, in an M-step
SMOOTHING_LAG = 25   # bins of later observations every posterior marginal conditions on (smc.fixed_lag_marginals)


def saem_step_size(e):
    """gamma_e of the stochastic approximation Q_e = (1 - gamma_e) Q_{e-1} + gamma_e Q_hat_e: 1 for the
    first SAEM_BURN_IN EM steps, then 1/(j + 1) for the j-th step after them (j = 1, 2, ...), the
    averaging of Delyon, Lavielle & Moulines (1999) with exponent 1 (sum gamma = inf, sum gamma^2 < inf)."""
    return 1.0 if e < SAEM_BURN_IN else 1.0 / (e - SAEM_BURN_IN + 2)


class DrawMemory:
    """The latent draws of the last SAEM_MEMORY E-steps with their weights c_e in Q_e (sum 1), laid out
    as the batches of one MesoModel: slot j holds `draws` trajectories of B batches each. Truncating the
    memory renormalises the weights of the steps kept (the weight dropped is at most
    prod (1 - gamma) over SAEM_MEMORY steps, under 1/SAEM_MEMORY)."""

    def __init__(self, Z_init, draws, memory=SAEM_MEMORY):
        self.draws, self.memory = draws, memory
        self.Z = [np.broadcast_to(Z_init, (draws,) + Z_init.shape).copy()]      # each (S, B, M, T)
        self.c = [1.0]

    def add(self, Z_draws, gamma):
        self.c = [c * (1 - gamma) for c in self.c] + [gamma]
        self.Z.append(np.asarray(Z_draws, float))
        self.Z, self.c = self.Z[-self.memory:], self.c[-self.memory:]
        total = sum(self.c)
        self.c = [c / total for c in self.c]

    def stacked(self):
        """Z (memory * S * B, M, T) with empty slots repeating the oldest step at weight 0, and the batch
        weights, c_e / (S * B) for every batch of step e."""
        slots = [self.Z[0]] * (self.memory - len(self.Z)) + self.Z
        c = [0.0] * (self.memory - len(self.c)) + self.c
        S, B = self.Z[0].shape[:2]
        return (np.concatenate([z.reshape((S * B,) + z.shape[2:]) for z in slots]),
                np.repeat(np.asarray(c) / (S * B), S * B))

    def mean(self):
        """The weighted mean of the draws, sum_e c_e * (mean of step e's S draws): (B, M, T)."""
        return sum(c * z.mean(0) for c, z in zip(self.c, self.Z))


def smc_e_step(theta, window, reference, particles, sweeps, seed, scheme, dtype, check_stop=lambda: None):
    """The posterior E-step at theta: one pass of the plain particle filter, which gives log p_hat(y | theta)
    (and the chain's start if reference is None), then `sweeps` sweeps of particle Gibbs with ancestor
    sampling (src.smc.gibbs_sweep) from `reference`. seed: np.random.SeedSequence.

    Returns (draws (sweeps, B, M, T), info): log_p_hat, the posterior mean and the 5/50/95% quantiles
    of every Z(t) (smc.fixed_lag_marginals over the sweeps, lag SMOOTHING_LAG), seconds."""
    from . import smc
    start = time.time()
    children = seed.spawn(1 + sweeps)
    first_draw, plain = smc.gibbs_sweep(theta, window, None, particles, children[0], scheme, dtype=dtype)
    reference = first_draw if reference is None else reference
    draws, results = [], []
    for child in children[1:]:
        check_stop()
        reference, result = smc.gibbs_sweep(theta, window, reference, particles, child, scheme, dtype=dtype)
        draws.append(reference)
        results.append(result)
    mean, (q05, q50, q95) = smc.fixed_lag_marginals(results, SMOOTHING_LAG)
    return np.stack(draws), {"log_p_hat": plain.log_p_hat, "mean": mean, "q05": q05, "q50": q50, "q95": q95,
                             "seconds": time.time() - start}


def saem(model, theta, memory, window, bounds, max_steps, m_options, smc_options, seed, done=(),
         reference=None, check_stop=None, log=print, on_phase=None, on_m_step=None, on_em_step=None):
    """Monte Carlo EM by stochastic approximation (SAEM; Delyon, Lavielle & Moulines 1999) with the
    conditional particle filter as the simulation step (Lindsten 2013): in EM step e,
        M-step  minimise Q_{e-1}(theta) = sum_j c_j mean_s loss(theta; Z_js), the weighted mean of the
                losses of the draws in `memory` (DrawMemory), as one MesoModel with the draws as batches
                and the weights as its batch weights (the gradient stays exact);
        E-step  smc_e_step at the new theta: new draws, log p_hat(y | theta), the posterior marginals;
                memory.add(draws, saem_step_size(e)).
    Stops after max_steps EM steps, or after the burn-in once an M-step moves no parameter by more than
    SAEM_TOL relative. model: MesoModel on the window repeated memory.memory * S times, built with
    batch_weights. smc_options: particles, sweeps, scheme, dtype. seed: the run's seed; EM step e uses
    np.random.SeedSequence([seed, e]). Hooks as in `em`, with on_em_step(step, info_E, draws, memory):
    memory after the step's draws were added.

    The first M-step of a new run has two candidate latents, and EM step 0 is done from both:
        spikes     memory's start, the smoothed observed spikes (as the MAP E-step starts);
        posterior  draws from the posterior at theta_init (seed SeedSequence(seed, spawn_key=(1,))).
    The step whose new theta has the higher log p_hat(y | theta) is kept. Measured on the shipped window:
    from the truth, the spikes moved J_3 by -60% and EM stayed at a second maximum of p(y | theta),
    5-8 nats below the truth's; from random draws of the prior, the posterior at theta_init drove theta to
    the box's corners (log p_hat -7,100 to -58,600 after EM step 0, against -4,370 to -4,630 from
    the spikes).

    Returns (theta, steps): steps = done + one dict per new EM step, as `em`'s with loss = -log p_hat /
    (B*M*T) (the run with the lowest is the one whose parameters explain the spikes best) and log_p_hat."""
    check_stop = check_stop or (lambda: None)
    on_phase = on_phase or (lambda what: None)
    steps = list(done)
    n = window.B * window.M * window.T

    def e_step(theta, reference, seed_sequence, what):
        on_phase(what)
        return smc_e_step(theta, window, reference, smc_options["particles"], smc_options["sweeps"], seed_sequence,
                          smc_options["scheme"], smc_options["dtype"], check_stop)

    def em_step(e, theta, memory, reference):
        """M-step on memory, E-step at the new theta: (theta, info_M, draws, info_E)."""
        on_phase(f"M-step {e}")
        Z_stack, weights = memory.stacked()
        model.set_batch_weights(weights)
        theta, info_M = m_step(model, theta, Z_stack, bounds, **m_options, on_eval=check_stop)
        draws, info_E = e_step(theta, reference, np.random.SeedSequence([seed, e]), f"E-step {e} (SMC)")
        return theta, info_M, draws, info_E

    for e in range(len(steps), max_steps):
        if len(steps) > SAEM_BURN_IN and steps[-1]["max_relative_change"] < SAEM_TOL:
            log(f"EM step {steps[-1]['em_step']}: no parameter moved by more than {SAEM_TOL} relative: stop")
            break
        theta_before = np.asarray(theta, float)
        candidates = [(memory, reference, "the smoothed spikes")]
        if e == 0:
            start, info = e_step(theta, reference, np.random.SeedSequence(seed, spawn_key=(1,)),
                                 "E-step at theta_init (SMC)")
            from_posterior = copy.deepcopy(memory)
            from_posterior.add(start, 1.0)
            candidates.append((from_posterior, start[-1], "the posterior at theta_init"))
            log(f"E-step at theta_init: log p_hat(y | theta) {info['log_p_hat']:.2f}, {info['seconds']:.1f} s")
        tried = [(em_step(e, theta_before, m, r), m, name) for m, r, name in candidates]
        if len(tried) > 1:
            log("EM step 0 from " + ", from ".join(f"{name}: log p_hat(y | theta) {t[3]['log_p_hat']:.2f}"
                                                   for t, _, name in tried))
        (theta, info_M, draws, info_E), memory, name = max(tried, key=lambda t: t[0][3]["log_p_hat"])
        if on_m_step is not None:
            on_m_step(e, theta, memory, info_M)
        reference = draws[-1]
        gamma = saem_step_size(e)
        memory.add(draws, gamma)
        check_stop()
        on_phase(f"the saving of EM step {e}")
        steps.append({"em_step": e, "M": dict(info_M), "theta": theta, "loss_y": info_M["loss_y"],
                      "loss_Z": info_M["loss_Z"], "loss": -info_E["log_p_hat"] / n, "log_p_hat": info_E["log_p_hat"],
                      "gamma": gamma, "max_relative_change": float(np.max(np.abs(theta - theta_before) /
                                                                         np.abs(theta_before))),
                      "E_steps": smc_options["sweeps"], "E_seconds": info_E["seconds"], "E_nonfinite": None,
                      "E_history": []} | ({"start": name} if e == 0 else {}))
        if on_em_step is not None:
            on_em_step(steps[-1], info_E, draws, memory)
    return theta, steps
