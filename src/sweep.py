"""Many fits at once: a grid of train_meso.py fits run on Dask, and the table of their results (issue 14).

    python -m src.sweep --end_timepoint 11 --train_Noinit 0 1 2 3 4 --out result/sweeps/five -- --threads 1
    python -m src.sweep --grid sweeps/protocol.toml                 # the grid written in a TOML file
    python -m src.sweep --grid sweeps/protocol.toml --dry_run       # check it and list the fits, run nothing
    python -m src.sweep --grid sweeps/protocol.toml --scheduler tcp://10.0.0.5:8786    # a running cluster
    python -m src.sweep --grid sweeps/protocol.toml --cluster slurm --jobs 10 --cores 4 --memory 16GB \\
        --walltime 04:00:00 --queue normal                           # dask-jobqueue (pip install dask-jobqueue)
    python -m src.sweep summarize result/sweeps/five                # fits.csv, cells.csv, summary.md, figures

The grid. Every combination of --dataset x --end_timepoint x --Nsampled x --train_Noinit x --scheme x
--estep is one fit: `python train_meso.py` with those options, the options after `--` (the same for
every fit) and --resume. Its folder is train_meso.py's own, under --out:

    {out}/{recording file name}/N{Nsampled}_{scheme}_{estep}/data{end_timepoint}/train{train_Noinit}/

so a grid cell (all but the restart) is a folder data{end} of runs train0, train1, ... like
`result/3pop example/data11`, which src.runs and src.report read; train{i}.out next to a run holds
its terminal output (every attempt). A TOML file (--grid) holds any of these options at its top
level and train_meso.py's options in a table [fit]; an option given on the command line wins:

    out = "result/sweeps/protocol"
    dataset = ["result/sweeps/data/wta200s.npz"]
    end_timepoint = [35, 44, 65]
    train_Noinit = [0, 1, 2, 3, 4]
    [fit]
    threads = 1

Paths are taken relative to the current folder, made absolute, and must be the same on the workers
(a shared file system): a worker that cannot see a recording says so. Every fit's options are
checked, against its recording too, before anything starts: a bad cell ends the sweep in one line
that names it (exit status 2), as does a folder whose earlier results were fitted with other options.

Each fit runs as a child process of its Dask worker (`python train_meso.py ...`), not inside the
worker: it is then exactly the command-line fit (its own TensorFlow, threads and seeds, the same
numbers), a crash or a memory blow-up ends only that fit, and a fit whose worker dies is ended with
it (Linux: the kernel sends it SIGTERM, train_meso.py stops cleanly). The price is TensorFlow's
import per fit, a few seconds against minutes of fitting.

Where they run: by default a dask.distributed LocalCluster, one single-threaded worker process per
core (--workers); --scheduler for a running cluster; --cluster slurm|pbs for a dask-jobqueue cluster
of --jobs batch jobs, each of --cores single-threaded workers sharing --memory for --walltime in
--queue (further settings, such as an account, from dask-jobqueue's configuration file).

Resume: interrupt the sweep (Ctrl-C, SIGTERM, a kill) and rerun the same command: complete fits
(summary.json says finished) are skipped, the others continue from their last complete EM step.
Failures: a fit that fails, or whose worker dies, is reported and run once more, on another worker
if there is one; the other fits go on; at the end the sweep lists the fits that failed twice and
exits with status 1 (2: bad options, 130: interrupted). The scheduler of a LocalCluster or a
jobqueue cluster is told to give up on a task at its first dead worker, so that the sweep reports
and retries it; a separate scheduler (--scheduler) may first retry such a task itself (Dask's
distributed.scheduler.allowed-failures).
Progress: fits done / running / failed / left, an estimate of the time left and the dashboard's
address, on one updating line in a terminal, otherwise as a log line every --log_every seconds
and at each fit that ends.
"""
import contextlib
import dataclasses
import importlib.util
import itertools
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .cli import UsageError, check, option, parse, run

PROG = "python -m src.sweep"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_MESO = os.path.join(REPO, "train_meso.py")
AXES = ("dataset", "end_timepoint", "Nsampled", "train_Noinit", "scheme", "estep")    # the grid's axes
SET_BY_SWEEP = AXES + ("SAVE_DIR", "train_folderbase", "resume")   # train_meso.py options the sweep sets
ATTEMPTS = 2                 # a fit is run at most twice: once, and once more after a failure
FOLDER_WAIT = 120.0          # s a fit waits for the lock of its folder (a dying earlier attempt)
TICK = 0.5                   # s between looks at the tasks
CLUSTERS = ("slurm", "pbs")


