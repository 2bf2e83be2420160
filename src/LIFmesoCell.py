"""The neuLVM likelihood in TensorFlow, with no loop over time (shared/docs/model.md section 6).

Given the latent Z, no bin of section 3 depends on the loss of an earlier bin, so all bins are
computed at once on a (age k, time t) grid of shape (B, M, K, T):

    Isyn, F         linear filters along time, y(t) = a*y(t-1) + x(t), by log-depth doubling
    V[k, t]         = F(t) - q^(k-R+1) F(t-k+R-1) + q^(t+1) V0((k-t) dt)  [second term: cohorts
                      present when the window opens]; with q = 1 - dt*amem, u(t) = dt*(amem*rp + h(t)),
                      F(t) = sum_i q^i u(t-i), R the refractory age bins (V = 0 for k < R)
    logS[k, t]      = logS0((k-t) dt) - dt * (sum of lam along the cohort's diagonal before t),
                      an exclusive cumulative sum along the diagonals of the grid
    Z(t-1-k)        a gather from the latent with its history

The observed neurons use the same F: a neuron whose last spike was k+1 bins ago has the potential
of cohort k. Symbols as in src/fast_np.py, the numpy reference this module is tested against.
"""
import numpy as np
import tensorflow as tf

from .fast_np import HAZARD_FLOOR, LOG_HAZARD_MAX, LOG_2PI, S0_SUBSTEPS, VAR_FLOOR
from .window import Window


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


def diagonal_cumsum(x):
    """out[..., k, t] = sum_{j >= 1} x[..., k-j, t-j] (an exclusive cumulative sum along each diagonal).

    The grid is sheared with pads and reshapes, x[k, t] going to y[k, t + K - k], so that each
    diagonal becomes a column; summed along the age axis, and sheared back.
    """
    *lead, K, T = x.shape
    pad_lead = [[0, 0]] * len(lead)
    y = tf.pad(x, pad_lead + [[0, 0], [K, 0]])                           # (..., K, T+K)
    y = tf.pad(tf.reshape(y, lead + [K * (T + K)]), pad_lead + [[0, K]])
    y = tf.cumsum(tf.reshape(y, lead + [K, T + K + 1]), axis=-2, exclusive=True)
    y = tf.reshape(tf.reshape(y, lead + [K * (T + K + 1)])[..., :K * (T + K)], lead + [K, T + K])
    return y[..., K:]


def _escape(V, ft, refractory, dt):
    lam = tf.where(refractory, tf.constant(HAZARD_FLOOR, V.dtype), tf.exp(tf.minimum(V - ft, LOG_HAZARD_MAX)))
    return lam, -tf.math.expm1(-lam * dt)


