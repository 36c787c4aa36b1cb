"""Notifications through Prefect blocks saved in the session's real Prefect server, to real local receivers."""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid

import httpx
import pytest
from prefect import flow
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.messages import LifecycleEvent
from taxiflow.core.notification_targets import EmailTarget, WebhookTarget, parse_target
from taxiflow.io.notifications import configured_targets, notify, save_email_block, save_webhook_block
from taxiflow.jobs.notify import add_notify_parser, current_flow_run_url, notify_run_state, run_notify_command, send_event
from tests.support.receivers import down_url, smtp_receiver, webhook_receiver
from tests.support.servers import free_port

SMTP_USER = "taxiflow-bot"
# The local SMTP server takes a login without TLS (on 127.0.0.1): that is what aiosmtpd warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture
def prefect(prefect_api, monkeypatch):
    """This process's Prefect client pointed at the session's server (settings are context variables)."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        yield prefect_api


@pytest.fixture
def secrets():
    """Planted secrets, unique per test: a token inside the webhook URL's path, and an SMTP password."""
    tag = uuid.uuid4().hex[:12]
    return {"token": f"T0K3N-{tag}", "password": f"pw-{tag}-S3CRET"}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def save_webhook(monkeypatch, name: str, url: str) -> str:
    monkeypatch.setenv("TAXIFLOW_WEBHOOK_URL", url)
    save_webhook_block(name, allow_private_urls=True)  # the receivers are on 127.0.0.1
    monkeypatch.delenv("TAXIFLOW_WEBHOOK_URL")
    return name


def save_email(monkeypatch, name: str, port: int, password: str, username: str | None = SMTP_USER) -> str:
    monkeypatch.setenv("TAXIFLOW_SMTP_PASSWORD", password)
    save_email_block(name, "127.0.0.1", port, username, "INSECURE")
    monkeypatch.delenv("TAXIFLOW_SMTP_PASSWORD")
    return name


def block_document_without_secrets(api: str, name: str) -> dict:
    response = httpx.post(f"{api}/block_documents/filter", json={"block_documents": {"name": {"any_": [name]}}, "include_secrets": False})
    response.raise_for_status()
    [document] = response.json()
    return document


def assert_nowhere(secret: str, caplog, deliveries=()) -> None:
    for record in caplog.records:
        assert secret not in record.getMessage(), f"{record.name} logged a secret"
        assert secret not in (record.exc_text or ""), f"{record.name} logged a secret in a traceback"
    assert secret not in caplog.text
    assert all(secret not in str(d) for d in deliveries)


def test_a_webhook_message_arrives_as_slack_json_and_the_url_stays_secret(prefect, monkeypatch, secrets, caplog):
    caplog.set_level(logging.DEBUG)
    with webhook_receiver() as receiver:
        name = save_webhook(monkeypatch, unique("ops-hook"), receiver.url(f"/services/{secrets['token']}/hook"))
        deliveries = notify([f"webhook:{name}"], "taxiflow: green 2023-01->2023-02 promoted v3", "event: completed\ntaxi: green")
    [delivery] = deliveries
    assert (delivery.ok, delivery.target, delivery.detail) == (True, f"webhook:{name}", "delivered")
    [posted] = receiver.posts
    assert posted.json == {"text": "taxiflow: green 2023-01->2023-02 promoted v3\nevent: completed\ntaxi: green"}
    assert posted.path == f"/services/{secrets['token']}/hook"  # it went to the secret URL

    document = block_document_without_secrets(prefect, name)
    assert document["data"]["url"] == "{{webhook_url}}" and document["data"]["json_data"] == {"text": "{{subject}}\n{{body}}"}
    assert secrets["token"] not in json.dumps(document) and receiver.url() not in json.dumps(document)
    assert_nowhere(secrets["token"], caplog, deliveries)


