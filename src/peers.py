"""Our network in the field's simulators: NEST (microscopic `gif_psc_exp`, mesoscopic
`gif_pop_psc_exp`) and Brian2 (microscopic), returning population activity in our layout.

Nothing else in the project imports this module; NEST and Brian2 are imported only inside the
functions that use them (requirements-peers.txt). Command line, for running Brian2 under another
interpreter (bench/peers.py does this when Brian2 does not import next to the project's numpy):

    python -m src.peers --simulator nest_micro --duration 20 --seed 1 --out /tmp/nest_micro.npz
    /tmp/brian2-env/bin/python -m src.peers --simulator brian2 --duration 1000 --seed 1 \
        --brian2_target cpp_standalone --out /tmp/brian2.npz

Every runner returns a PeerRun whose `pop_spike_counts[a, t]` is the number of spikes of
population a in step t (step t covers [t*h, (t+1)*h)), as `src.microsim.SimResult`.

Mapping (symbols of src/network.py; potentials are in units of the escape-noise softness, which
NEST reads as mV with Delta_V = 1; C_m cancels everywhere and is set to C_M):

    ours             NEST (both models)                             Brian2
    V                V_m, one to one (mV)                           v (dimensionless)
    rp, ft           E_L = rp, V_T_star = ft, Delta_V = 1,          rp, ft; fires with probability
                     lambda_0 = 1 per s: rate exp(V - ft) per s     1 - exp(-exp(v - ft) * dt)
    reset            V_reset = 0                                    reset "v = 0"
    amem             tau_m = 1000 / amem ms                         amem (Hz), method "exact"
                     (gif_psc_exp: g_L = C_m * amem / 1000 nS)
    ref_t            t_ref = ref_t: V is held for ref_t / h steps   refractory = ref_t + h (4.2 ms):
                     after the spike step (shortest ISI 4.2 ms)     Brian2 counts the spike step
    asyn_b           tau_syn_ex / tau_syn_in = 1000 / asyn_b ms     an (M,) group of filters
                     (NEST picks ex/in by the sign of the weight,   dI_b/dt = -asyn_b I_b, kicked
                     so all excitatory inputs of a population must  by (1 - exp(-asyn_b h)) / (N_b h)
                     share one asyn, and all inhibitory ones)       per spike of b (our step)
    W[b, a]          weight per spike of b onto a:                  dv/dt gets sum_b W[b, a] I_b
                     J_b * conmat[b, a] * C_m / (N_b * tau_syn_b)
                     pA (C_m pF, tau_syn ms), all-to-all with
                     autapses, delay h; mesoscopic nodes are
                     connected with the same weight (NEST sends a
                     population's spikes of a step as one event of
                     multiplicity n)
    adaptation       none; gif_pop_psc_exp rejects empty lists,
                     so q_sfa = [0], tau_sfa = [100]; len_kernel -1
    eps * I_ext      current C_m * eps * I_ext / 1000 pA: I_e       iext, set from a TimedArray at
                     holds I_ext[:, 0], a step_current_generator    the start of each step
                     the changes; NEST applies a current one step
                     after its time stamp, so a change in step t is
                     stamped (t - 1) * h (one in step 1 is one step
                     late: NEST accepts changes only at t > 0)
    seed             rng_seed = seed + 1 (NEST rejects 0)           brian2.seed(seed)

Exactness. NEST integrates the leak, the input current and the exponential synaptic currents
exactly within a step; our step (model.md section 1) is `V <- rp + (V - rp) E + h * input` with a
piecewise-constant filtered activity. The two differ by O(h * amem) = 1% and O(h * asyn) = 7% in how
a step's input is spread in time; a spike's first-step (and every later) effect on V is 0.5% smaller
in NEST (`nest_coupling_factor`). Measured on 1,000 s: NEST's rates are within 1.1% (winner), 5%
(loser), 0.3% (I) of ours, but it switches 1.75 times as often; our model with J times that factor
matches NEST's rates to 0.1% and switches 0.14 /s (NEST 0.17 /s): the switching rate is that sensitive. Brian2 integrates the leak exactly too, but its input
term is multiplied by `gain` = h amem / (1 - exp(-h amem)), which makes its step exactly ours, so
Brian2 checks our implementation rather than our discretisation. `gif_pop_psc_exp` (Schwalger et al.
2017, the equations neuLVM's likelihood rests on) runs at h; its escape probability per step is
1 - exp(-h (lambda_old + lambda_new) / 2) (linearised below 0.01), and it keeps len_kernel =
5 tau_m / h cohorts before lumping the rest. Its winner-take-all statistics depend on h (0.2 ms and
1 ms differ by 8% in the winner's rate), as do those of our mesoscopic model on dt: compare
mesoscopic models at one step.

Start: the microscopic runners draw every neuron from the stationary state of
`src.microsim.stationary_state` at network.init_rates, with a numpy Generator seeded by `seed`.
NEST cannot set a neuron's refractory counter or synaptic current: neurons that our start holds
refractory start free at V = 0, and all start with zero synaptic current. `gif_pop_psc_exp` starts
from its own default state (all neurons in its oldest cohort at V = 0). Discard a first second.
"""
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from src.cli import REQUIRED, check, option, parse
from src.network import Network

