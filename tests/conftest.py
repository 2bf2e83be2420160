import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


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
