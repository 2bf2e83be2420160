"""GPFA baseline: Gaussian-process factor analysis (Yu et al. 2009) of the observed spike trains,
through the `elephant` package, and the best linear map from its latents to population activity.

    from src.gpfa import gpfa_latents, best_linear_map
    X, info = gpfa_latents(y, dt=0.004, seed=0)     # (x_dim, n_bins), latents on the dt grid
    A_hat, beta = best_linear_map(X, A_true)         # least squares, in-sample

GPFA knows nothing of populations or of the spiking model: it finds x_dim smooth latents that
explain the binned spike counts linearly. To compare it with neuLVM, which infers population
activity in Hz, each population's true activity is regressed on the latents (plus a constant) over
the very same bins: the map sees the answer, so its score is an upper bound for GPFA.

elephant, neo and quantities are optional extras (requirements-report.txt); importing this module
works without them, and `gpfa_latents` raises GPFAUnavailable with the install command.
"""
import contextlib
import io
import warnings

import numpy as np

GPFA_BIN = 0.02        # s, GPFA's own bin (elephant's default 20 ms)
X_DIM = 3              # latent dimensions (as many as populations)
EM_MAX_ITERS = 500     # elephant's default


class GPFAUnavailable(RuntimeError):
    """elephant (or neo / quantities) is not installed."""


def gpfa_latents(y, dt, x_dim=X_DIM, bin_size=GPFA_BIN, em_max_iters=EM_MAX_ITERS, seed=0):
    """Fit GPFA to one continuous trial of binned spike trains and return its latents on the dt grid.

    y: (n_neurons, n_bins) 0/1, spike of a neuron in a bin of dt seconds (the spike is placed at
    the bin centre). The trial is cut at a whole number of GPFA bins; latents (orthonormalised, in
    elephant's convention) are linearly interpolated from GPFA bin centres to dt bin centres
    (held constant beyond the first and last centre).

    elephant initialises GPFA by a factor analysis that draws from numpy's global generator, and
    where it ends up depends on that draw; the global state is seeded with `seed` for the fit and
    restored afterwards. Returns X, shape (x_dim, n_bins), and a dict with the final
    log_likelihood and the number of EM iterations.
    """
    try:
        import neo
        import quantities as pq
        from elephant.gpfa import GPFA
    except ImportError as err:
        raise GPFAUnavailable(f"GPFA needs elephant, neo and quantities ({err}); "
                              "install them with `pip install -r requirements-report.txt`") from None
    y = np.asarray(y)
    if y.ndim != 2 or not np.all((y == 0) | (y == 1)):
        raise ValueError(f"y must be a (neurons, bins) array of 0 and 1, got shape {y.shape}")
    if dt <= 0 or bin_size < dt:
        raise ValueError(f"need 0 < dt <= bin_size, got dt={dt!r}, bin_size={bin_size!r}")
    silent = np.flatnonzero(y.sum(axis=1) == 0)
    if len(silent):
        raise ValueError(f"GPFA needs at least one spike per neuron; neurons {silent.tolist()} are silent")
    n_bins = y.shape[1]
    n_gpfa = int(np.floor(n_bins * dt / bin_size + 1e-9))
    if n_gpfa < 2:
        raise ValueError(f"the trial ({n_bins * dt:g} s) must hold at least two GPFA bins of {bin_size:g} s")
    t_stop = n_gpfa * bin_size
    trial = []
    for row in y:
        times = (np.flatnonzero(row) + 0.5) * dt
        trial.append(neo.SpikeTrain(times[times < t_stop] * pq.s, t_start=0 * pq.s, t_stop=t_stop * pq.s))
    model = GPFA(bin_size=bin_size * pq.s, x_dim=x_dim, em_max_iters=em_max_iters, verbose=False)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # elephant warns and prints progress on every call
            latents = model.fit_transform([trial])[0]                              # (x_dim, n_gpfa)
    finally:
        np.random.set_state(state)
    centres = (np.arange(n_gpfa) + 0.5) * bin_size
    t = (np.arange(n_bins) + 0.5) * dt
    X = np.stack([np.interp(t, centres, x) for x in latents])                       # (x_dim, n_bins)
    log_likelihoods = model.fit_info.get("log_likelihoods", [np.nan])
    return X, {"log_likelihood": float(log_likelihoods[-1]), "seed": seed,
               "iterations": len(model.fit_info.get("iteration_time", []))}


def best_linear_map(X, target):
    """Least-squares map of the latents X (x_dim, n) plus a constant onto target (n,) or (m, n).
    Returns (mapped, beta): mapped has the shape of target; beta (x_dim + 1, m) with the constant last."""
    target = np.asarray(target, float)
    design = np.vstack([X, np.ones(X.shape[1])]).T                                  # (n, x_dim+1)
    beta, *_ = np.linalg.lstsq(design, np.atleast_2d(target).T, rcond=None)        # (x_dim+1, m)
    mapped = (design @ beta).T                                                      # (m, n)
    return (mapped[0] if target.ndim == 1 else mapped), beta


def shift_null_r(X, target, n_shifts=200, min_shift=None, rng=None):
    """Chance level of the mapped r: Pearson r of best_linear_map after circularly shifting target
    against X by a random lag of at least min_shift bins (default a quarter of the length), which
    keeps both signals' autocorrelation but breaks their alignment. Returns the (n_shifts,) null r."""
    target = np.asarray(target, float)
    n = target.shape[-1]
    min_shift = n // 4 if min_shift is None else min_shift
    if not 0 < min_shift <= n - min_shift:
        raise ValueError(f"min_shift must be in (0, n/2] bins for n={n}, got {min_shift!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    null = np.empty(n_shifts)
    for i, lag in enumerate(rng.integers(min_shift, n - min_shift + 1, n_shifts)):
        shifted = np.roll(target, lag)
        mapped, _ = best_linear_map(X, shifted)
        null[i] = np.corrcoef(mapped, shifted)[0, 1]
    return null
