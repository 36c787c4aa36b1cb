"""Use cases that are not Prefect flows: thin functions over `core` and `io`, called by the CLI."""
