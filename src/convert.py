"""Real recordings in, simulations out: NWB and Neo spike trains to a neuLVM recording file
(src/dataset.py), and one of our simulated recordings to NWB. The command line is src.dataset's:

    python -m src.dataset export --nwb /tmp/3pop.nwb          # the shipped simulation, as NWB
    python -m src.dataset import --nwb /tmp/3pop.nwb --out /tmp/3pop_imported.npz --populations E1 E2 I \
        --N 400 400 200 --conmat 1 0 1 0 1 1 -1 -1 -1 --asyn 333.3333 333.3333 166.6667
    python -m src.dataset import --neo units.mat --out rec.npz ...   # a file neo.io reads (not a pickle)
    python train_meso.py --dataset /tmp/3pop_imported.npz --amem 50,50,50 --J 10,10,20 --rp 14.4,14.4,14.4 \
        --ft 3.7,3.7,3.7

What the import reads:
- NWB (pynwb): the Units table's spike_times (s); each unit's population from a column of the
  table (--population_column, default "population") or from --mapping, a CSV file with the columns
  unit_id,population or a TOML file with a table [units] of unit_id = "population"; the time range
  --t_start..--t_stop (default: the span of the table's obs_intervals); optionally the external
  input, a TimeSeries named by --input (in acquisition, stimulus or a processing module) of shape
  (time, M), potential units per s, in the order of --populations.
- Neo: a Block with one Segment, or a list of SpikeTrains, each annotated with its population
  (annotation --population_column); a unit's id is its annotation unit_id, else its name, else its
  index. The default range spans the trains' t_start..t_stop.
What the user gives, since the data cannot say: the populations and their order (--populations),
their sizes N, conmat, asyn, and ref_t and eps (defaults: the model's 4 ms and 1).

The recording: spike times binned at the step h (default 0.2 ms; step k holds t_start + [k, k+1) h),
the first n_recorded units of each population in the order of the file, n_recorded being the fewest
units of any population; no ground truth (src/dataset.py); init_rates the kept units' mean rates.
Every check is made before anything is written, and a failed one is one line naming the file,
unit or option (src.cli: exit status 2): unsorted, duplicate, negative, non-finite spike times or
times outside the range; two spikes of a unit closer than ref_t (the model cannot produce them:
their count is given, and --drop_violations drops every spike closer than ref_t to the unit's
previous kept spike); a unit without a population, a population with fewer units than --Nsampled;
a missing column; a file that is not NWB.

The export writes the recorded neurons as units (ids 0, 1, ... population by population) with a
population column and obs_intervals, a spike at step k as the time (k + 0.5) h (so that binning
gives step k back), the population activity (Hz) as the TimeSeries population_activity of the
processing module "neulvm", and a non-zero input as the stimulus TimeSeries external_input.
pynwb and neo (requirements-nwb.txt) are imported only here.
"""
import csv
import os
import sys
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from . import __version__
from .cli import REQUIRED, UsageError, check, option, parse, run
from .dataset import DatasetError, Recording, load_recording, save_recording
from .microsim import MICRO_DT
from .network import Network

PROG = "python -m src.dataset"
COMMANDS = ("import", "export")
ISI_TOL = 1e-9                  # s: intervals this much under ref_t still count as ref_t (decimal rounding)
BIN_TOL = 1e-6                  # of a step: a time this close below a step's start is in that step (0.3 / 2e-4)
ACTIVITY, INPUT, MODULE = "population_activity", "external_input", "neulvm"    # names of the export

Unit = namedtuple("Unit", "id population times")      # id: str; population: str or None; times: s


# ------------------------------------------------------------------ sources

