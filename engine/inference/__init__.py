"""Generation: the sampling job that writes synthetic samples to a MedSynth HDF5 file."""
