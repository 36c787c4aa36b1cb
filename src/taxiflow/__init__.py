"""taxiflow: orchestrated NYC taxi trip-duration training (Prefect 3 + MLflow 3)."""

__version__ = "0.1.0"
