"""Training: the job (train), stage 1 of a latent model (autoencoder), the run folder (run_dir), one checkpoint's
files (checkpoints), one step's pieces (steps), the weights' moving average (ema) and what the loop reports (meter).
Importing the package loads no torch."""