def test_an_email_arrives_with_its_recipients_and_subject(prefect, monkeypatch, secrets, caplog):
    caplog.set_level(logging.DEBUG)
    with smtp_receiver(username=SMTP_USER, password=secrets["password"]) as smtp:
        name = save_email(monkeypatch, unique("ops-mail"), smtp.port, secrets["password"])
        deliveries = notify([f"email:{name}:ml-team@example.com;oncall@example.org"], "taxiflow: green 2023-01->2023-02 FAILED", "event: failed\nerror: boom")
    [delivery] = deliveries
    assert (delivery.ok, delivery.target, delivery.detail) == (True, f"email:{name}", "sent to 2 recipient(s)")
    [received] = smtp.messages
    assert received.login == SMTP_USER  # logged in with the password from the block
    assert received.rcpt_tos == ["ml-team@example.com", "oncall@example.org"]
    assert received.message["Subject"] == "taxiflow: green 2023-01->2023-02 FAILED"
    assert received.message["To"] == "ml-team@example.com, oncall@example.org"
    assert received.message.get_content().replace("\r\n", "\n").strip() == "event: failed\nerror: boom"

    document = block_document_without_secrets(prefect, name)
    assert document["data"]["username"] == SMTP_USER and document["data"]["smtp_port"] == smtp.port
    assert secrets["password"] not in json.dumps(document)
    assert_nowhere(secrets["password"], caplog, deliveries)


def test_failing_receivers_cost_a_bounded_time_are_reported_and_leak_no_secret(prefect, monkeypatch, secrets, caplog):
    caplog.set_level(logging.DEBUG)
    token_path = f"/services/{secrets['token']}/hook"
    with (
        webhook_receiver() as ok,
        webhook_receiver("500") as failing,
        webhook_receiver("hang") as hanging,
        smtp_receiver(username=SMTP_USER, password="the-right-one") as smtp,
    ):
        blocks = {
            "ok": save_webhook(monkeypatch, unique("hook-ok"), ok.url(token_path)),
            "500": save_webhook(monkeypatch, unique("hook-500"), failing.url(token_path)),
            "hang": save_webhook(monkeypatch, unique("hook-hang"), hanging.url(token_path)),
            "down": save_webhook(monkeypatch, unique("hook-down"), down_url(token_path)),
            "mail-down": save_email(monkeypatch, unique("mail-down"), free_port(), secrets["password"]),
            "mail-badpw": save_email(monkeypatch, unique("mail-badpw"), smtp.port, secrets["password"]),  # a wrong password
        }
        targets = [f"webhook:{blocks[k]}" for k in ("ok", "500", "hang", "down")]
        targets += [f"email:{blocks['mail-down']}:a@example.com", f"email:{blocks['mail-badpw']}:a@example.com"]
        started = time.monotonic()
        deliveries = notify(targets, "subject", "body", timeout_s=2.0)
        elapsed = time.monotonic() - started

    assert elapsed < 2.0 + 8  # bounded (generously: the point is that the hanging receiver did not hold it)
    by_target = {d.target: d for d in deliveries}
    assert [d.target for d in deliveries] == [t.rsplit(":", 1)[0] if t.startswith("email:") else t for t in targets]
    assert by_target[f"webhook:{blocks['ok']}"].ok and len(ok.posts) == 1  # the others did not stop this one
    assert by_target[f"webhook:{blocks['500']}"].detail == "HTTP 500 Internal Server Error" and len(failing.posts) == 1
    assert hanging.hanging.is_set() and by_target[f"webhook:{blocks['hang']}"].detail in ("timed out", "no answer within 2 s")
    assert by_target[f"webhook:{blocks['down']}"].detail == "ConnectError: [Errno 111] Connection refused"
    assert "Connection refused" in by_target[f"email:{blocks['mail-down']}"].detail
    assert by_target[f"email:{blocks['mail-badpw']}"].detail.startswith("SMTP 535")
    assert smtp.logins and all(login == (SMTP_USER, False) for login in smtp.logins) and smtp.messages == []  # smtplib tries each mechanism
    assert [d.ok for d in deliveries] == [True, False, False, False, False, False]

    warnings = [r for r in caplog.records if r.name == "taxiflow.notifications" and r.levelno == logging.WARNING]
    assert sorted(r.getMessage() for r in warnings) == sorted(f"notification to {d.target} failed: {d.detail}" for d in deliveries if not d.ok)
    assert_nowhere(secrets["token"], caplog, deliveries)
    assert_nowhere(secrets["password"], caplog, deliveries)
    for d in deliveries:
        assert "127.0.0.1" not in str(d) and "://" not in str(d)


