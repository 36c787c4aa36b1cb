"""Adapters: every side effect (files, network, MLflow, Prefect artifacts) lives here."""
