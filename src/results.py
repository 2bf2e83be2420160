"""Result files: numpy archives and JSON, written atomically, read without executing code; the
lock that keeps two training runs out of one run folder.

summary.json has one schema, RunSummary: every script reads and writes it through that class.

The original project's file names have no extension (`init_param`, `E3_est_param`,
`minimizor_result_3`); here they hold a numpy .npz archive of arrays and numbers only, which
np.load reads with allow_pickle=False. A Python pickle (the original project's format, or a
crafted file) is refused before any of it is read as a pickle, so loading never runs code.

Every write goes to a temporary file in the same folder (TMP_PREFIX ... TMP_SUFFIX), which is
then renamed over the target: a result file is complete or absent, whenever the writer dies.
A process killed during a write leaves its temporary file; remove_temporaries() clears them.
"""
import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import sys
import tempfile
import zipfile
import zlib

import numpy as np

TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"   # temporary files: .{name}.{random}.tmp{extension}
LOCK_NAME = "train.lock"               # in a run folder while a training run writes into it
ZIP_MAGIC = b"PK\x03\x04"              # an .npz archive is a zip file
NPY_MAGIC = b"\x93NUMPY"
PICKLE_MAGIC = b"\x80"                 # pickle protocols 2 and later start with the PROTO opcode


class ResultFileError(ValueError):
    """A result file is missing, unreadable, of the wrong format or holds non-finite numbers."""


class FolderInUse(OSError):
    """Another process holds the lock of a run folder."""


# -- writing ----------------------------------------------------------------------------------------
def atomic_write(path, write, extension=""):
    """Write through a temporary file in the same folder, then rename: the file is complete or absent.

    write(f) gets an open binary file, or, with extension (".png"), the temporary path itself
    (for writers that want a file name whose extension gives the format)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX + os.path.basename(path) + ".",
                               suffix=TMP_SUFFIX + extension)
    try:
        if extension:
            os.close(fd)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)                  # mkstemp makes the file private; give it the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_arrays(path, **arrays):
    """Save arrays and numbers to `path` (npz format, whatever the file name).

    Refuses (ValueError, nothing written) objects that would need a pickle and non-finite numbers:
    a NaN never reaches a result file."""
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == object:
            raise TypeError(f"{key}: only arrays, numbers and strings can be saved, got {type(value).__name__}")
        if np.issubdtype(value.dtype, np.number) and not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: refusing to write {key!r}, it contains NaN or infinite values")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def save_figure(path, plot, *args, **kwargs):
    """Call plot(temporary_path, *args, **kwargs) (e.g. src.plots.plot_activity), then rename the
    figure to path: a killed run never leaves a truncated image."""
    atomic_write(path, lambda tmp: plot(tmp, *args, **kwargs), extension=os.path.splitext(path)[1])


def save_json(path, obj):
    """Write obj as JSON; refuses NaN and infinities (ValueError, nothing written)."""
    try:
        text = json.dumps(obj, indent=1, default=_plain, allow_nan=False)
    except ValueError as error:
        raise ValueError(f"{path}: refusing to write NaN or infinite values ({error})") from None
    atomic_write(path, lambda f: f.write(text.encode()))


def save_text(path, text):
    """Write a text file (UTF-8), such as a report in Markdown."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_temporaries(folder):
    """Delete the temporary files a killed writer left in folder; returns their names."""
    names = glob.glob(os.path.join(glob.escape(folder), f"{TMP_PREFIX}*{TMP_SUFFIX}*"))
    for name in names:
        os.remove(name)
    return [os.path.basename(n) for n in names]


