"""Dataset files: one recording of the microscopic network (model.md section 1), or of real neurons
(imported from NWB or Neo by src/convert.py), in a `.npz` archive.

The archive is written with np.savez_compressed and read with allow_pickle=False, so loading
never executes code. Keys (format "neuLVM-recording-1"; the likelihood code depends on them):

    format            "neuLVM-recording-1"
    version           version of the package that wrote the file (src.__version__)
    seed              seed of every random draw of the simulation (absent: not a simulation)
    h                 simulation step, s (0.2 ms); an imported recording's spike times are binned at it
    pop_spike_counts  (M, n_steps) int32, spikes of each population in each step (ground truth)
    spikes            (M, n_recorded, n_steps) uint8 0/1, the recorded neurons of each population; the first
                      ones are those the fit observes (model.md section 2)
    I_ext             (M, n_steps) float64, external input (V units per s; zeros for none)
    input_kind        "none", "given", "pulses", "ou" or "recorded" (an imported TimeSeries)
    N, amem, rp, ft, J, asyn, init_rates  (M,) network parameters (src/network.py); amem, rp, ft, J
                      are the true theta (ground truth)
    conmat            (M, M)
    ref_t, eps        scalars
    delay_steps       synaptic delay in steps (1 = the model's one-step convention)

A recording without ground truth (real neurons) has none of the keys of TRUTH (pop_spike_counts and the
true theta amem, rp, ft, J): a file holds all of them or none. In memory such a Recording has
pop_spike_counts None and NaN (unknown) in its network's amem, rp, ft, J; has_truth says which it is.
Its init_rates are the recorded units' mean rates, it records at least 1 neuron per population
(a simulation: MIN_RECORDED), and it may hold the optional keys
    populations       (M,) str, the names of the populations
    unit_ids          (M, n_recorded) str, the id in the source file of each recorded neuron
    source            str, where the spikes came from (file, table, time range)
Files written before these keys existed load as before.

The command line imports real recordings and exports simulated ones (src/convert.py):

    python -m src.dataset import --nwb FILE.nwb --out REC.npz --populations E1 E2 I --N 400 400 200 ...
    python -m src.dataset export --nwb FILE.nwb --dataset dataset/3pop_noinput_small.npz
"""
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from src.network import Network
from src.results import atomic_write, open_npz

