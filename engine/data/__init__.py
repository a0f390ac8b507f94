"""The in-memory dataset (ImageSet) and what is done to it: normalisation for training, the demo phantoms.

Below engine.io: the readers produce ImageSets, so nothing here reads or writes a file format.
"""
