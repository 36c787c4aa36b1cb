"""Rendering of lifecycle notifications: short subjects, one fact per body line."""

import pytest

from taxiflow.core.messages import DriftEvent, LifecycleEvent, mlflow_model_version_url, render_message

BASE = {"taxi": "green", "train_month": "2023-01", "val_month": "2023-02", "model_name": "nyc-taxi-duration"}


def promoted(**overrides) -> LifecycleEvent:
    fields = BASE | {
        "kind": "completed",
        "rmse": 5.1916,
        "challenger_version": "3",
        "champion_version": "2",
        "champion_rmse_on_val": 5.2512,
        "gate": "promoted",
        "gate_reason": "RMSE 5.1916 beats champion v2's 5.2512 by 0.0596 (margin 0)",
    }
    return LifecycleEvent(**(fields | overrides))


def assert_one_fact_per_line(body: str) -> None:
    for line in body.splitlines():
        label, sep, value = line.partition(": ")
        assert sep and label and value.strip(), f"not a 'label: value' line: {line!r}"


def test_a_promotion_names_both_versions_and_rmses():
    event = promoted(
        flow_run_name="bold-fox",
        flow_run_url="http://127.0.0.1:4200/runs/flow-run/abc",
        model_version_url="http://127.0.0.1:5000/#/models/nyc-taxi-duration/versions/3",
    )
    subject, body = render_message(event)
    assert subject == "taxiflow: green 2023-01->2023-02 promoted v3 (RMSE 5.19 vs champion v2 5.25)"
    assert body.splitlines() == [
        "event: completed",
        "taxi: green",
        "train month: 2023-01",
        "validation month: 2023-02",
        "flow run: bold-fox",
        "model: nyc-taxi-duration v3",
        "validation RMSE: 5.1916",
        "champion: v2, RMSE 5.2512 on 2023-02",
        "gate: promoted: RMSE 5.1916 beats champion v2's 5.2512 by 0.0596 (margin 0)",
        "flow run URL: http://127.0.0.1:4200/runs/flow-run/abc",
        "model version URL: http://127.0.0.1:5000/#/models/nyc-taxi-duration/versions/3",
    ]


def test_the_first_model_becomes_champion():
    subject, body = render_message(promoted(champion_version=None, champion_rmse_on_val=None, gate_reason="first model: there was no champion"))
    assert subject == "taxiflow: green 2023-01->2023-02 promoted v3 (RMSE 5.19, first champion)"
    assert "champion:" not in body and "gate: promoted: first model: there was no champion" in body.splitlines()


def test_a_worse_model_is_kept_out():
    subject, body = render_message(promoted(rmse=6.0, gate="kept", gate_reason="RMSE 6.0000 is worse than champion v2's 5.2512 by 0.7488"))
    assert subject == "taxiflow: green 2023-01->2023-02 trained v3, kept champion v2 (RMSE 6.00 vs 5.25)"
    assert "validation RMSE: 6.0000" in body.splitlines()


def test_a_forced_promotion_says_so():
    subject, _ = render_message(promoted(rmse=9.0, gate="forced", gate_reason="forced: alice: rollback"))
    assert subject == "taxiflow: green 2023-01->2023-02 promoted v3 (forced; RMSE 9.00 vs champion v2 5.25)"


def test_an_unscorable_champion_is_not_evaluated():
    subject, body = render_message(promoted(champion_rmse_on_val=None, gate="not-evaluated", gate_reason="champion v2 could not be scored: files missing"))
    assert subject == "taxiflow: green 2023-01->2023-02 trained v3 (RMSE 5.19), not promoted: champion v2 not evaluated"
    assert "champion: v2, not scored" in body.splitlines()


def test_a_run_without_a_gate_reports_its_rmse():
    subject, body = render_message(LifecycleEvent(kind="completed", rmse=5.19164, challenger_version=7, **BASE))
    assert subject == "taxiflow: green 2023-01->2023-02 trained v7 (RMSE 5.19)"
    assert "model: nyc-taxi-duration v7" in body.splitlines() and "gate" not in body


def test_a_promotion_event_without_a_gate_reads_as_promoted():
    subject, _ = render_message(LifecycleEvent(kind="promoted", challenger_version="4", rmse=5.0, champion_version="3", champion_rmse_on_val=5.5, **BASE))
    assert subject == "taxiflow: green 2023-01->2023-02 promoted v4 (RMSE 5.00 vs champion v3 5.50)"


