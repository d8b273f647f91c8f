"""Drawing images from a trained model outside the pipeline: `ddpmlab generate` and the MLflow model."""
