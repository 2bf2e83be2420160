"""From a microscopic recording to the model's input (shared/docs/model.md section 2), and the
data-driven initialisation of the latent (section 4.1).

The original project's init_model (in its src/helper.py) is here: make_window cuts and bins the
data, init_Z makes the initial latent; the initial parameters are drawn in train_meso.train and
the model is src.LIFmesoCell.MesoModel.
"""
import numpy as np
from scipy.ndimage import gaussian_filter1d

from .window import Z_MAX, Z_MIN, Window


def bin_recording(rec, dt):
    """Bin a recording (src.dataset.Recording) at dt.

    Returns Z (M, n_bins): fraction of each population firing in a bin (None for a recording without
    ground truth), y (M, n_recorded, n_bins): 1 if a recorded neuron fired in the bin, and I_ext
    (M, n_bins): the input averaged over the bin.
    """
    steps = _whole_multiple("dt", dt, rec.h, f"the recording step h = {rec.h:g} s (field 'h')")
    n_bins = rec.spikes.shape[2] // steps
    cut = n_bins * steps
    Z = None
    if rec.has_truth:
        counts = rec.pop_spike_counts[:, :cut].reshape(rec.network.M, n_bins, steps).sum(-1)
        Z = counts / rec.network.N[:, None]
    M, n_recorded = rec.spikes.shape[:2]
    y = rec.spikes[..., :cut].reshape(M, n_recorded, n_bins, steps).max(-1).astype(float)
    I_ext = rec.I_ext[:, :cut].reshape(M, n_bins, steps).mean(-1)
    return Z, y, I_ext


def make_window(rec, dt=0.004, trial_length=10.0, t_perbatch=10.0, end_timepoint=11.0, a_cutoff=1.0,
                Nsampled=3, with_input=True):
    """The fitting window: trial_length seconds ending at end_timepoint, cut into B = trial_length /
    t_perbatch batches, each preceded by a_cutoff seconds of history; the first Nsampled recorded
    neurons of each population are observed.

    ValueError, naming the argument and what was expected, if a length is not a positive whole
    number of bins, the window (history included) does not fit in the recording, or there are
    fewer than Nsampled recorded neurons."""
    for name, value in (("dt", dt), ("trial_length", trial_length), ("t_perbatch", t_perbatch),
                        ("end_timepoint", end_timepoint), ("a_cutoff", a_cutoff)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 (s), got {value!r}")
    _whole_multiple("dt", dt, rec.h, f"the recording step h = {rec.h:g} s (field 'h')")
    K = _whole_multiple("a_cutoff", a_cutoff, dt, f"dt = {dt:g} s")
    T = _whole_multiple("t_perbatch", t_perbatch, dt, f"dt = {dt:g} s")
    end = _whole_multiple("end_timepoint", end_timepoint, dt, f"dt = {dt:g} s")
    B = _whole_multiple("trial_length", trial_length, t_perbatch, f"t_perbatch = {t_perbatch:g} s")
    n_recorded = rec.spikes.shape[1]
    if not (isinstance(Nsampled, (int, np.integer)) and 1 <= Nsampled <= n_recorded):
        raise ValueError(f"Nsampled must be between 1 and the {n_recorded} recorded neurons per population "
                         f"(field 'spikes'), got {Nsampled!r}")
    Z, y, I_ext = bin_recording(rec, dt)
    start = end - B * T
    if start - K < 0 or end > y.shape[2]:
        raise ValueError(f"the window {end_timepoint - trial_length - a_cutoff:g}..{end_timepoint:g} s "
                         f"(end_timepoint {end_timepoint:g} s, trial_length {trial_length:g} s after a_cutoff "
                         f"{a_cutoff:g} s of history) must lie within the recording, 0..{y.shape[2] * dt:g} s")
    batches = [slice(start + b * T - K, start + (b + 1) * T) for b in range(B)]
    y_obs = np.stack([y[:, :Nsampled, s] for s in batches])                        # (B, M, Nobs, K+T)
    I_win = np.stack([I_ext[:, s][:, K:] for s in batches])                        # (B, M, T)
    if not with_input:
        I_win = np.zeros_like(I_win)
    Z_true = None if Z is None else np.stack([Z[:, s][:, K:] for s in batches])    # (B, M, T)
    return Window(net=rec.network, dt=dt, K=K, y=y_obs, I_ext=I_win, Z_true=Z_true)


WHOLE_TOL = 1e-6  # relative tolerance on "a whole multiple": absorbs decimal rounding (0.2 / 0.004)


def run_window(rec, summary):
    """The window a run (src.results.RunSummary) was fitted on: make_window with the run's options."""
    o = summary.options
    return make_window(rec, summary.dt, o["trial_length"], o["t_perbatch"], o["end_timepoint"], o["a_cutoff"],
                       o["Nsampled"], with_input=bool(o["with_input"]))


def _whole_multiple(name, value, unit, unit_text):
    """value / unit as an int >= 1; ValueError naming `name` if it is not a positive whole multiple."""
    ratio = value / unit
    n = round(ratio) if np.isfinite(ratio) else 0
    if n < 1 or abs(ratio - n) > WHOLE_TOL * max(1.0, abs(ratio)):
        raise ValueError(f"{name} must be a positive whole multiple of {unit_text}, got {value!r}")
    return n


def init_Z(window, smooth_sd):
    """Data-driven initial latent: the mean of each population's observed spike trains, smoothed by
    a Gaussian of standard deviation smooth_sd seconds (history included, so the window's start is
    not an edge), clipped to [Z_MIN, Z_MAX]. Shape (B, M, T)."""
    mean_spikes = smooth(window.y.mean(axis=2), smooth_sd, window.dt)              # (B, M, K+T)
    return np.clip(mean_spikes[..., window.K:], Z_MIN, Z_MAX)


def smooth(x, sd, dt, axis=-1, mode="nearest"):
    """Gaussian smoothing with standard deviation sd seconds of a signal sampled every dt seconds. mode:
    how scipy.ndimage.gaussian_filter1d extends the signal past its ends ("nearest" repeats the last
    sample; "reflect" mirrors the last few, which keeps the end of a noisy signal unbiased)."""
    return gaussian_filter1d(np.asarray(x, float), sd / dt, axis=axis, mode=mode) if sd > 0 else x
