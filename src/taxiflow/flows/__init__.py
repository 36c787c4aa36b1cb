"""Prefect wiring: flows call tasks, tasks call `core` and `io`; policy (retries, caching) lives here."""
