"""The neuLVM likelihood in plain numpy, float64: the reference every faster version is checked against.
The original project's fast_lossy and fast_lossZ (its numpy loss_y and loss_Z) are here `losses`,
which returns both; `objective` is the M-step's loss of theta for finite differences.

It is written to be read next to shared/docs/model.md section 3: one loop over the bins of the
window, and in each bin the steps 3.1-3.7 in order. Symbols as in src/network.py (Notation);
in addition, for population a in bin t:
    Isyn   synaptic drive of each presynaptic population (Hz)
    h      total input, sum_b W[b, a] Isyn_b + eps * I_ext_a (potential units / s)
    V      potential of each age cohort, shape (B, M, K); index k = cohort that fired k+1 bins ago
    logS   log survival of each cohort up to the start of the bin
    lam    escape rate (1/s), P = 1 - exp(-lam*dt) the probability to fire in the bin
    Zbar   expected fraction firing in the bin, with the finite-size correction Lambda
The same per-bin step drives the free simulation (model.md section 5).

The integrator of the potentials over a bin ("scheme", model.md section 3.2) is defined once, in
`leak_step`; every other module (the TensorFlow likelihood, the compiled free simulation) takes its
(q, g) from there. A new scheme is one more branch of `leak_step` and one oracle test.
"""
import numpy as np

from .window import Window, refractory_bins

HAZARD_FLOOR = 1e-8     # escape rate of a refractory cohort (1/s)
LOG_HAZARD_MAX = 80.0   # cap on V - ft: keeps exp() finite in float32; exp(80)*dt already gives P = 1
SMALL_X = 1e-6          # below this lam*dt, log P comes from its series (log P underflows near V - ft = -745)
VAR_FLOOR = 0.1         # additive variance of the transition density, in units of dt / N
S0_SUBSTEPS = 16        # midpoints per bin in the quadrature of the initial survival
LOG_2PI = np.log(2 * np.pi)
SCHEMES = ("exact", "euler")    # the integrators of model.md section 3.2; "exact" is the default
DEFAULT_SCHEME = "exact"


def leak_step(scheme, amem, dt, expm1=np.expm1):
    """(q, g) of the update over one bin, V <- q V + g (amem rp + h), with h held over the bin.

    exact: the leak integrated exactly, q = exp(-dt amem), g = (1 - q)/amem (1 - q from expm1,
           without cancellation); the scheme of the microscopic simulator and of NEST.
    euler: forward Euler, q = 1 - dt amem, g = dt (the original project's).
    Both keep the fixed point V = rp + h/amem. amem: array (numpy or TensorFlow); expm1: np.expm1 or
    tf.math.expm1, so that the TensorFlow likelihood uses this same definition.
    """
    if scheme == "exact":
        one_minus_q = -expm1(-dt * amem)
        return 1 - one_minus_q, one_minus_q / amem
    if scheme == "euler":
        return 1 - dt * amem, dt
    raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def check_scheme(scheme):
    """scheme itself, or ValueError naming the schemes there are."""
    leak_step(scheme, 1.0, 1.0)
    return scheme


def escape(V, ft, refractory, dt):
    """Escape rate lam (1/s) and firing probability P = 1 - exp(-lam*dt), computed without cancellation."""
    lam = np.where(refractory, HAZARD_FLOOR, np.exp(np.minimum(V - ft, LOG_HAZARD_MAX)))
    return lam, -np.expm1(-lam * dt)


def log_fire_probability(V, ft, refractory, dt):
    """log P, P = 1 - exp(-lam*dt), finite however negative V - ft is: below x = lam*dt = SMALL_X it is
    log(x) - x/2 (error x^2/24 < 1e-13) with log(x) = V - ft + log(dt) taken without exponentiating."""
    log_lam = np.where(refractory, np.log(HAZARD_FLOOR), np.minimum(V - ft, LOG_HAZARD_MAX))
    x = np.exp(log_lam) * dt
    small = x < SMALL_X
    return np.where(small, log_lam + np.log(dt) - x / 2, np.log(-np.expm1(-np.where(small, 1.0, x))))


def stationary_start(net, A0, dt, n_ages):
    """Potential and log survival of a cohort of age s = k*dt, k = 0..n_ages-1, at the constant rates A0.

    The drive is h0 = rp + (W^T A0)/amem, so V(s) = h0 * (1 - exp(-amem*s)) once s >= ref_t (0 before),
    and log S0(s) = -integral_0^s lam(V(r)) dr, by the midpoint rule with S0_SUBSTEPS points per bin
    (midpoints never fall on ref_t, where V jumps). A0: (B, M) Hz. Returns V0, logS0, each (B, M, n_ages).
    """
    amem, ft = net.amem[:, None], net.ft[:, None]                         # (M, 1)
    h0 = net.free_potential(A0)                                            # (B, M)

    def potential(s):
        return np.where(s < net.ref_t - 1e-12, 0.0, h0[..., None] * -np.expm1(-amem * s))

    delta = dt / S0_SUBSTEPS
    r_mid = (np.arange((n_ages - 1) * S0_SUBSTEPS) + 0.5) * delta
    lam_mid, _ = escape(potential(r_mid), ft, r_mid < net.ref_t, dt)
    integral = np.concatenate([np.zeros(lam_mid.shape[:-1] + (1,)), np.cumsum(lam_mid * delta, axis=-1)], -1)
    return potential(np.arange(n_ages) * dt), -integral[..., ::S0_SUBSTEPS]


