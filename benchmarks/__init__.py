"""Side-by-side benchmark: the MLOps Zoomcamp course pipeline (baseline) against taxiflow."""
