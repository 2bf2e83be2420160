"""neuLVM: mesoscopic latent variable model of hidden spiking neurons (Wang et al., NeurIPS 2022)."""

__version__ = "0.1.0"
