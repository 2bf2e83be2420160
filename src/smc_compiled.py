"""The particle filter of src/smc.py compiled with XLA: the same bins, weights, resampling, ancestor
sampling and random numbers (src.smc.Noise), with the particles of all batches as the batch axis.
src/smc.py is the readable reference, and tests/test_smc.py checks this module against it.

    from src import smc_compiled
    result = smc_compiled.particle_filter(net, dt, K, A0, y, I_ext, obs_age0, P, noise, scheme)

One XLA while loop runs up to SEGMENT_BINS bins per call, with the state of every particle in the loop
carry: the cohorts (V, S and Q = 1 - S, Z_past, each (B*P, M, K)), Isyn, the observed neurons' V and
ages, and the normalised log weights (B, P). Survival is carried as S and 1 - S, as in the likelihood
and the compiled free simulation (src/LIFmesoCell.py), which is numpy's exp(logS) up to rounding.
Resampling moves the whole state with one gather, inside a conditional, in the bins where a batch
needs it (about one bin in ten on the shipped window). Indices come from the inverse of the cumulative
weights by counting (a (B, P, P) comparison), which XLA compiles well for the P used here.

float64 by default; dtype=tf.float32 halves the memory traffic of the cohort arrays (the weights,
the cumulative sums and the ancestor weights stay float64).
"""
import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from .fast_np import LOG_2PI, VAR_FLOOR, leak_step, stationary_start
from .LIFmesoCell import _escape, _log_fire_probability
from .smc import RESAMPLE_THRESHOLD, FilterResult, Noise, checked_arguments, draw_noise
from .window import Z_MAX, Z_MIN, refractory_bins

SEGMENT_BINS = 2500      # bins per call of the compiled loop, at most (shorter windows: the next power of 2)


def log_ndtr(x):
    """log Phi(x), the standard normal's log CDF, for float64 x: through erfc where it does not
    underflow, and the asymptotic series -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4 - 15/x^6)
    below x = -20 (relative error of the series under 105/x^8 < 1e-8)."""
    sqrt_half = np.sqrt(0.5)
    far = x < -20.0
    x_far = tf.where(far, x, -20.0 * tf.ones_like(x))
    x2 = x_far * x_far
    series = -0.5 * x2 - tf.math.log(-x_far) - 0.5 * LOG_2PI + tf.math.log1p(-1 / x2 + 3 / x2 ** 2 - 15 / x2 ** 3)
    upper = tf.math.log1p(-0.5 * tf.math.erfc(tf.maximum(x, 0.0) * sqrt_half))
    lower = tf.math.log(0.5 * tf.math.erfc(-tf.where(far, -20.0 * tf.ones_like(x), tf.minimum(x, 0.0)) * sqrt_half))
    return tf.where(far, series, tf.where(x > 0, upper, lower))


def log_transition(Z, Zbar, N, dt, transition):
    """src.smc.log_transition in TensorFlow (float64)."""
    var = Zbar / N + VAR_FLOOR * dt / N if transition == "density" else Zbar / N
    positive = var > 0
    sd = tf.sqrt(tf.where(positive, var, tf.ones_like(var)))
    x = (Z - Zbar) / sd
    log_density = -0.5 * (LOG_2PI + x * x) - tf.math.log(sd)
    if transition == "density":
        return tf.where(Z <= Z_MIN, log_ndtr((Z_MIN - Zbar) / sd),
                        tf.where(Z >= Z_MAX, log_ndtr((Zbar - Z_MAX) / sd), log_density))
    zero = tf.zeros_like(Z)
    at_zero = tf.where(positive, log_ndtr(-Zbar / sd), zero)
    return tf.where(Z <= 0, at_zero, tf.where(positive, log_density, zero - np.inf))


def _inverse_cdf(log_W, u):
    """src.smc.inverse_cdf for each batch: log_W (B, P) normalised, u (B, n) -> indices (B, n) int32."""
    cumulative = tf.cumsum(tf.exp(log_W), axis=-1)
    cumulative = tf.concat([cumulative[:, :-1], tf.ones_like(cumulative[:, -1:])], -1)
    counts = tf.reduce_sum(tf.cast(cumulative[:, None, :] <= u[:, :, None], tf.int32), -1)
    return tf.minimum(counts, log_W.shape[-1] - 1)


