"""Pure domain logic: no Prefect, no MLflow, no network, no files beyond what a caller passes in."""
