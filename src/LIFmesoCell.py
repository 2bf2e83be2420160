"""The neuLVM likelihood in TensorFlow, with no loop over time (shared/docs/model.md section 6).
The original project's file of this name held its TensorFlow cell, stepped once per bin; the same
likelihood is here MesoModel, and the free simulation `simulate`. Notation: src/network.py.

Given the latent Z, no bin of section 3 depends on the loss of an earlier bin. The cohorts form an
(age k, time t) grid, k = 0..K-1, t = 0..T-1; cell (k, t) is the cohort that fired k+1 bins before t.
This module walks that grid one age row at a time (a loop of K = 250 steps, each vectorised over all
B*M*T bins), not one bin at a time (T = 2,500 steps):

    Isyn, F      linear filters along time, y(t) = a*y(t-1) + x(t), by log-depth doubling
    V[k, t]      = F(t) - q^n_k F(t - n_k) + q^(t+1) V0(k - t)   [last term: cohorts present when the
                   window opens, t < k]; (q, g) of the scheme (src.fast_np.leak_step), u(t) =
                   g*(amem*rp + h(t)), F(t) = sum_i q^i u(t-i), n_k = k - n_ref + 1 steps since the reset
                   (V = 0, k < n_ref). The adjoint below is with respect to q and F; how they depend on
                   amem (the scheme) is differentiated by TensorFlow in the inputs stage.
    S[k, t]      = S[k-1, t-1] * E[k-1, t-1], E = exp(-lam*dt): the survival, carried from one age row
                   to the next along the cohort's diagonal; S[0, t] = 1, S[k, 0] = S0(k). 1 - S is carried
                   alongside as (1 - S) + S*P, which keeps it exact for young cohorts (S near 1)
    Z(t-1-k)     the mass that fired k+1 bins ago

Row k reads F(t - n_k), V0(k - t) and Z(t - 1 - k) as slices of 1-D arrays starting at K-1-k (the
diagonals of the grid), so the loop needs no gather and no (K, T) index array. `cohort_forward` is
that loop; `cohort_backward` is its hand-written adjoint, a second loop over the ages in reverse that
carries the adjoint of S back along the diagonals. The forward loop keeps S (one (K, B, M, T) array);
the backward loop recomputes V, lam and E rather than storing them. Memory is one grid plus
O(B*M*(K+T)), and time is linear in T.

The grid is also cut along time into TIME_CHUNKS chunks that overlap by K bins (`time_chunks`), which
TensorFlow computes concurrently (the compiled stages of MesoModel). Run TensorFlow with one
intra-op thread (tf.config.threading.set_intra_op_parallelism_threads(1)) and the default inter-op
threads: the chunks then use the two cores; with more intra-op threads XLA also splits the small
per-row operations across threads, which costs more than it gains.

Why this shape (measured on the 2-core machine, default window, float64): the two exponentials per
grid cell dominate (about 2.5 ns each, 4 per cell with the gradient); XLA fuses a row's elementwise
work well but is slow on tf.cumsum (reduce-window), on gathers (scalar code) and on large
temporaries (each call page-faults fresh buffers above glibc's 32 MB mmap threshold), so the grid is
never materialised except for S.

The free simulation (model.md section 5, `simulate`) runs the same per-bin equations forward as an
XLA while loop over bins, with the random numbers drawn up front from the caller's generator.

Symbols as in src/fast_np.py, the numpy reference this module is tested against.
"""
import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from .fast_np import (HAZARD_FLOOR, LOG_HAZARD_MAX, LOG_2PI, S0_SUBSTEPS, SMALL_X, VAR_FLOOR, leak_step,
                      stationary_start)
from .window import Window, refractory_bins

TIME_CHUNKS = 2           # the grid is cut along time into this many chunks, computed concurrently (2 cores)
SIM_SEGMENT_BINS = 2500   # bins per call of the compiled free-simulation loop (one compilation for any length)


def linear_filter(a, x):
    """y(t) = a*y(t-1) + x(t) along the last axis, y(-1) = 0, in log2(T) steps of doubling.

    After the step with shift s, y(t) = sum_{i<2s} a^i x(t-i); a broadcasts against x[..., :1].
    """
    y, a_pow, shift, T = x, a, 1, x.shape[-1]
    pad = [[0, 0]] * (len(x.shape) - 1)
    while shift < T:
        y = y + a_pow * tf.pad(y[..., :-shift], pad + [[shift, 0]])
        a_pow, shift = a_pow * a_pow, 2 * shift
    return y


def _escape(V, ft, refractory, dt):
    lam = tf.where(refractory, tf.constant(HAZARD_FLOOR, V.dtype), tf.exp(tf.minimum(V - ft, LOG_HAZARD_MAX)))
    return lam, -tf.math.expm1(-lam * dt)


