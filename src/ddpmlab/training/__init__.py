"""Fitting the network: the training loop, RNG state, DDP, checkpoint I/O and the trained model."""