@dataclass
class Options:
    # the grid: every combination is one fit
    grid: str = option("", "TOML file with the grid and the fits' options (see above); options given here win")
    dataset: list = option(["dataset/3pop_noinput_small.npz"], "recordings (.npz of python -m src.microsim)",
                           items=str)
    end_timepoint: list = option([11.0], "ends of the fitted windows in the recording (s)")
    Nsampled: list = option([3], "observed neurons per population", items=int)
    train_Noinit: list = option([0], "restarts: seeds of the initial parameters", items=int)
    scheme: list = option(["exact"], "integrators (train_meso.py --scheme)", items=str)
    estep: list = option(["smc"], "E-steps (train_meso.py --estep, whose default is smc)", items=str)
    out: str = option("result/sweeps/sweep", "folder of the sweep's fits")
    # where the fits run
    workers: int = option(0, "LocalCluster: worker processes of one thread (0: one per core)")
    scheduler: str = option("", "address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of a "
                                "LocalCluster")
    cluster: str = option("", "slurm or pbs: a dask-jobqueue cluster instead of a LocalCluster")
    jobs: int = option(1, "--cluster: batch jobs to start")
    cores: int = option(1, "--cluster: cores per job, one single-threaded worker process each")
    memory: str = option("4GB", "--cluster: memory per job (a fit of a 10 s window needs about 1.1 GB)")
    walltime: str = option("04:00:00", "--cluster: wall time per job (HH:MM:SS)")
    queue: str = option("", "--cluster: queue or partition (default: the batch system's)")
    dashboard: str = option(":8787", "address of the LocalCluster's dashboard ('none': no dashboard)")
    log_every: float = option(60.0, "s between progress lines when the output is not a terminal")
    dry_run: bool = option(False, "check the grid and list its fits; run nothing")
    debug: bool = option(False, "show tracebacks on errors")


@dataclass(frozen=True)
class Fit:
    """One cell of the grid with one restart: a train_meso.py fit."""
    dataset: str                 # absolute path
    end_timepoint: float
    Nsampled: int
    train_Noinit: int
    scheme: str
    estep: str
    folder: str                  # its run folder, train_meso.run_folder
    argv: tuple                  # the options of train_meso.py

    def describe(self):
        return (f"dataset={os.path.basename(self.dataset)} end_timepoint={self.end_timepoint:g} "
                f"Nsampled={self.Nsampled} train_Noinit={self.train_Noinit} scheme={self.scheme} estep={self.estep}")


class FitFailed(RuntimeError):
    """A fit ended without a result (train_meso.py's exit status and last line, or a missing file)."""


# ------------------------------------------------------------------ the grid

def parse_options(argv):
    """(Options, options for every fit) from the command line and the --grid file."""
    argv = list(argv)
    fit_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    opt = parse(Options, argv, PROG, __doc__)
    if opt.grid:
        given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
        file_options, file_fit = read_grid_file(opt.grid)
        for name, value in file_options.items():
            if name not in given:
                setattr(opt, name, value)
        fit_argv = file_fit + fit_argv
    check([(all(len(getattr(opt, a)) >= 1 for a in AXES), "every grid axis needs at least one value"),
           (opt.workers >= 0, f"--workers must be >= 0, got {opt.workers}"),
           (opt.cluster in ("",) + CLUSTERS, f"--cluster must be one of {', '.join(CLUSTERS)}, got {opt.cluster!r}"),
           (not (opt.cluster and opt.scheduler), "give --scheduler or --cluster, not both"),
           (opt.jobs >= 1, f"--jobs must be >= 1, got {opt.jobs}"),
           (opt.cores >= 1, f"--cores must be >= 1, got {opt.cores}"),
           (opt.log_every > 0, f"--log_every must be > 0 s, got {opt.log_every}"),
           (opt.out != "", "--out must not be empty")])
    for name in AXES:
        values = getattr(opt, name)
        if len(set(values)) != len(values):
            raise UsageError(f"--{name} lists a value twice: {values}")
    for a in fit_argv:
        name = a[2:].split("=")[0] if a.startswith("--") else None
        if name in SET_BY_SWEEP:
            raise UsageError(f"--{name} after -- is set by the sweep for each fit; "
                             + (f"give it as a grid axis (--{name} ...)" if name in AXES else "leave it out"))
    opt.dataset = [os.path.abspath(p) for p in opt.dataset]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in opt.dataset]
    if len(set(stems)) != len(stems):
        raise UsageError(f"--dataset: two recordings have the same file name ({', '.join(opt.dataset)}); "
                         "their fits would share a folder")
    opt.out = os.path.abspath(opt.out)
    return opt, fit_argv