def _log_fire_probability(V, ft, refractory, dt):
    """log(1 - exp(-lam*dt)) without underflow, as src.fast_np.log_fire_probability (both where
    branches are finite, so the gradient is too)."""
    log_lam = tf.where(refractory, tf.constant(np.log(HAZARD_FLOOR), V.dtype), tf.minimum(V - ft, LOG_HAZARD_MAX))
    x = tf.exp(log_lam) * dt
    small = x < SMALL_X
    return tf.where(small, log_lam + np.log(dt) - x / 2,
                    tf.math.log(-tf.math.expm1(-tf.where(small, tf.ones_like(x), x))))


def _add_to_slice(acc, x, start):
    """acc[..., start:start + T] += x on the last axis of a (B, M, L) array, start a scalar tensor."""
    current = tf.slice(acc, [0, 0, start], x.shape)
    return xla.dynamic_update_slice(acc, current + x, tf.stack([0, 0, start]))


def time_chunks(T, K, n):
    """Cut T bins into n chunks of equal length L that overlap by K bins: chunk j computes the bins
    [c0, c0 + L) and keeps [t0, t1) (the kept bins tile 0..T-1; t0 - c0 >= K, so every cohort alive
    in a kept bin entered the grid inside the chunk). One chunk when T < 3K. Returns the list of
    (c0, t0, t1) and L."""
    n = n if T >= 3 * K else 1
    L = -(-(T + (n - 1) * K) // n)                                         # ceil
    chunks, t0 = [], 0
    for j in range(n):
        t1 = T if j == n - 1 else (j + 1) * (L - K) + K
        chunks.append((max(t1 - L, 0), t0, t1))
        t0 = t1
    return chunks, L


class _AgeRows:
    """What row k of the (age, time) grid reads, for inputs F (B, M, T), q and ft (M, 1), V0 (B, M, K+1)
    and Z_full (B, M, K+T) (see cohort_forward); K age bins, n_ref refractory bins, bin dt."""

    def __init__(self, F, q, ft, V0, Z_full, K, n_ref, dt):
        if not 0 <= n_ref <= K:
            raise ValueError(f"the refractory bins n_ref must be in [0, K={K}], got {n_ref!r}")
        self.F, self.q, self.ft, self.Z_full, self.K, self.n_ref, self.dt = F, q, ft, Z_full, K, n_ref, dt
        self.B, self.M, self.T = F.shape
        self.dtype = F.dtype
        self.free = np.arange(K) >= max(n_ref, 1)                       # ages of V0 that enter V
        self.t = tf.range(self.T, dtype=self.dtype)
        self.F_pad = tf.pad(F, [[0, 0], [0, 0], [K - n_ref, n_ref]])        # F_pad[c] = F(c - K + n_ref), 0 outside
        self.V0_rev = tf.pad(tf.reverse(V0[..., :K] * self.free, [-1]), [[0, 0], [0, 0], [0, self.T]])  # V0(K-1-c)
        self.q_t1 = tf.pow(q, self.t + 1)                                    # (M, T)

    def diagonals(self, k):
        """Row k: F(t - n_k), V0(k - t), Z(t - 1 - k), all read from index K-1-k on."""
        start, size = self.K - 1 - k, [self.B, self.M, self.T]
        n_k = tf.cast(tf.maximum(k - self.n_ref + 1, 0), self.dtype)
        return (start, n_k, tf.pow(self.q, n_k), tf.slice(self.F_pad, [0, 0, start], size),
                tf.slice(self.V0_rev, [0, 0, start], size), tf.slice(self.Z_full, [0, 0, start], size))

    def escape(self, k, q_n, F_n, V0_k):
        """3.2-3.3: V of row k; L = lam*dt, E = exp(-L), P = 1 - E, and `live` where dL/dV = L."""
        V_ft = self.F - q_n * F_n + self.q_t1 * V0_k - self.ft
        live = tf.logical_and(k >= self.n_ref, V_ft <= LOG_HAZARD_MAX)
        lam = tf.where(k < self.n_ref, tf.constant(HAZARD_FLOOR, self.dtype),
                       tf.exp(tf.minimum(V_ft, LOG_HAZARD_MAX)))
        L = self.dt * lam
        E = tf.exp(-L)
        # 1 - E is exact to 1e-16 in float64 (absolute, enough next to the other cohorts); float32 needs expm1
        P = 1 - E if self.dtype == tf.float64 else -tf.math.expm1(-L)
        return L, E, P, live


def cohort_forward(F, q, ft, V0, S0, Z_full, K, n_ref, dt, keep_survival=True):
    """The cohort part of model.md 3.2-3.6: (sum_k P m, sum_k P v, sum_k m, sum_k v), each (B, M, T),
    and the survival S of every cell, (K, B, M, T) (None unless keep_survival), for cohort_backward.

    F (B, M, T) the filtered drive, q (M, 1) the scheme's decay per bin, ft (M, 1), V0 and S0 (B, M, K+1) the
    potential and survival of the cohorts present when the window opens, by age (stationary start),
    Z_full (B, M, K+T) the latent with its K history bins first. K age bins, n_ref refractory bins.
    """
    rows = _AgeRows(F, q, ft, V0, Z_full, K, n_ref, dt)
    B, M, T, dtype = rows.B, rows.M, rows.T, rows.dtype
    Q0 = -tf.math.expm1(tf.math.log(S0))                                  # 1 - S0 without cancellation

    def forward_row(k, S, Q, a1, a2, a3, a4, S_grid):
        _, _, q_n, F_n, V0_k, Z_k = rows.diagonals(k)
        _, E, P, _ = rows.escape(k, q_n, F_n, V0_k)                        # 3.2-3.3
        m = S * Z_k                                                        # 3.5
        v = Q * m
        if keep_survival:
            S_grid = xla.dynamic_update_slice(S_grid, S[None], tf.stack([k, 0, 0, 0]))
        k1 = [0, 0, tf.minimum(k + 1, K)]                                  # 3.4, one step along the diagonal
        S, Q = (tf.concat([tf.slice(S0, k1, [B, M, 1]), (S * E)[..., :-1]], -1),
                tf.concat([tf.slice(Q0, k1, [B, M, 1]), (Q + S * P)[..., :-1]], -1))
        return k + 1, S, Q, a1 + P * m, a2 + P * v, a3 + m, a4 + v, S_grid

    def first_row(X0, fill):
        return tf.concat([X0[..., :1], tf.fill((B, M, T - 1), tf.constant(fill, dtype))], -1)

    zeros = tf.zeros((B, M, T), dtype)
    S_grid = tf.zeros((K, B, M, T), dtype) if keep_survival else tf.zeros((), dtype)
    _, _, _, a1, a2, a3, a4, S_grid = tf.while_loop(
        lambda k, *_: k < K, forward_row,
        (tf.constant(0), first_row(S0, 1.0), first_row(Q0, 0.0), zeros, zeros, zeros, zeros, S_grid))
    return (a1, a2, a3, a4), (S_grid if keep_survival else None)


def cohort_backward(F, q, ft, V0, S0, Z_full, S_grid, sum_grads, K, n_ref, dt):
    """The adjoint of cohort_forward: given the gradients of the loss with respect to its four sums,
    the gradients with respect to (F, q, ft, V0, S0, Z_full).

    A loop over the rows k = K-1..0; D is the adjoint of S[k+1, t+1] seen from row k. V, L and E are
    recomputed, S is read from S_grid. Row k's dV and dZ are carried to the next step before being
    summed into the 1-D gradients, so that XLA computes them once (it would otherwise recompute them
    inside every consumer). The carried 1 - S of the forward pass is differentiated as 1 - S.
    """
    rows = _AgeRows(F, q, ft, V0, Z_full, K, n_ref, dt)
    B, M, T, dtype, t = rows.B, rows.M, rows.T, rows.dtype, rows.t
    g1, g2, g3, g4 = sum_grads

    def scatter_row(k, gV, gZ_k, gF_direct, gq, gF_pad, gV0_rev, gZ_full):
        start, n_k, q_n, F_n, V0_k, _ = rows.diagonals(k)
        dV_dq = -n_k * tf.pow(q, tf.maximum(n_k - 1, 0)) * F_n + (t + 1) * tf.pow(q, t) * V0_k
        return (gF_direct + gV, gq + gV * dV_dq, _add_to_slice(gF_pad, -q_n * gV, start),
                _add_to_slice(gV0_rev, rows.q_t1 * gV, start), _add_to_slice(gZ_full, gZ_k, start))

    def backward_row(k, D, gV_next, gZ_next, gF_direct, gq, gF_pad, gV0_rev, gZ_full, gS0):
        gF_direct, gq, gF_pad, gV0_rev, gZ_full = scatter_row(
            tf.minimum(k + 1, K - 1), gV_next, gZ_next, gF_direct, gq, gF_pad, gV0_rev, gZ_full)
        _, _, q_n, F_n, V0_k, Z_k = rows.diagonals(k)
        L, E, P, live = rows.escape(k, q_n, F_n, V0_k)
        S = S_grid[k]
        m = S * Z_k
        w = g2 * P + g4                                                    # d/dv, via Lambda's sums
        gm = g1 * P + g3 + w * (1 - S)
        gS = D * E + gm * Z_k - w * m
        gE = D * S - (g1 + g2 * (1 - S)) * m                               # dP/dL = -dE/dL
        gV = tf.where(live, -gE * E * L, tf.zeros((), dtype))
        gS0 = xla.dynamic_update_slice(gS0, gS[..., :1], tf.stack([0, 0, k]))
        D = tf.pad(gS[..., 1:], [[0, 0], [0, 0], [0, 1]])
        return k - 1, D, gV, gm * S, gF_direct, gq, gF_pad, gV0_rev, gZ_full, gS0

    zeros, zeros_KT = tf.zeros((B, M, T), dtype), tf.zeros((B, M, K + T), dtype)
    _, _, gV, gZ_k, gF_direct, gq, gF_pad, gV0_rev, gZ_full, gS0 = tf.while_loop(
        lambda k, *_: k >= 0, backward_row,
        (tf.constant(K - 1), zeros, zeros, zeros, zeros, zeros, zeros_KT, zeros_KT, zeros_KT,
         tf.zeros((B, M, K + 1), dtype)))
    gF_direct, gq, gF_pad, gV0_rev, gZ_full = scatter_row(
        tf.constant(0), gV, gZ_k, gF_direct, gq, gF_pad, gV0_rev, gZ_full)
    gF = gF_direct + gF_pad[..., K - n_ref:K - n_ref + T]
    gV0 = tf.pad(tf.reverse(gV0_rev[..., :K], [-1]) * rows.free, [[0, 0], [0, 0], [0, 1]])
    gft = -tf.reduce_sum(gF_direct, [0, 2])[:, None]
    return gF, tf.reduce_sum(gq, [0, 2])[:, None], gft, gV0, gS0, gZ_full


class MesoModel:
    """neuLVM on one Window, and its losses at theta (amem, J, rp, ft) and the latent Z.

    `losses()` gives (loss_y, loss_Z) as numbers; `value_and_grad(wrt)` the total loss and its exact
    gradient with respect to theta or Z. scheme: the integrator of the potentials (src.fast_np.SCHEMES);
    dtype float64 (default) or float32.

    The compiled path runs in XLA stages, so that the time chunks of the grid (TIME_CHUNKS, each
    with K bins of overlap: a cohort that matters in a chunk fired less than K bins before it) run
    on separate cores; the gradient is assembled by hand from the stages' own gradients:
        inputs (F, V0, S0, ...)  ->  cohort_forward per chunk  ->  finish (losses, d/d sums)
        ->  cohort_backward per chunk  ->  gradient of inputs with respect to theta and Z.
    `_losses` is the same computation as one plain differentiable function (eager use and tests).
    """

    def __init__(self, window: Window, theta, Z, scheme, dtype=tf.float64, batch_weights=None):
        w = self.window = window
        leak_step(scheme, 1.0, w.dt)                                         # ValueError for an unknown scheme
        self.scheme = scheme
        self.dtype = tf.as_dtype(dtype)
        self.theta = tf.constant(np.asarray(theta, float), dtype=self.dtype)   # (4M,) where losses() evaluates
        self.Z = tf.constant(np.asarray(Z, float), dtype=self.dtype)           # (B, M, T)   by default
        if self.theta.shape != (4 * w.M,):
            raise ValueError(f"theta must have {4 * w.M} entries (amem, J, rp, ft), got {self.theta.shape}")
        if self.Z.shape != (w.B, w.M, w.T):
            raise ValueError(f"Z must have shape {(w.B, w.M, w.T)}, got {tuple(self.Z.shape)}")
        c = lambda a: tf.constant(np.asarray(a, float), dtype=self.dtype)  # noqa: E731
        K, T, n_ref = w.K, w.T, w.n_ref
        self._N = c(w.net.N[:, None])                                        # (M, 1)
        self._e_syn = c(np.exp(-w.dt * w.net.asyn)[:, None])                 # (M, 1)
        self._conmat = c(w.net.conmat)
        self._A0 = c(w.A0)                                                   # (B, M)
        self._I_ext = c(w.I_ext)                                             # (B, M, T)
        self._y = c(w.y[..., K:])                                            # (B, M, Nobs, T)
        t = np.arange(T)[None, :]
        self._t1 = c(np.arange(1, T + 1))                                    # t + 1
        # observed neurons: a neuron of age k sees the potential of cohort k (a gather per neuron and bin)
        age = w.obs_age                                                      # (B, M, Nobs, T)
        n_obs = np.maximum(age - n_ref + 1, 0)
        self._obs_n = c(n_obs)
        self._obs_F_idx = tf.constant((K + t - n_obs).reshape(w.B, w.M, -1))
        self._obs_init_idx = tf.constant(np.clip(age - t, 0, K).reshape(w.B, w.M, -1))
        self._obs_init_mask = c((age - t) >= n_ref)
        self._obs_refractory = tf.constant(age < n_ref)
        self._chunks, self._chunk_bins = time_chunks(T, K, TIME_CHUNKS)
        self._compiled = {}
        # batch_weights (B,), summing to 1: the losses become sum_b w_b (sum of batch b) / (M*T), the mean
        # over latent draws stacked as batches (the SMC E-step's M-step); None: every batch weighs 1/B
        self._batch_weights = None if batch_weights is None else tf.Variable(np.zeros(w.B), dtype=self.dtype)
        if batch_weights is not None:
            self.set_batch_weights(batch_weights)

    @property
    def batch_weights(self):
        """The batch weights (B,) of a model built with batch_weights, else None."""
        return None if self._batch_weights is None else self._batch_weights.numpy()

    def set_batch_weights(self, weights):
        """New batch weights (B,) >= 0 summing to 1, for a model built with batch_weights."""
        weights = np.asarray(weights, float)
        if self._batch_weights is None or weights.shape != (self.window.B,) or np.any(weights < 0) \
                or abs(weights.sum() - 1) > 1e-9:
            raise ValueError(f"batch weights must be {self.window.B} numbers >= 0 summing to 1, for a model "
                             f"built with batch_weights; got {weights}")
        self._batch_weights.assign(weights)

    # -- the model, as a pure function of (theta, Z) ------------------------------------------
    def _losses(self, theta, Z):
        F, q, ft, V0, S0, Z_full = self._inputs(theta, Z)
        sums, _ = cohort_forward(F, q, ft, V0, S0, Z_full, self.window.K, self.window.n_ref, self.window.dt,
                                 keep_survival=False)
        return self._finish(Z, F, q, ft, V0, sums)

    def _inputs(self, theta, Z):
        """3.1-3.2 up to the cohorts: F (B, M, T), q and ft (M, 1), the stationary start V0 and S0
        (B, M, K+1), and Z_full (B, M, K+T) (see cohort_forward)."""
        w, dt, K = self.window, self.window.dt, self.window.K
        amem, J, rp, ft = tf.unstack(tf.reshape(theta, (4, w.M)))
        amem_, rp_, ft_ = amem[:, None], rp[:, None], ft[:, None]            # (M, 1)
        W = J[:, None] * self._conmat                                        # W[b, a]

        # 3.1 synaptic drive: Isyn(0) = A0, then Isyn(t) = e Isyn(t-1) + (1-e) Z(t-1)/dt
        x = tf.concat([self._A0[..., None], (1 - self._e_syn) * Z[..., :-1] / dt], -1)
        Isyn = linear_filter(self._e_syn, x)                                  # (B, M, T)
        h = tf.einsum("bmt,ma->bat", Isyn, W) + w.net.eps * self._I_ext      # (B, M, T)

        # the stationary start: V0(s) and logS0(s), s = 0..K bins (as fast_np.stationary_start)
        h0 = rp + tf.einsum("bm,ma->ba", self._A0, W) / amem                  # (B, M)
        def potential(s):
            return tf.where(s < w.net.ref_t - 1e-12, tf.zeros((), self.dtype), h0[..., None] * -tf.math.expm1(-amem_ * s))
        delta = dt / S0_SUBSTEPS
        r_mid = (tf.range(K * S0_SUBSTEPS, dtype=self.dtype) + 0.5) * delta
        lam_mid, _ = _escape(potential(r_mid), ft_, r_mid < w.net.ref_t, dt)
        integral = tf.pad(tf.cumsum(lam_mid * delta, axis=-1), [[0, 0], [0, 0], [1, 0]])
        V0 = potential(tf.range(K + 1, dtype=self.dtype) * dt)              # (B, M, K+1)
        logS0 = -integral[..., ::S0_SUBSTEPS]

        # 3.2 the drive of the cohorts: F(t) = sum_i q^i u(t-i), u = g (amem rp + h)
        q, g = leak_step(self.scheme, amem_, dt, tf.math.expm1)               # (M, 1)
        F = linear_filter(q, g * (amem_ * rp_ + h))                          # (B, M, T)
        Z_full = tf.concat([tf.repeat(self._A0[..., None] * dt, K, axis=-1), Z], -1)   # (B, M, K+T)
        return F, q, ft_, V0, tf.exp(logS0), Z_full

    def _finish(self, Z, F, q, ft_, V0, sums):
        """3.6-3.7 and the observed neurons: (loss_y, loss_Z) from the cohort sums."""
        w, dt, K = self.window, self.window.dt, self.window.K
        B, M, Nobs, T = w.B, w.M, w.Nobs, w.T
        sum_Pm, sum_Pv, sum_m, sum_v = sums

        # 3.6 expected activity with the finite-size correction
        has_v = sum_v > 0
        Lambda = tf.where(has_v, sum_Pv / tf.where(has_v, sum_v, tf.ones_like(sum_v)), tf.zeros_like(sum_v))
        Zbar = tf.clip_by_value(sum_Pm + Lambda * (1 - sum_m), 0.0, 1.0)

        # 3.7 transition density of Z
        var = Zbar / self._N + VAR_FLOOR * dt / self._N
        nll_Z = 0.5 * (LOG_2PI + tf.math.log(var) + tf.square(Z - Zbar) / var)

        # observed neurons: the potential of the cohort of their age
        F_pad = tf.pad(F, [[0, 0], [0, 0], [K, 0]])                          # F(t) = 0 for t < 0
        q_t1 = tf.pow(q, self._t1)                                           # (M, T)
        F_obs = tf.reshape(tf.gather(F_pad, self._obs_F_idx, axis=-1, batch_dims=2), (B, M, Nobs, T))
        V0_obs = tf.reshape(tf.gather(V0, self._obs_init_idx, axis=-1, batch_dims=2), (B, M, Nobs, T))
        V_obs = (F[:, :, None, :] - tf.pow(q[None, :, None, :], self._obs_n) * F_obs
                 + self._obs_init_mask * q_t1[None, :, None, :] * V0_obs)
        V_obs = tf.where(self._obs_refractory, tf.zeros((), self.dtype), V_obs)
        lam_obs, _ = _escape(V_obs, ft_[None, :, None, :], self._obs_refractory, dt)
        logP_obs = _log_fire_probability(V_obs, ft_[None, :, None, :], self._obs_refractory, dt)
        logp_y = self._y * logP_obs - (1 - self._y) * lam_obs * dt

        if self._batch_weights is not None:
            n = tf.cast(M * T, self.dtype)
            return (-tf.reduce_sum(self._batch_weights * tf.reduce_sum(logp_y, (1, 2, 3))) / n,
                    tf.reduce_sum(self._batch_weights * tf.reduce_sum(nll_Z, (1, 2))) / n)
        n = tf.cast(B * M * T, self.dtype)
        return -tf.reduce_sum(logp_y) / n, tf.reduce_sum(nll_Z) / n

    # -- compiled stages ------------------------------------------------------------------------
    def _chunk_inputs(self, F, q, ft, V0, S0, Z_full):
        """The inputs of cohort_forward for each time chunk: a chunk that starts later than bin 0
        has no cohorts from before the window (S0 = 1 for the cohort entering at age 0, else 0)."""
        K, L = self.window.K, self._chunk_bins
        no_V0 = tf.zeros_like(V0)
        no_S0 = tf.concat([tf.ones_like(S0[..., :1]), tf.zeros_like(S0[..., 1:])], -1)
        return [(F[..., c0:c0 + L], q, ft, V0 if c0 == 0 else no_V0, S0 if c0 == 0 else no_S0,
                 Z_full[..., c0:c0 + K + L]) for c0, _, _ in self._chunks]

    def _assemble(self, chunk_sums):
        """The sums over the whole window from each chunk's kept bins."""
        return [tf.concat([sums[i][..., t0 - c0:t1 - c0] for sums, (c0, t0, t1) in zip(chunk_sums, self._chunks)], -1)
                for i in range(4)]

    def _stages(self):
        """The XLA-compiled stages of the loss and its gradient (built once per model)."""
        if "stages" in self._compiled:
            return self._compiled["stages"]
        w = self.window
        xla_function = lambda f: tf.function(f, jit_compile=True, autograph=False)  # noqa: E731

        def inputs(theta, Z):
            F, q, ft, V0, S0, Z_full = self._inputs(theta, Z)
            return (F, q, ft, V0, S0, Z_full), self._chunk_inputs(F, q, ft, V0, S0, Z_full)

        def forward(chunk, keep_survival):
            return cohort_forward(*chunk, w.K, w.n_ref, w.dt, keep_survival=keep_survival)

        def finish(Z, F, q, ft, V0, chunk_sums):
            with tf.GradientTape() as tape:
                tape.watch([Z, F, q, ft, V0, chunk_sums])
                loss_y, loss_Z = self._finish(Z, F, q, ft, V0, self._assemble(chunk_sums))
                total = loss_y + loss_Z
            return loss_y, loss_Z, tape.gradient(total, [Z, F, q, ft, V0, chunk_sums])

        def backward(chunk, S_grid, sum_grads):
            return cohort_backward(*chunk, S_grid, sum_grads, w.K, w.n_ref, w.dt)

        def chain(theta, Z, direct, chunk_grads):
            """Gradients with respect to theta and Z: each chunk's gradients of the inputs, added at
            their place in the window, plus finish's direct ones, taken through the inputs stage."""
            K, L, T = w.K, self._chunk_bins, w.T
            dZ, dF, dq, dft, dV0 = direct
            dS0, dZ_full = tf.zeros((w.B, w.M, K + 1), self.dtype), tf.zeros((w.B, w.M, K + T), self.dtype)
            for (c0, _, _), (gF, gq, gft, gV0, gS0, gZ_full) in zip(self._chunks, chunk_grads):
                place = [[0, 0], [0, 0], [c0, T - c0 - L]]
                dF, dZ_full = dF + tf.pad(gF, place), dZ_full + tf.pad(gZ_full, place)
                dq, dft = dq + gq, dft + gft
                if c0 == 0:                       # only the first chunk sees the cohorts from before
                    dV0, dS0 = dV0 + gV0, dS0 + gS0
            with tf.GradientTape() as tape:
                tape.watch([theta, Z])
                outputs = self._inputs(theta, Z)
            d_theta, d_Z = tape.gradient(outputs, [theta, Z], output_gradients=[dF, dq, dft, dV0, dS0, dZ_full])
            return d_theta, d_Z + dZ

        stages = dict(inputs=xla_function(inputs), finish=xla_function(finish), backward=xla_function(backward),
                      chain=xla_function(chain),
                      forward=xla_function(lambda chunk: forward(chunk, True)),
                      forward_only=xla_function(lambda chunk: forward(chunk, False)[0]))
        self._compiled["stages"] = stages
        return stages

    def _function(self, wrt):
        """The loss (wrt None) or the loss and its gradient (wrt "theta" or "Z"), as a tf.function
        whose independent stages (the time chunks) TensorFlow runs concurrently."""
        if wrt not in self._compiled:
            stages = self._stages()

            def run(theta, Z):
                (F, q, ft, V0, S0, Z_full), chunks = stages["inputs"](theta, Z)
                if wrt is None:
                    chunk_sums = [stages["forward_only"](chunk) for chunk in chunks]
                    loss_y, loss_Z, _ = stages["finish"](Z, F, q, ft, V0, chunk_sums)
                    return loss_y, loss_Z
                forwards = [stages["forward"](chunk) for chunk in chunks]
                loss_y, loss_Z, grads = stages["finish"](Z, F, q, ft, V0, [sums for sums, _ in forwards])
                chunk_grads = [stages["backward"](chunk, S_grid, sum_grads)
                               for chunk, (_, S_grid), sum_grads in zip(chunks, forwards, grads[5])]
                d_theta, d_Z = stages["chain"](theta, Z, grads[:5], chunk_grads)
                return loss_y, loss_Z, d_theta if wrt == "theta" else d_Z
            self._compiled[wrt] = tf.function(run, autograph=False)
        return self._compiled[wrt]

    def losses(self, theta=None, Z=None):
        """(loss_y, loss_Z) as floats, at the model's theta and Z unless theta or Z are given."""
        ly, lz = self._function(None)(self._as_theta(theta), self._as_Z(Z))
        return float(ly), float(lz)

    def value_and_grad(self, wrt, theta=None, Z=None):
        """(loss_y, loss_Z, gradient of loss_y + loss_Z with respect to `wrt`: "theta" or "Z")."""
        if wrt not in ("theta", "Z"):
            raise ValueError(f"wrt must be 'theta' or 'Z', got {wrt!r}")
        return self._function(wrt)(self._as_theta(theta), self._as_Z(Z))

    def _as_theta(self, theta):
        return self.theta if theta is None else tf.convert_to_tensor(np.asarray(theta, float), self.dtype)

    def _as_Z(self, Z):
        return self.Z if Z is None else tf.convert_to_tensor(np.asarray(Z, float), self.dtype)


# -- free simulation (model.md section 5) ------------------------------------------------------
@tf.function(jit_compile=True)
def _free_segment(params, state, I_ext, xi, U):
    """SIM_SEGMENT_BINS (or fewer) bins of the free simulation, compiled once per array shape.

    params: q, g (the scheme's, src.fast_np.leak_step), amem, rp, ft, e_syn, N (M, 1), W (M, M), eps,
    dt, n_ref. state: V, S, Q (= 1 - S), Z_past
    (B, M, K) of the cohorts (Z_past[..., k] = Z(t-1-k)), Isyn (B, M), V_obs (B, M, Nobs), obs_age
    (B, M, Nobs) int32, first (bool: this is the window's first bin, Isyn keeps A0). I_ext and xi:
    (n, B, M), U: (n, B, M, Nobs). Returns the new state, Z (n, B, M) and spikes (n, B, M, Nobs).
    """
    q, g, amem, rp, ft, e_syn, N, W, eps, dt, n_ref = params
    V, S, Q, Z_past, Isyn, V_obs, obs_age, first = state
    dtype, K = V.dtype, V.shape[-1]
    refractory = tf.range(K) < n_ref                                         # (K,)
    zero = tf.zeros((), dtype)

    def shift_in(x, value):
        """x[..., k] -> x[..., k+1], `value` enters at k = 0: the cohorts age by one bin."""
        return tf.concat([tf.fill(x.shape[:-1] + [1], tf.constant(value, dtype)), x[..., :-1]], -1)

    def escape(V, refr):
        L = dt * tf.where(refr, tf.constant(HAZARD_FLOOR, dtype), tf.exp(tf.minimum(V - ft, LOG_HAZARD_MAX)))
        return L, tf.exp(-L)

    def step(t, V, S, Q, Z_past, Isyn, V_obs, obs_age, first, Z_out, spikes_out):
        Isyn = tf.where(first, Isyn, e_syn[:, 0] * Isyn + (1 - e_syn[:, 0]) * Z_past[..., 0] / dt)   # 3.1
        h = tf.einsum("bm,ma->ba", Isyn, W) + eps * I_ext[t]                                             # (B, M)
        drive = g * (amem * rp + h[..., None])                                                           # (B, M, 1)
        V = tf.where(refractory, zero, q * V + drive)                                                    # 3.2
        L, E = escape(V, refractory)                                                                     # 3.3
        P = 1 - E
        m = S * Z_past                                                                                   # 3.5
        v = Q * m
        sum_v = tf.reduce_sum(v, -1)
        has_v = sum_v > 0
        Lambda = tf.where(has_v, tf.reduce_sum(P * v, -1) / tf.where(has_v, sum_v, 1.0), zero)
        Zbar = tf.clip_by_value(tf.reduce_sum(P * m, -1) + Lambda * (1 - tf.reduce_sum(m, -1)), 0.0, 1.0)  # 3.6
        Z = tf.maximum(Zbar + tf.sqrt(Zbar / N[:, 0]) * xi[t], 0.0)                                     # (B, M)
        refr_obs = obs_age < n_ref                                              # observed neurons
        V_obs = tf.where(refr_obs, zero, q * V_obs + drive)
        L_obs, E_obs = escape(V_obs, refr_obs)
        fired = U[t] < -tf.math.expm1(-L_obs)
        obs_age = tf.where(fired, tf.zeros_like(obs_age), obs_age + 1)
        V_obs = tf.where(fired, zero, V_obs)
        S, Q, V = shift_in(S * E, 1.0), shift_in(Q + S * P, 0.0), shift_in(V, 0.0)   # 3.4, age by one bin
        Z_past = tf.concat([Z[..., None], Z_past[..., :-1]], -1)
        Z_out = xla.dynamic_update_slice(Z_out, Z[None], tf.stack([t, 0, 0]))
        spikes_out = xla.dynamic_update_slice(spikes_out, tf.cast(fired, dtype)[None], tf.stack([t, 0, 0, 0]))
        return t + 1, V, S, Q, Z_past, Isyn, V_obs, obs_age, tf.constant(False), Z_out, spikes_out

    out = tf.while_loop(lambda t, *_: t < I_ext.shape[0], step,
                        (tf.constant(0), V, S, Q, Z_past, Isyn, V_obs, obs_age, first,
                         tf.zeros(I_ext.shape, dtype), tf.zeros(U.shape, dtype)))
    return out[1:9], out[9], out[10]


def simulate(net, dt, K, T, A0, rng, I_ext=None, Nobs=0, *, scheme):
    """Free simulation (model.md section 5), the same equations and outputs as src/fast_np.simulate,
    compiled with XLA: Z(t) ~ Normal(Zbar, Zbar/N), negative values set to 0, and Nobs observed
    neurons per population (no spike in the history) that fire with probability P.

    A0: (B, M) initial rates (Hz), also the activity of the K history bins. rng: np.random.Generator,
    from which every random number is drawn before the loop (normals for Z, then uniforms for the
    observed neurons), so the output depends only on the generator's state. Survival S and 1 - S are
    carried as in the likelihood (cohort_forward), which is fast_np's exp(logS) up to rounding.
    Returns Z (B, M, T) and spikes (B, M, Nobs, T).
    """
    A0 = np.asarray(A0, dtype=float)
    B, M = A0.shape
    I_ext = np.zeros((B, M, T)) if I_ext is None else np.asarray(I_ext, dtype=float)
    if I_ext.shape != (B, M, T):
        raise ValueError(f"I_ext must have shape {(B, M, T)}, got {I_ext.shape}")
    xi = rng.standard_normal((T, B, M))
    U = rng.random((T, B, M, Nobs))
    col = lambda a: tf.constant(np.asarray(a, float)[:, None])  # noqa: E731
    q, g = leak_step(scheme, net.amem[:, None], dt)
    params = (tf.constant(q), tf.constant(np.broadcast_to(g, q.shape)), col(net.amem), col(net.rp), col(net.ft), col(np.exp(-dt * net.asyn)), col(net.N),
              tf.constant(net.W), tf.constant(float(net.eps), tf.float64), tf.constant(float(dt), tf.float64),
              tf.constant(refractory_bins(net.ref_t, dt)))
    V0, logS0 = stationary_start(net, A0, dt, K + 1)                    # (B, M, K+1): ages 0..K
    state = (tf.constant(V0[..., :K]), tf.constant(np.exp(logS0[..., :K])), tf.constant(-np.expm1(logS0[..., :K])),
             tf.constant(np.repeat((A0 * dt)[..., None], K, -1)), tf.constant(A0),
             tf.constant(np.repeat(V0[..., K:], Nobs, -1)), tf.constant(np.full((B, M, Nobs), K, np.int32)),
             tf.constant(True))
    I_ext = np.moveaxis(I_ext, -1, 0)                                   # (T, B, M)
    Z, spikes = np.zeros((T, B, M)), np.zeros((T, B, M, Nobs))
    for start in range(0, T, SIM_SEGMENT_BINS):
        seg = slice(start, start + SIM_SEGMENT_BINS)
        n = len(range(T)[seg])
        pad = lambda x: np.concatenate([x, np.zeros((SIM_SEGMENT_BINS - n,) + x.shape[1:])])  # noqa: E731
        state, Z_seg, spikes_seg = _free_segment(params, state, pad(I_ext[seg]), pad(xi[seg]), pad(U[seg]))
        Z[seg], spikes[seg] = Z_seg.numpy()[:n], spikes_seg.numpy()[:n]
    return np.moveaxis(Z, 0, -1), np.moveaxis(spikes, 0, -1)