FORMAT = "neuLVM-recording-1"
MIN_RECORDED = 30  # recorded neurons per population (fewer only if the population is smaller)
PARAMS = ("N", "amem", "rp", "ft", "J", "asyn", "init_rates")  # (M,) network parameters
TRUTH = ("pop_spike_counts", "amem", "rp", "ft", "J")         # what only a simulation knows


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names file and field."""


@dataclass(frozen=True)
class Recording:
    network: Network
    h: float  # s
    pop_spike_counts: np.ndarray  # (M, n_steps) int32; None without ground truth
    spikes: np.ndarray  # (M, n_recorded, n_steps) uint8
    I_ext: np.ndarray  # (M, n_steps) float64
    seed: int           # None: not a simulation
    version: str
    input_kind: str
    delay_steps: int
    populations: tuple = None     # names of the populations, if known
    unit_ids: np.ndarray = None   # (M, n_recorded) str, ids of the recorded neurons in the source file
    source: str = ""              # where the spikes came from

    @property
    def has_truth(self):
        """True for a simulation: the population activity and the true theta are known."""
        return self.pop_spike_counts is not None

    @property
    def theta_true(self):
        """The true theta (amem, J, rp, ft), or None without ground truth."""
        return self.network.theta if self.has_truth else None

    @property
    def activity(self):
        """Population activity A, (M, n_steps), Hz (spikes per neuron per second); None without ground truth."""
        return None if not self.has_truth else self.pop_spike_counts / (self.network.N[:, None] * self.h)

    @property
    def duration(self):
        """Recorded time in s."""
        return self.spikes.shape[2] * self.h

    def network_record(self):
        """The network as plain values for summary.json: the fixed parameters, and the true amem, J,
        rp, ft, or None for each of them without ground truth."""
        record = self.network.to_dict()
        if not self.has_truth:
            record.update(dict.fromkeys(("amem", "J", "rp", "ft")))
        return record


def save_recording(path, recording):
    """Write `recording` to `path` atomically: a temporary file in the same folder, then os.replace."""
    net = recording.network
    arrays = dict(
        format=np.str_(FORMAT), version=np.str_(recording.version),
        h=np.float64(recording.h), spikes=np.asarray(recording.spikes, dtype=np.uint8),
        I_ext=np.asarray(recording.I_ext, dtype=np.float64),
        input_kind=np.str_(recording.input_kind), conmat=net.conmat, ref_t=np.float64(net.ref_t),
        eps=np.float64(net.eps), delay_steps=np.int64(recording.delay_steps),
        **{name: getattr(net, name) for name in PARAMS})
    if recording.has_truth:
        arrays["pop_spike_counts"] = np.asarray(recording.pop_spike_counts, dtype=np.int32)
    else:
        for name in TRUTH:
            arrays.pop(name, None)
    if recording.seed is not None:
        arrays["seed"] = np.int64(recording.seed)
    if recording.populations is not None:
        arrays["populations"] = np.asarray(recording.populations, dtype=np.str_)
    if recording.unit_ids is not None:
        arrays["unit_ids"] = np.asarray(recording.unit_ids, dtype=np.str_)
    if recording.source:
        arrays["source"] = np.str_(recording.source)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)   # --out result/new/rec.npz works
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_recording(path):
    """Read and validate a dataset file; raise DatasetError naming the file and the problem."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a folder, expected a dataset file (.npz)")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    archive = open_npz(path, DatasetError, f"a dataset archive in the format {FORMAT!r}")
    with archive:
        fields = _Fields(path, archive)
        if fields.text("format") != FORMAT:
            raise DatasetError(f"{path}: field 'format' must be {FORMAT!r}, got {fields.text('format')!r}")
        N = fields.array("N", np.integer, ndim=1)
        M = len(N)
        if M < 1 or np.any(N < 1):
            raise DatasetError(f"{path}: field 'N' must hold M >= 1 population sizes >= 1, got {N}")
        truth = [name in archive.files for name in TRUTH]
        if any(truth) and not all(truth):
            raise DatasetError(f"{path}: missing field {TRUTH[truth.index(False)]!r} (a recording holds all of the "
                               f"ground truth {', '.join(TRUTH)}, or none of them)")
        has_truth = all(truth)
        params = {name: (fields.array(name, np.floating, shape=(M,)) if has_truth or name not in TRUTH
                         else np.full(M, np.nan)) for name in PARAMS if name != "N"}
        for name in ("amem", "asyn"):
            if np.any(params[name] <= 0):
                raise DatasetError(f"{path}: field {name!r} must be > 0 (1/s), got {params[name]}")
        if np.any(params["init_rates"] < 0):
            raise DatasetError(f"{path}: field 'init_rates' must be >= 0 (Hz), got {params['init_rates']}")
        conmat = fields.array("conmat", np.floating, shape=(M, M))
        ref_t, eps, h = (fields.scalar(name, np.floating) for name in ("ref_t", "eps", "h"))
        if not h > 0:
            raise DatasetError(f"{path}: field 'h' must be > 0 s, got {h!r}")
        if not ref_t >= 0:
            raise DatasetError(f"{path}: field 'ref_t' must be >= 0 s, got {ref_t!r}")
        delay_steps = int(fields.scalar("delay_steps", np.integer))
        if delay_steps < 1:
            raise DatasetError(f"{path}: field 'delay_steps' must be >= 1, got {delay_steps!r}")
        seed = int(fields.scalar("seed", np.integer)) if "seed" in archive.files else None
        spikes = fields.array("spikes", (np.integer, np.bool_), ndim=3)
        counts = fields.array("pop_spike_counts", np.integer, ndim=2) if has_truth else None
        n_steps = (counts if has_truth else spikes).shape[-1]
        if has_truth and (counts.shape[0] != M or n_steps < 1):
            raise DatasetError(f"{path}: field 'pop_spike_counts' must have shape ({M}, n_steps >= 1), got {counts.shape}")
        if has_truth and (counts.min() < 0 or np.any(counts > N[:, None])):
            raise DatasetError(f"{path}: field 'pop_spike_counts' must lie in [0, N] (spikes per step), "
                               f"got range [{counts.min()}, {counts.max()}]")
        if spikes.shape[0] != M or spikes.shape[2] != n_steps or n_steps < 1:
            raise DatasetError(f"{path}: field 'spikes' must have shape ({M}, n_recorded, "
                               f"{n_steps if has_truth else 'n_steps >= 1'}), got {spikes.shape}")
        n_min = min(MIN_RECORDED, N.min()) if has_truth else 1
        if not n_min <= spikes.shape[1] <= N.min():
            raise DatasetError(f"{path}: field 'spikes' must record between {n_min} and {N.min()} neurons "
                               f"per population, got {spikes.shape[1]}")
        if spikes.size and (spikes.min() < 0 or spikes.max() > 1):
            raise DatasetError(f"{path}: field 'spikes' must hold only 0 and 1 (spike or not in a step), "
                               f"got values in [{spikes.min()}, {spikes.max()}]")
        spikes = spikes.astype(np.uint8)
        if has_truth and np.any(spikes.sum(axis=1) > counts):
            raise DatasetError(f"{path}: field 'spikes' has more recorded spikes in a step than 'pop_spike_counts'")
        I_ext = fields.array("I_ext", np.floating, shape=(M, n_steps))
        version, input_kind = fields.text("version"), fields.text("input_kind")
        populations = unit_ids = None
        if "populations" in archive.files:
            populations = tuple(str(x) for x in fields.array("populations", np.str_, shape=(M,)))
        if "unit_ids" in archive.files:
            unit_ids = fields.array("unit_ids", np.str_, shape=spikes.shape[:2])
        source = fields.text("source") if "source" in archive.files else ""
    try:
        network = Network(N=N, conmat=conmat, ref_t=float(ref_t), eps=float(eps), **params)
    except ValueError as error:
        raise DatasetError(f"{path}: invalid network parameters ({error})") from None
    return Recording(network=network, h=float(h), pop_spike_counts=counts.astype(np.int32) if has_truth else None,
                     spikes=spikes, I_ext=I_ext.astype(np.float64), seed=seed, version=version, input_kind=input_kind,
                     delay_steps=delay_steps, populations=populations, unit_ids=unit_ids, source=source)


