"""Microscopic simulator of the spiking network (shared/docs/model.md section 1): the ground truth.

Command line (writes a dataset file, see src/dataset.py):

    python -m src.microsim --out dataset/3pop_noinput_small.npz --duration 11 --seed 7
    python -m src.microsim --out /tmp/pulses.npz --duration 5 --seed 1 --input pulses \
        --pulse_amplitude 200 --pulse_onsets 1 3 --pulse_duration 0.2 --pulse_target 0
    python -m src.microsim --out /tmp/ou.npz --duration 20 --seed 1 --input ou --ou_sigma 100

Notation (network symbols as in src/network.py; all populations a = 0..M-1):
    h            simulation step, 0.2 ms; step t covers [t*h, (t+1)*h)
    V            membrane potential of every neuron, laid out (M, Nmax): row a holds the N[a]
                 neurons of population a, the rest of the row is padding that never fires
    Isyn         filtered population activity of each population, (M,), Hz
    A            population activity, spikes per neuron per second: counts / (N * h)
    I_ext        external input, (M, n_steps), in units of V per second (enters as eps * I_ext)
    ref_steps    ref_t / h = 20: a neuron is held at 0 in the 20 steps after its spike step
    delay_steps  steps from a spike to its effect on Isyn; 1 is the convention of model.md
                 (its "synaptic delay 0"), larger values add a transmission delay
    held         per neuron, how many more steps it is held at 0 (0 = free)
    remaining    per neuron, hazard still to accumulate before its next spike (see below)

One step t, in this order (the convention of the authors' simulator and of NEST gif_psc_exp):
    Isyn  <- eI * Isyn + (1 - eI) * A(t - delay_steps)      eI = exp(-h * asyn), exact for a
                                                             piecewise-constant A, unit-area kernel
    u_a    = sum_b W[b, a] * Isyn_b + eps * I_ext_a(t)
    V     <- rp + (V - rp) * E + h * u    (free neurons)     E = exp(-h * amem), exact leak
    V      = 0                            (held neurons)
    fire with probability 1 - exp(-lambda * h), lambda = exp(V - ft); a neuron that fires is
    reset to 0 and held for the next ref_steps steps.

Sampling the escape noise (integrated hazard). Instead of a uniform number per neuron and step,
each neuron draws one threshold xi ~ Exp(1) after each spike and fires in the first step in which
its accumulated sum of lambda * h reaches xi. Given that it has not fired before, it fires in a
step with probability P(xi <= L + lambda*h | xi > L) = 1 - exp(-lambda*h): exactly the law above,
with one random number per spike instead of one per neuron and step.

Two implementations of the same loop consume the same random numbers and give the same spikes:
`_run_numpy` (plain numpy, one step per Python iteration: the readable reference) and `_run_xla`
(the same step compiled with TensorFlow XLA; about 5x faster, the default). All random numbers
come from the one `np.random.Generator` passed in: the input noise first, then the initial
state, then the thresholds, segment by segment.
"""
import functools
import os
import sys
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

from src import __version__
from src.cli import REQUIRED, UsageError, check, option, parse, run
from src.network import Network, winner_take_all

PROG = "python -m src.microsim"

MICRO_DT = 2e-4  # s, step of the microscopic simulation
SEGMENT_STEPS = 5000  # steps simulated per call of the compiled loop (thresholds drawn per segment)
SURVIVAL_DECAY = 40.0  # exp(-40) ~ 4e-18: a free trajectory this many membrane time constants
                       # old has converged to float64 precision (stationary start)
MAX_AGE_STEPS = 10**6  # longest age tabulated for the stationary start (200 s)
OU_TAU = 0.003  # s, correlation time of the Ornstein-Uhlenbeck input (Pozzorini et al. 2015)
OU_MOD_FREQ = 0.2  # Hz, sinusoidal modulation of its amplitude
OU_MOD_DEPTH = 0.5  # amplitude sigma * (1 + depth * sin(2 pi f t))
INPUT_KINDS = ("none", "given", "pulses", "ou")


@dataclass(frozen=True)
class State:
    """State of the network at the end of the step before the first simulated step.

    Neurons are listed population after population (neuron j of population a at index
    sum(N[:a]) + j). `held` counts the steps each neuron is still held at 0 (0 = free; a neuron
    that fired in the last step before the start has ref_steps). `A_hist` holds the population
    activity (Hz) of the last delay_steps steps, oldest first; the first simulated step uses
    A_hist[:, 0]. Thresholds are not part of the state: by memorylessness each neuron draws a
    fresh Exp(1) at the start.
    """
    V: np.ndarray  # (sum N,)
    held: np.ndarray  # (sum N,) int
    Isyn: np.ndarray  # (M,) Hz
    A_hist: np.ndarray  # (M, delay_steps) Hz