class BinStep:
    """One bin of model.md section 3 for the population cohorts and the observed neurons.

    Holds the state (Isyn, V, logS of the cohorts, V of the observed neurons) between bins; scheme
    names the integrator of the potentials (leak_step).
    """

    def __init__(self, net, dt, K, A0, scheme, Nobs=0, obs_age0=None):
        self.net, self.dt, self.K = net, dt, K
        self.q, self.g = leak_step(scheme, net.amem[:, None], dt)                 # (M, 1) each
        self.n_ref = refractory_bins(net.ref_t, dt)
        self.e_syn = np.exp(-dt * net.asyn)                                   # (M,)
        self.cohort_refractory = np.arange(K) < self.n_ref                    # (K,)
        self.Isyn = np.array(A0, dtype=float)                                  # (B, M)
        B, M = self.Isyn.shape
        oldest = K if obs_age0 is None or obs_age0.size == 0 else max(K, int(obs_age0.max()) + 1)
        V0, logS0 = stationary_start(net, self.Isyn, dt, oldest)
        self.V, self.logS = V0[..., :K].copy(), logS0[..., :K].copy()           # (B, M, K)
        if obs_age0 is None:
            obs_age0 = np.zeros((B, M, Nobs), dtype=int)
        self.obs_age = np.array(obs_age0)                                       # (B, M, Nobs)
        self.V_obs = np.take_along_axis(V0, self.obs_age.reshape(B, M, -1), axis=-1)   # (B, M, Nobs)

    def drive(self, Z_prev, I_ext, first):
        """3.1: synaptic input from the previous bin's activity, and the total input h (B, M)."""
        if not first:
            self.Isyn = self.e_syn * self.Isyn + (1 - self.e_syn) * Z_prev / self.dt
        return self.Isyn @ self.net.W + self.net.eps * I_ext

    def cohorts(self, h, Z_past):
        """3.2-3.6 for the cohorts: returns Zbar (B, M) and the cohort lam (B, M, K).

        Z_past[..., k] = Z(t-1-k), the mass that fired k+1 bins ago, shape (B, M, K).
        """
        self.V = self.potential_step(self.V, h)                                   # 3.2
        self.V[..., self.cohort_refractory] = 0.0
        lam, P = escape(self.V, self.net.ft[:, None], self.cohort_refractory, self.dt)   # 3.3
        m = np.exp(self.logS) * Z_past                                            # 3.4-3.5
        v = -np.expm1(self.logS) * m
        sum_v = v.sum(-1)
        Lambda = np.divide((P * v).sum(-1), sum_v, out=np.zeros_like(sum_v), where=sum_v > 0)
        Zbar = (P * m).sum(-1) + Lambda * (1 - m.sum(-1))                        # 3.6
        return np.clip(Zbar, 0.0, 1.0), lam

    def potential_step(self, V, h):
        """3.2: V <- q V + g (amem rp + h) over the bin, for V of shape (B, M, n) and h (B, M)."""
        amem, rp = self.net.amem[:, None], self.net.rp[:, None]
        return self.q * V + self.g * (amem * rp + h[..., None])

    def observed(self, h):
        """The observed neurons' escape rate, firing probability and its log in this bin, (B, M, Nobs) each."""
        net, dt = self.net, self.dt
        self.V_obs = self.potential_step(self.V_obs, h)
        refractory = self.obs_age < self.n_ref
        self.V_obs[refractory] = 0.0
        lam, P = escape(self.V_obs, net.ft[:, None], refractory, dt)
        return lam, P, log_fire_probability(self.V_obs, net.ft[:, None], refractory, dt)

    def advance(self, lam, y_obs):
        """End of the bin: cohorts age by one bin (a new one enters at V = 0, S = 1, the oldest drops
        out) and observed neurons that fired (y_obs = 1) are reset."""
        self.logS = np.concatenate([np.zeros_like(self.logS[..., :1]), (self.logS - lam * self.dt)[..., :-1]], -1)
        self.V = np.concatenate([np.zeros_like(self.V[..., :1]), self.V[..., :-1]], -1)
        fired = y_obs > 0
        self.obs_age = np.where(fired, 0, self.obs_age + 1)
        self.V_obs = np.where(fired, 0.0, self.V_obs)


