"""Experiment harness: datasets, models, training loop, checkpoints, distributed helpers."""