@dataclass(frozen=True)
class SimResult:
    pop_spike_counts: np.ndarray  # (M, n_steps) int32, spikes per population per step
    spikes: np.ndarray  # (M, n_recorded, n_steps) uint8, the first n_recorded neurons of each population
    I_ext: np.ndarray  # (M, n_steps) float64
    h: float
    delay_steps: int


def ref_steps_of(network, h=MICRO_DT):
    """Number of steps a neuron is held at 0 after its spike step: ref_t / h, which must be whole."""
    steps = network.ref_t / h
    if abs(steps - round(steps)) > 1e-6:
        raise ValueError(f"ref_t / h must be a whole number of steps, got {network.ref_t!r} / {h!r} = {steps!r}")
    return int(round(steps))


# ---------------------------------------------------------------- external input

def pulse_input(M, n_steps, amplitude, onsets, duration, target, h=MICRO_DT):
    """Step pulses of `amplitude` (V units per s) into population `target`, starting at each of
    `onsets` (s) and lasting `duration` (s). Returns (M, n_steps)."""
    if not 0 <= target < M:
        raise ValueError(f"pulse target must be a population index in [0, {M}), got {target!r}")
    if duration <= 0:
        raise ValueError(f"pulse duration must be > 0 s, got {duration!r}")
    I_ext = np.zeros((M, n_steps))
    for onset in onsets:
        if onset < 0:
            raise ValueError(f"pulse onsets must be >= 0 s, got {onset!r}")
        start, stop = int(round(onset / h)), int(round((onset + duration) / h))
        I_ext[target, start:stop] = amplitude
    return I_ext


def ou_input(M, n_steps, rng, mean=0.0, sigma=100.0, targets=None, tau=OU_TAU, mod_freq=OU_MOD_FREQ,
             mod_depth=OU_MOD_DEPTH, h=MICRO_DT):
    """Ornstein-Uhlenbeck input with sinusoidally modulated amplitude (Pozzorini et al. 2015):
    I(t) = mean + sigma * (1 + mod_depth * sin(2 pi mod_freq t)) * eta(t), eta a unit-variance OU
    process of correlation time tau, independent for each population in `targets` (default all).
    Units of mean and sigma: V units per s. Returns (M, n_steps)."""
    if tau <= 0:
        raise ValueError(f"OU tau must be > 0 s, got {tau!r}")
    if sigma < 0:
        raise ValueError(f"OU sigma must be >= 0, got {sigma!r}")
    targets = list(range(M)) if targets is None else list(targets)
    for a in targets:
        if not 0 <= a < M:
            raise ValueError(f"OU targets must be population indices in [0, {M}), got {a!r}")
    rho = np.exp(-h / tau)
    kicks = rng.standard_normal((len(targets), n_steps))
    kicks[:, 1:] *= np.sqrt(1 - rho**2)  # the first value is a stationary N(0, 1) start
    eta = lfilter([1.0], [1.0, -rho], kicks, axis=1)  # eta[t] = rho * eta[t-1] + kick[t], exact
    t = np.arange(n_steps) * h
    I_ext = np.zeros((M, n_steps))
    I_ext[targets] = mean + sigma * (1 + mod_depth * np.sin(2 * np.pi * mod_freq * t)) * eta
    return I_ext


# ---------------------------------------------------------------- stationary start

def _free_trajectory(amem, rp, u, n, h):
    """V after j = 1..n free steps from V = 0 under constant input u: rp*(1-E^j) + h*u*sum_{i<j} E^i."""
    j = np.arange(1, n + 1)
    if amem == 0:
        return j * h * u
    return (rp + h * u / -np.expm1(-h * amem)) * -np.expm1(-j * h * amem)