# -- reading ----------------------------------------------------------------------------------------
def open_npz(path, error=ResultFileError, what="a neuLVM result archive"):
    """np.load of an .npz archive with allow_pickle=False, once the file's first bytes show a zip
    file: a pickle, a single .npy array, a foreign or a damaged file raises `error` naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise error(f"{path}: cannot read the file ({e.strerror or e})") from None
    if magic.startswith(PICKLE_MAGIC):
        raise error(f"{path}: is a Python pickle, expected {what}; pickles are never loaded, since loading "
                    "one can run arbitrary code")
    if magic.startswith(NPY_MAGIC):
        raise error(f"{path}: expected {what}, found a single .npy array")
    if not magic.startswith(ZIP_MAGIC):
        raise error(f"{path}: not a readable .npz archive (expected {what}; the file starts with {magic!r})")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise error(f"{path}: not a readable .npz archive, the file is truncated or corrupted ({e})") from None


def load_arrays(path):
    """Read a file written by save_arrays into a dict of arrays (0-d arrays become numbers/strings).

    Raises ResultFileError, naming the file and the problem, for a missing, truncated or foreign
    file, a pickle, or an archive member that holds pickled objects; nothing in the file is run."""
    path = os.fspath(path)
    try:
        with open_npz(path) as data:
            out = {}
            for key in data.files:
                try:
                    value = data[key]
                except ValueError as error:
                    if "allow_pickle" in str(error) or "pickled" in str(error):
                        raise ResultFileError(f"{path}: field {key!r} holds pickled Python objects; refused "
                                              "(loading them can run arbitrary code)") from None
                    raise
                out[key] = value.item() if value.ndim == 0 else value
            return out
    except ResultFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ResultFileError(f"{path}: unreadable result archive, truncated or corrupted ({error})") from None


def load_json(path):
    """Read a JSON file (JSON cannot hold code); ResultFileError naming the file if it is not valid."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as error:
        raise ResultFileError(f"{path}: cannot read ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ResultFileError(f"{path}: not valid JSON, truncated or corrupted ({error})") from None


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# -- one writer per run folder ----------------------------------------------------------------------
@contextlib.contextmanager
def folder_lock(folder):
    """Hold an exclusive lock on a run folder while the block runs; FolderInUse if another process has it.

    The lock is fcntl.flock on folder/LOCK_NAME, which the kernel releases when its process ends in
    any way, so the file a SIGKILLed run leaves behind blocks nothing. The file holds the owner's
    PID, for the message of the refused run."""
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"{folder} is in use by another training run (PID {owner}); wait for it to "
                              "end, or write elsewhere (--train_Noinit, --SAVE_DIR)") from None
        try:                                 # the owner before us may have removed the file in the meantime
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.remove(path)                      # removed while still locked: no one can take a stale file
        os.close(fd)


# -- the summary of a training run ------------------------------------------------------------------
SUMMARY_FORMAT = 2      # 2: this schema, with "format"; 1: the files written before it (no "format")
LEGACY_SCHEME = "euler"  # a run written before the integrator was an option was fitted with forward Euler
_said_legacy = set()


