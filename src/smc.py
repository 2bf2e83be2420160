"""A bootstrap particle filter for the mesoscopic state-space model: the base of the posterior E-step of
issue 13 (model.md sections 3 and 5). It estimates the marginal likelihood p(y | theta) of the observed
spike trains, with the latent Z integrated out, and keeps the particles' genealogy for a smoother.

    from src import neulvm, smc
    window = neulvm.load_window("dataset/3pop_noinput_small.npz")
    log_p = smc.log_likelihood(theta, window, particles=1000, seed=0)          # log p_hat(y | theta)
    result = smc.filter_window(theta, window, particles=1000, seed=0)         # everything, FilterResult
    Z_draws = smc.draw_trajectories(result, S=10, rng=np.random.default_rng(1))   # (S, B, M, T)

Notation as in src/network.py, and in addition:
    P        particles per batch; the particles of all batches are the batch axis of fast_np.BinStep,
             row b*P + i for particle i of batch b, so every per-bin equation is the numpy reference's
    S        trajectories drawn from the filter's genealogy
    logW     log weight of each particle, (B, P), normalised so that sum(exp(logW)) = 1 per batch
    ESS      effective sample size, (sum w)^2 / sum w^2

The state of a particle is what fast_np.BinStep holds for one row (Isyn, V and log S of the cohorts, V
and age of the observed neurons; PARTICLE_STATE) and the Z history of its cohorts, Z(t-1-k) for
k = 0..K-1. In bin t, for every batch:
  1. drive and cohorts (model.md 3.1-3.6): Zbar(t) of every particle;
  2. weight: w = p(y(t) | Z(..t-1)), the observed neurons' probabilities of their spikes in bin t (they
     depend on the latent only up to t-1, through Isyn(t)); the likelihood increment is
     log sum_i W_i w_i, with W the normalised weights carried from bin t-1;
  3. resample (systematic) if ESS < resample_threshold * P; the weights become uniform;
  4. draw Z(t) from the transition density (model.md 3.7) and advance (ages, resets of the observed neurons).
log p_hat(y | theta) is the sum of the increments: with this accounting of the weights across bins
that were not resampled, p_hat (not its log) is an unbiased estimate of p(y | theta) for any P.

The transition (`transition`):
  "density" (default): Z(t) = clip(Zbar + sqrt(Zbar/N + VAR_FLOOR*dt/N) * xi, Z_MIN, Z_MAX), xi ~ N(0, 1):
             the Gaussian of model.md 3.7 whose negative log density is loss_Z (fast_np.gaussian_nll),
             kept in the box the E-step keeps Z in (window.Z_MIN, Z_MAX). The clipping puts the mass
             outside the box on its edges, so this is the model the filter's p(y | theta) refers to.
  "free":    Z(t) = max(Zbar + sqrt(Zbar/N) * xi, 0), the draw of fast_np.simulate (model.md section 5).
             With no observed neurons the filter then reproduces fast_np.simulate bit for bit.

Random numbers, all from the caller's np.random.Generator, in this order in every bin: one uniform per
batch that is resampled (only if any is), then the normals xi, shape (B*P, M). Same seed, same output.

Genealogy: `ancestors[t, b, i]` is the particle of bin t-1 whose state particle i continued before Z(t)
was drawn. Tracing a final particle back through it (`trace_paths`, `draw_trajectories`, with the final
weights) samples the filter's joint smoothing approximation of p(Z | y, theta). Because of resampling,
few distinct paths survive far back (path degeneracy: on the shipped window, 200 particles trace back to
one ancestor within 2 s), so the posterior E-step does not use these draws alone:
  - particle Gibbs with ancestor sampling (Lindsten, Jordan & Schon 2014; `gibbs_sweep`, `gibbs_chain`):
    with `reference`, the last particle is held to a trajectory, and in a bin where its batch is
    resampled its ancestor is drawn with weights W_i * f(Z_ref(t) | Zbar_i(t)) (`log_transition`), while
    the free particles are resampled multinomially (`inverse_cdf`). The exact ancestor weights of this
    non-Markov state would also carry the reference's later bins under each candidate's history; they
    are truncated to the current bin (lag 0), an approximation that tests/test_smc_compiled.py checks by
    simulation-based calibration;
  - `fixed_lag_marginals`: the posterior marginals of each bin from particles traced back over a few
    resamplings only.
`filter_mean[b, :, t]` is E[Z(t) | y(0..t+1)] under the filter: y(t+1) is the first observation that
depends on Z(t) (for the last bin, which no observation depends on, E[Z(T-1) | y(0..T-1)]).

Speed: numpy with the particles vectorised, 1.06x the cost of fast_np.simulate for the same number of
rows: 128 s per pass for P = 1,000 on the default window, measured on a loaded 2-core machine; the
compiled filter (src/smc_compiled.py, the default of filter_window) took 19-38 s in float32
(bench/bench_smc.py). Memory: the draws are kept, 8*T*B*P*M bytes (60 MB for P = 1,000 on the default
window), and the ancestors, 8*T*B*P.
"""
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, logsumexp