class MesoModel:
    """neuLVM on one Window: theta (amem, J, rp, ft) and the latent Z as variables, and the losses.

    `losses()` gives (loss_y, loss_Z) as numbers; `value_and_grad(wrt)` the total loss and its exact
    gradient with respect to theta or Z, compiled with XLA. dtype float64 (default) or float32.
    """

    def __init__(self, window: Window, theta, Z, dtype=tf.float64):
        w = self.window = window
        self.dtype = tf.as_dtype(dtype)
        self.theta = tf.Variable(np.asarray(theta, float), dtype=self.dtype, name="theta")   # (4M,)
        self.Z = tf.Variable(np.asarray(Z, float), dtype=self.dtype, name="Z")               # (B, M, T)
        if self.theta.shape != (4 * w.M,):
            raise ValueError(f"theta must have {4 * w.M} entries (amem, J, rp, ft), got {self.theta.shape}")
        if self.Z.shape != (w.B, w.M, w.T):
            raise ValueError(f"Z must have shape {(w.B, w.M, w.T)}, got {tuple(self.Z.shape)}")
        c = lambda a: tf.constant(np.asarray(a, float), dtype=self.dtype)  # noqa: E731
        K, T, R = w.K, w.T, w.R
        self._N = c(w.net.N[:, None])                                        # (M, 1)
        self._e_syn = c(np.exp(-w.dt * w.net.asyn)[:, None])                 # (M, 1)
        self._conmat = c(w.net.conmat)
        self._A0 = c(w.A0)                                                   # (B, M)
        self._I_ext = c(w.I_ext)                                             # (B, M, T)
        self._y = c(w.y[..., K:])                                            # (B, M, Nobs, T)
        # Integer layouts of the grid, fixed by the data.
        k, t = np.arange(K)[:, None], np.arange(T)[None, :]
        n_k = np.maximum(k - R + 1, 0)                                       # Euler steps since the reset
        self._n_k = c(n_k)                                                   # (K, 1)
        self._F_idx = tf.constant(np.clip(K + t - n_k, 0, K + T - 1))        # into [0]*K ++ F, (K, T)
        self._Z_idx = tf.constant(K + t - 1 - k)                             # into Z with history, (K, T)
        self._cohort_refractory = tf.constant(np.broadcast_to(k < R, (K, T)))
        self._Tb = min(K, T)                                                 # cohorts from before the window
        kb, tb = np.arange(K)[:, None], np.arange(self._Tb)[None, :]         # live only while t < k
        self._init_idx = tf.constant(np.clip(kb - tb, 0, K))                 # age at window start, (K, Tb)
        self._init_V_mask = c((kb - tb) >= R)
        self._init_S_mask = c(kb > tb)
        self._t1 = c(np.arange(1, T + 1))                                    # t + 1
        age = w.obs_age                                                      # (B, M, Nobs, T)
        n_obs = np.maximum(age - R + 1, 0)
        self._obs_n = c(n_obs)
        self._obs_F_idx = tf.constant((K + t - n_obs).reshape(w.B, w.M, -1))
        self._obs_init_idx = tf.constant(np.clip(age - t, 0, K).reshape(w.B, w.M, -1))
        self._obs_init_mask = c((age - t) >= R)
        self._obs_refractory = tf.constant(age < R)
        self._compiled = {}

    # -- the model, as a pure function of (theta, Z) ------------------------------------------
    def _losses(self, theta, Z):
        w, dt, K = self.window, self.window.dt, self.window.K
        B, M, Nobs, T = w.B, w.M, w.Nobs, w.T
        amem, J, rp, ft = tf.unstack(tf.reshape(theta, (4, M)))
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

        # 3.2 potentials of all cohorts in all bins
        q = 1 - dt * amem_                                                   # (M, 1)
        F = linear_filter(q, dt * (amem_ * rp_ + h))                         # (B, M, T)
        F_pad = tf.pad(F, [[0, 0], [0, 0], [K, 0]])                          # F(t) = 0 for t < 0
        q_n = tf.pow(q[:, :, None], self._n_k)                              # (M, K, 1)
        q_t1 = tf.pow(q, self._t1)                                           # (M, T)
        Tb = self._Tb
        V_init = self._init_V_mask * q_t1[:, None, :Tb] * tf.gather(V0, self._init_idx, axis=-1)
        V = F[:, :, None, :] - q_n * tf.gather(F_pad, self._F_idx, axis=-1)  # (B, M, K, T)
        V = V + tf.pad(V_init, [[0, 0], [0, 0], [0, 0], [0, T - Tb]])
        V = tf.where(self._cohort_refractory, tf.zeros((), self.dtype), V)

        # 3.3-3.5 escape, survival, mass
        lam, P = _escape(V, ft_[..., None], self._cohort_refractory, dt)
        logS_init = self._init_S_mask * tf.gather(logS0, self._init_idx, axis=-1)   # (B, M, K, Tb)
        logS = diagonal_cumsum(-lam * dt) + tf.pad(logS_init, [[0, 0], [0, 0], [0, 0], [0, T - Tb]])
        Z_full = tf.concat([tf.repeat(self._A0[..., None] * dt, K, axis=-1), Z], -1)   # (B, M, K+T)
        m = tf.exp(logS) * tf.gather(Z_full, self._Z_idx, axis=-1)          # (B, M, K, T)
        v = -tf.math.expm1(logS) * m

        # 3.6 expected activity with the finite-size correction
        sum_v = tf.reduce_sum(v, -2)
        has_v = sum_v > 0
        Lambda = tf.where(has_v, tf.reduce_sum(P * v, -2) / tf.where(has_v, sum_v, tf.ones_like(sum_v)),
                          tf.zeros_like(sum_v))
        Zbar = tf.clip_by_value(tf.reduce_sum(P * m, -2) + Lambda * (1 - tf.reduce_sum(m, -2)), 0.0, 1.0)

        # 3.7 transition density of Z
        var = Zbar / self._N + VAR_FLOOR * dt / self._N
        nll_Z = 0.5 * (LOG_2PI + tf.math.log(var) + tf.square(Z - Zbar) / var)

        # observed neurons: the potential of the cohort of their age
        F_obs = tf.reshape(tf.gather(F_pad, self._obs_F_idx, axis=-1, batch_dims=2), (B, M, Nobs, T))
        V0_obs = tf.reshape(tf.gather(V0, self._obs_init_idx, axis=-1, batch_dims=2), (B, M, Nobs, T))
        V_obs = (F[:, :, None, :] - tf.pow(q[None, :, None, :], self._obs_n) * F_obs
                 + self._obs_init_mask * q_t1[None, :, None, :] * V0_obs)
        V_obs = tf.where(self._obs_refractory, tf.zeros((), self.dtype), V_obs)
        lam_obs, P_obs = _escape(V_obs, ft_[None, :, None, :], self._obs_refractory, dt)
        logp_y = self._y * tf.math.log(P_obs) - (1 - self._y) * lam_obs * dt

        n = tf.cast(B * M * T, self.dtype)
        return -tf.reduce_sum(logp_y) / n, tf.reduce_sum(nll_Z) / n

    # -- compiled entry points ----------------------------------------------------------------
    def _function(self, wrt):
        if wrt not in self._compiled:
            def value_and_grad(theta, Z):
                with tf.GradientTape() as tape:
                    tape.watch([theta, Z])
                    loss_y, loss_Z = self._losses(theta, Z)
                    total = loss_y + loss_Z
                if wrt is None:
                    return loss_y, loss_Z
                return loss_y, loss_Z, tape.gradient(total, theta if wrt == "theta" else Z)
            self._compiled[wrt] = tf.function(value_and_grad, jit_compile=True)
        return self._compiled[wrt]

    def losses(self, theta=None, Z=None):
        """(loss_y, loss_Z) as floats, at the variables' values unless theta or Z are given."""
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
