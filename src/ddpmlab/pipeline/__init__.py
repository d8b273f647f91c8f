"""Glue between the DVC stages and the library: stage I/O, MLflow tracking, code deps, presets, stage outputs."""