def test_a_failure_puts_the_first_words_of_its_error_in_one_subject_line():
    error = "Flow run encountered an exception: MonthNotAvailableError: green 2031-07 is not published\n  at line 2\n" + "x" * 300
    subject, body = render_message(LifecycleEvent(kind="failed", error=error, flow_run_url="http://h/runs/flow-run/1", **BASE))
    assert "\n" not in subject and subject.startswith("taxiflow: green 2023-01->2023-02 FAILED: Flow run encountered an exception: MonthNotAvailableError")
    assert subject.endswith("…") and len(subject) < 200
    lines = body.splitlines()
    assert lines[0] == "event: failed" and "flow run URL: http://h/runs/flow-run/1" in lines
    [error_line] = [line for line in lines if line.startswith("error: ")]
    assert "is not published at line 2 xxx" in error_line  # newlines folded: still one fact per line
    assert_one_fact_per_line(body)


def test_a_crash_without_parameters_still_reads():
    subject, body = render_message(LifecycleEvent(kind="crashed", error="Execution was cancelled by the runtime environment."))
    assert subject == "taxiflow: train run CRASHED: Execution was cancelled by the runtime environment."
    assert body.splitlines() == ["event: crashed", "error: Execution was cancelled by the runtime environment."]
    assert render_message(LifecycleEvent(kind="cancelled", taxi="yellow"))[0] == "taxiflow: yellow CANCELLED"


def test_every_body_line_is_one_fact():
    for event in (promoted(), promoted(gate="kept"), LifecycleEvent(kind="failed", error="a\nb", **BASE)):
        assert_one_fact_per_line(render_message(event)[1])


def test_unknown_kinds_and_gate_decisions_are_refused():
    with pytest.raises(ValueError, match="event kind must be one of completed, failed, crashed, cancelled, promoted, got 'finished'"):
        LifecycleEvent(kind="finished")
    with pytest.raises(ValueError, match="gate decision must be one of promoted, kept, forced, not-evaluated, got 'maybe'"):
        LifecycleEvent(kind="completed", gate="maybe")


def test_events_are_frozen_and_versions_are_text():
    event = LifecycleEvent(kind="completed", challenger_version=3, champion_version=2, rmse=5)
    assert (event.challenger_version, event.champion_version, event.rmse) == ("3", "2", 5.0)
    with pytest.raises(AttributeError, match="cannot assign to field 'kind'"):
        event.kind = "failed"


def test_model_version_links_go_to_the_mlflow_ui_without_credentials():
    assert mlflow_model_version_url("http://127.0.0.1:5000", "nyc-taxi-duration", 3) == "http://127.0.0.1:5000/#/models/nyc-taxi-duration/versions/3"
    assert mlflow_model_version_url("https://bob:s3cret@mlflow.example.com/prefix/?token=t", "my model", "12") == (
        "https://mlflow.example.com/prefix/#/models/my%20model/versions/12"
    )
    assert mlflow_model_version_url("sqlite:///tmp/mlflow.db", "m", 1) is None
    assert mlflow_model_version_url(None, "m", 1) is None


def test_a_drift_event_names_the_month_the_columns_and_the_model():
    event = DriftEvent(
        taxi="green",
        month="2021-01",
        model_name="nyc-taxi-duration",
        model_version=1,
        drifted_columns=["PULocationID", "DOLocationID", "prediction"],
        columns_checked=4,
        share_drifted=0.75,
        drift_share=0.5,
        reference_month="2023-01",
        rows_scored=76_518,
        rmse=8.90826,
        reference_rmse=6.034462,
        mlflow_run_url="http://127.0.0.1:5000/#/experiments/1/runs/abc",
    )
    subject, body = render_message(event)
    assert subject == "taxiflow: green 2021-01 DRIFT vs 2023-01: 3 of 4 columns (PULocationID, DOLocationID, prediction), nyc-taxi-duration v1"
    assert body.splitlines() == [
        "event: drift",
        "taxi: green",
        "scored month: 2021-01",
        "reference month: 2023-01",
        "model: nyc-taxi-duration v1",
        "rides scored: 76,518",
        "drifted columns: PULocationID, DOLocationID, prediction",
        "drift share: 75% of 4 columns (alert at 50%)",
        "RMSE: 8.9083 (validation 6.0345)",
        "MLflow run URL: http://127.0.0.1:5000/#/experiments/1/runs/abc",
    ]


def test_a_failed_scoring_run_says_it_was_scoring_and_which_month():
    subject, body = render_message(LifecycleEvent(kind="failed", taxi="green", job="score", month="2023-03", error="disk full", flow_run_name="quiet-fox"))
    assert subject == "taxiflow: green 2023-03 scoring FAILED: disk full"
    assert body.splitlines()[:3] == ["event: score failed", "taxi: green", "scored month: 2023-03"] and "train month" not in body
