"""The spiking network: parameters of M homogeneous LIF populations with escape noise.

Notation: the one block of the project; every module uses these names (shared/docs/model.md).
The network:
    M        number of populations, indexed a, b
    N        neurons per population, shape (M,)
    amem     1 / tau_m, membrane rate (1/s), shape (M,)
    rp       resting potential (units of the escape-noise softness, 2.5 mV), shape (M,)
    ft       firing threshold (same units), shape (M,)
    J        coupling strength of each presynaptic population (units * s), shape (M,)
    conmat   sign/structure of the coupling, conmat[b, a] from b to a, shape (M, M)
    W        W[b, a] = J[b] * conmat[b, a]
    asyn     1 / tau_syn of each presynaptic population (1/s), shape (M,)
    ref_t    absolute refractory period (s)
    eps      gain of the external input
The escape rate of a neuron at potential V is exp(V - ft) in 1/s.
theta, the 12 numbers the M-step fits, is the flat vector (amem, J, rp, ft) of a 3-population
network; in general it has 4*M entries in that order.

The data and the mesoscopic model (src/window.py, src/fast_np.py, src/LIFmesoCell.py):
    dt       mesoscopic time bin (s), 4 ms by default
    K        age bins, a_cutoff / dt (250): cohort k fired k+1 bins ago
    n_ref    refractory age bins, ceil(ref_t / dt): cohorts k < n_ref are held at V = 0
    T        bins per batch of the fitted window; B batches, each with its own K bins of history
    Nobs     observed neurons per population (train_meso.py's --Nsampled)
    y        observed spikes, 1 if the neuron fired in the bin, (B, M, Nobs, K+T): history, then window
    Z        latent population activity: fraction of a population firing in a bin, (B, M, T)
    A0       initial rate (Hz) of each population, from the observed neurons' history, (B, M)
    I_ext    external input per bin (potential units / s), (B, M, T)
The recording (src/dataset.py, src/microsim.py):
    MICRO_DT     step of the microscopic simulation, 0.2 ms, stored in a recording as its field 'h'
                 (everywhere else h is model.md's total input of a population, src/fast_np.py)
    n_recorded   neurons per population whose spike trains the recording keeps (the first Nobs are observed)
"""
from dataclasses import dataclass, field, replace

import numpy as np

@dataclass(frozen=True)
class Network:
    N: np.ndarray
    amem: np.ndarray
    rp: np.ndarray
    ft: np.ndarray
    J: np.ndarray
    conmat: np.ndarray
    asyn: np.ndarray
    ref_t: float = 0.004
    eps: float = 1.0
    init_rates: np.ndarray = field(default=None)  # Hz, for the stationary start

    def __post_init__(self):
        for name in ("N", "amem", "rp", "ft", "J", "asyn"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=int if name == "N" else float))
        object.__setattr__(self, "conmat", np.asarray(self.conmat, dtype=float))
        M = self.M
        for name in ("N", "amem", "rp", "ft", "J", "asyn"):
            if getattr(self, name).shape != (M,):
                raise ValueError(f"{name} must have shape ({M},), got {getattr(self, name).shape}")
        if self.conmat.shape != (M, M):
            raise ValueError(f"conmat must have shape ({M}, {M}), got {self.conmat.shape}")
        if np.any(self.N <= 0):
            raise ValueError(f"N must be > 0, got {self.N}")
        if self.ref_t < 0:
            raise ValueError(f"ref_t must be >= 0, got {self.ref_t!r}")
        rates = np.zeros(M) if self.init_rates is None else np.asarray(self.init_rates, float)
        if rates.shape != (M,):
            raise ValueError(f"init_rates must have shape ({M},), got {rates.shape}")
        object.__setattr__(self, "init_rates", rates)

    @property
    def M(self):
        return len(self.N)

    @property
    def W(self):
        """W[b, a]: coupling from population b to population a."""
        return self.J[:, None] * self.conmat

    def free_potential(self, A):
        """h0 = rp + (W^T A)_a / amem_a: the potential the neurons of each population relax to,
        without their own spikes, under constant activities A (Hz, shape (..., M)); model.md's
        stationary start. The escape rate there is exp(h0 - ft)."""
        return self.rp + (np.asarray(A, dtype=float) @ self.W) / self.amem

    def distance_to_threshold(self, A):
        """h0 - ft at constant activities A (Hz): the "drive" the reports compare, which a few
        neurons' spikes pin where they do not pin J and rp apart (README, "Where the SMC fits stop")."""
        return self.free_potential(A) - self.ft

    @property
    def theta(self):
        """The fitted parameters as one flat vector (amem, J, rp, ft)."""
        return np.concatenate([self.amem, self.J, self.rp, self.ft])

    def with_theta(self, theta):
        """A copy of this network with the fitted parameters replaced by the flat vector theta."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (4 * self.M,):
            raise ValueError(f"theta must have {4 * self.M} entries (amem, J, rp, ft), got shape {theta.shape}")
        amem, J, rp, ft = theta.reshape(4, self.M)
        return replace(self, amem=amem, J=J, rp=rp, ft=ft)

    def to_dict(self):
        """Plain arrays and numbers, for npz and JSON files."""
        return {"N": self.N, "amem": self.amem, "rp": self.rp, "ft": self.ft, "J": self.J,
                "conmat": self.conmat, "asyn": self.asyn, "ref_t": float(self.ref_t),
                "eps": float(self.eps), "init_rates": self.init_rates}


def winner_take_all():
    """The 3-population winner-take-all network of the paper's Fig. 4 (E1, E2, I)."""
    return Network(
        N=[400, 400, 200],
        amem=[50.0, 50.0, 50.0],
        rp=[14.4, 14.4, 14.4],
        ft=[3.7, 3.7, 3.7],
        J=[9.984, 9.984, 19.968],
        conmat=[[1, 0, 1], [0, 1, 1], [-1, -1, -1]],  # E1 -> E1, I; E2 -> E2, I; I -> all
        asyn=[1000 / 3, 1000 / 3, 500 / 3],
        ref_t=0.004,
        eps=1.0,
        init_rates=[5.0, 20.0, 25.0],
    )
