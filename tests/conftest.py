import random

import numpy as np
import pytest

from src.network import winner_take_all
from src.window import Window


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global random state (the code itself never uses it)."""
    random.seed(0)
    np.random.seed(0)
    try:
        import tensorflow as tf
        tf.random.set_seed(0)
    except ImportError:
        pass


def random_case(seed, B=1, Nobs=3, T=50, K=60, with_input=False, silent_neuron=False, dt=0.004):
    """A random window for the likelihood tests: theta in [0.4, 2] x truth, Z in [1e-5, 0.05]."""
    rng = np.random.default_rng(seed)
    net = winner_take_all()
    y = (rng.random((B, net.M, Nobs, K + T)) < 0.05).astype(float)
    if silent_neuron:
        y[0, 0, 0, :K] = 0.0           # no spike in the history: its age starts at the history length
    I_ext = rng.normal(0, 5, (B, net.M, T)) if with_input else np.zeros((B, net.M, T))
    window = Window(net=net, dt=dt, K=K, y=y, I_ext=I_ext)
    theta = net.theta * rng.uniform(0.4, 2.0, 4 * net.M)
    Z = rng.uniform(1e-5, 0.05, (B, net.M, T))
    return net, window, theta, Z


# -- untrusted files (tests/test_results.py, test_dataset.py, test_train_meso.py) ------------------
class CreatesFile:
    """Unpickling this runs open(path, "w"), i.e. creates a file: a stand-in for a malicious payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(path, marker):
    """A pickle at path whose loading creates the file marker."""
    import pickle
    with open(path, "wb") as f:
        pickle.dump({"theta": np.zeros(12), "payload": CreatesFile(marker)}, f, protocol=pickle.HIGHEST_PROTOCOL)
    return str(path)


def malicious_npz(path, marker, base=None):
    """An .npz archive whose field 'Z' (or, with base, 'I_ext' among base's fields) is an object array
    whose loading creates the file marker."""
    fields = dict(base) if base is not None else {"theta": np.zeros(12)}
    fields["I_ext" if base is not None else "Z"] = np.array([CreatesFile(marker)], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **fields)           # allow_pickle is on when saving: this writes the pickle
    return str(path)