from . import fast_np
from .fast_np import LOG_2PI, VAR_FLOOR, BinStep, check_scheme
from .window import Z_MAX, Z_MIN, Window

TRANSITIONS = ("density", "free")          # see the module docstring
RESAMPLE_THRESHOLD = 0.5                   # resample when ESS < RESAMPLE_THRESHOLD * P
PARTICLE_STATE = ("Isyn", "V", "logS", "V_obs", "obs_age")   # BinStep's arrays with one row per particle


@dataclass(frozen=True)
class FilterResult:
    """What one pass of the particle filter returns (B batches, T bins, P particles, M populations)."""
    log_p_hat: float            # log p_hat(y | theta), summed over the batches
    log_p_hat_batch: np.ndarray  # (B,) per batch
    log_increments: np.ndarray  # (B, T): log sum_i W_i w_i(t), the terms of log_p_hat_batch
    ess: np.ndarray             # (B, T): ESS after weighting by y(t), before resampling
    resampled: np.ndarray       # (B, T) bool: resampled in bin t (before drawing Z(t))
    Z: np.ndarray               # (T, B, P, M): Z(t) drawn for particle i in bin t
    ancestors: np.ndarray       # (T, B, P) int: parent in bin t-1 of particle i of bin t
    log_weights: np.ndarray     # (B, P): final normalised log weights of the trajectories
    filter_mean: np.ndarray     # (B, M, T): E[Z(t) | y(0..t+1)]
    particles: int
    transition: str
    scheme: str


@dataclass(frozen=True)
class Noise:
    """Every random number of one pass, drawn before it (draw_noise), so that the numpy filter and the
    compiled one (src/smc_compiled.py) consume the same numbers and a pass depends only on its seed."""
    xi: np.ndarray            # (T, B, P, M) standard normals of the transition draws of Z(t)
    u_resample: np.ndarray    # (T, B, P) uniforms: [..., 0] for systematic resampling, [..., :P-1] for
                              # the conditional filter's multinomial resampling of the free particles
    u_ancestor: np.ndarray    # (T, B) uniforms: the ancestor of the reference particle (conditional)


def draw_noise(rng, T, B, P, M):
    """Noise of one pass from rng, in this order: xi, u_resample, u_ancestor."""
    return Noise(xi=rng.standard_normal((T, B, P, M)), u_resample=rng.random((T, B, P)),
                 u_ancestor=rng.random((T, B)))


def effective_sample_size(log_weights):
    """(sum w)^2 / sum w^2 along the last axis, from log weights (any normalisation)."""
    w = np.exp(log_weights - log_weights.max(-1, keepdims=True))
    return w.sum(-1) ** 2 / (w ** 2).sum(-1)


def systematic_resample(weights, u):
    """Indices of P draws by systematic resampling: the positions (u + j)/P, j = 0..P-1, each mapped to
    the first index whose cumulative weight exceeds it. weights: (P,) normalised; u in [0, 1).
    Particle i is drawn floor(P w_i) or ceil(P w_i) times."""
    P = len(weights)
    return inverse_cdf(weights, (u + np.arange(P)) / P)


def inverse_cdf(weights, u):
    """Index of each uniform u (any shape) under the normalised weights (P,): the number of cumulative
    weights <= u, at most P-1. Multinomial resampling with i.i.d. u, systematic with u = (u0 + j)/P."""
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0                    # rounding: every u < 1 must fall inside
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(weights) - 1)


