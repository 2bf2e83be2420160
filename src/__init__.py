"""neuLVM: mesoscopic latent variable model of hidden spiking neurons (Wang et al., NeurIPS 2022)."""
import os

# Every entry point imports this package before TensorFlow. TensorFlow 2.21 on CPUs with AVX-512
# (Intel Xeon) writes to stderr at import, whatever TF_CPP_MIN_LOG_LEVEL says, the notice that oneDNN's
# custom operations are on (before absl's logging is set up, hence also "WARNING: All log messages
# before absl::InitializeLog() ..."); with them off the float results no longer depend on the CPU
# either. Level 2 hides TensorFlow's informational and warning lines. A user's own setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
