"""The benchmark tool (``make bench``) at a tiny scale, and its delivery bookkeeping."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadgen import Received, parse_stamp
from bench.node import ensure_node_packages, node_peer
from bench.report import PG_LABEL
from bench.servers import free_port
from bench.steadiness import describe, probe
from chatsvc.jsonutil import SocketJSON
from chatsvc.testing_postgres import find_bindir
from tests.helpers import User, connect_socket

ROOT = Path(__file__).resolve().parent.parent


def node_available() -> bool:
    """Whether node and npm are installed (the Node peer and the socket.io-client generator need both)."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def require_node() -> None:
    """Skip without node and npm; with them, install the Node packages (a failed install fails the test)."""
    if not node_available():
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm)")
    ensure_node_packages(lambda message: print(message, file=sys.stderr))


def require_redis_server() -> None:
    """Skip without redis-server, except in CI, where its absence is a failure."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_bench_small_run_reports_every_delivery(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # A few seconds: workload A against chatsvc and the baseline, and H on a small history.
    command = [
        sys.executable, "-m", "bench", "--only", "A,H", "--duration", "1", "--warmup", "0.3",
        "--a-rooms", "2", "--a-members", "3", "--history-rows", "1000", "--http-duration", "0.3",
        "--no-postgres", "--json", str(out),
    ]  # fmt: skip
    if node_available():
        require_node()  # installs the Node packages first, so the run's own time limit is not spent on npm
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    # The Node peer runs next to the baseline wherever node is installed.
    servers = ("chatsvc", "baseline", "node") if node_available() else ("chatsvc", "baseline")
    assert set(report["results"]["A"]) == set(servers), report["meta"]["node_skipped"]
    for server in servers:
        result = report["results"]["A"][server]
        assert result["sockets"] == 6 and result["senders"] == 2
        assert result["messages_sent"] > 0 and result["sends_per_s"] > 0, result
        # Each message reaches its room's three members.
        assert result["deliveries_per_s"] > result["sends_per_s"], result
        assert result["missing"] == 0 and result["duplicates"] == 0 and result["out_of_order"] == 0, result
        assert result["send_errors"] == 0 and result["stalls"] == 0, result
        assert result["latency_ms"]["p99"] is not None
    for kind in ("newest", "random"):
        page = report["results"]["H"]["requests"][kind]
        assert page["requests"] > 0 and page["errors"] == 0, page
    assert {check["target"] for check in report["targets"]} >= {
        "A sends/s chatsvc/baseline",
        "H newest page p50",
        "H random-depth page p99",
    }
    assert "chatsvc/baseline ratios" in proc.stdout and "Targets" in proc.stdout
    if node_available():
        assert "A sends/s chatsvc/node" in {check["target"] for check in report["targets"]}
        assert report["ratios"]["chatsvc/node"]["A sends/s"] > 0
        assert "chatsvc/node ratios" in proc.stdout


def require_postgres() -> None:
    """Skip without PostgreSQL's server binaries, except in CI, where their absence is a failure."""
    if find_bindir() is None:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_bench_postgres_column_runs_every_workload_of_issue_14_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    out = tmp_path / "bench.json"
    # A few seconds: A, C, D, H and R on chatsvc over SQLite and over the benchmark's own PostgreSQL.
    command = [
        sys.executable, "-m", "bench", "--only", "A,C,D,H,R", "--duration", "0.7", "--warmup", "0.2",
        "--a-rooms", "2", "--a-members", "3", "--c-pairs", "3", "--open-rate", "20", "--history-rows", "3000",
        "--users", "300", "--rooms", "400", "--http-duration", "0.2", "--no-baseline", "--no-node",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["postgres"].startswith("PostgreSQL "), report["meta"]["postgres_skipped"]
    assert report["meta"]["postgres_settings"]["synchronous_commit"] == "on"
    assert report["meta"]["postgres_settings"]["fsync"] == "on"
    for name in "ACD":
        assert set(report["results"][name]) == {"chatsvc", PG_LABEL}
        result = report["results"][name][PG_LABEL]
        assert result["messages_sent"] > 0 and result["sends_per_s"] > 0, result
        assert result["deliveries_per_s"] >= result["sends_per_s"], result
        assert result["missing"] == 0 and result["duplicates"] == 0 and result["out_of_order"] == 0, result
        assert result["send_errors"] == 0 and result["stalls"] == 0, result
    # The PostgreSQL room holds every seeded message: the newest and deep pages are full pages, without error.
    assert report["results"]["H"][PG_LABEL]["scale"].startswith("3,000 messages")
    for name, kinds in (("H", ("newest", "random")), ("R", ("findChatroom", "list"))):
        for kind in kinds:
            page = report["results"][name][PG_LABEL]["requests"][kind]
            assert page["requests"] > 0 and page["errors"] == 0, (name, kind, page)
    assert "300 users" in report["results"]["R"][PG_LABEL]["scale"]
    assert {check["target"] for check in report["targets"]} >= {
        f"A sends/s {PG_LABEL}/chatsvc",
        f"C sends/s {PG_LABEL}/chatsvc",
        f"D p99 send->delivery {PG_LABEL}",
        f"H newest page p50 {PG_LABEL}",
        f"H random-depth page p99 {PG_LABEL}",
        f"R findChatroom p50 {PG_LABEL}",
        f"R list p50 {PG_LABEL}",
    }
    assert report["ratios"][f"{PG_LABEL}/chatsvc"]["A sends/s"] > 0
    assert f"{PG_LABEL}/chatsvc ratios" in proc.stdout and "issue 14" in proc.stdout


def test_bench_cluster_mode_on_postgresql_reports_one_and_two_instances_without_losses(tmp_path: Path) -> None:
    require_postgres()
    require_redis_server()
    out = tmp_path / "cluster.json"
    command = [
        sys.executable, "-m", "bench", "--cluster", "2", "--engine", "postgres", "--only", "A", "--duration", "1",
        "--warmup", "0.3", "--a-rooms", "2", "--a-members", "3", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["cluster"]["engine"] == "postgres" and report["meta"]["postgres"].startswith("PostgreSQL")
    for label in ("1 instance", "2 instances"):
        result = report["results"]["A"][label]
        assert result["messages_sent"] > 0 and result["deliveries_per_s"] > result["sends_per_s"], result
        assert result["missing"] == 0 and result["duplicates"] == 0 and result["out_of_order"] == 0, result
        assert result["send_errors"] == 0, result
    assert min(report["results"]["A"]["2 instances"]["deliveries_by_instance"]) > 0
    assert "PostgreSQL" in proc.stdout.splitlines()[0]


async def test_node_peer_stores_acks_and_broadcasts_a_message(tmp_path: Path) -> None:
    require_node()
    db_path = tmp_path / "peer.db"
    peer = node_peer(free_port(), db_path, dict(os.environ), tmp_path / "node.log")
    await peer.start(None)
    try:
        # Like the baseline, the peer accepts any token.
        alice, bob = (User(i, f"bench{i}", f"Bench {i}", "any-token", {}) for i in (1, 2))
        sender, receiver = await connect_socket(peer.url, alice.token), await connect_socket(peer.url, bob.token)
        await sender.join(alice, 7)
        await receiver.join(bob, 7)
        payload = {"sendUserId": 1, "chatroomId": 7, "message": {"type": "text", "content": "hello peer"}}
        ack = await sender.call("sendMessage", payload)
        broadcast = await receiver.next_chat()
        # chatsvc's shapes: the ack is the stored message, the broadcast carries it.
        assert broadcast == {"type": "sendMessage", "userId": 1, "message": ack}, broadcast
        assert ack["content"] == "hello peer" and ack["type"] == 0 and ack["chatroomId"] == 7, ack
        assert ack["sender"]["id"] == 1 and ack["createTime"].endswith("Z"), ack
        assert (await sender.next_chat())["message"]["id"] == ack["id"]
        refused = await sender.call("sendMessage", {"sendUserId": 1, "chatroomId": 7, "message": {"type": "x"}})
        assert refused["statusCode"] == 400, refused
        await sender.disconnect()
        await receiver.disconnect()
    finally:
        await peer.stop()
    # Acked means committed: the row is in the file once the peer has gone.
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT id, content, chatroom_id, sender_id FROM chat_history").fetchall()
    assert rows == [(ack["id"], "hello peer", 7, 1)]


def test_bench_sio_js_client_drives_chatsvc_the_baseline_and_the_node_peer(tmp_path: Path) -> None:
    require_node()
    out = tmp_path / "bench.json"
    # A few seconds: workload A and 20 idle sockets, every socket an official socket.io-client on Node.
    command = [
        sys.executable, "-m", "bench", "--client", "sio-js", "--only", "A,I", "--duration", "1", "--warmup", "0.3",
        "--a-rooms", "2", "--a-members", "3", "--idle-sockets", "20", "--idle-seconds", "0.5", "--no-postgres",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["client"] == "sio-js"
    assert set(report["results"]["A"]) == {"chatsvc", "baseline", "node"}
    for server, result in report["results"]["A"].items():
        # Long-polling first, then every socket moved to WebSocket.
        assert result["sockets"] == 6 and result["upgraded"] == 6, (server, result)
        assert result["messages_sent"] > 0 and result["deliveries_per_s"] > result["sends_per_s"] > 0, result
        assert result["missing"] == 0 and result["duplicates"] == 0 and result["out_of_order"] == 0, result
        assert result["send_errors"] == 0 and result["stalls"] == 0, result
    idle = report["results"]["I"]
    assert set(idle) == {"chatsvc", "node"} and all(r["sockets"] == 20 for r in idle.values()), idle
    targets = {check["target"] for check in report["targets"]}
    assert {"A sends/s chatsvc/node", "I RSS per idle connection chatsvc/node"} <= targets
    assert "socket.io-client" in proc.stdout and "chatsvc/node ratios" in proc.stdout


def test_bench_sio_js_client_without_node_fails_or_is_skipped_on_request(tmp_path: Path) -> None:
    # A PATH with this Python but no node.
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "bin")}
    command = [sys.executable, "-m", "bench", "--client", "sio-js", "--json", str(tmp_path / "none.json")]
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "node and npm not installed" in failed.stderr, failed
    skipped = subprocess.run(
        [*command, "--skip-without-node"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert skipped.returncode == 0 and "skipped" in skipped.stdout, skipped
    assert not (tmp_path / "none.json").exists()


def test_bench_cluster_mode_reports_one_and_two_instances_without_losses(tmp_path: Path) -> None:
    require_redis_server()
    out = tmp_path / "cluster.json"
    # A few seconds: workload A against one instance, then against two sharing rooms through a real Redis.
    command = [
        sys.executable, "-m", "bench", "--cluster", "2", "--only", "A", "--duration", "1", "--warmup", "0.3",
        "--a-rooms", "2", "--a-members", "3", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["cluster"]["instances"] == 2
    results = report["results"]["A"]
    assert set(results) == {"1 instance", "2 instances"}
    for label, instances in (("1 instance", 1), ("2 instances", 2)):
        result = results[label]
        assert result["instances"] == instances and result["sockets"] == 6 and result["senders"] == 2, result
        assert result["messages_sent"] > 0 and result["sends_per_s"] > 0, result
        assert result["deliveries_per_s"] > result["sends_per_s"], result
        assert result["missing"] == 0 and result["duplicates"] == 0 and result["out_of_order"] == 0, result
        assert result["send_errors"] == 0 and result["stalls"] == 0, result
    several = results["2 instances"]
    # Room 0's sender is on the first instance and one of its receivers on the second, and room 1 the other
    # way round: with nothing missing, messages crossed Redis in both directions.
    assert len(several["deliveries_by_instance"]) == 2 and min(several["deliveries_by_instance"]) > 0, several
    assert several["redis_cpu_pct"] >= 0
    assert "2 instances / 1 instance" in proc.stdout and "A: sends/s" in proc.stdout


def test_bench_webhook_mode_compares_plain_and_webhook_runs_and_drains_the_outbox(tmp_path: Path) -> None:
    out = tmp_path / "webhook.json"
    # A few seconds: workload A's senders alone, without and then with CHATSVC_WEBHOOK_URL.
    command = [
        sys.executable, "-m", "bench", "--webhook", "--duration", "1", "--warmup", "0.3",
        "--a-rooms", "2", "--a-members", "3", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]["A"]
    assert set(results) == {"plain", "webhook on"}
    for result in results.values():
        assert result["sockets"] == 2 and result["senders"] == 2 and result["messages_sent"] > 0, result
        assert result["missing"] == 0 and result["duplicates"] == 0, result
    hook = results["webhook on"]["webhook"]
    # Every member but the sender was offline: one call per message, none left in the outbox.
    assert hook["pending_after_drain"] == 0 and hook["calls"] >= results["webhook on"]["messages_sent"], hook
    # The sender process (CHATSVC_WEBHOOK_SENDER=process, the default) was found, placed and measured.
    assert hook["sender_cpu_s"] >= 0, hook
    assert "webhook on / plain: sends/s" in proc.stdout


def test_bench_cluster_mode_without_redis_server_fails_or_is_skipped_on_request(tmp_path: Path) -> None:
    # An empty PATH: no redis-server to find.
    env = {**os.environ, "PATH": str(tmp_path)}
    command = [sys.executable, "-m", "bench", "--cluster", "2", "--json", str(tmp_path / "none.json")]
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "redis-server is not installed" in failed.stderr, failed
    skipped = subprocess.run(
        [*command, "--skip-without-redis"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert skipped.returncode == 0 and "skipped" in skipped.stdout, skipped
    assert not (tmp_path / "none.json").exists()


def test_loadgen_stamp_is_found_in_a_broadcast_frame() -> None:
    message = {"id": 7, "content": "t=123456789;s=4;n=17", "type": 0, "sender": {"nickName": 'a "quoted" name'}}
    frame = "42" + SocketJSON.dumps(["message", {"type": "sendMessage", "userId": 3, "message": message}])
    assert parse_stamp(frame) == (123456789, 4, 17)
    assert parse_stamp('42["message",{"type":"joinRoom","userId":3}]') is None


def test_loadgen_received_counts_missing_duplicate_and_late_messages() -> None:
    received = Received()
    for seq in (0, 1, 3, 3, 5):  # 2 and 4 skipped, 3 twice
        received.record(sender=9, seq=seq)
    received.record(sender=9, seq=2)  # late: fills a gap, not a duplicate
    assert received.duplicates == 1 and received.out_of_order == 1
    # Sender 9 sent 0..7; 4, 6 and 7 never came. Sender 8 sent 2, none came.
    assert received.missing([8, 9], {9: (8, []), 8: (2, [])}) == 5
    # A message the server refused (error ack) is not expected to arrive.
    assert received.missing([9], {9: (8, [4, 7])}) == 1


def test_bench_files_small_run_reports_throughput_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "files.json"
    command = [
        sys.executable, "-m", "bench.files", "--size", "0.5", "--rounds", "1", "--concurrent", "3",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    document = json.loads(out.read_text())
    result = document["result"]
    assert document["passed"] is True
    for figure in ("upload_mib_s", "download_mib_s", "concurrent_upload_mib_s", "rss_peak_mib"):
        assert result[figure] > 0, figure
    assert "download" in proc.stdout and "memory check" in proc.stdout


def test_steadiness_probe_times_every_chunk_and_counts_the_stretched_ones() -> None:
    result = probe([0], 0.3)
    core = result["per_core"][0]
    assert core["chunks"] > 10
    assert 0 < core["chunk_median_ms"] <= core["chunk_p99_ms"] <= core["longest_ms"] == result["longest_ms"]
    assert 0 <= core["stretched"] < core["chunks"]
    assert 0 <= result["lost_pct"] <= 100
    assert "longest" in describe(result)
