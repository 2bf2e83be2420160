"""Result files: numpy archives and JSON, written atomically, read without executing code.

The original project's file names have no extension (`init_param`, `E3_est_param`,
`minimizor_result_3`); here they hold a numpy .npz archive of arrays and numbers only, which
np.load reads with allow_pickle=False.
"""
import json
import os
import tempfile

import numpy as np


def _atomic_write(path, write):
    """Write through a temporary file in the same folder, then rename: the file is complete or absent."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_arrays(path, **arrays):
    """Save arrays and numbers to `path` (npz format, whatever the file name)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"{key}: only arrays, numbers and strings can be saved, got {type(value).__name__}")
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def load_arrays(path):
    """Read a file written by save_arrays into a dict of arrays (0-d arrays become numbers/strings)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: (data[key].item() if data[key].ndim == 0 else data[key]) for key in data.files}


def save_json(path, obj):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, default=_plain).encode()))


def load_json(path):
    with open(path) as f:
        return json.load(f)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