C_M = 250.0         # pF, membrane capacitance given to NEST; it cancels (weights and currents scale with it)
RECORD_CHUNK = 10.0  # s simulated per nest.Simulate call; spike records are read and cleared after each
NO_ADAPTATION = {"q_sfa": [0.0], "tau_sfa": [100.0]}  # gif_pop_psc_exp rejects empty lists
SIMULATORS = ("nest_micro", "nest_meso", "brian2")
BRIAN2_TARGETS = ("numpy", "cython", "cpp_standalone")
PROG = "python -m src.peers"
# s, the step of every peer simulation: src.microsim.MICRO_DT, not imported from there because a
# separate Brian2 environment (README) runs this module and may lack scipy, which src.microsim needs
MICRO_DT = 2e-4


@dataclass(frozen=True)
class PeerRun:
    simulator: str               # "nest_micro", "nest_meso" or "brian2"
    pop_spike_counts: np.ndarray  # (M, n_steps) int32, spikes per population per step
    h: float                     # s, the step
    wall_build: float            # s, creating and connecting the network (Brian2: also code generation, compiling)
    wall_run: float              # s, simulating and reading the records
    version: str                 # the peer simulator's version
    cpu_run: float = float("nan")  # s of CPU time of the run (robust to other processes on the machine)


# ---------------------------------------------------------------- the mapping (no simulator needed)

def _check_run(network, duration, I_ext, h):
    if not isinstance(network, Network):
        raise TypeError(f"network must be a src.network.Network, got {type(network).__name__}")
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    n_steps = int(round(duration / h))
    if n_steps < 1:
        raise ValueError(f"duration must be at least one step ({h} s), got {duration!r}")
    I_ext = np.zeros((network.M, n_steps)) if I_ext is None else np.asarray(I_ext, dtype=float)
    if I_ext.shape != (network.M, n_steps):
        raise ValueError(f"I_ext must have shape ({network.M}, {n_steps}) (populations, steps of {h} s), "
                         f"got {I_ext.shape}")
    if not np.all(np.isfinite(I_ext)):
        raise ValueError("I_ext must be finite")
    return n_steps, I_ext


