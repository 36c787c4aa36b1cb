"""Ways to use a trained model: the MLflow pyfunc wrapper (and later an HTTP service)."""
