"""Training: the run folder (run_dir), the training step (steps). Importing the package loads no torch."""