def read_grid_file(path):
    """({option: value}, [train_meso.py options]) of a TOML grid file; UsageError naming the file and key."""
    try:
        import tomllib
    except ImportError:                     # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError(f"--grid {path}: reading TOML needs Python 3.11 or `pip install tomli`") from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise UsageError(f"--grid {path}: cannot read ({err.strerror or err})") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--grid {path}: not valid TOML ({err})") from None
    fields = {f.name: f for f in dataclasses.fields(Options)}
    options, fit_argv = {}, []
    for key, value in data.items():
        if key == "fit":
            if not isinstance(value, dict):
                raise UsageError(f"--grid {path}: 'fit' must be a table of train_meso.py options")
            for name, v in value.items():
                if isinstance(v, bool):
                    fit_argv += [f"--{name}"] if v else []
                elif isinstance(v, (int, float, str)):
                    fit_argv += [f"--{name}", str(v)]
                else:
                    raise UsageError(f"--grid {path}: fit.{name} must be a number, a string or true, got {v!r}")
            continue
        if key not in fields or key in ("grid", "debug"):
            raise UsageError(f"--grid {path}: unknown key {key!r} (expected the options of {PROG} --help, "
                             "or a table [fit])")
        options[key] = _typed(path, key, value, fields[key])
    return options, fit_argv


def _typed(path, key, value, field):
    """The TOML value as the option's type: a list option takes one value or a list."""
    kind = field.type
    if kind in (list, "list"):
        items = field.metadata["items"]
        values = value if isinstance(value, list) else [value]
        ok = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)) if items is float else (
            lambda v: isinstance(v, items) and not isinstance(v, bool))
        if not all(ok(v) for v in values):
            raise UsageError(f"--grid {path}: {key} must be a list of {items.__name__} values, got {value!r}")
        return [items(v) for v in values]
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"--grid {path}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def make_fits(opt, fit_argv):
    """The fits of the grid, each checked as train_meso.py would check it (options, recording, and the
    results already in its folder), with whether it is complete already: [(Fit, complete)].
    UsageError naming the cell of the first fit that would fail."""
    import train_meso
    from src.dataset import load_recording
    from src.runs import resume_state

    recordings, windows, fits = {}, {}, []
    for dataset, end, n, i, scheme, estep in itertools.product(*(getattr(opt, a) for a in AXES)):
        stem = os.path.splitext(os.path.basename(dataset))[0]
        save_dir = os.path.join(opt.out, stem, f"N{n}_{scheme}_{estep}") + os.sep
        cell = ["--dataset", dataset, "--end_timepoint", repr(float(end)), "--Nsampled", str(n),
                "--scheme", scheme, "--estep", estep, "--SAVE_DIR", save_dir, *fit_argv, "--resume"]
        argv = ["--train_Noinit", str(i), *cell]
        fit = Fit(dataset, float(end), n, i, scheme, estep, "", tuple(argv))
        try:
            o = train_meso.parse_options(argv)
            if dataset not in recordings:
                recordings[dataset] = load_recording(dataset)
            rec = recordings[dataset]
            if tuple(cell) not in windows:            # the window does not depend on the restart
                windows[tuple(cell)] = train_meso.check_data(o, rec)[0]
            window = windows[tuple(cell)]
            folder = train_meso.run_folder(o)
            complete = False
            if os.path.exists(os.path.join(folder, "summary.json")):
                resumed = resume_state(folder, dataclasses.asdict(o), rec.seed, (4 * window.M,),
                                       (window.B, window.M, window.T), {"scheme", "estep"})
                complete = resumed is not None and bool(resumed[0].finished)
        except ValueError as err:                 # UsageError, DatasetError, ResultFileError
            raise UsageError(f"cell {fit.describe()}: {err}") from None
        fits.append((dataclasses.replace(fit, folder=folder), complete))
    return fits


# ------------------------------------------------------------------ one fit, on a worker

def run_fit(argv, folder, dataset, attempt):
    """Run `python train_meso.py *argv` (a child process of this worker) and wait for it; its output
    is appended to {folder}.out. Returns {seconds, host}; FitFailed with the reason otherwise."""
    host = socket.gethostname()
    if not os.path.isfile(dataset):
        raise FitFailed(f"the worker on {host} cannot see the recording {dataset}: workers must read it from "
                        "a path they can see (a shared file system)")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    wait_for_folder(folder)
    out_path = folder + ".out"
    start = time.time()
    with open(out_path, "a") as out:
        out.write(f"== attempt {attempt} on {host} (worker PID {os.getpid()}) at {time.strftime('%Y-%m-%d %H:%M:%S')}:"
                  f" python train_meso.py {shlex.join(argv)}\n")
        out.flush()
        offset = out.tell()
        child = subprocess.Popen([sys.executable, TRAIN_MESO, *argv], cwd=REPO, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent,
                                 env=fit_environment())
        try:
            status = child.wait()
        except BaseException:
            child.terminate()                 # train_meso.py stops cleanly on SIGTERM
            child.wait()
            raise
    if status != 0:
        with open(out_path, errors="replace") as f:
            f.seek(offset)
            lines = [line.strip() for line in f if line.strip()]
        last = lines[-1] if lines else "no output"
        raise FitFailed(f"train_meso.py exited with status {status} on {host}: {last} (output: {out_path})")
    return {"seconds": time.time() - start, "host": host}


