"""Training's parts: the run folder (run_dir), one step's pieces (steps), the weights' moving average (ema) and
what the loop reports (meter). The job that drives them is engine.train. Importing the package loads no torch."""