def transition_sd(Zbar, N, dt, transition):
    """Standard deviation of the transition Z(t) | Zbar: model.md 3.7 (the variance of
    fast_np.gaussian_nll) for "density", Zbar/N as fast_np.simulate for "free"."""
    if transition == "density":
        return np.sqrt(Zbar / N + VAR_FLOOR * dt / N)
    return np.sqrt(Zbar / N)


def draw_Z(Zbar, N, dt, xi, transition):
    """Z(t) from Zbar (rows, M) and standard normals xi of the same shape, for `transition`."""
    if transition == "density":
        return np.clip(Zbar + transition_sd(Zbar, N, dt, transition) * xi, Z_MIN, Z_MAX)
    if transition == "free":
        return np.maximum(Zbar + np.sqrt(Zbar / N) * xi, 0.0)          # fast_np.simulate's expression
    raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")


def log_transition(Z, Zbar, N, dt, transition):
    """log density of Z(t) given Zbar under `transition` (draw_Z), elementwise: the Gaussian density
    inside the box, and the log probability of the point mass where the draw is clipped (Z at Z_MIN or
    Z_MAX for "density", Z = 0 for "free"). The ancestor weights of the conditional filter."""
    Z, Zbar = np.broadcast_arrays(np.asarray(Z, float), np.asarray(Zbar, float))
    sd = transition_sd(Zbar, N, dt, transition)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (Z - Zbar) / sd
        log_density = -0.5 * (LOG_2PI + x ** 2) - np.log(sd)
        if transition == "density":
            return np.where(Z <= Z_MIN, log_ndtr((Z_MIN - Zbar) / sd),
                            np.where(Z >= Z_MAX, log_ndtr((Zbar - Z_MAX) / sd), log_density))
        # "free": Zbar = 0 gives Z = 0 with probability 1
        at_zero = np.where(Zbar > 0, log_ndtr(-Zbar / np.where(Zbar > 0, sd, 1.0)), 0.0)
        return np.where(Z <= 0, at_zero, np.where(Zbar > 0, log_density, -np.inf))


def checked_arguments(A0, y, I_ext, obs_age0, particles, scheme, transition, resample_threshold, reference):
    """The arrays of particle_filter (this module's and src/smc_compiled.py's) as numpy arrays, or a
    ValueError naming the argument and what was expected."""
    check_scheme(scheme)
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")
    P = particles
    if not (isinstance(P, (int, np.integer)) and P >= 1):
        raise ValueError(f"particles must be an integer >= 1, got {P!r}")
    if not 0 <= resample_threshold <= 1:
        raise ValueError(f"resample_threshold must be in [0, 1], got {resample_threshold!r}")
    A0, y, I_ext = (np.asarray(a, dtype=float) for a in (A0, y, I_ext))
    B, M = A0.shape
    if y.ndim != 4 or y.shape[:2] != (B, M):
        raise ValueError(f"y must have shape ({B}, {M}, Nobs, T), got {y.shape}")
    Nobs, T = y.shape[2:]
    if I_ext.shape != (B, M, T):
        raise ValueError(f"I_ext must have shape {(B, M, T)}, got {I_ext.shape}")
    obs_age0 = np.asarray(obs_age0)
    if obs_age0.shape != (B, M, Nobs):
        raise ValueError(f"obs_age0 must have shape {(B, M, Nobs)}, got {obs_age0.shape}")
    if reference is not None:
        reference = np.asarray(reference, dtype=float)
        if reference.shape != (B, M, T) or P < 2:
            raise ValueError(f"reference must have shape {(B, M, T)} and particles >= 2, got "
                             f"{reference.shape} and {P}")
    return A0, y, I_ext, obs_age0, reference


