"""The data a neuLVM likelihood sees: one window of binned observations, cut into B batches.

Notation (dt, K, n_ref, T, B, Nobs, y, Z, A0, I_ext): src/network.py.
"""
from dataclasses import dataclass

import numpy as np

from .network import Network

Z_MIN, Z_MAX = 1e-5, 1.0  # the latent is kept in this box by the E-step and the initialisation


@dataclass(frozen=True)
class Window:
    """Observed data of B batches of T bins, with the fixed parts of the model."""
    net: Network          # fixed parameters (N, asyn, conmat, ref_t, eps); its theta is not used
    dt: float             # s
    K: int                # age bins
    y: np.ndarray         # (B, M, Nobs, K+T) 0/1
    I_ext: np.ndarray     # (B, M, T)
    Z_true: np.ndarray = None   # (B, M, T) ground truth, when known (for plots and reports only)

    def __post_init__(self):
        """Checks every field: a ValueError (TypeError for net) names the field, what was expected and the value."""
        if not isinstance(self.net, Network):
            raise TypeError(f"net must be a src.network.Network, got {type(self.net).__name__}")
        if not (isinstance(self.dt, (int, float, np.integer, np.floating)) and np.isfinite(self.dt)
                and self.dt > 0):
            raise ValueError(f"dt must be a finite number > 0 (s), got {self.dt!r}")
        if not isinstance(self.K, (int, np.integer)) or isinstance(self.K, bool) or self.K < 1:
            raise ValueError(f"K (age bins) must be an integer >= 1, got {self.K!r}")
        object.__setattr__(self, "dt", float(self.dt))
        object.__setattr__(self, "K", int(self.K))
        y = _numeric_array("y", self.y)
        object.__setattr__(self, "y", y)
        if y.ndim != 4 or y.shape[1] != self.net.M or y.shape[3] <= self.K or y.shape[0] < 1 or y.shape[2] < 1:
            raise ValueError(f"y must have shape (B >= 1, M = {self.net.M}, Nobs >= 1, K+T) with K={self.K} and "
                             f"T >= 1, got {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("y (observed spikes) must contain only 0 and 1")
        object.__setattr__(self, "I_ext", _numeric_array("I_ext", self.I_ext))
        if self.I_ext.shape != (self.B, self.M, self.T):
            raise ValueError(f"I_ext must have shape {(self.B, self.M, self.T)}, got {self.I_ext.shape}")
        if not np.all(np.isfinite(self.I_ext)):
            raise ValueError("I_ext must be finite")
        if self.Z_true is not None:
            object.__setattr__(self, "Z_true", _numeric_array("Z_true", self.Z_true))
            if self.Z_true.shape != (self.B, self.M, self.T):
                raise ValueError(f"Z_true must have shape {(self.B, self.M, self.T)}, got {self.Z_true.shape}")

    @property
    def B(self):
        return self.y.shape[0]

    @property
    def M(self):
        return self.y.shape[1]

    def repeated(self, n):
        """This window's B batches n times over, (n*B) batches in that order: one copy per latent draw,
        for a loss averaged over draws (the SMC E-step's M-step)."""
        tile = lambda a: None if a is None else np.tile(a, (n,) + (1,) * (a.ndim - 1))  # noqa: E731
        return Window(net=self.net, dt=self.dt, K=self.K, y=tile(self.y), I_ext=tile(self.I_ext),
                      Z_true=tile(self.Z_true))

    @property
    def Nobs(self):
        return self.y.shape[2]

    @property
    def T(self):
        return self.y.shape[3] - self.K

    @property
    def n_ref(self):
        """Refractory age bins: cohorts k with k*dt < ref_t are held at V = 0."""
        return refractory_bins(self.net.ref_t, self.dt)

    @property
    def A0(self):
        """Initial rate (Hz): mean rate of the observed neurons over the history, shape (B, M)."""
        return self.y[:, :, :, :self.K].mean(axis=(2, 3)) / self.dt

    @property
    def A_true_mean(self):
        """True mean activity (Hz) of each population over the window's bins, shape (M,); None without
        ground truth. Network.distance_to_threshold is measured there."""
        return None if self.Z_true is None else self.Z_true.mean(axis=(0, 2)) / self.dt

    @property
    def obs_age(self):
        """Age index k of every observed neuron in every window bin, shape (B, M, Nobs, T), int.

        k = t - 1 - (bin of the last spike before bin t). A neuron with no spike in the history
        counts as having fired K+1 bins before the window (its age is at least the history length).
        """
        B, M, Nobs, L = self.y.shape
        times = np.arange(L)
        last = np.where(self.y > 0, times, -1)                      # (B, M, Nobs, K+T)
        last = np.maximum.accumulate(last, axis=-1)
        last = np.where(last < 0, -1, last)                          # -1: no spike yet, i.e. bin -K-1
        last_before = np.concatenate([np.full((B, M, Nobs, 1), -1), last[..., :-1]], axis=-1)
        t = times[self.K:]                                           # window bins in history coordinates
        return (t - 1 - last_before[..., self.K:]).astype(np.int64)  # (B, M, Nobs, T)


def _numeric_array(name, value):
    """value as a float64 array; ValueError naming the field if it is not numbers (or booleans)."""
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array.astype(float)


def refractory_bins(ref_t, dt):
    """Number of age bins k with k*dt < ref_t (1 for ref_t = dt = 4 ms)."""
    return int(np.ceil(ref_t / dt - 1e-9))