def synaptic_taus(network):
    """(tau_syn_ex, tau_syn_in) in ms of each target population, each (M,).

    NEST gives a neuron one excitatory and one inhibitory time constant and routes a spike by the
    sign of its weight, so the presynaptic populations with W[b, a] > 0 must share one asyn, and
    those with W[b, a] < 0 another. A population without such inputs gets the NEST default 2 ms
    (unused)."""
    tau = 1000.0 / network.asyn  # ms, (M,) per presynaptic population
    taus = np.full((2, network.M), 2.0)
    for a in range(network.M):
        for row, sign, name in ((0, 1.0, "excitatory"), (1, -1.0, "inhibitory")):
            pre = np.flatnonzero(sign * network.W[:, a] > 0)
            if len(pre) == 0:
                continue
            if not np.allclose(tau[pre], tau[pre[0]], rtol=1e-12, atol=0):
                raise ValueError(f"NEST needs one {name} synaptic time constant per population: inputs of "
                                 f"population {a} from {pre.tolist()} have tau_syn {tau[pre].tolist()} ms")
            taus[row, a] = tau[pre[0]]
    return taus[0], taus[1]


def nest_weights(network, C_m=C_M):
    """w[b, a], pA per spike of a neuron of b onto a neuron of a: J_b conmat[b, a] C_m / (N_b tau_syn_b).

    Each spike adds w / C_m to C dV/dt's current, which decays with tau_syn_b: its area on V is
    w tau_syn_b / C_m (mV, with ms) = W[b, a] / N_b, as one spike's 1/N_b of A_b through our
    unit-area filter (units * s times Hz -> units)."""
    tau_ms = 1000.0 / network.asyn  # (M,)
    return network.W * C_m / (network.N * tau_ms)[:, None]  # (M, M)


def nest_coupling_factor(network, h=MICRO_DT):
    """NEST's effect of one presynaptic spike on V in its first step over ours, per presynaptic population (M,).

    NEST adds w to the current and integrates it exactly over the step (its propagator P21, with the
    leak acting within the step); our step adds h * W * (1 - exp(-h asyn)) / (N h). The ratio is
    1 - h amem / 2 + O(h^2) = 0.995 here and the same in every later step, so NEST behaves as our
    model with J multiplied by this factor (`dataclasses.replace(network, J=network.J * factor)`)."""
    tau_m = 1000.0 / network.amem  # ms, (M,) per target population
    if not np.allclose(tau_m, tau_m[0], rtol=1e-12, atol=0):
        raise ValueError(f"one factor per presynaptic population needs one tau_m, got {tau_m.tolist()} ms")
    tau_m, tau_s, h_ms = tau_m[0], 1000.0 / network.asyn, h * 1000.0
    P21_times_C = tau_s * tau_m / (tau_m - tau_s) * (np.exp(-h_ms / tau_m) - np.exp(-h_ms / tau_s))  # ms, (M,)
    return (P21_times_C / tau_s) / -np.expm1(-h * network.asyn)


def current_schedule(I_ext_row, eps, h=MICRO_DT, C_m=C_M):
    """NEST form of one population's input (potential units per s, one value per step):
    (I_e in pA for step 0 on, amplitude_times in ms, amplitude_values in pA) of a step_current_generator.

    NEST uses a current from the step after its time stamp, so a change in step t is stamped
    (t - 1) * h; a change in step 1 cannot be (NEST needs times > 0) and is stamped h, one step late.
    """
    pA = C_m * eps * np.asarray(I_ext_row, dtype=float) / 1000.0  # (n_steps,)
    changes = np.flatnonzero(np.diff(pA)) + 1  # steps whose value differs from the previous step
    times = np.maximum(changes - 1, 1) * h * 1000.0
    return float(pA[0]), np.round(times, 9), pA[changes] - pA[0]


# ---------------------------------------------------------------- NEST

def _import_nest():
    os.environ.setdefault("PYNEST_QUIET", "1")  # no banner on import
    import nest
    return nest


def _reset_nest(nest, seed, h):
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    nest.ResetKernel()
    nest.verbosity = nest.VerbosityLevel.ERROR
    nest.local_num_threads = 1  # two threads were erratic here (issue 7)
    nest.resolution = h * 1000.0
    nest.rng_seed = int(seed) + 1  # NEST rejects 0


