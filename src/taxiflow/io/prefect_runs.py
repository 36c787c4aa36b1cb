"""What Prefect's API remembers about earlier runs (a backfill's `--mode failed` asks it)."""

from __future__ import annotations


def pair_tag(taxi: str, train_month: str, val_month: str) -> str:
    """The tag on every `train` run of a backfill pair: how its last run is found again."""
    return f"taxiflow-pair:{taxi}:{train_month}:{val_month}"


def last_run_states(tags: list[str]) -> dict[str, str | None]:
    """tag -> the state type (COMPLETED, FAILED, CRASHED, ...) of the newest flow run carrying it, None if none does."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    states: dict[str, str | None] = {}
    with get_client(sync_client=True) as client:
        for tag in tags:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])), sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
            states[tag] = runs[0].state_type.value if runs and runs[0].state_type is not None else None
    return states