def particle_filter(net, dt, K, A0, y, I_ext, obs_age0, particles, rng, scheme=fast_np.DEFAULT_SCHEME,
                    transition="density", resample_threshold=RESAMPLE_THRESHOLD, reference=None):
    """One pass of the bootstrap filter over B independent batches (model.md sections 3 and 5), or of
    the conditional filter with ancestor sampling if `reference` is given (the module docstring).

    net: src.network.Network (its theta is used); A0: (B, M) initial rates (Hz), also the activity of
    the K history bins; y: (B, M, Nobs, T) observed spikes of the window bins (Nobs may be 0);
    I_ext: (B, M, T); obs_age0: (B, M, Nobs) age index of each observed neuron in the first bin;
    particles: P; rng: np.random.Generator (its Noise is drawn first) or a Noise; resample_threshold:
    resample when ESS < it * P (0: never); reference: None or (B, M, T), the trajectory that the last
    particle, P-1, is held to. Returns a FilterResult.
    """
    A0, y, I_ext, obs_age0, reference = checked_arguments(A0, y, I_ext, obs_age0, particles, scheme, transition,
                                                          resample_threshold, reference)
    P, (B, M), (Nobs, T) = particles, A0.shape, y.shape[2:]
    noise = rng if isinstance(rng, Noise) else draw_noise(rng, T, B, P, M)

    rows = lambda a: np.repeat(a, P, axis=0)                         # noqa: E731  (B, ...) -> (B*P, ...)
    step = BinStep(net, dt, K, rows(A0), scheme, Nobs, rows(obs_age0))
    Z_past = np.repeat(rows(A0 * dt)[..., None], K, -1)              # (B*P, M, K): Z(t-1-k)
    log_W = np.full((B, P), -np.log(P))
    Z = np.zeros((T, B, P, M))
    ancestors = np.broadcast_to(np.arange(P), (T, B, P)).copy()
    log_increments, ess = np.zeros((B, T)), np.zeros((B, T))
    resampled = np.zeros((B, T), dtype=bool)
    filter_mean = np.zeros((B, M, T))
    for t in range(T):
        h = step.drive(Z_past[..., 0], rows(I_ext[..., t]), first=(t == 0))      # 3.1, (B*P, M)
        Zbar, lam = step.cohorts(h, Z_past)                                       # 3.2-3.6
        # weight: log p(y(t) | Z(..t-1)), the observed neurons' term of fast_np.losses
        y_t = rows(y[..., t])                                                     # (B*P, M, Nobs)
        lam_obs, _, logP_obs = step.observed(h)
        log_w = fast_np.log_p_observed(y_t, logP_obs, lam_obs, dt).sum((1, 2)).reshape(B, P)
        log_joint = log_W + log_w
        log_increments[:, t] = logsumexp(log_joint, -1) - logsumexp(log_W, -1)    # exactly 0 if every w = 1
        log_W = log_joint - logsumexp(log_joint, -1, keepdims=True)
        ess[:, t] = effective_sample_size(log_W)
        if t > 0:                    # E[Z(t-1) | y(..t)]: the particles still carry Z(t-1) as drawn
            filter_mean[..., t - 1] = np.einsum("bp,bpm->bm", np.exp(log_W), Z_past[..., 0].reshape(B, P, M))
        # resample the batches whose ESS is low
        low = np.flatnonzero(ess[:, t] < resample_threshold * P)
        for b in low:
            W_b = np.exp(log_W[b])
            if reference is None:
                ancestors[t, b] = systematic_resample(W_b, noise.u_resample[t, b, 0])
            else:    # the free particles by multinomial resampling, the reference by ancestor sampling
                ancestors[t, b, :P - 1] = inverse_cdf(W_b, noise.u_resample[t, b, :P - 1])
                log_a = log_W[b] + log_transition(reference[b, :, t], Zbar[b * P:(b + 1) * P], net.N, dt,
                                                  transition).sum(-1)
                ancestors[t, b, P - 1] = inverse_cdf(np.exp(log_a - logsumexp(log_a)), noise.u_ancestor[t, b])
        if low.size:
            log_W[low] = -np.log(P)
            resampled[low, t] = True
            take = (np.arange(B)[:, None] * P + ancestors[t]).reshape(-1)       # (B*P,) rows
            for name in PARTICLE_STATE:
                setattr(step, name, getattr(step, name)[take])
            Z_past, Zbar, lam = Z_past[take], Zbar[take], lam[take]
        # 3.7: draw Z(t), then the cohorts age and the observed neurons that fired are reset
        Z_t = draw_Z(Zbar, net.N, dt, noise.xi[t].reshape(B * P, M), transition)   # (B*P, M)
        if reference is not None:
            Z_t[P - 1::P] = reference[..., t]
        Z[t] = Z_t.reshape(B, P, M)
        step.advance(lam, y_t)
        Z_past = np.concatenate([Z_t[..., None], Z_past[..., :-1]], -1)
    filter_mean[..., T - 1] = np.einsum("bp,bpm->bm", np.exp(log_W), Z[T - 1])
    log_p_batch = log_increments.sum(-1)
    return FilterResult(log_p_hat=float(log_p_batch.sum()), log_p_hat_batch=log_p_batch,
                        log_increments=log_increments, ess=ess, resampled=resampled, Z=Z, ancestors=ancestors,
                        log_weights=log_W, filter_mean=filter_mean, particles=P, transition=transition,
                        scheme=scheme)


