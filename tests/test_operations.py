"""Health probes, Prometheus metrics, request ids and the request / connection log lines."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatsvc.config import Config
from chatsvc.logs import JsonFormatter
from chatsvc.metrics import LATENCY_BUCKETS, Metrics
from chatsvc.state import STATE
from chatsvc.testing import ChatsvcServer, run_chatsvc
from tests.helpers import Api, assert_error, send_payload
from tests.process import ChatsvcProcess


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await api.request("GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return metric_samples(resp.body)


async def test_healthz_answers_without_login_even_with_a_bad_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        resp = await api.request("GET", "/healthz", headers=headers)
        assert resp.status == 200 and resp.body == {"status": "ok"}


async def test_readyz_answers_503_once_the_database_is_gone(api: Api, server: ChatsvcServer) -> None:
    resp = await api.get("/readyz")
    assert resp.status == 200 and resp.body == {"status": "ok"}
    await server.app[STATE].db.close()
    resp = await api.get("/readyz")
    assert_error(resp.status, resp.body, 503)
    live = await api.get("/healthz")
    assert live.status == 200


async def test_metrics_count_sockets_rooms_messages_deliveries_and_requests(api: Api, sockets, pair) -> None:
    alice, bob, room = pair
    before = await scrape(api)
    assert before[("chatsvc_connected_sockets", ())] == 0
    assert before[("chatsvc_messages_stored_total", ())] == 0

    a = await sockets(alice.token)
    b = await sockets(bob.token)
    await a.join(alice, room)
    await b.join(bob, room)
    await a.call("sendMessage", send_payload(alice, room, "one"))
    await b.call("sendMessage", send_payload(bob, room, "two"))
    for client in (a, b):
        await client.next_chat()
        await client.next_chat()
    await api.get("/chatroom/list", alice.token)
    await api.get("/chatroom/list", alice.token)
    await api.get("/chat-history/list", bob.token, chatroomId="x")

    after = await scrape(api)
    assert after[("chatsvc_connected_sockets", ())] == 2
    assert after[("chatsvc_joined_rooms", ())] == 1
    assert after[("chatsvc_room_sockets", ())] == 2
    assert after[("chatsvc_messages_stored_total", ())] == 2
    assert 1 <= after[("chatsvc_db_write_batches_total", ())] <= 2
    # Two messages to two members, and bob's join notice to both sockets; alice's join reached only her;
    # bob coming online reached alice, his one-to-one partner (presence).
    assert after[("chatsvc_deliveries_total", ())] - before[("chatsvc_deliveries_total", ())] == 2 * 2 + 2 + 1 + 1
    assert after[("chatsvc_send_ack_seconds_count", ())] == 2
    assert after[("chatsvc_send_ack_seconds_sum", ())] > 0
    ok = (("method", "GET"), ("route", "/chatroom/list"), ("status", "200"))
    assert after[("chatsvc_http_requests_total", ok)] == 2
    bad = (("method", "GET"), ("route", "/chat-history/list"), ("status", "400"))
    assert after[("chatsvc_http_requests_total", bad)] == 1
    duration = (("method", "GET"), ("route", "/chatroom/list"))
    assert after[("chatsvc_http_request_duration_seconds_count", duration)] == 2

    await a.disconnect()
    # The server notices the disconnect on its own schedule: poll, bounded.
    for _ in range(100):
        current = await scrape(api)
        if current[("chatsvc_connected_sockets", ())] == 1:
            break
    assert current[("chatsvc_connected_sockets", ())] == 1


async def test_metrics_label_unknown_paths_as_unmatched(api: Api) -> None:
    for path in ("/no/such/route", "/another/one"):
        assert (await api.get(path)).status == 404
    samples = await scrape(api)
    labels = (("method", "GET"), ("route", "(unmatched)"), ("status", "404"))
    assert samples[("chatsvc_http_requests_total", labels)] == 2
    assert not any("/no/such/route" in dict(labels).get("route", "") for _, labels in samples)


async def test_metrics_belong_to_one_application(api: Api) -> None:
    alice = await api.new_user()
    await api.get("/user/info", alice.token)
    async with run_chatsvc() as other, other.http.get(other.base_url + "/metrics") as resp:
        samples = metric_samples(await resp.text())
    assert not any(
        name == "chatsvc_http_requests_total" and dict(labels).get("route") == "/user/info" for name, labels in samples
    )


async def test_request_id_is_echoed_or_generated_on_every_response(api: Api) -> None:
    given = await api.request("GET", "/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    generated = await api.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{16}", generated.headers["X-Request-Id"])
    unknown = await api.request("GET", "/nowhere", headers={"X-Request-Id": "err-1"})
    assert unknown.status == 404 and unknown.headers["X-Request-Id"] == "err-1"
    refused = await api.request("GET", "/user/info", headers={"X-Request-Id": "err-2"})
    assert refused.status == 401 and refused.headers["X-Request-Id"] == "err-2"
    # An id that could forge a log line is replaced.
    forged = await api.request("GET", "/healthz", headers={"X-Request-Id": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{16}", forged.headers["X-Request-Id"])


async def test_each_request_and_connection_logs_one_line_with_its_request_id(
    api: Api, sockets, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await api.new_user()
    caplog.set_level(logging.INFO)
    resp = await api.request("GET", "/user/info", token=alice.token, headers={"X-Request-Id": "req-info-1"})
    assert resp.status == 200
    access = [
        r for r in caplog.records if r.name == "chatsvc.access" and getattr(r, "request_id", None) == "req-info-1"
    ]
    assert len(access) == 1
    line = access[0]
    assert (line.method, line.path, line.route, line.status, line.user_id) == (  # type: ignore[attr-defined]
        "GET",
        "/user/info",
        "/user/info",
        200,
        alice.id,
    )
    assert "GET /user/info 200" in line.getMessage() and "rid=req-info-1" in line.getMessage()

    client = await sockets(alice.token, headers={"X-Request-Id": "sock-1"})
    await client.disconnect()
    for _ in range(200):
        events = [r for r in caplog.records if r.name == "chatsvc.socket" and getattr(r, "sid", None)]
        if [r.event for r in events] == ["connect", "disconnect"]:  # type: ignore[attr-defined]
            break
        await api.get("/healthz")  # lets the server handle the disconnect
    assert [r.event for r in events] == ["connect", "disconnect"]  # type: ignore[attr-defined]
    assert {r.user_id for r in events} == {alice.id}  # type: ignore[attr-defined]
    assert {r.request_id for r in events} == {"sock-1"}  # type: ignore[attr-defined]


def test_json_log_lines_carry_the_extra_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "chatsvc.access",
            "levelname": "INFO",
            "msg": "GET %s",
            "args": ("/x",),
            "request_id": "r1",
            "status": 200,
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /x" and line["request_id"] == "r1" and line["status"] == 200
    assert line["level"] == "INFO" and line["logger"] == "chatsvc.access"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


async def test_served_process_logs_exactly_one_json_line_per_request(tmp_path: Path) -> None:
    server = ChatsvcProcess(tmp_path / "chat.db", env={"CHATSVC_LOG_FORMAT": "json"})
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/readyz", headers={"X-Request-Id": "json-req-1"}) as resp:
                assert resp.status == 200
            async with session.get(server.url + "/nowhere", headers={"X-Request-Id": "json-req-2"}) as resp:
                assert resp.status == 404
    finally:
        server.terminate()
        assert await server.wait(15) == 0
    lines = [json.loads(line) for line in (await server.stderr()).splitlines() if line.strip()]
    ours = [line for line in lines if line.get("request_id") in ("json-req-1", "json-req-2")]
    assert [(line["path"], line["status"]) for line in ours] == [("/readyz", 200), ("/nowhere", 404)]
    assert all(line["logger"] == "chatsvc.access" for line in ours)
    # aiohttp's own access log is off: no other line mentions the paths.
    assert sum("/readyz" in json.dumps(line) for line in lines) == 1


def test_config_reads_the_api_key_and_log_settings_from_the_environment() -> None:
    config = Config.from_env({"CHATSVC_API_KEY": "k1", "CHATSVC_LOG_FORMAT": "JSON", "CHATSVC_LOG_LEVEL": "warning"})
    assert (config.api_key, config.log_format, config.log_level) == ("k1", "json", "WARNING")
    defaults = Config.from_env({"CHATSVC_API_KEY": ""})
    assert (defaults.api_key, defaults.log_format, defaults.log_level) == (None, "text", "INFO")
    for env in ({"CHATSVC_LOG_FORMAT": "xml"}, {"CHATSVC_LOG_LEVEL": "loud"}):
        with pytest.raises(ValueError):
            Config.from_env(env)


async def test_request_id_is_readable_by_browser_clients_on_other_origins(api: Api) -> None:
    resp = await api.request("GET", "/healthz", headers={"Origin": "http://app.example"})
    exposed = {v.strip().lower() for v in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"token", "x-request-id"} <= exposed


def test_send_ack_histogram_counts_each_observation_in_its_bucket_and_every_one_above() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.0007, 0.003, 20.0):  # a bound itself belongs to its bucket (le: at most)
        metrics.send_ack.observe(seconds)
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    assert samples[("chatsvc_send_ack_seconds_bucket", "0.0005")] == 1
    assert samples[("chatsvc_send_ack_seconds_bucket", "0.001")] == 2
    assert samples[("chatsvc_send_ack_seconds_bucket", "0.0025")] == 2
    assert samples[("chatsvc_send_ack_seconds_bucket", "0.005")] == 3
    assert samples[("chatsvc_send_ack_seconds_bucket", str(float(LATENCY_BUCKETS[-1])))] == 3
    assert samples[("chatsvc_send_ack_seconds_bucket", "+Inf")] == 4
    assert samples[("chatsvc_send_ack_seconds_count", None)] == 4
    assert samples[("chatsvc_send_ack_seconds_sum", None)] == pytest.approx(20.0042)