def _log_normalise(log_w):
    return log_w - tf.reduce_logsumexp(log_w, -1, keepdims=True)


@tf.function(jit_compile=True, autograph=False)
def _segment(params, state, y, I_ext, xi, u_resample, u_ancestor, reference, n_bins, dt, transition, conditional):
    """Up to y.shape[0] bins (n_bins of them are real) of the filter of src.smc.particle_filter.

    params: q, g (the scheme's), amem, rp, ft, e_syn, N (M, 1), W (M, M), eps, n_ref, threshold
    (resample when ESS < threshold * P). state: V, S, Q, Z_past (B*P, M, K), Isyn (B*P, M), V_obs, obs_age
    (B*P, M, Nobs), log_W (B, P) float64, first. Per bin (leading axis n): y (n, B, M, Nobs) and I_ext
    (n, B, M), shared by a batch's particles and repeated for them one bin at a time (repeated P times
    up front, they took 3.2 GB with 30 observed neurons per population), xi (n, B, P, M), u_resample
    (n, B, P), u_ancestor (n, B), reference (n, B, M) (used if conditional); dt, transition and
    conditional are Python values. Returns the new state and, per bin, Z (n, B, P, M), ancestors
    (n, B, P), the log increments, ESS and resampling flags (n, B) and the weighted mean of Z(t-1)
    (n, B, M).
    """
    q, g, amem, rp, ft, e_syn, N, W, eps, n_ref, threshold = params
    V, S, Q, Z_past, Isyn, V_obs, obs_age, log_W, first = state
    dtype, K = V.dtype, V.shape[-1]
    B, P = log_W.shape
    M = V.shape[1]
    refractory = tf.range(K) < n_ref
    zero = tf.zeros((), dtype)
    f64 = lambda x: tf.cast(x, tf.float64)  # noqa: E731

    def shift_in(x, value):
        return tf.concat([tf.fill(tf.concat([tf.shape(x)[:-1], [1]], 0), tf.constant(value, dtype)), x[..., :-1]], -1)

    def step(t, V, S, Q, Z_past, Isyn, V_obs, obs_age, log_W, first, outputs):
        Z_out, anc_out, inc_out, ess_out, res_out, mean_out = outputs
        # 3.1-3.6: drive and cohorts
        Isyn = tf.where(first, Isyn, e_syn[:, 0] * Isyn + (1 - e_syn[:, 0]) * Z_past[..., 0] / dt)
        h = tf.einsum("rm,ma->ra", Isyn, W) + eps * tf.repeat(I_ext[t], P, axis=0)  # (B*P, M)
        drive = g * (amem * rp + h[..., None])
        V = tf.where(refractory, zero, q * V + drive)
        _, P_fire = _escape(V, ft, refractory, dt)
        m = S * Z_past
        v = Q * m
        sum_v = tf.reduce_sum(v, -1)
        has_v = sum_v > 0
        Lambda = tf.where(has_v, tf.reduce_sum(P_fire * v, -1) / tf.where(has_v, sum_v, 1.0), zero)
        Zbar = tf.clip_by_value(tf.reduce_sum(P_fire * m, -1) + Lambda * (1 - tf.reduce_sum(m, -1)), 0.0, 1.0)
        # weight by the observed neurons' spikes of bin t
        refr_obs = obs_age < n_ref
        V_obs = tf.where(refr_obs, zero, q * V_obs + drive)
        lam_obs, _ = _escape(V_obs, ft, refr_obs, dt)
        logP_obs = _log_fire_probability(V_obs, ft, refr_obs, dt)
        y_t = tf.repeat(y[t], P, axis=0)                                         # (B*P, M, Nobs)
        log_w = tf.reshape(tf.reduce_sum(f64(tf.where(y_t > 0, logP_obs, -lam_obs * dt)), (1, 2)), (B, P))
        log_joint = log_W + log_w
        increment = tf.reduce_logsumexp(log_joint, -1) - tf.reduce_logsumexp(log_W, -1)
        log_W = _log_normalise(log_joint)
        W_ = tf.exp(log_W)
        ess = tf.reduce_sum(W_, -1) ** 2 / tf.reduce_sum(W_ ** 2, -1)
        mean_prev = tf.einsum("bp,bpm->bm", W_, f64(tf.reshape(Z_past[..., 0], (B, P, M))))
        low = ess < threshold * P                                                 # (B,)
        identity = tf.broadcast_to(tf.range(P, dtype=tf.int32), (B, P))
        Zbar_b = tf.reshape(Zbar, (B, P, M))

        def resample():
            if conditional:
                free = _inverse_cdf(log_W, u_resample[t][:, :P - 1])
                log_a = log_W + tf.reduce_sum(log_transition(reference[t][:, None, :], f64(Zbar_b),
                                                             f64(N[:, 0]), dt, transition), -1)
                ref = _inverse_cdf(_log_normalise(log_a), u_ancestor[t][:, None])
                chosen = tf.concat([free, ref], -1)
            else:
                positions = (u_resample[t][:, :1] + tf.range(P, dtype=tf.float64)) / P
                chosen = _inverse_cdf(log_W, positions)
            ancestors = tf.where(low[:, None], chosen, identity)
            take = tf.reshape(tf.range(B, dtype=tf.int32)[:, None] * P + ancestors, (-1,))
            moved = [tf.gather(x, take) for x in (V, S, Q, Z_past, Isyn, V_obs, obs_age, Zbar, P_fire)]
            return [ancestors, tf.where(low[:, None], -np.log(P) * tf.ones_like(log_W), log_W)] + moved

        def keep():
            return [identity, log_W, V, S, Q, Z_past, Isyn, V_obs, obs_age, Zbar, P_fire]

        ancestors, log_W, V, S, Q, Z_past, Isyn, V_obs, obs_age, Zbar, P_fire = tf.cond(
            tf.reduce_any(low), resample, keep)
        # 3.7: draw Z(t); the reference particle is held to its trajectory
        xi_t = tf.reshape(tf.cast(xi[t], dtype), (B * P, M))
        if transition == "density":
            sd = tf.sqrt(Zbar / N[:, 0] + VAR_FLOOR * dt / N[:, 0])
            Z_t = tf.clip_by_value(Zbar + sd * xi_t, Z_MIN, Z_MAX)
        else:
            Z_t = tf.maximum(Zbar + tf.sqrt(Zbar / N[:, 0]) * xi_t, 0.0)
        Z_t = tf.reshape(Z_t, (B, P, M))
        if conditional:
            Z_t = tf.concat([Z_t[:, :P - 1], tf.cast(reference[t], dtype)[:, None]], 1)
        Z_rows = tf.reshape(Z_t, (B * P, M))
        # end of the bin: the cohorts age, the observed neurons that fired are reset
        S, Q, V = shift_in(S * (1 - P_fire), 1.0), shift_in(Q + S * P_fire, 0.0), shift_in(V, 0.0)
        Z_past = tf.concat([Z_rows[..., None], Z_past[..., :-1]], -1)
        fired = y_t > 0
        obs_age = tf.where(fired, tf.zeros_like(obs_age), obs_age + 1)
        V_obs = tf.where(fired, zero, V_obs)
        at = lambda *rest: tf.stack([t] + [0] * len(rest))  # noqa: E731
        outputs = (xla.dynamic_update_slice(Z_out, Z_t[None], at(0, 0, 0)),
                   xla.dynamic_update_slice(anc_out, ancestors[None], at(0, 0)),
                   xla.dynamic_update_slice(inc_out, increment[None], at(0)),
                   xla.dynamic_update_slice(ess_out, ess[None], at(0)),
                   xla.dynamic_update_slice(res_out, low[None], at(0)),
                   xla.dynamic_update_slice(mean_out, mean_prev[None], at(0, 0)))
        return t + 1, V, S, Q, Z_past, Isyn, V_obs, obs_age, log_W, tf.constant(False), outputs

    n = y.shape[0]
    outputs = (tf.zeros((n, B, P, M), dtype), tf.zeros((n, B, P), tf.int32), tf.zeros((n, B), tf.float64),
               tf.zeros((n, B), tf.float64), tf.zeros((n, B), tf.bool), tf.zeros((n, B, M), tf.float64))
    out = tf.while_loop(lambda t, *_: t < n_bins, step,
                        (tf.constant(0), V, S, Q, Z_past, Isyn, V_obs, obs_age, log_W, first, outputs))
    return out[1:10], out[10]