def filter_window(theta, window: Window, particles, seed, scheme=fast_np.DEFAULT_SCHEME, compiled=True,
                  **options):
    """The particle filter on a fitting window at theta (the flat (amem, J, rp, ft) of src/network.py),
    with the window's initial condition (A0, the observed neurons' ages) as fast_np.losses uses it.
    seed: int or np.random.SeedSequence for np.random.default_rng; compiled: src/smc_compiled.py (True)
    or this module's numpy reference. options: transition, resample_threshold, reference (for the
    conditional filter), and dtype (compiled only). Returns a FilterResult."""
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (4 * window.M,) or not np.all(np.isfinite(theta)):
        raise ValueError(f"theta must be {4 * window.M} finite numbers (amem, J, rp, ft), got {theta!r}")
    if compiled:
        from .smc_compiled import particle_filter as run
    else:
        run = particle_filter
    w = window
    return run(w.net.with_theta(theta), w.dt, w.K, w.A0, w.y[..., w.K:], w.I_ext, w.obs_age[..., 0], particles,
               np.random.default_rng(seed), scheme, **options)


def log_likelihood(theta, window: Window, particles, seed, scheme=fast_np.DEFAULT_SCHEME, **options):
    """log p_hat(y | theta): the filter's estimate of the log marginal likelihood of the window's
    observed spikes (filter_window)."""
    return filter_window(theta, window, particles, seed, scheme, **options).log_p_hat


def log_likelihood_passes(theta, window: Window, particles, seeds, scheme=fast_np.DEFAULT_SCHEME, **options):
    """log_likelihood for each entry of seeds (lists of ints, each a np.random.SeedSequence's entropy):
    one filter pass per seed, as an array. Give every theta the same seeds, and differences between
    them are paired (common random numbers)."""
    return np.array([log_likelihood(theta, window, particles, np.random.SeedSequence(list(seed)), scheme, **options)
                     for seed in seeds])


def gibbs_sweep(theta, window: Window, reference, particles, seed, scheme=fast_np.DEFAULT_SCHEME, **options):
    """One sweep of particle Gibbs with ancestor sampling: the conditional filter held to `reference`
    (B, M, T) (None: the plain filter, to start a chain), then one trajectory per batch drawn from its
    final weights and traced back. The trajectory is the chain's next state. seed: int or
    np.random.SeedSequence (its first child draws the filter's Noise, the second the trajectory).
    Returns (trajectory (B, M, T), FilterResult)."""
    seed = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    noise_seed, pick_seed = seed.spawn(2)
    result = filter_window(theta, window, particles, noise_seed, scheme, reference=reference, **options)
    return draw_trajectories(result, 1, np.random.default_rng(pick_seed))[0], result


def gibbs_chain(theta, window: Window, particles, draws, seed, scheme=fast_np.DEFAULT_SCHEME, reference=None,
                burn_in=0, thin=1, **options):
    """`draws` trajectories of the particle Gibbs chain with ancestor sampling at theta: from
    `reference` (None: a draw of the plain filter), burn_in sweeps discarded, then one kept every
    `thin` sweeps. Sweep k uses the child k of np.random.SeedSequence(seed). Returns (draws (S, B, M, T),
    the FilterResults of the sweeps, in order)."""
    children = np.random.SeedSequence(seed).spawn(1 + burn_in + draws * thin)
    if reference is None:
        reference, first = gibbs_sweep(theta, window, None, particles, children[0], scheme, **options)
        results = [first]
    else:
        results = []
    kept = []
    for k, child in enumerate(children[1:]):
        reference, result = gibbs_sweep(theta, window, reference, particles, child, scheme, **options)
        results.append(result)
        if k >= burn_in and (k - burn_in) % thin == thin - 1:
            kept.append(reference)
    return np.stack(kept), results