def stationary_state(network, rng, h=MICRO_DT, delay_steps=1, I_ext0=None):
    """Each neuron at a random age drawn from the stationary age distribution of its population
    under the constant input of the initial rates (model.md section 1).

    With all activities at init_rates, the input of population a is u_a = (W^T A0)_a + eps*I_ext0_a.
    d = steps since the last spike (d = 1: fired in the step before the start) has the stationary
    distribution P(d) = P(ISI >= d) / mean ISI; a neuron with d <= ref_steps is still held,
    otherwise it has been free for j = d - ref_steps - 1 steps and V = its free trajectory at j.
    """
    M, N = network.M, network.N
    ref_steps = ref_steps_of(network, h)
    A0 = network.init_rates
    u = network.W.T @ A0 + network.eps * (np.zeros(M) if I_ext0 is None else np.asarray(I_ext0, float))
    V, held = [], []
    for a in range(M):
        n_free = MAX_AGE_STEPS if network.amem[a] <= 0 else \
            int(min(MAX_AGE_STEPS, np.ceil(SURVIVAL_DECAY / (h * network.amem[a]))))
        V_free = np.concatenate([[0.0], _free_trajectory(network.amem[a], network.rp[a], u[a], n_free, h)])
        lam_h = np.exp(V_free - network.ft[a]) * h  # hazard in each free step, j = 0..n_free
        # P(ISI >= d): 1 while held (d <= ref_steps + 1), then the survival of the free steps
        log_surv = -np.concatenate([[0.0], np.cumsum(lam_h[1:])])  # after j = 0..n_free free steps
        weights = np.concatenate([np.ones(ref_steps), np.exp(log_surv)])  # d = 1 .. ref_steps+1+n_free
        # beyond n_free the hazard is constant: a geometric tail of total weight S * r / (1 - r)
        r = np.exp(-lam_h[-1])
        tail = np.inf if r == 1.0 else np.exp(log_surv[-1]) * r / -np.expm1(-lam_h[-1])
        if np.isinf(tail):  # no spike ever (hazard 0): every neuron is old
            d_index = np.full(N[a], len(weights))
        else:
            cum = np.cumsum(np.append(weights, tail))
            d_index = np.searchsorted(cum, rng.random(N[a]) * cum[-1], side="right")
        d_index = np.minimum(d_index, len(weights))  # index len(weights) = the tail
        d = d_index + 1  # steps since the last spike
        held.append(np.maximum(ref_steps + 1 - d, 0))
        j = np.clip(d - ref_steps - 1, 0, n_free)  # free steps before the start (tail: converged)
        V.append(np.where(d <= ref_steps, 0.0, V_free[j]))
    A_hist = np.repeat(A0[:, None], delay_steps, axis=1)
    return State(V=np.concatenate(V), held=np.concatenate(held).astype(np.int64), Isyn=A0.copy(),
                 A_hist=A_hist)


# ---------------------------------------------------------------- the loop

@dataclass(frozen=True)
class _Constants:
    """Per-population constants of one step, shaped for the padded (M, Nmax) layout."""
    E: np.ndarray  # (M, 1) leak factor exp(-h amem)
    q: np.ndarray  # (M, 1) ft - log(h): the hazard per step is exp(V - q) = lambda * h
    eI: np.ndarray  # (M,) synaptic factor exp(-h asyn)
    kk: np.ndarray  # (M,) (1 - eI) / (N h): a count's contribution to Isyn (count -> activity)
    Wh: np.ndarray  # (M, M) h * W[b, a]
    ref_steps: int


def _run_numpy(n, V, remaining, held, Isyn, hist, X, drive, c, n_recorded):
    """Plain numpy reference: simulate n steps in place. drive[:, t] = rp(1-E) + h eps I_ext (M,);
    X[a, j, k] is the threshold neuron j of population a draws after its k-th spike of the segment;
    hist (delay_steps, M) holds the spike counts of the last delay_steps steps, oldest first."""
    M = V.shape[0]
    k = np.zeros(V.shape, dtype=np.int64)  # spikes of each neuron so far in this segment
    counts = np.zeros((n, M), dtype=np.int32)
    recorded = np.zeros((n, M, n_recorded), dtype=bool)
    for t in range(n):
        Isyn = c.eI * Isyn + c.kk * hist[0]  # activity of step t - delay_steps
        v = drive[:, t] + Isyn @ c.Wh  # (M,) rp(1-E) + h * u
        free = held == 0
        V = np.where(free, V * c.E + v[:, None], 0.0)  # (M, Nmax)
        with np.errstate(over="ignore"):  # a huge hazard overflows to inf: it fires, as it should
            remaining = remaining - np.where(free, np.exp(V - c.q), 0.0)
        fired = remaining <= 0
        remaining = np.where(fired, np.take_along_axis(X, np.minimum(k, X.shape[2] - 1)[..., None], 2)[..., 0], remaining)
        V = np.where(fired, 0.0, V)
        held = np.where(fired, c.ref_steps, np.maximum(held - 1, 0))
        k += fired
        counts[t] = fired.sum(axis=1)
        hist = np.concatenate([hist[1:], counts[t][None]], axis=0)
        recorded[t] = fired[:, :n_recorded]
    return V, remaining, held, Isyn, hist, counts, recorded


