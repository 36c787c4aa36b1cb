"""The UIs (Prefect's and MLflow's), tested in a real browser: Playwright driving Debian's headless Chromium."""