def log_p_observed(y, logP, lam, dt):
    """log-probability of each observed neuron's bin: log P if it fired (y = 1), -lam*dt if not."""
    return np.where(y > 0, logP, -lam * dt)


def gaussian_nll(Z, Zbar, N, dt):
    """3.7: -log Normal(Z; Zbar, Zbar/N + VAR_FLOOR*dt/N), elementwise."""
    var = Zbar / N + VAR_FLOOR * dt / N
    return 0.5 * (LOG_2PI + np.log(var) + (Z - Zbar) ** 2 / var)


def losses(net, window: Window, Z, scheme, batch_weights=None):
    """(loss_y, loss_Z) of model.md section 3 for the network net (its theta is used), latent Z and
    integrator `scheme` (leak_step).

    Z: (B, M, T) fractions. Both losses are sums divided by the number of population-bins B*M*T; with
    batch_weights (B,) summing to 1, sum_b w_b (sum of batch b) / (M*T) instead: the mean over latent
    draws stacked as batches, weighted as the SMC E-step's M-step weighs them (src.em.DrawMemory).
    """
    w = window
    Z = np.asarray(Z, dtype=float)
    if Z.shape != (w.B, w.M, w.T):
        raise ValueError(f"Z must have shape {(w.B, w.M, w.T)}, got {Z.shape}")
    A0 = w.A0
    Z_full = np.concatenate([np.broadcast_to((A0 * w.dt)[..., None], (w.B, w.M, w.K)), Z], -1)  # (B, M, K+T)
    y = w.y[..., w.K:]                                                              # (B, M, Nobs, T)
    step = BinStep(net, w.dt, w.K, A0, scheme, w.Nobs, w.obs_age[..., 0])
    nll_Z = np.zeros((w.B, w.M, w.T))
    logp_y = np.zeros((w.B, w.M, w.Nobs, w.T))
    for t in range(w.T):
        h = step.drive(Z_full[..., w.K + t - 1], w.I_ext[..., t], first=(t == 0))
        Z_past = Z_full[..., t:w.K + t][..., ::-1]                                 # Z(t-1-k), k = 0..K-1
        Zbar, lam = step.cohorts(h, Z_past)
        nll_Z[..., t] = gaussian_nll(Z[..., t], Zbar, net.N, w.dt)
        lam_obs, _, logP_obs = step.observed(h)
        logp_y[..., t] = log_p_observed(y[..., t], logP_obs, lam_obs, w.dt)
        step.advance(lam, y[..., t])
    if batch_weights is not None:
        weights = np.asarray(batch_weights, dtype=float)
        return -weights @ logp_y.sum((1, 2, 3)) / (w.M * w.T), weights @ nll_Z.sum((1, 2)) / (w.M * w.T)
    n = w.B * w.M * w.T
    return -logp_y.sum() / n, nll_Z.sum() / n


def objective(theta, net, window, Z, scheme, batch_weights=None):
    """loss_y + loss_Z as a function of the flat parameter vector theta = (amem, J, rp, ft), for scipy."""
    loss_y, loss_Z = losses(net.with_theta(theta), window, Z, scheme, batch_weights)
    return loss_y + loss_Z


def simulate(net, dt, K, T, A0, rng, I_ext=None, Nobs=0, *, scheme):
    """Free simulation (model.md section 5): Z(t) ~ Normal(Zbar, Zbar/N), negative values set to 0,
    and Nobs observed neurons per population that fire with probability P.

    A0: (B, M) initial rates (Hz), also the activity of the K history bins. rng: np.random.Generator.
    Returns Z (B, M, T) and spikes (B, M, Nobs, T).
    """
    A0 = np.asarray(A0, dtype=float)
    B, M = A0.shape
    I_ext = np.zeros((B, M, T)) if I_ext is None else np.asarray(I_ext, dtype=float)
    Z_full = np.concatenate([np.broadcast_to((A0 * dt)[..., None], (B, M, K)), np.zeros((B, M, T))], -1)
    spikes = np.zeros((B, M, Nobs, T))
    step = BinStep(net, dt, K, A0, scheme, Nobs, np.full((B, M, Nobs), K))
    for t in range(T):
        h = step.drive(Z_full[..., K + t - 1], I_ext[..., t], first=(t == 0))
        Zbar, lam = step.cohorts(h, Z_full[..., t:K + t][..., ::-1])
        Z_full[..., K + t] = np.maximum(Zbar + np.sqrt(Zbar / net.N) * rng.standard_normal((B, M)), 0.0)
        _, P_obs, _ = step.observed(h)
        spikes[..., t] = rng.random(P_obs.shape) < P_obs
        step.advance(lam, spikes[..., t])
    return Z_full[..., K:], spikes