class _Fields:
    """Reads one field of an open archive, raising DatasetError with the file and field name."""

    def __init__(self, path, archive):
        self.path, self.archive = path, archive

    def get(self, name):
        if name not in self.archive.files:
            raise DatasetError(f"{self.path}: missing field {name!r}")
        try:
            return self.archive[name]
        except ValueError as error:
            if "allow_pickle" in str(error):
                raise DatasetError(f"{self.path}: field {name!r} holds pickled Python objects, expected a numeric "
                                   "array; refused (loading them can run arbitrary code)") from None
            raise DatasetError(f"{self.path}: field {name!r} is unreadable, the file is truncated or "
                               f"corrupted ({error})") from None
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise DatasetError(f"{self.path}: field {name!r} is unreadable, the file is truncated or "
                               f"corrupted ({error})") from None

    def array(self, name, kind, ndim=None, shape=None):
        """The field, checked: dtype a subtype of kind (or of one of a tuple of kinds), shape or ndim,
        and finite if it holds floats."""
        value = self.get(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not any(np.issubdtype(value.dtype, k) for k in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise DatasetError(f"{self.path}: field {name!r} must have dtype {expected}, got {value.dtype}")
        if shape is not None and value.shape != shape:
            raise DatasetError(f"{self.path}: field {name!r} must have shape {shape}, got {value.shape}")
        if ndim is not None and value.ndim != ndim:
            raise DatasetError(f"{self.path}: field {name!r} must have {ndim} dimensions, got shape {value.shape}")
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise DatasetError(f"{self.path}: field {name!r} contains NaN or infinite values")
        return value

    def scalar(self, name, kind):
        return self.array(name, kind, shape=())[()]

    def text(self, name):
        value = self.get(name)
        if value.shape != () or not np.issubdtype(value.dtype, np.str_):
            raise DatasetError(f"{self.path}: field {name!r} must be a string, got {value.dtype} of shape {value.shape}")
        return str(value)


if __name__ == "__main__":
    import sys

    from src.convert import main     # the import and export commands
    sys.exit(main())