@functools.lru_cache(maxsize=None)
def _xla_loop(n_recorded):
    """The loop of `_run_numpy`, compiled with XLA (TensorFlow imported only when used)."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def run(n, V, remaining, held, Isyn, hist, X, drive, E, q, eI, kk, Wh, ref_steps):
        K = tf.shape(X)[2]
        X_flat = tf.reshape(X, [-1])
        first = tf.reshape(tf.range(tf.size(V)) * K, tf.shape(V))  # where each neuron's row of X starts

        def step(t, V, remaining, held, Isyn, hist, k, counts, recorded):
            Isyn = eI * Isyn + kk * hist[0]
            v = drive[:, t] + tf.linalg.matvec(Wh, Isyn, transpose_a=True)
            free = tf.equal(held, 0)
            zero = tf.zeros_like(V)
            V = tf.where(free, V * E + v[:, None], zero)
            remaining = remaining - tf.where(free, tf.exp(V - q), zero)
            fired = remaining <= 0
            remaining = tf.where(fired, tf.gather(X_flat, first + tf.minimum(k, K - 1)), remaining)
            V = tf.where(fired, zero, V)
            held = tf.where(fired, ref_steps, tf.maximum(held - 1, 0))
            fired_int = tf.cast(fired, tf.int32)
            k = k + fired_int
            count = tf.reduce_sum(fired_int, axis=1)
            hist = tf.concat([hist[1:], tf.cast(count, hist.dtype)[None]], axis=0)
            return (t + 1, V, remaining, held, Isyn, hist, k, counts.write(t, count),
                    recorded.write(t, fired[:, :n_recorded]))

        init = (tf.constant(0), V, remaining, held, Isyn, hist, tf.zeros_like(held),
                tf.TensorArray(tf.int32, size=n), tf.TensorArray(tf.bool, size=n))
        _, V, remaining, held, Isyn, hist, _, counts, recorded = tf.while_loop(lambda t, *_: t < n, step, init)
        return V, remaining, held, Isyn, hist, counts.stack(), recorded.stack()

    return run


def _run_xla(n, V, remaining, held, Isyn, hist, X, drive, c, n_recorded):
    import tensorflow as tf
    padded = np.zeros((drive.shape[0], SEGMENT_STEPS))  # one shape for every segment: compiled once
    padded[:, :n] = drive
    out = _xla_loop(n_recorded)(
        tf.constant(n, tf.int32), V, remaining, tf.constant(held, tf.int32), Isyn, hist, X, padded,
        c.E, c.q, c.eI, c.kk, c.Wh, tf.constant(c.ref_steps, tf.int32))
    V, remaining, held, Isyn, hist, counts, recorded = (o.numpy() for o in out)
    return V, remaining, held.astype(np.int64), Isyn, hist, counts, recorded


def simulate(network, n_steps, rng, *, I_ext=None, h=MICRO_DT, delay_steps=1, n_recorded=30,
             initial_state=None, method="xla"):
    """Simulate n_steps of `network` (model.md section 1).

    I_ext: (M, n_steps) external input (V units per s) or None for none. initial_state: a State,
    or None for the stationary start at network.init_rates. method: "xla" (fast) or "numpy"
    (reference); both give the same spikes for the same rng. Returns a SimResult.
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a src.network.Network, got {type(network).__name__}")
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    if not isinstance(delay_steps, (int, np.integer)) or delay_steps < 1:
        raise ValueError(f"delay_steps must be an integer >= 1 (1 = the model's one-step delay), got {delay_steps!r}")
    M, N = network.M, network.N
    if not 0 <= n_recorded <= N.min():
        raise ValueError(f"n_recorded must be in [0, {N.min()}] (smallest population), got {n_recorded!r}")
    if method not in ("xla", "numpy"):
        raise ValueError(f"method must be 'xla' or 'numpy', got {method!r}")
    I_ext = np.zeros((M, n_steps)) if I_ext is None else np.asarray(I_ext, dtype=float)
    if I_ext.shape != (M, n_steps):
        raise ValueError(f"I_ext must have shape ({M}, {n_steps}), got {I_ext.shape}")
    if not np.all(np.isfinite(I_ext)):
        raise ValueError("I_ext must be finite")
    ref_steps = ref_steps_of(network, h)
    state = stationary_state(network, rng, h, delay_steps, I_ext[:, 0]) if initial_state is None else initial_state
    _check_state(state, network, delay_steps)

    # padded (M, Nmax) layout: padding neurons have remaining = inf and never fire
    Nmax = N.max()
    real = np.arange(Nmax)[None, :] < N[:, None]  # (M, Nmax)
    V = np.zeros((M, Nmax))
    V[real] = state.V
    held = np.zeros((M, Nmax), dtype=np.int64)
    held[real] = state.held
    remaining = np.full((M, Nmax), np.inf)
    remaining[real] = rng.standard_exponential(N.sum())
    E = np.exp(-h * network.amem)
    eI = np.exp(-h * network.asyn)
    c = _Constants(E=E[:, None], q=(network.ft - np.log(h))[:, None], eI=eI, kk=(1 - eI) / (N * h),
                   Wh=h * network.W, ref_steps=ref_steps)
    drive = (network.rp * (1 - E))[:, None] + h * network.eps * I_ext  # (M, n_steps)
    Isyn = np.asarray(state.Isyn, dtype=float)
    hist = (state.A_hist * (N * h)[:, None]).T.copy()  # (delay_steps, M) spike counts (may be fractional)
    run = _run_xla if method == "xla" else _run_numpy
    # a neuron fires at most once every ref_steps + 1 steps: this many thresholds per segment suffice
    K = (SEGMENT_STEPS - 1) // (ref_steps + 1) + 1
    counts = np.zeros((M, n_steps), dtype=np.int32)
    spikes = np.zeros((M, n_recorded, n_steps), dtype=np.uint8)
    for start in range(0, n_steps, SEGMENT_STEPS):
        n = min(SEGMENT_STEPS, n_steps - start)
        X = rng.standard_exponential((M, Nmax, K))
        V, remaining, held, Isyn, hist, seg_counts, seg_recorded = run(
            n, V, remaining, held, Isyn, hist, X, drive[:, start:start + n], c, n_recorded)
        counts[:, start:start + n] = seg_counts[:n].T  # (n, M) -> (M, n)
        spikes[:, :, start:start + n] = seg_recorded[:n].transpose(1, 2, 0)  # (n, M, n_recorded) -> (M, n_recorded, n)
    return SimResult(pop_spike_counts=counts, spikes=spikes, I_ext=I_ext, h=h, delay_steps=delay_steps)