def read_nwb(path, population_column="population", mapping=None, input_name=""):
    """(units, default range (t_start, t_stop) or None, input) of an NWB file. input: None, or
    (data (n, M'), times of the samples or None, starting_time, rate) of the TimeSeries input_name."""
    try:
        from pynwb import NWBHDF5IO
    except ImportError:
        raise UsageError("reading NWB needs pynwb: pip install -r requirements-nwb.txt") from None
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    try:
        io = NWBHDF5IO(path, "r")
        nwb = io.read()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not an NWB file ({str(err).splitlines()[0]})") from None
    with io:
        table = nwb.units
        if table is None:
            raise DatasetError(f"{path}: has no Units table (expected the spike-sorted units in nwbfile.units)")
        columns = list(table.colnames)
        if "spike_times" not in columns:
            raise DatasetError(f"{path}: the Units table has no column 'spike_times' (columns: {', '.join(columns)})")
        ids = [str(i) for i in table.id[:]]
        if mapping is None and population_column not in columns:
            raise DatasetError(f"{path}: the Units table has no column {population_column!r} (columns: "
                               f"{', '.join(columns)}); name the column with --population_column or give --mapping")
        labels = [_label(x) for x in table[population_column][:]] if mapping is None else [None] * len(ids)
        units = [Unit(i, label, np.asarray(table["spike_times"][k], dtype=float))
                 for k, (i, label) in enumerate(zip(ids, labels))]
        span = None
        if "obs_intervals" in columns:
            intervals = [np.asarray(table["obs_intervals"][k], float).reshape(-1, 2) for k in range(len(ids))]
            intervals = np.concatenate(intervals) if intervals else np.zeros((0, 2))
            if len(intervals):
                span = (float(intervals[:, 0].min()), float(intervals[:, 1].max()))
        found = _input_series(nwb, input_name, path) if input_name else None
    if mapping is not None:
        units = _apply_mapping(units, mapping, path)
    return units, span, found


def _input_series(nwb, name, path):
    places = [("acquisition", nwb.acquisition), ("stimulus", nwb.stimulus)]
    places += [(f"processing/{m}", module.data_interfaces) for m, module in nwb.processing.items()]
    for _, container in places:
        if name in container:
            ts = container[name]
            data = np.asarray(ts.data[:], dtype=float)
            times = None if ts.timestamps is None else np.asarray(ts.timestamps[:], float)
            return data, times, float(ts.starting_time or 0.0), None if ts.rate is None else float(ts.rate)
    found = [f"{where}/{k}" for where, container in places for k in container]
    raise DatasetError(f"{path}: no TimeSeries {name!r} (--input) in acquisition, stimulus or processing "
                       f"(found: {', '.join(found) or 'none'})")


def read_neo(source, population_column="population", mapping=None):
    """(units, default range) of a neo.Block with one Segment, a list of neo.SpikeTrain, or a file
    that neo.io reads (never a pickle)."""
    try:
        import neo
    except ImportError:
        raise UsageError("reading Neo needs neo: pip install -r requirements-nwb.txt") from None
    where = "Neo input"
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise DatasetError(f"{where}: no such file")
        try:
            io = neo.io.get_io(where)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{where}: not a file Neo reads ({err})") from None
        if isinstance(io, neo.io.PickleIO):
            raise DatasetError(f"{where}: is a Python pickle; pickles are never loaded, since loading one can run "
                               "arbitrary code (save the Block with NixIO or NeoMatlabIO)")
        try:
            source = io.read_block()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{where}: Neo cannot read it ({str(err).splitlines()[0]})") from None
    if isinstance(source, neo.Block):
        segments = [s for s in source.segments if s.spiketrains]
        if len(segments) != 1:
            raise DatasetError(f"{where}: expected one Segment with SpikeTrains, got {len(segments)}")
        source = segments[0].spiketrains
    trains = list(source)
    bad = [k for k, st in enumerate(trains) if not isinstance(st, neo.SpikeTrain)]
    if bad:
        raise DatasetError(f"{where}: item {bad[0]} is a {type(trains[bad[0]]).__name__}, expected a neo.SpikeTrain")
    units = []
    for k, st in enumerate(trains):
        unit_id = st.annotations.get("unit_id", st.name if st.name else k)
        label = _label(st.annotations.get(population_column)) if mapping is None else None
        units.append(Unit(str(unit_id), label, np.asarray(st.times.rescale("s").magnitude, dtype=float)))
    if mapping is not None:
        units = _apply_mapping(units, mapping, where)
    span = None
    if trains:
        span = (min(float(st.t_start.rescale("s").magnitude) for st in trains),
                max(float(st.t_stop.rescale("s").magnitude) for st in trains))
    return units, span


def _label(value):
    """A population label as text; None for an empty one."""
    if isinstance(value, bytes):
        value = value.decode()
    text = "" if value is None else str(value).strip()
    return text or None


