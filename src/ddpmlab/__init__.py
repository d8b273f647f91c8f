"""ddpmlab: Denoising Diffusion Probabilistic Models as a reproducible DVC + MLflow pipeline.

Math modules (schedules, diffusion, unet, samplers, training) import only torch; mlflow is
imported by ``ddpmlab.pipeline.tracking`` and torch-fidelity by ``ddpmlab.evaluation.metrics`` alone.
"""

__version__ = "0.1.0"