def _nest_inputs(nest, network, I_ext, targets, h):
    """Set I_e of each population and connect a step_current_generator for the changes."""
    for a in range(network.M):
        I_e, times, values = current_schedule(I_ext[a], network.eps, h)
        targets[a].set({"I_e": I_e})
        if len(times):
            gen = nest.Create("step_current_generator",
                              params={"amplitude_times": times.tolist(), "amplitude_values": values.tolist()})
            nest.Connect(gen, targets[a], syn_spec={"delay": h * 1000.0})


def _nest_connect(nest, network, sources, targets, h, conn_spec):
    w = nest_weights(network)
    for b in range(network.M):
        for a in range(network.M):
            if w[b, a] != 0.0:
                nest.Connect(sources[b], targets[a], conn_spec, syn_spec={"weight": float(w[b, a]), "delay": h * 1000.0})


def _nest_run(nest, recorders, n_steps, h):
    """Simulate n_steps in chunks of RECORD_CHUNK; spike counts per recorder and step, (M, n_steps)."""
    counts = np.zeros((len(recorders), n_steps), dtype=np.int32)
    chunk = max(1, int(round(RECORD_CHUNK / h)))
    for start in range(0, n_steps, chunk):
        nest.Simulate(round(min(chunk, n_steps - start) * h * 1000.0, 9))
        for a, rec in enumerate(recorders):
            # a spike in step t is stamped (t + 1) * h; a mesoscopic event of multiplicity n is n records
            step = np.round(np.asarray(rec.get("events")["times"]) / (h * 1000.0)).astype(np.int64) - 1
            counts[a] += np.bincount(step, minlength=n_steps).astype(np.int32)[:n_steps]
            rec.set({"n_events": 0})
    return counts


def _record_and_run(nest, name, pops, n_steps, h, start):
    """Record each population's spikes, run n_steps and return the PeerRun (build time from start)."""
    recorders = [nest.Create("spike_recorder") for _ in pops]
    for pop, rec in zip(pops, recorders):
        nest.Connect(pop, rec)
    built, cpu = time.perf_counter(), time.process_time()
    counts = _nest_run(nest, recorders, n_steps, h)
    return PeerRun(name, counts, h, built - start, time.perf_counter() - built, nest.__version__,
                   time.process_time() - cpu)


def nest_micro(network, duration, seed, I_ext=None, h=MICRO_DT):
    """The microscopic network in NEST (`gif_psc_exp`, one thread) for `duration` s. Returns a PeerRun.

    I_ext: (M, n_steps) external input (potential units per s) or None. Every neuron starts from the
    stationary state at network.init_rates (module docstring)."""
    from src.microsim import ref_steps_of, stationary_state
    nest = _import_nest()
    n_steps, I_ext = _check_run(network, duration, I_ext, h)
    ref_steps_of(network, h)  # ref_t must be a whole number of steps, as for our simulator
    tau_ex, tau_in = synaptic_taus(network)
    start = time.perf_counter()
    _reset_nest(nest, seed, h)
    state = stationary_state(network, np.random.default_rng(seed), h, 1, I_ext[:, 0])
    first = np.concatenate([[0], np.cumsum(network.N)])
    pops = []
    for a in range(network.M):
        pop = nest.Create("gif_psc_exp", int(network.N[a]), params={
            "C_m": C_M, "g_L": C_M * network.amem[a] / 1000.0, "E_L": network.rp[a], "V_reset": 0.0,
            "V_T_star": network.ft[a], "Delta_V": 1.0, "lambda_0": 1.0, "t_ref": network.ref_t * 1000.0,
            "tau_syn_ex": tau_ex[a], "tau_syn_in": tau_in[a], "q_sfa": [], "tau_sfa": [], "q_stc": [], "tau_stc": []})
        pop.set({"V_m": state.V[first[a]:first[a + 1]].tolist()})
        pops.append(pop)
    _nest_connect(nest, network, pops, pops, h, {"rule": "all_to_all", "allow_autapses": True})
    _nest_inputs(nest, network, I_ext, pops, h)
    return _record_and_run(nest, "nest_micro", pops, n_steps, h, start)