def _check_state(state, network, delay_steps):
    M, n = network.M, network.N.sum()
    for name, shape in (("V", (n,)), ("held", (n,)), ("Isyn", (M,)), ("A_hist", (M, delay_steps))):
        value = np.asarray(getattr(state, name))
        if value.shape != shape:
            raise ValueError(f"initial state {name} must have shape {shape}, got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"initial state {name} must be finite")
    if np.any(state.held < 0):
        raise ValueError(f"initial state held must be >= 0, got min {state.held.min()!r}")


# ---------------------------------------------------------------- analysis

def dominance(pop_spike_counts, N, h=MICRO_DT, e_pops=(0, 1), sigma=0.15, min_dwell=0.3):
    """Which of two E populations wins at each step, and when the winner switches.

    Winner = the population with the higher activity smoothed by a Gaussian of standard deviation
    `sigma` (s); runs shorter than `min_dwell` (s) are flickers and are merged into their
    neighbours (shortest first), except the first and last run, which the recording cuts.
    Returns (winner (n_steps,) in {0, 1} indexing e_pops, switch times in s).
    """
    a, b = e_pops
    A = pop_spike_counts[[a, b]] / (np.asarray(N)[[a, b], None] * h)
    smooth = gaussian_filter1d(A, sigma / h, axis=1, mode="nearest")
    winner = (smooth[1] > smooth[0]).astype(np.int8)
    min_steps = int(round(min_dwell / h))
    while True:
        starts = np.flatnonzero(np.diff(winner)) + 1
        bounds = np.concatenate([[0], starts, [len(winner)]])
        lengths = np.diff(bounds)
        inner = lengths[1:-1]
        if len(inner) == 0 or inner.min() >= min_steps:
            break
        i = 1 + np.argmin(inner)
        winner[bounds[i]:bounds[i + 1]] = 1 - winner[bounds[i]]
    return winner, starts * h


# ---------------------------------------------------------------- command line

def simulate_recording(network, duration, seed, *, input_kind="none", n_recorded=30, delay_steps=1,
                       h=MICRO_DT, I_ext=None, pulse=None, ou=None, method="xla"):
    """Simulate `duration` seconds from one seed and return a src.dataset.Recording.

    input_kind: "none", "given" (I_ext array), "pulses" (pulse = dict of pulse_input's keyword
    arguments amplitude, onsets, duration, target) or "ou" (ou = dict of ou_input's keyword arguments).
    """
    from src.dataset import Recording  # here to keep the dataset module free of the simulator

    if duration <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration!r}")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    n_steps = int(round(duration / h))
    rng = np.random.default_rng(seed)
    M = network.M
    if input_kind == "none":
        I_ext = np.zeros((M, n_steps))
    elif input_kind == "pulses":
        I_ext = pulse_input(M, n_steps, h=h, **pulse)
    elif input_kind == "ou":
        I_ext = ou_input(M, n_steps, rng, h=h, **(ou or {}))
    elif I_ext is None:
        raise ValueError("input_kind 'given' needs I_ext")
    result = simulate(network, n_steps, rng, I_ext=I_ext, h=h, delay_steps=delay_steps,
                      n_recorded=n_recorded, method=method)
    return Recording(network=network, h=h, pop_spike_counts=result.pop_spike_counts, spikes=result.spikes,
                     I_ext=result.I_ext, seed=int(seed), version=__version__, input_kind=input_kind,
                     delay_steps=delay_steps)