def trace_paths(result: FilterResult, batch, final):
    """The trajectories ending in the particles `final` (int array, (n,)) of batch `batch`, traced back
    through the ancestors: (n, M, T)."""
    T = result.Z.shape[0]
    index = np.asarray(final)
    paths = np.zeros((index.size, result.Z.shape[-1], T))
    for t in range(T - 1, -1, -1):
        paths[..., t] = result.Z[t, batch, index]
        index = result.ancestors[t, batch, index]
    return paths


def draw_trajectories(result: FilterResult, S, rng):
    """S trajectories per batch from the filter's joint smoothing approximation: final particles drawn
    by their weights, traced back (path degeneracy: see the module docstring). Returns (S, B, M, T)."""
    B, P = result.log_weights.shape
    draws = []
    for b in range(B):
        W = np.exp(result.log_weights[b])
        draws.append(trace_paths(result, b, rng.choice(P, size=S, p=W / W.sum())))
    return np.stack(draws, axis=1)



def fixed_lag_marginals(results, lag, quantiles=(0.05, 0.5, 0.95)):
    """Posterior marginals of each Z(t) by fixed-lag smoothing, from the genealogy of one or more
    passes (FilterResults of the same window, each weighing the same: the sweeps of an E-step).

    The particles right after a resampling in bin r are an equally weighted sample of the paths up to
    bin r-1 given y(0..r); traced back, they give Z(t) | y(0..r). Each bin t takes the first resampling
    r >= t + 1 + lag, or, if there is none, the final particles with their weights (Z(t) | y(0..T-1)).
    So every marginal conditions on at least `lag` bins of later observations, and no bin is more
    than about lag + (bins between resamplings) bins from the particles it is traced from, which keeps
    the early bins out of the genealogy's degeneracy. The approximation ignores the observations after
    that point.

    Returns (mean (B, M, T), quantiles (len(quantiles), B, M, T)); a weighted quantile q is the smallest
    value whose cumulative weight reaches q."""
    T, B, P, M = results[0].Z.shape
    values = np.zeros((B, T, M, len(results) * P))
    weights = np.zeros((B, T, len(results) * P))
    for j, r in enumerate(results):
        cols = slice(j * P, (j + 1) * P)
        for b in range(B):
            sources = [(s, np.asarray(r.ancestors[s, b]), np.full(P, 1.0 / P))     # particles of bin s-1
                       for s in np.flatnonzero(r.resampled[b]) if s >= 1 + lag]
            sources.append((T, np.arange(P), np.exp(r.log_weights[b])))            # the final particles
            t_lo = 0
            for s, index, w in sources:
                t_hi = min(s - 1 - lag, T - 1) if s < T else T - 1                  # bins taken from s
                if t_hi < t_lo:
                    continue
                for u in range(s - 1, t_lo - 1, -1):
                    if u <= t_hi:
                        values[b, u, :, cols] = r.Z[u, b, index].T
                        weights[b, u, cols] = w
                    index = r.ancestors[u, b, index]
                t_lo = t_hi + 1
    weights /= weights.sum(-1, keepdims=True)
    mean = np.einsum("btmn,btn->bmt", values, weights)
    order = np.argsort(values, -1)
    sorted_values = np.take_along_axis(values, order, -1)
    cumulative = np.cumsum(np.take_along_axis(np.broadcast_to(weights[:, :, None], values.shape), order, -1), -1)
    found = [np.minimum((cumulative < q - 1e-12).sum(-1), values.shape[-1] - 1) for q in quantiles]
    return mean, np.stack([np.moveaxis(np.take_along_axis(sorted_values, i[..., None], -1)[..., 0], 1, -1)
                           for i in found])