def nest_meso(network, duration, seed, I_ext=None, h=MICRO_DT, binomial=True):
    """The mesoscopic population equations in NEST (`gif_pop_psc_exp`, one node per population, one
    thread) for `duration` s at step h. binomial: NEST's BinoRand (binomial rather than Poisson spike
    counts). Returns a PeerRun; the start is NEST's own (module docstring)."""
    nest = _import_nest()
    n_steps, I_ext = _check_run(network, duration, I_ext, h)
    tau_ex, tau_in = synaptic_taus(network)
    start = time.perf_counter()
    _reset_nest(nest, seed, h)
    pops = [nest.Create("gif_pop_psc_exp", params={
        "N": int(network.N[a]), "C_m": C_M, "tau_m": 1000.0 / network.amem[a], "E_L": network.rp[a],
        "V_reset": 0.0, "V_T_star": network.ft[a], "Delta_V": 1.0, "lambda_0": 1.0,
        "t_ref": network.ref_t * 1000.0, "tau_syn_ex": tau_ex[a], "tau_syn_in": tau_in[a],
        "len_kernel": -1, "BinoRand": bool(binomial), **NO_ADAPTATION}) for a in range(network.M)]
    _nest_connect(nest, network, pops, pops, h, {"rule": "all_to_all"})
    _nest_inputs(nest, network, I_ext, pops, h)
    return _record_and_run(nest, "nest_meso", pops, n_steps, h, start)


# ---------------------------------------------------------------- Brian2

BRIAN2_NEURON = """
dv/dt = amem * (rp - v) + gain * (u + iext) : 1 (unless refractory)
u = {drive} : Hz
iext : Hz
pop : integer (constant)
amem : Hz (constant)
rp : 1 (constant)
ft : 1 (constant)
gain : 1 (constant)
"""  # gain = h amem / (1 - exp(-h amem)): with it the exact leak integration is our step


