"""Side panels that set up and drive engine jobs (train, generate)."""
