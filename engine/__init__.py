"""MedSynth engine: data, diffusion models, training, sampling, HDF5 store. Never imports Qt."""

__version__ = "0.1.0"