def test_a_url_typed_into_a_block_by_hand_is_kept_out_of_logs_too(prefect, secrets, caplog):
    """A block made in the UI with the URL in `url` (not in secrets): the URL is still treated as a secret."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    caplog.set_level(logging.DEBUG)
    with webhook_receiver("500") as receiver:
        name = unique("hand-made")
        url = receiver.url(f"/services/{secrets['token']}")
        CustomWebhookNotificationBlock(name=name, url=url, json_data={"text": "{{subject}}"}, allow_private_urls=True).save(name)
        [delivery] = notify([f"webhook:{name}"], "s", "b")
    assert (delivery.ok, delivery.detail) == (False, "HTTP 500 Internal Server Error") and receiver.posts[0].json == {"text": "s"}
    assert any("HTTP Request: POST ***" in r.getMessage() for r in caplog.records if r.name == "httpx")
    assert_nowhere(secrets["token"], caplog, [delivery])


def test_a_missing_block_and_a_malformed_target_are_reported_not_raised(prefect, caplog):
    caplog.set_level(logging.WARNING)
    missing, malformed, url = notify(["webhook:no-such-block", "webhook:Bad_Name", "webhook:https://hooks.example.com/T0K3N"], "s", "b", timeout_s=5)
    assert (missing.ok, missing.target, missing.detail) == (False, "webhook:no-such-block", "no such block")
    assert (malformed.ok, malformed.target) == (False, "(malformed target)") and "lowercase letters, digits and dashes" in malformed.detail
    assert not url.ok and "T0K3N" not in url.detail and "names a Prefect block, not a URL" in url.detail
    assert "T0K3N" not in caplog.text
    assert len([r for r in caplog.records if r.name == "taxiflow.notifications" and r.levelno == logging.WARNING]) == 3
    assert notify([], "s", "b") == []


def test_targets_parse_or_say_what_is_wrong():
    assert parse_target("webhook:ops-slack") == WebhookTarget("ops-slack")
    assert parse_target(" email:ops-mail:a@example.com;b@example.org, c@localhost ") == EmailTarget(
        "ops-mail", ("a@example.com", "b@example.org", "c@localhost")
    )
    with pytest.raises(InvalidArgumentError, match=r"empty notification target: expected webhook:<block> or email:<block>:<to>\[,<to>...\]"):
        parse_target("  ")
    with pytest.raises(InvalidArgumentError, match=r"notification target 'slack:ops': unknown kind 'slack'"):
        parse_target("slack:ops")
    with pytest.raises(InvalidArgumentError, match=r"notification target 'webhook:': block name '': use lowercase letters, digits and dashes"):
        parse_target("webhook:")
    with pytest.raises(InvalidArgumentError, match=r"expected webhook:<block> \(recipients are for email targets\)"):
        parse_target("webhook:ops:a@example.com")
    with pytest.raises(InvalidArgumentError, match=r"expected email:<block>:<to>\[,<to>...\] with at least one recipient"):
        parse_target("email:ops-mail")
    with pytest.raises(InvalidArgumentError, match=r"'not-an-address' is not an e-mail address"):
        parse_target("email:ops-mail:a@example.com,not-an-address")
    with pytest.raises(InvalidArgumentError, match=r"names a Prefect block, not a URL \(got a URL for 'webhook', not shown\)") as error:
        parse_target("webhook:https://hooks.slack.com/services/T0K3N")
    assert "T0K3N" not in str(error.value)
    assert configured_targets({"TAXIFLOW_NOTIFY_TARGETS": " webhook:a\n email:b:x@example.com "}) == ["webhook:a", "email:b:x@example.com"]
    assert configured_targets({}) == []


def test_blocks_are_saved_only_from_the_environment(prefect, monkeypatch):
    monkeypatch.delenv("TAXIFLOW_WEBHOOK_URL", raising=False)
    with pytest.raises(InvalidArgumentError, match="TAXIFLOW_WEBHOOK_URL must be set in the environment"):
        save_webhook_block("ops-hook")
    monkeypatch.setenv("TAXIFLOW_WEBHOOK_URL", "hooks.slack.com/services/T0K3N")
    with pytest.raises(InvalidArgumentError, match=r"must be an http:// or https:// URL \(its value is not shown\)") as error:
        save_webhook_block("ops-hook")
    assert "T0K3N" not in str(error.value)
    monkeypatch.delenv("TAXIFLOW_SMTP_PASSWORD", raising=False)
    with pytest.raises(InvalidArgumentError, match="a username is given but TAXIFLOW_SMTP_PASSWORD is empty"):
        save_email_block("ops-mail", "smtp.example.com", 587, "bot@example.com", "STARTTLS")
    with pytest.raises(InvalidArgumentError, match="SMTP type must be one of INSECURE, SSL, STARTTLS, got 'TLS'"):
        save_email_block("ops-mail", "smtp.example.com", 587, None, "TLS")
    with pytest.raises(InvalidArgumentError, match=r"SMTP server must be a host name or address \(no scheme, port or path\)"):
        save_email_block("ops-mail", "smtp://smtp.example.com", 587)
    with pytest.raises(InvalidArgumentError, match="SMTP port must be 1..65535, got 0"):
        save_email_block("ops-mail", "smtp.example.com", 0)
    with pytest.raises(InvalidArgumentError, match="block name 'Ops Mail': use lowercase letters, digits and dashes"):
        save_email_block("Ops Mail", "smtp.example.com", 25)


def notify_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="taxiflow")
    add_notify_parser(parser.add_subparsers(dest="command", required=True))
    return run_notify_command(parser.parse_args(["notify", *argv]))


def test_the_notify_commands_save_blocks_and_send_a_test_message(prefect, monkeypatch, secrets, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    hook, mail = unique("cli-hook"), unique("cli-mail")
    with webhook_receiver() as receiver, smtp_receiver() as smtp:
        monkeypatch.setenv("TAXIFLOW_WEBHOOK_URL", receiver.url(f"/services/{secrets['token']}"))
        assert notify_cli("webhook", "--name", hook, "--allow-private-urls") == 0
        monkeypatch.delenv("TAXIFLOW_SMTP_PASSWORD", raising=False)  # a local relay: no login
        assert notify_cli("email", "--name", mail, "--server", "127.0.0.1", "--port", str(smtp.port), "--smtp-type", "insecure") == 0
        assert notify_cli("test", "--target", f"webhook:{hook}", "--target", f"email:{mail}:ops@example.com") == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"saved block custom-webhook/{hook} (URL from TAXIFLOW_WEBHOOK_URL, stored as a secret); target: webhook:{hook}"
        assert out[1] == f"saved block email-server-credentials/{mail} (INSECURE 127.0.0.1:{smtp.port}); target: email:{mail}:TO[,TO...]"
        assert out[2].startswith(f"ok      webhook:{hook}: delivered (") and out[3].startswith(f"ok      email:{mail}: sent to 1 recipient(s) (")
        assert receiver.posts[0].json["text"].startswith("taxiflow: test notification\nevent: test\n")
        assert smtp.messages[0].message["Subject"] == "taxiflow: test notification" and smtp.messages[0].rcpt_tos == ["ops@example.com"]
        assert smtp.messages[0].mail_from == "taxiflow@localhost"

        # A target that fails: exit 1, one line per target.
        assert notify_cli("test", "--target", f"webhook:{hook}", "--target", "webhook:no-such-block", "--timeout", "5") == 1
        captured = capsys.readouterr()
        assert captured.out.splitlines()[1].startswith("FAILED  webhook:no-such-block: no such block (")
        assert "taxiflow: error: 1 of 2 target(s) failed" in captured.err
    with pytest.raises(InvalidArgumentError, match=r"notification target 'webhook:Ops': block name 'Ops'"):
        notify_cli("test", "--target", "webhook:Ops")
    with pytest.raises(InvalidArgumentError, match="--timeout must be > 0 seconds, got 0.0"):
        notify_cli("test", "--target", f"webhook:{hook}", "--timeout", "0")
    with pytest.raises(InvalidArgumentError, match="block name 'bad_name': use lowercase letters, digits and dashes"):
        notify_cli("webhook", "--name", "bad_name")
    assert_nowhere(secrets["token"], caplog)


@flow(name="notify-hook-check", on_failure=[notify_run_state], on_crashed=[notify_run_state])
def failing_train(taxi: str = "green", train_month: str = "2023-01", val_month: str = "2023-02") -> None:
    raise ValueError(f"{taxi} {val_month} is not published")


@flow(name="notify-success-check")
def succeeding_train() -> list[str]:
    """The success path: the flow sends its event itself, with a link to its run."""
    event = LifecycleEvent(
        kind="completed",
        taxi="green",
        train_month="2023-01",
        val_month="2023-02",
        rmse=5.19,
        challenger_version="3",
        champion_version="2",
        champion_rmse_on_val=5.25,
        gate="promoted",
        flow_run_url=current_flow_run_url(),
    )
    return [str(d) for d in send_event(event)]


def test_a_failed_flow_run_notifies_through_its_hook_and_a_successful_one_through_send_event(prefect, monkeypatch, secrets):
    with webhook_receiver() as receiver:
        name = save_webhook(monkeypatch, unique("run-hook"), receiver.url(f"/services/{secrets['token']}"))
        monkeypatch.setenv("TAXIFLOW_NOTIFY_TARGETS", f"webhook:{name}")
        state = failing_train(taxi="yellow", train_month="2023-03", val_month="2023-04", return_state=True)
        assert state.is_failed()
        success_state = succeeding_train(return_state=True)
        [sent] = success_state.result()
        # Hand the runs' logs and events to the server now: at exit it is gone, and Prefect would complain on stderr.
        APILogWorker.drain_all(timeout=5, at_exit=False)
        EventsWorker.drain_all(timeout=5, at_exit=False)
    assert sent.startswith(f"ok      webhook:{name}: delivered")
    failure, success = (p.json["text"].splitlines() for p in receiver.posts)
    flow_run_id = str(state.state_details.flow_run_id)
    assert failure[0] == "taxiflow: yellow 2023-03->2023-04 FAILED: Flow run encountered an exception: ValueError: yellow 2023-04 is not published"
    assert "event: failed" in failure and "taxi: yellow" in failure
    assert f"flow run URL: {prefect.removesuffix('/api')}/runs/flow-run/{flow_run_id}" in failure
    assert success[0] == "taxiflow: green 2023-01->2023-02 promoted v3 (RMSE 5.19 vs champion v2 5.25)"
    success_run_id = str(success_state.state_details.flow_run_id)
    assert f"flow run URL: {prefect.removesuffix('/api')}/runs/flow-run/{success_run_id}" in success
    monkeypatch.delenv("TAXIFLOW_NOTIFY_TARGETS")
    assert send_event(LifecycleEvent(kind="completed")) == []  # nothing configured: nothing sent
    assert current_flow_run_url() is None  # outside a run