def use_one_tf_thread():
    """The compiled loop is serial: one TensorFlow thread is fastest and does not fight other
    processes for the cores. Only possible before TensorFlow starts; otherwise keep its settings."""
    import tensorflow as tf
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process
        pass


@dataclass
class Options:
    out: str = option(REQUIRED, "output .npz file")
    seed: int = option(REQUIRED, "seed of every random draw")
    duration: float = option(11.0, "simulated time (s)")
    n_recorded: int = option(30, "recorded neurons per population (>= 30)")
    delay_steps: int = option(1, "synaptic delay in 0.2 ms steps; 1 = the model's convention")
    input: str = option("none", "external input: none, pulses or ou")
    pulse_amplitude: float = option(200.0, "pulse amplitude in potential units per s (2.5 mV/s; 50 raises V by 1 "
                                           "at steady state)")
    pulse_onsets: list = option([2.0], "pulse onsets (s)")
    pulse_duration: float = option(0.2, "pulse duration (s)")
    pulse_target: int = option(0, "population receiving the pulses (0-based)")
    ou_mean: float = option(0.0, "OU input mean, potential units per s")
    ou_sigma: float = option(100.0, "OU input standard deviation, potential units per s")
    ou_targets: list = option(None, "populations receiving independent OU inputs (0-based; default all)", items=int)


def main(argv):
    args = parse(Options, argv, PROG, "Simulate the winner-take-all spiking network (model.md section 1) and "
                 "write a dataset file (.npz, src/dataset.py).")
    check([(args.n_recorded >= 30, f"--n_recorded must be >= 30 (the dataset format), got {args.n_recorded!r}"),
           (args.input in ("none", "pulses", "ou"), f"--input must be none, pulses or ou, got {args.input!r}")])
    folder = os.path.dirname(os.path.abspath(args.out))
    check([(os.path.isdir(folder) or not os.path.exists(folder), f"--out {args.out}: {folder} is a file, not a folder")])
    try:                        # now, not after minutes of simulation
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {args.out}: cannot make its folder {folder} ({err.strerror})") from None
    check([(os.access(folder, os.W_OK), f"--out {args.out}: its folder {folder} is not writable")])
    use_one_tf_thread()
    from src.dataset import save_recording

    pulse = dict(amplitude=args.pulse_amplitude, onsets=args.pulse_onsets, duration=args.pulse_duration,
                 target=args.pulse_target)
    ou = dict(mean=args.ou_mean, sigma=args.ou_sigma, targets=args.ou_targets)
    recording = simulate_recording(winner_take_all(), args.duration, args.seed, input_kind=args.input,
                                   n_recorded=args.n_recorded, delay_steps=args.delay_steps, pulse=pulse, ou=ou)
    save_recording(args.out, recording)
    winner, switches = dominance(recording.pop_spike_counts, recording.network.N, recording.h)
    rates = recording.pop_spike_counts.sum(axis=1) / (recording.network.N * recording.duration)
    print(f"wrote {args.out}: {recording.duration:g} s, seed {args.seed}, mean rates "
          f"{np.array2string(rates, precision=2)} Hz, E winner switches at "
          f"{np.array2string(switches, precision=2)} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(PROG, main))