def brian2_micro(network, duration, seed, I_ext=None, h=MICRO_DT, target="numpy", build_dir=None):
    """The microscopic network in Brian2 for `duration` s. Returns a PeerRun.

    target: "numpy" or "cython" (runtime code generation) or "cpp_standalone" (one C++ program,
    compiled in build_dir or a temporary folder; fastest for long runs, one run per process).
    One step, in Brian2's schedule: neurons integrate v (the exact leak, the input of the
    population filters I_b as left by the previous step), the filters decay by exp(-asyn h), neurons
    fire, each spike kicks its population's filter. That is our recursion
    Isyn(t+1) = eI Isyn(t) + (1 - eI) A(t) with V(t+1) driven by Isyn(t+1).
    """
    import brian2 as b2

    from src.microsim import ref_steps_of, stationary_state
    if target not in BRIAN2_TARGETS:
        raise ValueError(f"target must be one of {BRIAN2_TARGETS}, got {target!r}")
    n_steps, I_ext = _check_run(network, duration, I_ext, h)
    ref_steps = ref_steps_of(network, h)
    M, N = network.M, network.N
    start = time.perf_counter()
    if target == "cpp_standalone":
        build_dir = build_dir or tempfile.mkdtemp(prefix="brian2_peers_")
        b2.set_device("cpp_standalone", directory=build_dir, build_on_run=False)
    else:
        b2.prefs.codegen.target = target
    b2.start_scope()
    b2.defaultclock.dt = h * b2.second
    b2.seed(int(seed))
    state = stationary_state(network, np.random.default_rng(seed), h, 1, I_ext[:, 0])
    pop = np.repeat(np.arange(M), N)  # (sum N,) population of each neuron

    drive = " + ".join(f"w{b} * I{b}" for b in range(M))  # sum_b W[b, a] Isyn_b
    per_pre = "".join(f"w{b} : 1 (constant)\nI{b} : Hz (linked)\n" for b in range(M))
    G = b2.NeuronGroup(int(N.sum()), BRIAN2_NEURON.format(drive=drive) + per_pre, method="exact",
                       threshold="rand() < 1 - exp(-exp(v - ft) * dt / second)", reset="v = 0",
                       refractory=(ref_steps + 1) * h * b2.second, order=0)
    P = b2.NeuronGroup(M, "dI/dt = -asyn * I : Hz\nasyn : Hz (constant)\nkick : Hz (constant)\nn : 1",
                       method="exact", order=1)  # the population filters, updated after the neurons
    P.run_regularly("n = 0", when="start")  # n: spikes of the population in this step
    P.asyn = network.asyn * b2.Hz
    eI = np.exp(-h * network.asyn)
    P.kick = (1 - eI) / (N * h) * b2.Hz
    P.I = (eI * state.Isyn + (1 - eI) * state.A_hist[:, 0]) * b2.Hz  # our Isyn of the first step
    G.pop = pop
    G.amem = network.amem[pop] * b2.Hz
    G.rp = network.rp[pop]
    G.ft = network.ft[pop]
    G.gain = (h * network.amem / -np.expm1(-h * network.amem))[pop]
    for b in range(M):
        setattr(G, f"w{b}", network.W[b, pop])
        setattr(G, f"I{b}", b2.linked_var(P, "I", index=np.full(len(pop), b)))
    G.v = state.V
    held = state.held  # steps still held: free again in step `held`, as if it fired ref_steps + 1 - held steps ago
    G.lastspike = np.where(held > 0, (held - ref_steps - 1) * h, -1e4) * b2.second
    namespace = {}
    if np.any(I_ext != 0):
        namespace["I_input"] = b2.TimedArray((network.eps * I_ext).T * b2.Hz, dt=h * b2.second)  # (n_steps, M)
        G.run_regularly("iext = I_input(t, pop)", when="start")  # step t reads row t
    S = b2.Synapses(G, P, on_pre="I_post += kick_post\nn_post += 1")
    S.connect(i=np.arange(len(pop)), j=pop)
    monitor = b2.StateMonitor(P, "n", record=True, when="end")
    net = b2.Network(b2.collect())
    if target == "cpp_standalone":
        net.run(n_steps * h * b2.second, namespace=namespace)
        b2.device.build(directory=build_dir, compile=True, run=False)
        built, cpu = time.perf_counter(), _children_cpu()
        b2.device.run(directory=build_dir, with_output=False, run_args=[])  # runs the program as a child process
        cpu_run = _children_cpu() - cpu
    else:
        built, cpu = time.perf_counter(), time.process_time()
        net.run(n_steps * h * b2.second, namespace=namespace)
        cpu_run = time.process_time() - cpu
    counts = np.round(np.asarray(monitor.n)).astype(np.int32)  # (M, n_steps)
    wall_run = time.perf_counter() - built
    if target == "cpp_standalone":
        b2.device.reinit()
        b2.device.activate()
    return PeerRun("brian2", counts[:, :n_steps], h, built - start, wall_run, b2.__version__, cpu_run)