def load_mapping(path):
    """{unit id: population} from a CSV file (columns unit_id, population) or a TOML file ([units])."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file (--mapping)")
    if path.endswith(".toml"):
        try:
            import tomllib
        except ImportError:                        # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise UsageError("reading a TOML mapping on Python 3.10 needs tomli: pip install -r "
                                 "requirements-nwb.txt") from None
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: not valid TOML ({err})") from None
        table = data.get("units")
        if not isinstance(table, dict):
            raise DatasetError(f"{path}: expected a table [units] of unit_id = \"population\"")
        return {str(k): _label(v) for k, v in table.items()}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for name in ("unit_id", "population"):
            if name not in columns:
                raise DatasetError(f"{path}: missing column {name!r} (expected a CSV file with the columns "
                                   f"unit_id,population; got {','.join(columns) or 'nothing'})")
        mapping = {}
        for row in reader:
            unit = str(row["unit_id"]).strip()
            if unit in mapping:
                raise DatasetError(f"{path}: unit {unit} appears twice")
            mapping[unit] = _label(row["population"])
    return mapping


def _apply_mapping(units, mapping, where):
    ids = {u.id for u in units}
    unknown = [k for k in mapping if k not in ids]
    if unknown:
        raise DatasetError(f"{where}: the mapping names unit {unknown[0]}, which is not in the data "
                           f"({len(unknown)} unknown units)")
    return [u._replace(population=mapping.get(u.id)) for u in units]


# ------------------------------------------------------------------ the recording

def build_recording(units, where, populations, N, conmat, asyn, t_start, t_stop, ref_t=0.004, eps=1.0, h=MICRO_DT,
                    Nsampled=3, drop_violations=False, input_series=None, source=""):
    """The Recording (src/dataset.py, without ground truth) of units, and the lines to tell the user.

    Every problem of the data is a DatasetError naming `where` and the unit (see the module docstring)."""
    M = len(populations)
    n_steps = int(round((t_stop - t_start) / h))
    notes = []
    by_population = {p: [] for p in populations}
    violations, dropped = {}, 0
    for u in units:
        name = f"{where}: unit {u.id}"
        if u.population is None:
            raise DatasetError(f"{name} has no population (give every unit one, in its column or the mapping)")
        if u.population not in by_population:
            raise DatasetError(f"{name} is in population {u.population!r}, which --populations "
                               f"({' '.join(populations)}) does not list")
        t = u.times
        if t.ndim != 1:
            raise DatasetError(f"{name}: spike times must be a list of numbers, got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise DatasetError(f"{name} has {int(np.sum(~np.isfinite(t)))} non-finite spike times")
        if np.any(t < 0):
            raise DatasetError(f"{name} has negative spike times (first {float(t[t < 0][0])!r} s)")
        step = np.diff(t)
        if np.any(step < 0):
            k = int(np.argmax(step < 0))
            raise DatasetError(f"{name}: spike times are not sorted ({float(t[k])!r} s before {float(t[k + 1])!r} s)")
        if np.any(step == 0):
            raise DatasetError(f"{name} has duplicate spike times ({float(t[int(np.argmax(step == 0))])!r} s twice)")
        outside = (t < t_start) | (t >= t_stop)
        if np.any(outside):
            raise DatasetError(f"{name} has {int(outside.sum())} spikes outside the range {t_start:g}..{t_stop:g} s "
                               f"(first at {float(t[outside][0])!r} s; --t_start, --t_stop)")
        close = int(np.sum(step < ref_t - ISI_TOL))
        if close and drop_violations:
            t = _drop_close(t, ref_t)
            dropped += len(u.times) - len(t)
        elif close:
            violations[u.id] = close
        by_population[u.population].append(u._replace(times=t))
    if violations:
        worst = max(violations, key=violations.get)
        raise DatasetError(f"{where}: {sum(violations.values())} spikes in {len(violations)} units follow the unit's "
                           f"previous spike by less than ref_t = {ref_t * 1e3:g} ms, which the model cannot produce "
                           f"(unit {worst}: {violations[worst]}); --drop_violations drops the later spike of each")
    if dropped:
        notes.append(f"--drop_violations: dropped {dropped} spikes closer than ref_t = {ref_t * 1e3:g} ms to the "
                     "unit's previous spike")
    counts = [len(by_population[p]) for p in populations]
    for p, n, size in zip(populations, counts, N):
        if n < Nsampled:
            raise DatasetError(f"{where}: population {p} has {n} units, fewer than --Nsampled {Nsampled} (the "
                               "observed neurons per population of the fit)")
        if n > size:
            raise DatasetError(f"{where}: population {p} has {n} units, more than its --N {size} neurons")
    n_recorded = min(counts)
    if max(counts) > n_recorded:
        notes.append(f"kept the first {n_recorded} units of each population (units: "
                     + ", ".join(f"{p} {n}" for p, n in zip(populations, counts)) + ")")
    spikes = np.zeros((M, n_recorded, n_steps), dtype=np.uint8)
    ids = np.empty((M, n_recorded), dtype=object)
    for a, p in enumerate(populations):
        for j, u in enumerate(by_population[p][:n_recorded]):
            k = np.minimum(np.floor((u.times - t_start) / h + BIN_TOL).astype(np.int64), n_steps - 1)
            if np.any(np.diff(k) == 0):
                raise DatasetError(f"{where}: unit {u.id} has two spikes in one step of h = {h * 1e3:g} ms; "
                                   "give a smaller --h")
            spikes[a, j, k] = 1
            ids[a, j] = u.id
    init_rates = spikes.sum(axis=(1, 2)) / (n_recorded * n_steps * h)           # (M,) Hz
    I_ext = np.zeros((M, n_steps))
    if input_series is not None:
        I_ext = sample_input(input_series, t_start, n_steps, h, M, where)
    nan = np.full(M, np.nan)                                                    # no true theta
    network = Network(N=N, amem=nan, rp=nan, ft=nan, J=nan, conmat=np.reshape(conmat, (M, M)), asyn=asyn,
                      ref_t=ref_t, eps=eps, init_rates=init_rates)
    rec = Recording(network=network, h=h, pop_spike_counts=None, spikes=spikes, I_ext=I_ext, seed=None,
                    version=__version__, input_kind="none" if input_series is None else "recorded",
                    delay_steps=1, populations=tuple(populations), unit_ids=ids.astype(str),
                    source=source or f"{where}, {t_start:g}..{t_stop:g} s")
    return rec, notes


def _drop_close(t, ref_t):
    """t without every spike closer than ref_t to the previous spike kept."""
    keep, last = [], -np.inf
    for x in t:
        if x - last >= ref_t - ISI_TOL:
            keep.append(x)
            last = x
    return np.asarray(keep)


def sample_input(series, t_start, n_steps, h, M, where):
    """(M, n_steps) input: the sample of the TimeSeries in force at the centre of each step."""
    data, times, starting_time, rate = series
    if data.ndim == 1 and M == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[1] != M:
        raise DatasetError(f"{where}: the --input TimeSeries must have shape (time, {M}) (one column per "
                           f"population of --populations), got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise DatasetError(f"{where}: the --input TimeSeries has non-finite values")
    centres = t_start + (np.arange(n_steps) + 0.5) * h
    if times is None:
        times = starting_time + np.arange(len(data)) / rate
        end = times[-1] + 1 / rate if len(times) else starting_time
    else:
        end = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 0.0)
    if not len(times) or centres[0] < times[0] or centres[-1] > end:
        raise DatasetError(f"{where}: the --input TimeSeries covers {times[0] if len(times) else 0:g}.."
                           f"{end:g} s, not the whole range {t_start:g}..{t_start + n_steps * h:g} s")
    index = np.clip(np.searchsorted(times, centres, side="right") - 1, 0, len(times) - 1)
    return data[index].T.copy()


# ------------------------------------------------------------------ export

def export_nwb(rec, path, populations=None):
    """Write the recording as NWB (module docstring), atomically."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    from .results import atomic_write

    M, n_recorded, n_steps = rec.spikes.shape
    names = list(populations or rec.populations or default_names(M))
    nwb = NWBFile(session_description=f"neuLVM recording ({rec.source or 'simulation, seed ' + str(rec.seed)})",
                  identifier=f"neulvm-{rec.seed}", session_start_time=datetime(2022, 1, 1, tzinfo=timezone.utc),
                  notes="import with: " + import_command_line(rec, "THIS_FILE.nwb", names))
    nwb.add_unit_column("population", "the population of the neuron")
    duration = n_steps * rec.h
    for a in range(M):
        for j in range(n_recorded):
            times = (np.flatnonzero(rec.spikes[a, j]) + 0.5) * rec.h
            nwb.add_unit(id=a * n_recorded + j, spike_times=times, population=names[a],
                         obs_intervals=[[0.0, duration]])
    if rec.has_truth:
        module = nwb.create_processing_module(MODULE, "what only a simulation knows")
        module.add(TimeSeries(name=ACTIVITY, data=rec.activity.T, unit="Hz", rate=1 / rec.h, starting_time=0.0,
                              description="population activity (spikes per neuron per s), columns: " + " ".join(names)))
    if np.any(rec.I_ext):
        nwb.add_stimulus(TimeSeries(name=INPUT, data=rec.I_ext.T, unit="potential units (2.5 mV) per s",
                                    rate=1 / rec.h, starting_time=0.0, description="external input, columns: "
                                    + " ".join(names)))

    def write(tmp):
        with NWBHDF5IO(tmp, "w") as io:
            io.write(nwb)
    atomic_write(path, write, extension=".nwb")
    return names


