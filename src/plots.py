"""Figures of a fit: observed spikes and true vs estimated population activity; loss curves; the
figures of the replication report (src/report.py). Every function draws into the file `path` it is
given: write through src.results.save_figure(path, plot_..., ...), which makes the write atomic."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .helper import smooth  # noqa: E402

POPULATION_NAMES = ("E1", "E2", "I")
REPORT_DPI = 90                      # resolution of the report's figures


def population_names(M):
    return POPULATION_NAMES if M == 3 else tuple(f"pop {a + 1}" for a in range(M))


def plot_activity(path, window, Z_est, smooth_sd, title="", batch=0, band=None):
    """Raster of the observed neurons, then per population the true (if known) and the estimated
    activity in Hz over the window, both smoothed by a Gaussian of smooth_sd seconds. band: None or
    (lower, upper), each like Z_est, the posterior's 5% and 95% quantiles, drawn as the 90% band."""
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
        if band is not None:
            ax.fill_between(time, smooth(band[0][batch, a], smooth_sd, dt) / dt,
                            smooth(band[1][batch, a], smooth_sd, dt) / dt, color=f"C{a}", alpha=0.25, lw=0,
                            label="90% posterior band")
        label = "estimated" if band is None else "posterior mean"
        ax.plot(time, smooth(Z_est[batch, a], smooth_sd, dt) / dt, color=f"C{a}", lw=1.2, label=label)
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


# -- the replication report (src/report.py) -------------------------------------------------------
def plot_latent(path, truth, estimates, dt, names, t_start, smooth_sd):
    """Per population the true activity and each estimate {name: (M, T) Hz} over the fitted window,
    which starts t_start s into the recording; all smoothed by smooth_sd s (said on the axis)."""
    M, T = truth.shape
    time_s = t_start + (np.arange(T) + 0.5) * dt
    fig, axes = plt.subplots(M, 1, figsize=(11, 2.4 * M), sharex=True)
    styles = {"data-driven init": {"color": "C1", "ls": "--"}, "neuLVM": {"color": "C0"},
              "GPFA, best linear map": {"color": "C2", "ls": ":"}}
    for a in range(M):
        ax = axes[a]
        ax.plot(time_s, truth[a], color="k", lw=1.5, label="true")
        for k, v in estimates.items():
            ax.plot(time_s, v[a], lw=1.1, label=k, **styles.get(k, {}))
        ax.set_ylabel(f"{names[a]} (Hz)")
    axes[0].legend(loc="upper right", fontsize=8, ncol=4, frameon=False)
    axes[-1].set_xlabel(f"time in the recording (s); activity smoothed {smooth_sd * 1e3:g} ms")
    axes[0].set_title("population activity: truth vs inferred (best run)")
    _save_report_figure(fig, path)


