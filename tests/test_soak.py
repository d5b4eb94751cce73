"""The soak script (``make soak``) at a tiny scale: it passes on a healthy server and fails when sends fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.soak import checks

ROOT = Path(__file__).resolve().parent.parent


def run_soak(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "soak.json"
    command = [sys.executable, "-m", "bench.soak", *options, "--json", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_soak_small_run_delivers_every_acked_message_once(tmp_path: Path) -> None:
    options = ["--sockets", "60", "--rooms", "6", "--duration", "3", "--warmup", "1", "--senders", "6"]
    proc, report = run_soak(tmp_path, *options)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert report["passed"] and all(c["passed"] for c in report["checks"]), report["checks"]
    r = report["result"]
    assert r["connected"] == r["held_at_end"] == 60 and r["setup_failures"] == 0
    assert r["unexpected_disconnects"] == 0
    assert r["messages_acked"] == r["messages_sent"] > 0
    assert r["error_acks"] == r["unacked"] == r["server_log_errors"] == 0
    # Each sender's room has 10 members, the sender included.
    assert r["deliveries_expected"] == r["deliveries_received"] == 10 * r["messages_acked"]
    assert r["missing"] == r["duplicates"] == r["out_of_order"] == 0
    assert r["rss_start_mb"] > 0 and r["rss_per_connection_kb"] > 0
    assert "soak passed" in proc.stdout and "RSS" in proc.stdout


def test_soak_fails_when_the_server_refuses_sends(tmp_path: Path) -> None:
    # 100 messages/s from one socket exceeds chatsvc's default limit (20/s, burst 40): error acks.
    options = ["--sockets", "10", "--rooms", "1", "--duration", "1.5", "--warmup", "0.5", "--senders", "1"]
    proc, report = run_soak(tmp_path, *options, "--rate", "100")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    failed = {c["check"] for c in report["checks"] if not c["passed"]}
    assert failed == {"every send acknowledged without error"}
    assert report["result"]["error_acks"] > 0 and "429" in report["result"]["first_error"]
    assert "soak FAILED" in proc.stdout


def test_soak_checks_flag_each_kind_of_failure() -> None:
    healthy = {
        "sockets": 20, "connected": 20, "setup_failures": 0, "unexpected_disconnects": 0, "senders": 2,
        "messages_sent": 10, "messages_acked": 10, "error_acks": 0, "unacked": 0, "missing": 0, "duplicates": 0,
        "out_of_order": 0, "server_log_errors": 0, "rss_growth_pct": 1.0, "max_rss_growth_pct": 20.0,
    }  # fmt: skip
    assert all(c["passed"] for c in checks(healthy))
    faults: list[dict[str, Any]] = [
        {"connected": 19},
        {"setup_failures": 1},
        {"unexpected_disconnects": 1},
        {"error_acks": 1},
        {"unacked": 1},
        {"messages_sent": 0, "messages_acked": 0},
        {"missing": 1},
        {"duplicates": 1},
        {"out_of_order": 1},
        {"server_log_errors": 1},
        {"rss_growth_pct": 25.0},
    ]
    for fault in faults:
        assert sum(not c["passed"] for c in checks({**healthy, **fault})) == 1, fault