def default_names(M):
    from .plots import population_names
    return population_names(M)


def _exact(x):
    """x as short a decimal as reads back as the same float."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def import_command_line(rec, nwb_path, names):
    """The import command that reads an exported recording back."""
    net = rec.network
    numbers = lambda v: " ".join(_exact(x) for x in np.ravel(v))  # noqa: E731
    line = (f"{PROG} import --nwb {nwb_path} --out OUT.npz --populations {' '.join(names)} --N {numbers(net.N)} "
            f"--conmat {numbers(net.conmat)} --asyn {numbers(net.asyn)} --ref_t {_exact(net.ref_t)} "
            f"--eps {_exact(net.eps)} --h {_exact(rec.h)}")
    return line + (f" --input {INPUT}" if np.any(rec.I_ext) else "")


# ------------------------------------------------------------------ command line

@dataclass
class ImportOptions:
    out: str = option(REQUIRED, "recording file to write (.npz; train_meso.py's --dataset)")
    nwb: str = option("", "NWB file to read (its Units table)")
    neo: str = option("", "file to read with Neo (neo.io.get_io: .mat, .nix, ...; not a pickle)")
    populations: list = option(REQUIRED, "names of the populations, in the model's order", items=str)
    N: list = option(REQUIRED, "neurons per population (not in the data)", items=int)
    conmat: list = option(REQUIRED, "M x M coupling signs conmat[b, a] from b to a, row by row")
    asyn: list = option(REQUIRED, "1/tau_syn of each population (1/s)")
    ref_t: float = option(0.004, "absolute refractory period (s)")
    eps: float = option(1.0, "gain of the external input")
    population_column: str = option("population", "column of the Units table (NWB) or annotation of each "
                                                   "SpikeTrain (Neo) that names its population")
    mapping: str = option("", "CSV (unit_id,population) or TOML ([units] id = \"population\") file with the "
                              "population of every unit, instead of the column")
    t_start: float = option(None, "start of the range (s; default: the units' obs_intervals, Neo's t_start)")
    t_stop: float = option(None, "end of the range (s; default: the units' obs_intervals, Neo's t_stop)")
    h: float = option(MICRO_DT, "step at which the spike times are binned (s); must divide train_meso's --dt")
    Nsampled: int = option(3, "observed neurons per population of the fit: every population needs as many units")
    input: str = option("", "NWB TimeSeries of the external input, shape (time, M), potential units per s")
    drop_violations: bool = option(False, "drop each spike closer than ref_t to its unit's previous spike")
    debug: bool = option(False, "show tracebacks on errors")


@dataclass
class ExportOptions:
    nwb: str = option(REQUIRED, "NWB file to write")
    dataset: str = option("dataset/3pop_noinput_small.npz", "recording to export (.npz)")
    populations: list = option([], "names of the populations (default: E1 E2 I for three, else pop 1 ...)",
                               items=str)
    debug: bool = option(False, "show tracebacks on errors")


def check_import_options(opt):
    M = len(opt.populations)
    check([(bool(opt.nwb) != bool(opt.neo), "give one of --nwb and --neo"),
           (not (opt.input and opt.neo), "--input reads an NWB TimeSeries: it needs --nwb"),
           (len(set(opt.populations)) == M, f"--populations must be distinct names, got {' '.join(opt.populations)}"),
           (len(opt.N) == M and all(n >= 1 for n in opt.N),
            f"--N must be {M} sizes >= 1 (one per population of --populations), got {opt.N}"),
           (len(opt.conmat) == M * M, f"--conmat must have M x M = {M * M} values, got {len(opt.conmat)}"),
           (len(opt.asyn) == M and all(a > 0 for a in opt.asyn),
            f"--asyn must be {M} rates > 0 (1/s), got {opt.asyn}"),
           (opt.ref_t >= 0, f"--ref_t must be >= 0 s, got {opt.ref_t}"),
           (opt.h > 0, f"--h must be > 0 s, got {opt.h}"),
           (opt.Nsampled >= 1, f"--Nsampled must be >= 1, got {opt.Nsampled}")])
    inputs = [os.path.abspath(p) for p in (opt.nwb, opt.neo, opt.mapping) if p]
    check([(os.path.abspath(opt.out) not in inputs, f"--out {opt.out} is one of the input files")])


def import_recording(opt):
    """Read, check, write: the import command. Returns the Recording written."""
    check_import_options(opt)
    mapping = load_mapping(opt.mapping) if opt.mapping else None
    if opt.nwb:
        where = opt.nwb
        units, span, series = read_nwb(opt.nwb, opt.population_column, mapping, opt.input)
        span_name = "the Units table's obs_intervals"
    else:
        where = opt.neo
        (units, span), series = read_neo(opt.neo, opt.population_column, mapping), None
        span_name = "the SpikeTrains' t_start and t_stop"
    if (opt.t_start is None or opt.t_stop is None) and span is None:
        raise UsageError(f"{where}: give the range with --t_start and --t_stop (no {span_name} to take it from)")
    t_start = span[0] if opt.t_start is None else opt.t_start
    t_stop = span[1] if opt.t_stop is None else opt.t_stop
    n = (t_stop - t_start) / opt.h
    check([(t_start >= 0, f"--t_start must be >= 0 s, got {t_start:g}"),
           (t_stop > t_start, f"the range must have t_stop > t_start, got {t_start:g}..{t_stop:g} s"),
           (abs(n - round(n)) < 1e-6 * max(1.0, n),
            f"the range {t_start:g}..{t_stop:g} s must be a whole number of steps --h {opt.h:g} s")])
    rec, notes = build_recording(units, where, opt.populations, opt.N, opt.conmat, opt.asyn, t_start, t_stop,
                                 opt.ref_t, opt.eps, opt.h, opt.Nsampled, opt.drop_violations, series,
                                 source=f"{where} ({'NWB' if opt.nwb else 'Neo'}), {t_start:g}..{t_stop:g} s")
    save_recording(opt.out, rec)
    for note in notes:
        print(note)
    M, n_recorded, n_steps = rec.spikes.shape
    print(f"wrote {opt.out}: {M} populations ({' '.join(opt.populations)}), {n_recorded} units each, "
          f"{n_steps * opt.h:g} s at h = {opt.h * 1e3:g} ms, mean rates "
          + ", ".join(f"{r:.2f}" for r in rec.network.init_rates) + " Hz; no ground truth: train_meso.py needs "
          "--amem, --J, --rp, --ft")
    return rec


def export_recording(opt):
    """The export command."""
    rec = load_recording(opt.dataset)
    check([(not opt.populations or len(opt.populations) == rec.network.M,
            f"--populations must name the {rec.network.M} populations of {opt.dataset}, got {opt.populations}")])
    names = export_nwb(rec, opt.nwb, opt.populations)
    print(f"wrote {opt.nwb}: {rec.spikes.shape[1]} units per population, {rec.duration:g} s"
          + (", the population activity" if rec.has_truth else ""))
    print("import it with: " + import_command_line(rec, opt.nwb, names))
    return 0


def main(argv=None):
    """python -m src.dataset import|export ...: the exit status (src.cli)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else ""
    if command not in COMMANDS:
        return run(PROG, lambda args: _no_command(args), argv)
    prog = f"{PROG} {command}"
    if command == "import":
        return run(prog, lambda args: import_recording(parse(ImportOptions, args, prog, __doc__)), argv[1:])
    return run(prog, lambda args: export_recording(parse(ExportOptions, args, prog, __doc__)), argv[1:])


def _no_command(args):
    raise UsageError(f"expected a command, import or export, got {' '.join(args) or 'nothing'} "
                     f"({PROG} import --help lists its options)")