@dataclasses.dataclass
class RunSummary:
    """The schema of summary.json, the record train_meso.py keeps of a run; written and read only here.

    A run counts up to its last complete EM step: the step is complete once summary.json lists it.
    Everything that defines the fit is here, so the fitted model can be rebuilt from this file alone
    (fitted_network, scheme, dt, a_cutoff), without the recording it was fitted to."""
    options: dict                 # every option of train_meso.py (train_meso.Options), scheme and dt included
    run_folder: str
    seed: int                     # train_Noinit: the seed of the initial parameters
    dataset: dict                 # path, seed and format version of the recording fitted
    network: dict                 # src.network.Network.to_dict() of the recording: fixed parameters, true theta
    theta_names: list             # amem_1 ... ft_M, the order of every theta
    theta_true: list              # None for a recording without ground truth (src.dataset)
    prior_centre: list
    theta_init: list
    versions: dict                # software versions of the training (src.cli.software_versions)
    em_steps: list = dataclasses.field(default_factory=list)   # per complete EM step: em_step, M (the
    #                               M-step's info of src.em.m_step), theta, loss_y, loss_Z, loss, E_steps,
    #                               E_seconds, E_nonfinite
    e_history: list = dataclasses.field(default_factory=list)  # (em_step, loss_y, loss_Z) per E-step iteration
    m_points: list = dataclasses.field(default_factory=list)   # (index in e_history, loss_y, loss_Z) per M-step
    finished: bool = False
    theta_final: list = None      # theta of the last complete EM step (None before the first)
    final_loss: float = None
    last_em_step: int = None
    seconds: float = None         # wall time of the EM up to the last complete step (s; a resumed run's
    #                               processes summed), written with every step
    peak_memory_mb: float = None  # the largest resident memory of the run's processes (MB), likewise
    format: int = SUMMARY_FORMAT
    path: str = dataclasses.field(default=None, compare=False)   # the file it was read from (not written)

    def save(self, path):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        save_json(path, {k: v for k, v in fields.items() if v is not None})

    @classmethod
    def load(cls, path):
        """The summary in path, of this format or the one before; ResultFileError naming the file if it
        is neither, or if its theta vectors are not finite numbers of one length."""
        data = load_json(path)
        if isinstance(data, dict) and "theta_names" in data:
            data.setdefault("theta_true", None)        # not written for a recording without ground truth
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data] if isinstance(data, dict) else required
        if missing:
            raise ResultFileError(f"{path}: not the summary of a train_meso.py run (missing {', '.join(missing)})")
        version = data.get("format", 1)
        if version not in (1, SUMMARY_FORMAT):
            raise ResultFileError(f"{path}: summary format {version!r}; this version of neuLVM reads formats 1 "
                                  f"and {SUMMARY_FORMAT}")
        known = {f.name for f in dataclasses.fields(cls)} - {"path"}
        summary = cls(**{k: v for k, v in data.items() if k in known}, path=os.fspath(path))
        summary.format = SUMMARY_FORMAT                # read as this format from now on
        thetas = {k: getattr(summary, k) for k in ("theta_true", "theta_init", "theta_final")
                  if getattr(summary, k) is not None}
        for key, value in thetas.items():
            value = np.asarray(value, dtype=object)
            if (value.shape != (len(summary.theta_names),)
                    or not all(isinstance(x, (int, float)) and np.isfinite(x) for x in value)):
                raise ResultFileError(f"{path}: {key} must be {len(summary.theta_names)} finite numbers "
                                      f"(one per name of theta_names)")
        if summary.final_loss is not None and not isinstance(summary.final_loss, (int, float)):
            raise ResultFileError(f"{path}: final_loss must be a number, got {summary.final_loss!r}")
        return summary

    # -- the fitted model ------------------------------------------------------------------------
    @property
    def scheme(self):
        """The integrator of the fit; a run of the earlier format (no scheme) is LEGACY_SCHEME, said
        once per file on stderr. ResultFileError for a scheme this version does not know."""
        from .fast_np import check_scheme
        scheme = self.options.get("scheme")
        if scheme is None:
            if self.path not in _said_legacy:
                _said_legacy.add(self.path)
                print(f"note: {self.path} was written before the integrator was recorded: read as scheme "
                      f"{LEGACY_SCHEME!r}, the only one there was", file=sys.stderr)
            return LEGACY_SCHEME
        try:
            check_scheme(scheme)
        except ValueError as err:
            raise ResultFileError(f"{self.path}: options.scheme: {err}") from None
        return scheme

    @property
    def estep(self):
        """The E-step of the fit, map or smc; a run written before the option existed was map."""
        return self.options.get("estep", "map")

    @property
    def dt(self):
        return float(self.options["dt"])

    @property
    def a_cutoff(self):
        return float(self.options["a_cutoff"])

    def true_network(self):
        """The recording's network (src.network.Network), as stored with the fit. ResultFileError for a
        recording without ground truth (its network has no true amem, J, rp, ft)."""
        if self.theta_true is None:
            raise ResultFileError(f"{self.path}: the recording of this run has no ground truth (no theta_true)")
        return self._network(self.network)

    def fitted_network(self):
        """The recording's fixed parameters with the fitted theta: the model the fit found.
        ResultFileError if the run has no complete EM step yet."""
        if self.theta_final is None:
            raise ResultFileError(f"{self.path}: the run has no complete EM step yet (no theta_final)")
        M = len(self.theta_final) // 4
        fitted = dict(zip(("amem", "J", "rp", "ft"), np.reshape(np.asarray(self.theta_final, float), (4, M))))
        return self._network({**self.network, **fitted})

    def _network(self, values):
        from .network import Network
        try:
            return Network(**values)
        except (TypeError, ValueError) as err:
            raise ResultFileError(f"{self.path}: field 'network' is not a network ({err})") from None