def fit_environment():
    """The environment of a fit: this worker's, without the MALLOC_TRIM_THRESHOLD_ that Dask's nanny gives
    its workers (distributed.nanny.pre-spawn-environ; a value of the user's own is kept). With it glibc
    hands the fit's large buffers back to the system after each evaluation of the likelihood and faults
    them in again: a fit took 1.2-1.5x as long (README "Many fits"). Dask's thread settings stay: they
    are the ones train_meso.py sets."""
    import dask
    env = dict(os.environ)
    dask_value = dask.config.get("distributed.nanny.pre-spawn-environ", {}).get("MALLOC_TRIM_THRESHOLD_")
    if dask_value is not None and env.get("MALLOC_TRIM_THRESHOLD_") == str(dask_value):
        del env["MALLOC_TRIM_THRESHOLD_"]
    return env


def wait_for_folder(folder):
    """Return once no process holds the lock of the run folder (an earlier attempt whose worker died
    stops within seconds); FitFailed after FOLDER_WAIT s."""
    from src.results import FolderInUse, folder_lock
    deadline = time.time() + FOLDER_WAIT
    while os.path.isdir(folder):
        try:
            with folder_lock(folder):
                return
        except FolderInUse as err:
            if time.time() > deadline:
                raise FitFailed(str(err)) from None
            time.sleep(0.5)


def _end_with_parent():
    """In the child, before train_meso.py starts: the kernel sends it SIGTERM when the worker's thread
    that started it ends, so that a dead worker leaves no fit behind (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def missing_paths(paths):
    """On a worker: the paths it cannot see."""
    return [p for p in paths if not os.path.exists(p)]


# ------------------------------------------------------------------ the sweep

class Progress:
    """Done / running / failed / left and the time left: one updating line in a terminal, else a log
    line every log_every s; events (a fit that ends or fails) as lines of their own."""

    def __init__(self, total, dashboard, log_every, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.total, self.dashboard, self.log_every = total, dashboard, log_every
        self.start, self.last_line, self.width = time.time(), 0.0, 0

    def event(self, text):
        self._clear()
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def update(self, done, failed, left, force=False, durations=(), running_for=()):
        """durations: wall seconds of the fits this call of the sweep finished; running_for: how long
        each running fit has run (s), one entry per running fit."""
        elapsed = time.time() - self.start
        eta = time_left(left, durations, running_for)
        eta = "unknown" if eta is None else duration_text(eta)
        line = (f"fits: {done} done, {len(running_for)} running, {failed} failed, {left} left of {self.total}; "
                f"time left {eta}; {duration_text(elapsed)} so far; dashboard {self.dashboard}")
        if self.tty:
            self._clear()
            self.stream.write(line)
            self.width = len(line)
            self.stream.flush()
        elif force or time.time() - self.last_line >= self.log_every:
            print(f"{time.strftime('%H:%M:%S')} {line}", file=self.stream, flush=True)
            self.last_line = time.time()

    def close(self):
        self._clear()

    def _clear(self):
        if self.tty and self.width:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.width = 0


def time_left(left, durations, running_for):
    """Seconds until the last fit ends, if every fit takes the mean of `durations` (None while there
    is none): what the running fits have still to do, plus `left` fits shared among as many slots as
    fits run now."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    still = [max(mean - t, 0.0) for t in running_for]
    if left == 0:
        return max(still, default=0.0)
    return (left * mean + sum(still)) / max(len(still), 1)