def _children_cpu():
    """CPU seconds (user + system) of the finished child processes of this process."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- the winner-take-all statistics

def dominant_activity(pop_spike_counts, N, h, skip=1.0, e_pops=(0, 1), i_pop=2):
    """Activity (Hz) of the winning E population, the losing one and the I population in each step
    after the first `skip` seconds, (3, n_steps - skip/h), and the switch times (s, counted from the
    start of the recording). The winner is src.microsim.dominance's. Works for any step h (0.2 ms
    spike counts, or 4 ms bins of a mesoscopic simulation given as Z * N)."""
    from src.microsim import dominance
    N = np.asarray(N)
    counts = np.asarray(pop_spike_counts, dtype=float)[:, int(round(skip / h)):]
    if counts.shape[1] < 2:
        raise ValueError(f"nothing left after skipping {skip!r} s of {pop_spike_counts.shape[1] * h:g} s")
    winner, switches = dominance(counts, N, h, e_pops=e_pops)
    A = counts / (N[:, None] * h)  # (M, n) Hz
    e = np.asarray(e_pops)
    steps = np.arange(A.shape[1])
    return np.stack([A[e[winner], steps], A[e[1 - winner], steps], A[i_pop]]), switches + skip


def wta_summary(pop_spike_counts, N, h, skip=1.0):
    """Rates while dominant (winner, loser, I; Hz), switches per second and the mean and CV of the
    complete dominance durations (those between two switches), after the first `skip` seconds."""
    activity, switches = dominant_activity(pop_spike_counts, N, h, skip)
    duration = activity.shape[1] * h
    dwell = np.diff(switches)
    return {"winner_hz": activity[0].mean(), "loser_hz": activity[1].mean(), "inhibitory_hz": activity[2].mean(),
            "switches_per_s": len(switches) / duration, "n_dwell": len(dwell),
            "dwell_mean_s": dwell.mean() if len(dwell) else np.nan,
            "dwell_cv": dwell.std(ddof=1) / dwell.mean() if len(dwell) > 1 else np.nan, "duration_s": duration}


# ---------------------------------------------------------------- command line

def run(simulator, network, duration, seed, I_ext=None, h=MICRO_DT, brian2_target="numpy"):
    """One of SIMULATORS by name."""
    if simulator == "nest_micro":
        return nest_micro(network, duration, seed, I_ext, h)
    if simulator == "nest_meso":
        return nest_meso(network, duration, seed, I_ext, h)
    if simulator == "brian2":
        return brian2_micro(network, duration, seed, I_ext, h, target=brian2_target)
    raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")


def save_run(path, peer, network, duration, seed):
    """An .npz with the counts, the wall times, the versions and the whole configuration."""
    np.savez_compressed(path, pop_spike_counts=peer.pop_spike_counts, h=peer.h, wall_build=peer.wall_build,
                        wall_run=peer.wall_run, cpu_run=peer.cpu_run, simulator=peer.simulator, version=peer.version,
                        numpy_version=np.__version__, duration=duration, seed=seed,
                        **{f"network_{k}": v for k, v in network.to_dict().items()})


def load_run(path):
    with np.load(path) as f:
        return PeerRun(str(f["simulator"]), f["pop_spike_counts"], float(f["h"]), float(f["wall_build"]),
                       float(f["wall_run"]), str(f["version"]), float(f["cpu_run"]))


@dataclass
class Options:
    simulator: str = option(REQUIRED, f"peer simulator: {', '.join(SIMULATORS)}")
    duration: float = option(REQUIRED, "simulated time (s)")
    seed: int = option(REQUIRED, "seed of every random draw (>= 0)")
    out: str = option(REQUIRED, "output .npz file")
    brian2_target: str = option("numpy", f"Brian2 code generation target: {', '.join(BRIAN2_TARGETS)}")


def main(argv):
    args = parse(Options, argv, PROG, "Simulate the winner-take-all network (src/network.py) in a peer "
                 "simulator and write its population spike counts (.npz).")
    check([(args.simulator in SIMULATORS, f"--simulator must be one of {', '.join(SIMULATORS)}, got {args.simulator!r}"),
           (args.brian2_target in BRIAN2_TARGETS,
            f"--brian2_target must be one of {', '.join(BRIAN2_TARGETS)}, got {args.brian2_target!r}")])
    from src.network import winner_take_all
    network = winner_take_all()
    peer = run(args.simulator, network, args.duration, args.seed, brian2_target=args.brian2_target)
    save_run(args.out, peer, network, args.duration, args.seed)
    rates = peer.pop_spike_counts.sum(axis=1) / (network.N * args.duration)
    print(f"wrote {args.out}: {peer.simulator} {peer.version}, {args.duration:g} s, seed {args.seed}, build "
          f"{peer.wall_build:.1f} s, run {peer.wall_run:.1f} s, mean rates {np.array2string(rates, precision=2)} Hz")
    return 0


if __name__ == "__main__":
    from src.cli import run as run_script
    sys.exit(run_script(PROG, main))
