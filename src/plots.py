"""Figures of a fit: observed spikes and true vs estimated population activity; loss curves."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .helper import smooth  # noqa: E402

POPULATION_NAMES = ("E1", "E2", "I")


def population_names(M):
    return POPULATION_NAMES if M == 3 else tuple(f"pop {a + 1}" for a in range(M))


def plot_activity(path, window, Z_est, smooth_sd, title="", batch=0):
    """Raster of the observed neurons, then per population the true (if known) and the estimated
    activity in Hz over the window, both smoothed by a Gaussian of smooth_sd seconds."""
    w, dt = window, window.dt
    names = population_names(w.M)
    time = (np.arange(w.T) + 0.5) * dt
    fig, axes = plt.subplots(w.M + 1, 1, figsize=(10, 2 + 1.6 * w.M), sharex=True)
    spikes = w.y[batch, :, :, w.K:]                                         # (M, Nobs, T)
    for a in range(w.M):
        for j in range(w.Nobs):
            row = a * w.Nobs + j
            axes[0].plot(time[spikes[a, j] > 0], np.full(int(spikes[a, j].sum()), row), "|",
                         color=f"C{a}", markersize=6)
    axes[0].set_yticks([a * w.Nobs + (w.Nobs - 1) / 2 for a in range(w.M)], names)
    axes[0].set_ylabel("observed\nneurons")
    axes[0].set_title(title)
    for a in range(w.M):
        ax = axes[a + 1]
        if w.Z_true is not None:
            ax.plot(time, smooth(w.Z_true[batch, a], smooth_sd, dt) / dt, color="0.5", lw=1, label="true")
        ax.plot(time, smooth(Z_est[batch, a], smooth_sd, dt) / dt, color=f"C{a}", lw=1.2, label="estimated")
        ax.set_ylabel(f"{names[a]} (Hz)")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    axes[-1].set_xlabel(f"time in window (s); activity smoothed {smooth_sd * 1e3:g} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_losses(path, e_history, m_points):
    """Loss curves of all E-step iterations (x: Adam step, counted over the whole fit), with the
    M-step results as dots. e_history: list of (EM step, loss_y, loss_Z); m_points: list of
    (global step index, loss_y, loss_Z)."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    hist = np.array([h[1:] for h in e_history]).reshape(-1, 2)
    em = np.array([h[0] for h in e_history])
    for ax, label, values, m_values in [
            (axes[0], "loss_y", hist[:, 0], [p[1] for p in m_points]),
            (axes[1], "loss_Z", hist[:, 1], [p[2] for p in m_points]),
            (axes[2], "loss_y + loss_Z", hist.sum(1), [p[1] + p[2] for p in m_points])]:
        ax.plot(values, "-k", lw=1, label="E-step (Adam)")
        ax.plot([p[0] for p in m_points], m_values, "o", color="C3", ms=4, label="after M-step")
        for boundary in np.flatnonzero(np.diff(em)) + 0.5:
            ax.axvline(boundary, color="0.85", lw=0.8)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8, frameon=False)
    axes[-1].set_xlabel("E-step iteration (all EM steps; grey lines separate EM steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