def duration_text(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_sweep(client, fits, progress):
    """Run the fits [(Fit, complete)] that are not complete on the Dask client; each that fails is run
    once more (first in the queue, on another worker if there is one). Returns {fit: reason} of those
    that failed twice.

    No more fits are submitted than the workers have threads, so that a fit is given to a worker only
    when it can start there: a worker that dies takes only the fit it was running, a fit run again
    can go to another worker, and "running" means running. Dask places every fit."""
    import asyncio
    from collections import deque

    from distributed import wait
    from distributed.client import FIRST_COMPLETED

    queue = deque((fit, 1, None) for fit, complete in fits if not complete)    # (fit, attempt, worker to avoid)
    done, failed, where = len(fits) - len(queue), {}, {}
    pending = {}                                  # future -> (fit, attempt)
    started, durations = {}, []                   # future -> when it was submitted; seconds of each fit done

    def submit(fit, attempt, avoid):
        others = [w for w in client.scheduler_info()["workers"] if w != avoid] if avoid else None
        future = client.submit(run_fit, list(fit.argv), fit.folder, fit.dataset, attempt, pure=False,
                               key=f"fit-{len(where)}-{os.path.relpath(fit.folder, REPO)}-attempt-{attempt}",
                               **({"workers": others, "allow_other_workers": True} if others else {}))
        pending[future] = (fit, attempt)
        started[future] = time.time()
        where[future.key] = None

    while queue or pending:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        while queue and len(pending) < threads:
            submit(*queue.popleft())
        try:
            if pending:
                wait(list(pending), timeout=TICK, return_when=FIRST_COMPLETED)
            else:
                time.sleep(TICK)                  # no worker yet (a batch job still queued)
        except (TimeoutError, asyncio.TimeoutError):     # one and the same from Python 3.11
            pass
        for worker, keys in client.processing().items():
            for key in keys:
                where[key] = worker
        for future in [f for f in pending if f.done()]:
            fit, attempt = pending.pop(future)
            started.pop(future)
            if future.status == "finished":
                done += 1
                result = future.result()
                durations.append(result["seconds"])
                progress.event(f"done: {fit.describe()} in {duration_text(result['seconds'])} on {result['host']}")
                continue
            reason = _failure(future, where.get(future.key))
            if attempt < ATTEMPTS:
                progress.event(f"FAILED (attempt {attempt}): {fit.describe()}: {reason}; running it once more")
                queue.appendleft((fit, attempt + 1, where.get(future.key)))
            else:
                failed[fit] = reason
                progress.event(f"FAILED (attempt {attempt}, giving up): {fit.describe()}: {reason}")
        now = time.time()
        progress.update(done, len(failed), len(queue), durations=durations,
                        running_for=[now - t for t in started.values()])
    progress.update(done, len(failed), 0, force=True, durations=durations)
    return failed


def _failure(future, worker):
    """Why a task failed, in one line."""
    from distributed import KilledWorker
    try:
        error = future.exception()
    except Exception as err:                  # cancelled or lost
        return f"the task was {future.status} ({type(err).__name__})"
    if isinstance(error, KilledWorker):
        return f"its worker {worker or ''} died during the fit".replace("  ", " ")
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextlib.contextmanager
def dask_client(opt, n_fits):
    """A distributed.Client for the sweep (see the docstring: LocalCluster, --scheduler or --cluster);
    closes what it started."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError(f"{PROG} needs dask and distributed: pip install -r requirements-dask.txt") from None
    import logging
    # a task whose worker dies comes back to the sweep at once, which reports and retries it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = None
        try:
            if opt.scheduler:
                try:
                    client = Client(opt.scheduler, timeout=30)
                except (OSError, TimeoutError) as err:
                    raise UsageError(f"--scheduler {opt.scheduler}: cannot reach it ({err})") from None
            elif opt.cluster:
                try:
                    import dask_jobqueue
                except ImportError:
                    raise UsageError(f"--cluster {opt.cluster} needs dask-jobqueue: pip install dask-jobqueue") \
                        from None
                make = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[opt.cluster]
                cluster = make(cores=opt.cores, processes=opt.cores, memory=opt.memory, walltime=opt.walltime,
                               queue=opt.queue or None,         # workers start in the repository: src imports
                               job_script_prologue=[f"cd {shlex.quote(REPO)}"])
                cluster.scale(jobs=opt.jobs)
                client = Client(cluster)
            else:
                n = min(opt.workers or len(os.sched_getaffinity(0)), max(n_fits, 1))
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None if opt.dashboard == "none" else opt.dashboard,
                                       silence_logs=logging.ERROR)
                client = Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()


def dashboard_address(client):
    if importlib.util.find_spec("bokeh") is None:  # Dask's dashboard needs bokeh
        return "not available (pip install bokeh)"
    return client.dashboard_link


# ------------------------------------------------------------------ summarize FOLDER

def summarize(argv):
    """python -m src.sweep summarize FOLDER [--oracle]: one row per fit in fits.csv, the best restart of
    each grid cell (lowest final loss) in cells.csv, both in summary.md, and the figures of parameter
    errors against the window and the observed neurons, and of the spread over windows. --oracle adds,
    as the E-step "oracle", the M-step on the true activity of each window (src.em.oracle_fit)."""
    from . import plots
    from .cli import NoResult
    from .results import save_figure, save_text
    with_oracle = "--oracle" in argv
    argv = [a for a in argv if a != "--oracle"]
    if len(argv) != 1 or argv[0].startswith("--"):
        raise UsageError(f"usage: {PROG} summarize FOLDER [--oracle] (FOLDER: the --out of a sweep), got "
                         f"{shlex.join(argv) or 'nothing'}")
    folder = argv[0]
    if not os.path.isdir(folder):
        raise UsageError(f"{PROG} summarize: {folder} is not a folder")
    truths = {}
    rows, theta_names = fit_rows(folder, truths)
    if not rows:
        raise NoResult(f"no fit with a complete EM step in {folder}: run {PROG} first")
    cells = best_per_cell(rows)
    n_cells = len(cells)
    if with_oracle:
        cells += oracle_rows(folder, cells, truths)
    columns = list(rows[0])
    save_text(os.path.join(folder, "fits.csv"), csv_text(rows, columns))
    save_text(os.path.join(folder, "cells.csv"), csv_text(cells, ["restarts"] + columns))
    save_text(os.path.join(folder, "summary.md"), markdown_summary(folder, rows, cells, theta_names))
    written = ["fits.csv", "cells.csv", "summary.md"]
    with_truth = [c for c in cells if c[f"err_{theta_names[0]}"] is not None]
    for axis, name in (("end_timepoint", "errors_vs_window.png"), ("Nsampled", "errors_vs_Nsampled.png")):
        if len({c[axis] for c in with_truth}) >= 2:
            save_figure(os.path.join(folder, name), plots.plot_errors_against, with_truth, axis, theta_names)
            written.append(name)
    if any(len(g) >= 2 for g in _groups(with_truth, "end_timepoint").values()):
        save_figure(os.path.join(folder, "spread_over_windows.png"), plots.plot_window_spread,
                    _groups(with_truth, "end_timepoint"), theta_names)
        written.append("spread_over_windows.png")
    print(f"{len(rows)} fits in {n_cells} grid cells; wrote {', '.join(written)} in {folder}")
    return 0


def fit_rows(folder, truths=None):
    """([row per fit: grid cell, restart, final loss, EM steps, finished, wall time, relative error of
    each parameter, distance to threshold at the mean activity against the truth's, r and RMSE of the
    latent per population], theta names). Fits without a complete EM step are left out with a note.
    truths: the cache of window_truth."""
    import warnings

    from .runs import find_runs
    cell_folders = sorted({os.path.dirname(d) for d, _, files in os.walk(folder) if "summary.json" in files})
    rows, theta_names, truths = [], None, {} if truths is None else truths
    for cell in cell_folders:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            runs = find_runs(cell)
        for note in notes:
            print(f"note: {note.message}", file=sys.stderr)
        for name, s in sorted(runs.items(), key=lambda item: item[1].seed):
            o = s.options
            theta_names = theta_names or list(s.theta_names)
            truth = window_truth(s, truths)
            row = {"cell": os.path.relpath(cell, folder), "run": name,
                   "dataset": os.path.basename(s.dataset.get("path", o["dataset"])),
                   "end_timepoint": o["end_timepoint"], "Nsampled": o["Nsampled"], "train_Noinit": s.seed,
                   "scheme": s.scheme, "estep": s.estep, "finished": bool(s.finished),
                   "em_steps": len(s.em_steps), "final_loss": s.final_loss, "seconds": s.seconds,
                   "peak_memory_mb": s.peak_memory_mb,
                   **parameter_columns(s, truth), **latent_match(cell, name, s, truth)}
            rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], r["Nsampled"], r["scheme"], r["estep"], r["end_timepoint"], r["train_Noinit"]))
    return rows, theta_names


def parameter_columns(summary, truth):
    """{err_amem_1: ..., ..., drive_E1: ..., ...}: src.report.measure_parameters of one run (a
    src.results.RunSummary): the relative error of each parameter, and the fitted minus the true
    distance to threshold h0 - ft at the window's mean activity (truth from window_truth). None where
    there is no ground truth."""
    from .plots import population_names
    from .report import measure_parameters
    measured = measure_parameters({"run": summary}, None if truth is None else truth[1])["run"]
    drive = {q["name"]: q["difference"] for q in measured.get("drive", [])}
    return {**{f"err_{q['name']}": q["rel_error"] for q in measured["parameters"]},
            **{f"drive_{n}": drive.get(n) for n in population_names(len(summary.theta_names) // 4)}}


def window_truth(summary, truths):
    """(the true activity of the window a run was fitted on, smoothed by LATENT_SMOOTH as src.report
    compares it, (M, B*T) Hz; its mean over the window, (M,) Hz), or None where the recording is not at
    hand or has no ground truth. truths caches them per window: the true activity of a window does not
    depend on the observed neurons or the scheme."""
    from .dataset import load_recording
    from .helper import run_window, smooth
    from .report import LATENT_SMOOTH, _flat
    dt, setting = summary.dt, window_setting(summary)
    key = tuple(v for k, v in setting.items() if k not in ("Nsampled", "scheme"))
    if key not in truths:
        try:
            window = run_window(load_recording(setting["dataset"]), summary)
            truths[key] = None if window.Z_true is None else (smooth(_flat(window.Z_true), LATENT_SMOOTH, dt) / dt,
                                                              window.A_true_mean)
        except ValueError as err:
            print(f"note: the fits of {setting['dataset']} are not compared with the truth: {err}",
                  file=sys.stderr)
            truths[key] = None
    return truths[key]


def latent_match(cell, name, summary, truth):
    """{r_E1: ..., ..., rmse_E1: ..., ...}: Pearson r and RMSE (Hz) of the run's last latent against
    the true activity of its window (from window_truth), as src.report measures a run; None without
    ground truth. The RMSE too, because in a window without a switch the truth is nearly flat and r
    says little."""
    from .helper import smooth
    from .plots import population_names
    from .report import LATENT_SMOOTH, _flat, load_latents, pearson_rmse
    names = population_names(len(summary.theta_names) // 4)
    if truth is None:
        return {f"{k}_{n}": None for k in ("r", "rmse") for n in names}
    Z = smooth(_flat(load_latents(cell, name, summary)[1]), LATENT_SMOOTH, summary.dt) / summary.dt
    match = [pearson_rmse(Z[a], truth[0][a]) for a in range(len(names))]
    return {**{f"r_{n}": m[0] for n, m in zip(names, match)}, **{f"rmse_{n}": m[1] for n, m in zip(names, match)}}


def window_setting(summary):
    """What defines the window and the model a run (src.results.RunSummary) was fitted on: the
    recording's resolved path, scheme, dt and the options of make_window."""
    from .report import _resolve
    o = summary.options
    return {"dataset": _resolve(summary.dataset.get("path", o["dataset"]), REPO), "scheme": summary.scheme,
            "dt": summary.dt, **{k: o[k] for k in ("trial_length", "t_perbatch", "end_timepoint", "a_cutoff",
                                                   "Nsampled", "with_input")}}


def oracle_rows(folder, cells, truths=None):
    """[a row per window of the cells (recording, window, Nsampled, scheme), with estep and run "oracle"
    and the relative errors of src.em.oracle_fit on that window]: where a fit would land if the
    activity of every neuron were observed. Each is computed once (about a minute for a 10 s window)
    and kept as oracle.json in a cell of its window (the E-steps' cells share it); windows without
    ground truth are left out. truths: the cache of window_truth."""
    from .dataset import load_recording
    from .em import oracle_fit
    from .helper import run_window
    from .results import load_json, save_json
    from .runs import find_runs
    windows = {}
    for c in cells:
        if c[next(k for k in c if k.startswith("err_"))] is not None:
            windows.setdefault((c["dataset"], c["end_timepoint"], c["Nsampled"], c["scheme"]), []).append(c)
    oracles = []
    for group in windows.values():
        c = group[0]
        summary = find_runs(os.path.join(folder, c["cell"]))[c["run"]]
        setting = window_setting(summary)
        paths = [os.path.join(folder, other["cell"], "oracle.json") for other in group]
        kept = next((k for k in (load_json(p) for p in paths if os.path.exists(p))
                     if isinstance(k, dict) and k.get("setting") == setting), None)
        if kept is None:
            window = run_window(load_recording(setting["dataset"]), summary)
            theta, info = oracle_fit(window, summary.scheme)
            kept = {"setting": setting, "theta": theta.tolist(), "truth": window.net.theta.tolist(),
                    "loss_start": info["loss_start"], "loss": info["loss"], "nit": info["nit"],
                    "seconds": info["seconds"]}
            save_json(paths[0], kept)
            print(f"oracle of {c['cell']}: {info['seconds']:.0f} s, loss {info['loss_start']:.5f} -> "
                  f"{info['loss']:.5f}", flush=True)
        oracle = dataclasses.replace(summary, theta_final=kept["theta"])
        oracles.append({**{k: None for k in c}, **{k: c[k] for k in ("dataset", "end_timepoint", "Nsampled", "scheme")},
                        "cell": c["cell"], "run": "oracle", "estep": "oracle", "restarts": 1,
                        "seconds": kept["seconds"],
                        **parameter_columns(oracle, window_truth(summary, {} if truths is None else truths))})
    return oracles


def best_per_cell(rows):
    """The row of the lowest final loss of each grid cell, with the number of its restarts."""
    best = []
    for cell, group in _groups(rows).items():
        best.append({"restarts": len(group), **min(group, key=lambda r: r["final_loss"])})
    return best


def _groups(rows, axis=None):
    """{grid cell without the axis: [rows]}: the rows of each grid cell (axis None), or those that
    differ only along axis."""
    from .plots import SWEEP_KEYS
    keys = [k for k in SWEEP_KEYS if k != axis]
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def window_spread(cells, theta_names):
    """[{the setting (the grid cell but its window), windows: how many, spread_{name}: (median, 25th
    and 75th percentile, min, max) of fitted / true over the windows, and spread_drive_{population}:
    the same of the drive's fitted - true}]: for each setting fitted on two windows or more, the best
    restart of each window (the paper's protocol: where the fit of one window lands). Cells without
    ground truth are left out."""
    import numpy as np

    from .plots import SWEEP_KEYS
    spread = []
    for setting, group in _groups(cells, "end_timepoint").items():
        group = [c for c in group if c[f"err_{theta_names[0]}"] is not None]
        if len(group) < 2:
            continue
        row = dict(zip([k for k in SWEEP_KEYS if k != "end_timepoint"], setting))
        row["windows"] = len(group)
        measures = {f"spread_{n}": [1 + c[f"err_{n}"] for c in group] for n in theta_names}
        measures.update({f"spread_{k}": [c[k] for c in group] for k in group[0] if k.startswith("drive_")})
        for key, values in measures.items():
            if None not in values:
                values = np.array(values)
                row[key] = (*np.percentile(values, [50, 25, 75]), values.min(), values.max())
        spread.append(row)
    return spread


def csv_text(rows, columns):
    import csv
    import io
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return text.getvalue()


def markdown_summary(folder, rows, cells, theta_names):
    def cell_text(key, value):
        if value is None:
            return ""
        if key.startswith("err_"):
            return f"{100 * value:+.0f}%"
        if key.startswith("r_"):
            return f"{value:.3f}"
        if key.startswith("rmse_"):
            return f"{value:.1f}"
        if key.startswith("drive_"):
            return f"{value:+.2f}"
        if key == "final_loss":
            return f"{value:.4f}"
        if key == "seconds":
            return duration_text(value)
        if key == "peak_memory_mb":
            return f"{value:.0f}"
        if key.startswith("spread_"):
            return "{:.2f} [{:.2f}, {:.2f}] ({:.2f}-{:.2f})".format(*value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    def table(items, columns):
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell_text(k, r.get(k)) for k in columns) + " |" for r in items]
        return "\n".join(lines)

    spread = window_spread(cells, theta_names)
    spread_section = [] if not spread else [
        "## Spread over windows (best restart of each window)", "",
        "fitted / true of each parameter, and fitted - true of the drive: median [25th, 75th percentile] "
        "(min-max) over the windows.", "",
        table(spread, [k for k in spread[0] if not k.startswith("spread_")] + [f"spread_{n}" for n in theta_names]
              + [k for k in spread[0] if k.startswith("spread_drive_")]),
        ""]
    r_columns = [k for k in rows[0] if k.startswith(("r_", "rmse_"))]
    err_columns = [f"err_{n}" for n in theta_names]
    drive_columns = [k for k in rows[0] if k.startswith("drive_")]
    common = ["final_loss", "em_steps", "finished", "seconds", "peak_memory_mb", *r_columns, *err_columns, *drive_columns]
    return "\n".join([
        f"# Sweep {folder}", "",
        f"{len(rows)} fits in {len(_groups(rows))} grid cells. Parameter errors: (fitted - true) / true; r: Pearson "
        "correlation and rmse: RMSE (Hz) of the inferred latent against the true activity of the window; "
        "drive: h0 - ft fitted minus true, the distance to threshold of the free potential at the window's "
        "mean activity (potential units; src.report.measure_parameters), which the spikes pin where they do "
        "not pin J_3 and rp apart; seconds: wall time of the fit; peak_memory_mb: its largest resident "
        "memory (MB)."
        + (" E-step oracle: the M-step on the true activity of every neuron of the window, from the truth "
           "(src.em.oracle_fit), the reference of the fits' errors." if any(c["estep"] == "oracle" for c in cells) else ""),
        "", "## Best restart of each grid cell (lowest final loss)", "",
        table(cells, ["dataset", "end_timepoint", "Nsampled", "scheme", "estep", "restarts", "run", *common]),
        "", "## Every fit", "",
        table(rows, ["cell", "run", *common]), ""] + spread_section)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["summarize"]:
        return summarize(argv[1:])
    opt, fit_argv = parse_options(argv)
    fits = make_fits(opt, fit_argv)              # every fit checked before anything starts
    complete = sum(c for _, c in fits)
    print(f"{PROG}: {len(fits)} fits in {opt.out} ({complete} complete already)", flush=True)
    if opt.dry_run:
        for fit, c in fits:
            print(f"  {'complete' if c else 'to run  '}  {os.path.relpath(fit.folder, opt.out)}")
        return 0
    if complete == len(fits):
        return 0
    start = time.time()
    with dask_client(opt, len(fits) - complete) as client:
        hidden = {w: p for w, p in client.run(missing_paths, sorted(set(opt.dataset))).items() if p}
        if hidden:
            worker, paths = next(iter(hidden.items()))
            raise UsageError(f"the worker {worker} cannot see the recording {paths[0]} (and {len(hidden) - 1} more "
                             "workers have missing recordings): workers must read it from a path they can see")
        progress = Progress(len(fits), dashboard_address(client), opt.log_every)
        progress.event(f"{len(client.scheduler_info()['workers'])} workers; dashboard {progress.dashboard}")
        try:
            failed = run_sweep(client, fits, progress)
        except KeyboardInterrupt:
            progress.close()
            raise KeyboardInterrupt(f"interrupted after {duration_text(time.time() - start)}; rerun the same "
                                    "command to continue: complete fits are skipped, the others resume") from None
        progress.close()
    if failed:
        print(f"{PROG}: {len(failed)} of {len(fits)} fits failed:", file=sys.stderr)
        for fit, reason in failed.items():
            print(f"  {fit.describe()}: {reason}", file=sys.stderr)
        return 1
    print(f"{PROG}: all {len(fits)} fits complete in {opt.out} ({duration_text(time.time() - start)})")
    return 0


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)      # a polite kill stops like Ctrl-C
    sys.exit(run(PROG, main, interrupted="interrupted"))
