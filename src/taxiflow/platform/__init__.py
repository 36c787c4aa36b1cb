"""The local platform: Prefect server + worker, MLflow server, S3-protocol server, in one command."""
