"""The public API of neuLVM: everything the scripts and the tests need, without array layouts.

    from src import neulvm
    window = neulvm.load_window("dataset/3pop_noinput_small.npz")        # 10 s, 9 observed neurons
    loss_y, loss_Z = neulvm.losses(theta, window, Z)                     # model.md section 3
    sim = neulvm.simulate(net, duration=100.0, seed=1)                   # model.md section 5

theta is the flat vector (amem, J, rp, ft) of src/network.py; Z has shape (B, M, T) (src/window.py).
Both take scheme="exact" (default) or "euler", the integrator of model.md section 3.2.
"""
import numpy as np

from . import fast_np
from .fast_np import DEFAULT_SCHEME, check_scheme
from .window import Window

DT = 0.004        # s, the mesoscopic bin
A_CUTOFF = 1.0    # s, the age cutoff


def load_window(path, **window_options):
    """The fitting window of a recording file (options of src.helper.make_window)."""
    from .dataset import load_recording
    from .helper import make_window
    return make_window(load_recording(path), **window_options)


def losses(theta, window: Window, Z, backend="tensorflow", scheme=DEFAULT_SCHEME):
    """(loss_y, loss_Z) at theta and Z: backend "tensorflow" (fast, src/LIFmesoCell.py) or "numpy"
    (the sequential reference, src/fast_np.py). theta must be finite and Z finite in [0, 1]."""
    theta, Z = np.asarray(theta, float), np.asarray(Z, float)
    check_scheme(scheme)
    if theta.shape != (4 * window.M,) or not np.all(np.isfinite(theta)):
        raise ValueError(f"theta must be {4 * window.M} finite numbers (amem, J, rp, ft), got shape {theta.shape}"
                         f"{'' if np.all(np.isfinite(theta)) else ' with non-finite values'}")
    if Z.shape != (window.B, window.M, window.T) or not np.all((Z >= 0) & (Z <= 1)):
        raise ValueError(f"Z must have shape {(window.B, window.M, window.T)} with finite values in [0, 1], "
                         f"got shape {Z.shape}, range [{np.nanmin(Z) if Z.size else 0:g}, "
                         f"{np.nanmax(Z) if Z.size else 0:g}]{' with NaN' if np.isnan(Z).any() else ''}")
    if backend == "numpy":
        return fast_np.losses(window.net.with_theta(theta), window, Z, scheme)
    if backend == "tensorflow":
        from .LIFmesoCell import MesoModel
        return MesoModel(window, theta, Z, scheme).losses()
    raise ValueError(f"backend must be 'tensorflow' or 'numpy', got {backend!r}")


def simulate(net, duration, seed, I_ext=None, dt=DT, a_cutoff=A_CUTOFF, Nobs=3, A0=None, scheme=DEFAULT_SCHEME):
    """Free simulation of the mesoscopic model (model.md section 5) for `duration` seconds.

    net: src.network.Network with the parameters to simulate (e.g. net.with_theta(theta_fit));
    I_ext: None or (M, T) input per bin; A0: initial rates (Hz), default net.init_rates; the seed
    fixes every random draw. Returns a dict with Z (M, T) fractions, A (M, T) in Hz, spikes
    (M, Nobs, T) of Nobs observed neurons per population, I_ext, dt, a_cutoff, scheme, seed.
    Runs the compiled loop src/LIFmesoCell.simulate (100 s in ~0.3 s; the first call in a process
    compiles it, ~1-2 s); src/fast_np.simulate is the readable reference with the same equations.
    """
    check_scheme(scheme)
    T = int(round(duration / dt))
    if T < 1:
        raise ValueError(f"duration must be at least one bin ({dt} s), got {duration!r}")
    K = int(round(a_cutoff / dt))
    A0 = np.asarray(net.init_rates if A0 is None else A0, float)
    I_ext = np.zeros((net.M, T)) if I_ext is None else np.asarray(I_ext, float)
    if I_ext.shape != (net.M, T):
        raise ValueError(f"I_ext must have shape {(net.M, T)} (populations, bins of {dt} s), got {I_ext.shape}")
    from .LIFmesoCell import simulate as simulate_xla      # the compiled loop; fast_np.simulate is its reference
    Z, spikes = simulate_xla(net, dt, K, T, A0[None], np.random.default_rng(seed), I_ext[None], Nobs, scheme=scheme)
    return {"Z": Z[0], "A": Z[0] / dt, "spikes": spikes[0], "I_ext": I_ext, "dt": dt, "a_cutoff": K * dt,
            "scheme": scheme, "seed": seed}