def particle_filter(net, dt, K, A0, y, I_ext, obs_age0, particles, rng, scheme, transition="density",
                    resample_threshold=RESAMPLE_THRESHOLD, reference=None, dtype=tf.float64):
    """src.smc.particle_filter, compiled: the same arguments (rng: a np.random.Generator or a
    src.smc.Noise) and the same FilterResult, equal to the reference's up to rounding."""
    A0, y, I_ext, obs_age0, reference = checked_arguments(A0, y, I_ext, obs_age0, particles, scheme, transition,
                                                          resample_threshold, reference)
    P, (B, M), T = particles, A0.shape, y.shape[-1]
    conditional = reference is not None
    if not conditional:
        reference = np.zeros((B, M, T))                    # unused: the loop's argument needs an array
    noise = rng if isinstance(rng, Noise) else draw_noise(rng, T, B, P, M)
    dtype = tf.as_dtype(dtype)

    const = lambda a: tf.constant(np.asarray(a, float), dtype)  # noqa: E731
    col = lambda a: const(np.asarray(a, float)[:, None])  # noqa: E731
    q, g = leak_step(scheme, net.amem[:, None], dt)
    params = (const(q), const(np.broadcast_to(g, q.shape)), col(net.amem), col(net.rp), col(net.ft),
              col(np.exp(-dt * net.asyn)), col(net.N), const(net.W), const(net.eps),
              tf.constant(refractory_bins(net.ref_t, dt)), tf.constant(float(resample_threshold), tf.float64))
    # the initial state, as src.fast_np.BinStep, for B rows, then repeated for the P particles
    oldest = K if obs_age0.size == 0 else max(K, int(obs_age0.max()) + 1)
    V0, logS0 = stationary_start(net, A0, dt, oldest)
    V_obs0 = np.take_along_axis(V0, obs_age0.reshape(B, M, -1).astype(int), axis=-1)
    rows = lambda a: np.repeat(a, P, axis=0)  # noqa: E731
    state = (const(rows(V0[..., :K])), const(rows(np.exp(logS0[..., :K]))), const(rows(-np.expm1(logS0[..., :K]))),
             const(rows(np.repeat((A0 * dt)[..., None], K, -1))), const(rows(A0)), const(rows(V_obs0)),
             tf.constant(rows(obs_age0).astype(np.int32)), tf.constant(np.full((B, P), -np.log(P))),
             tf.constant(True))
    # per bin, time first
    y_bins = np.moveaxis(y, -1, 0)                                         # (T, B, M, Nobs)
    I_bins = np.moveaxis(I_ext, -1, 0)                                     # (T, B, M)
    ref = np.moveaxis(reference, -1, 0)                                    # (T, B, M)
    length = min(SEGMENT_BINS, 1 << max(T - 1, 1).bit_length())
    parts = [[] for _ in range(6)]
    for start in range(0, T, length):
        seg = slice(start, start + length)
        n = len(range(T)[seg])
        pad = lambda x: np.concatenate([x, np.zeros((length - n,) + x.shape[1:], x.dtype)])  # noqa: E731
        state, outputs = _segment(params, state, const(pad(y_bins[seg])), const(pad(I_bins[seg])),
                                  tf.constant(pad(noise.xi[seg])), tf.constant(pad(noise.u_resample[seg])),
                                  tf.constant(pad(noise.u_ancestor[seg])), tf.constant(pad(ref[seg])),
                                  tf.constant(n), float(dt), transition, conditional)
        for part, out in zip(parts, outputs):
            part.append(out.numpy()[:n])
    Z, ancestors, increments, ess, resampled, mean_prev = (np.concatenate(p) for p in parts)
    log_W = state[7].numpy()
    filter_mean = np.zeros((B, M, T))
    filter_mean[..., :-1] = np.moveaxis(mean_prev[1:], 0, -1)
    filter_mean[..., -1] = np.einsum("bp,bpm->bm", np.exp(log_W), Z[-1])
    log_p_batch = increments.sum(0)
    return FilterResult(log_p_hat=float(log_p_batch.sum()), log_p_hat_batch=log_p_batch,
                        log_increments=increments.T, ess=ess.T, resampled=resampled.T, Z=Z.astype(float),
                        ancestors=ancestors.astype(int), log_weights=log_W, filter_mean=filter_mean,
                        particles=P, transition=transition, scheme=scheme)