def plot_dominance(path, dwell):
    """Histogram and survival function of the dominance durations of each simulation
    {name: src.report.dwell_times(...)}."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    all_d = np.concatenate([d["durations"] for d in dwell.values()] + [[0.3, 10.0]])
    bins = np.geomspace(0.25, max(all_d.max() * 1.1, 1.0), 25)
    for i, (k, d) in enumerate(dwell.items()):
        dur = np.sort(d["durations"])
        label = f"{k} (n={len(dur)})"
        if len(dur):
            axes[0].hist(dur, bins=bins, histtype="step", lw=1.5, color=f"C{i}", label=label,
                         weights=np.full(len(dur), 1 / len(dur)))
            axes[1].step(dur, 1 - np.arange(len(dur)) / len(dur), where="post", color=f"C{i}", label=label)
        else:
            axes[1].plot([], [], color=f"C{i}", label=f"{k}: no complete period")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("dominance duration (s)")
    axes[0].set_ylabel("fraction of periods (log-spaced bins)")
    axes[1].set_ylabel("fraction of periods longer")
    axes[1].legend(fontsize=8, frameon=False)
    axes[0].set_title("distribution of dominance durations")
    axes[1].set_title("survival function")
    _save_report_figure(fig, path)


def plot_traces(path, pieces, N, dt, names, seconds=100.0):
    """The first `seconds` s of E activity (smoothed 150 ms) of each simulation {name: list of
    independent (M, n_bins) spike-count pieces}, the starts of new pieces dashed."""
    fig, axes = plt.subplots(len(pieces), 1, figsize=(11, 2.2 * len(pieces)), sharex=True, squeeze=False)
    for ax, (k, p) in zip(axes[:, 0], pieces.items()):
        counts = np.concatenate(p, axis=1)[:, :int(round(seconds / dt))]
        A = smooth(counts / (np.asarray(N)[:, None] * dt), 0.15, dt)
        t = (np.arange(A.shape[1]) + 0.5) * dt
        for a in range(min(2, A.shape[0])):
            ax.plot(t, A[a], lw=0.8, color=f"C{a}", label=names[a])
        for b in range(1, len(p)):
            if b * p[0].shape[1] * dt < t[-1]:
                ax.axvline(b * p[0].shape[1] * dt, color="0.7", lw=0.8, ls="--")
        ax.set_ylabel("Hz")
        ax.set_title(k, fontsize=9, loc="left")
    axes[0, 0].legend(loc="upper right", fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("time (s); E activity smoothed 150 ms; dashed: start of a new independent piece")
    _save_report_figure(fig, path)


def plot_stimulation(path, averages, search, amplitude, dt, names, onset, length, target, smooth_sd):
    """Trial-averaged responses {name: (M, n_bins) Hz or None} to a step of `length` s into
    population `target` at `onset` s, and below them the amplitude search [(amplitude, fraction, n)]."""
    M = next(v for v in averages.values() if v is not None).shape[0]
    fig, axes = plt.subplots(M + 1, 1, figsize=(10, 2.2 * (M + 1)))
    for a in range(1, M):
        axes[a].sharex(axes[0])
    for i, (k, A) in enumerate(averages.items()):
        if A is None:
            continue
        t = (np.arange(A.shape[1]) + 0.5) * dt
        for a in range(M):
            axes[a].plot(t, A[a], color=f"C{i}", lw=1.2, label=k)
    for a in range(M):
        axes[a].axvspan(onset, onset + length, color="0.9")
        axes[a].set_ylabel(f"{names[a]} (Hz)")
    axes[M - 1].set_xlabel(f"time in trial (s); grey: step into {names[target]}; "
                           f"smoothed {smooth_sd * 1e3:g} ms")
    axes[0].legend(fontsize=8, frameon=False, loc="upper right")
    axes[0].set_title(f"trial-averaged response to a step of amplitude {amplitude:.3g} into {names[target]}")
    amps = [h[0] for h in search]
    fracs = [h[1] for h in search]
    order = np.argsort(amps)
    axes[M].plot(np.asarray(amps)[order], np.asarray(fracs)[order], "o-", color="0.3")
    for k, (a, f) in enumerate(zip(amps, fracs)):
        axes[M].annotate(str(k), (a, f), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[M].axhline(0.5, color="0.7", ls="--")
    axes[M].set_xscale("log")
    axes[M].set_ylim(-0.05, 1.05)
    axes[M].set_xlabel("amplitude (potential units / s), search order annotated")
    axes[M].set_ylabel("switch fraction\n(network)")
    _save_report_figure(fig, path)


def _save_report_figure(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=REPORT_DPI)
    plt.close(fig)


# -- the figures of a sweep (python -m src.sweep summarize) -----------------------------------------
PARAMETER_GROUPS = ("amem", "J", "rp", "ft")
SWEEP_KEYS = ("dataset", "end_timepoint", "Nsampled", "scheme", "estep")   # the grid cell of a fit


def plot_errors_against(path, cells, axis, theta_names):
    """Relative parameter errors of the best restart of each grid cell against one grid axis
    (end_timepoint or Nsampled): a panel per parameter group, a colour per population, a line per
    setting of the other axes; with several cells per value (e.g. windows, against Nsampled) the
    points of each and the line through their medians."""
    others = [k for k in SWEEP_KEYS if k != axis]
    variants = sorted({tuple(c[k] for k in others) for c in cells}, key=str)
    M = len(theta_names) // 4
    names = population_names(M)
    markers = "osD^v<>"
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True)
    for g, group in enumerate(PARAMETER_GROUPS):
        ax = axes[g]
        for v, variant in enumerate(variants):
            mine = [c for c in cells if tuple(c[k] for k in others) == variant]
            xs = sorted({c[axis] for c in mine})
            for a in range(M):
                key = f"err_{group}_{a + 1}"
                points = [(c[axis], 100 * c[key]) for c in mine]
                ax.plot(*zip(*points), markers[v % len(markers)], color=f"C{a}", alpha=0.4, ms=4)
                medians = [np.median([y for x, y in points if x == x0]) for x0 in xs]
                label = names[a] + (f", {' '.join(map(str, variant))}" if len(variants) > 1 else "")
                ax.plot(xs, medians, "-" + markers[v % len(markers)], color=f"C{a}", lw=1, ms=5, label=label)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(group)
        ax.set_xlabel({"end_timepoint": "end of the window (s)", "Nsampled": "observed neurons per population"}
                      .get(axis, axis))
        if axis == "Nsampled":
            ax.set_xscale("log")
    axes[0].set_ylabel("(fitted - true) / true (%), best restart")
    axes[-1].legend(fontsize=7)
    _save_report_figure(fig, path)


def plot_window_spread(path, groups, theta_names):
    """Fitted / true of every parameter across the windows of each setting (a box per parameter,
    the best restart of each window as points); groups: {setting: [cells differing only in window]}."""
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, 3.2 * len(groups)), squeeze=False)
    for ax, (setting, cells) in zip(axes[:, 0], sorted(groups.items(), key=lambda kv: str(kv[0]))):
        ratios = [[1 + c[f"err_{n}"] for c in cells] for n in theta_names]
        ax.boxplot(ratios, showfliers=False)
        for j, values in enumerate(ratios):
            ax.plot(np.full(len(values), j + 1.0), values, "o", color="C0", alpha=0.5, ms=3)
        ax.axhline(1, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(range(1, len(theta_names) + 1), theta_names)
        ax.set_ylabel("fitted / true")
        ax.set_title(f"{', '.join(map(str, setting))}: {len(cells)} windows, best restart of each")
    _save_report_figure(fig, path)
