"""A bounded soak test: many sockets held in group rooms for a fixed time while some send, then checked.

``python -m bench.soak`` (``make soak``) starts chatsvc on a loopback port with
a fresh database, registers one user per socket and creates the group rooms
through the API, connects every socket (raw Engine.IO/Socket.IO over
aiohttp's WebSocket, in worker processes; see bench/loadgen.py), and holds
them for ``--duration`` seconds while a few senders send at a steady rate,
each message carrying its sender's sequence number and a ``clientMsgId``.
Then it checks that every acknowledged message reached every member of its
room exactly once and in order, that nothing failed (no refused connection
or join, no error or missing ack, no unexpected disconnect, no error in the
server's log), and that the server's RSS grew by at most ``--max-rss-growth``
percent between the end of the warm-up and the end of the hold. It prints a
report, writes it as JSON, and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench import report
from bench.loadgen import Member, Plan, SocketSpec, Worker, WorkerPool, raise_open_files_limit
from bench.run import Bench, BenchUser, _cpu_model, _sleep_until, _version
from bench.servers import CpuMark, rss_bytes

# The server's per-connection rate limit (CHATSVC_RATE_LIMIT, 20/s, burst 40) stays on: senders keep under it.
# Registrations are not limited: every soak user registers from this one address.
SOAK_ENV = {
    "CHATSVC_SQLITE_SYNCHRONOUS": "FULL",
    "CHATSVC_SCRYPT_N": "16",
    "CHATSVC_LOG_FORMAT": "json",
    "CHATSVC_REGISTER_RATE": "0",
}
DRAIN_S = 10.0
RSS_SAMPLE_S = 0.5
MB = 2**20


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.soak``."""
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Hold many chatsvc sockets for a fixed time while some send; check delivery, errors and memory",
    )
    p.add_argument("--sockets", type=int, default=2000, help="connected sockets, one user each (2000)")
    p.add_argument("--rooms", type=int, default=200, help="group rooms the sockets are spread over (200)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds the sockets are held while senders send (60)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of the hold before the 'warm' RSS sample (10)")
    p.add_argument("--senders", type=int, default=20, help="sockets that send, one per room in turn (20)")
    p.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="messages/s per sender (5); keep it under chatsvc's per-connection limit of 20/s",
    )
    p.add_argument(
        "--max-rss-growth",
        type=float,
        default=20.0,
        help="largest allowed server RSS growth from the warm sample to the end, in %% of the warm RSS (20)",
    )
    p.add_argument("--workers", type=int, default=2, help="load generator processes holding the sockets (2)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and load generator to cores")
    p.add_argument("--json", type=Path, help="where to write the JSON report (default bench-results/soak-<time>.json)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, server log)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the options and check they make a soak."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rooms < 1 or args.sockets < args.rooms:
        parser.error("need at least one room and at least as many sockets as rooms")
    if not 0 <= args.senders <= args.sockets:
        parser.error("--senders must be between 0 and --sockets")
    if args.senders and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.duration <= 0 or not 0 <= args.warmup < args.duration:
        parser.error("need --duration > 0 and 0 <= --warmup < --duration")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


class SoakWorker(Worker):
    """A load generator worker whose messages carry a clientMsgId and whose acks and sockets are accounted for."""

    def reset(self, plan: Plan | None) -> None:
        """A fresh slate, with the soak's own counters."""
        super().reset(plan)
        self.acked: dict[int, set[int]] = {}
        self.setup_failures = 0
        self.unacked = 0

    async def _connect(self, member: Member) -> None:
        # The base class counts a socket whose joinRoom was refused as connected; count the failure here.
        try:
            await super()._connect(member)
        except Exception:
            self.setup_failures += 1
            raise

    async def _send(self, member: Member, seq: int) -> None:
        assert member.sock is not None and self.plan is not None
        spec = member.spec
        sent_at = time.monotonic_ns()
        client_msg_id = f"soak-{spec.index}-{seq}"
        payload = (
            f'{{"sendUserId":{spec.user_id},"chatroomId":{spec.send_room},"clientMsgId":"{client_msg_id}",'
            f'"message":{{"type":"text","content":"t={sent_at};s={spec.index};n={seq}"}}}}'
        )
        acked = self.acked.setdefault(spec.index, set())

        def fail(reason: str) -> None:
            self.ack_errors += 1
            member.failed.append(seq)
            if self.first_error is None:
                self.first_error = reason[:200]

        def on_ack(raw: str) -> None:
            if '"statusCode"' in raw:
                fail(raw)
            elif f'"clientMsgId":"{client_msg_id}"' not in raw:
                fail(f"ack without clientMsgId {client_msg_id}: {raw}")
            else:
                acked.add(seq)
                self.acks += 1
                self.ack_latencies.append(time.monotonic_ns() - sent_at)

        member.sent = seq + 1
        try:
            await member.sock.emit("sendMessage", payload, on_ack)
        except (ConnectionError, RuntimeError) as exc:
            fail(f"send failed: {type(exc).__name__}: {exc}")

    async def do_setup(self, plan: Plan) -> dict[str, Any]:
        """Connect and join as the base class does; also say how many sockets failed."""
        reply = await super().do_setup(plan)
        return {**reply, "failures": self.setup_failures}

    async def do_start(self, t_begin: int, t_measure: int, t_end: int) -> dict[str, Any]:
        """Send as the base class does; a message whose ack never came counts as refused, and as an error."""
        await super().do_start(t_begin, t_measure, t_end)
        finals: dict[int, tuple[int, list[int]]] = {}
        for m in self.members:
            if m.spec.send_room is None or m.sock is None:
                continue
            failed = set(m.failed)
            unacked = [n for n in range(m.sent) if n not in failed and n not in self.acked.get(m.spec.index, ())]
            self.unacked += len(unacked)
            finals[m.spec.index] = (m.sent, sorted(failed.union(unacked)))
        return {"finals": finals, "unacked": self.unacked}

    async def do_finish(self, finals: Any, room_senders: dict[int, list[int]], drain_s: float) -> dict[str, Any]:
        """The base class's counts, plus deliveries expected and received and sockets lost on the way."""
        stats = await super().do_finish(finals, room_senders, drain_s)
        expected = received = closed = 0
        for m in self.members:
            if m.sock is None:
                continue
            closed += m.sock.closed.is_set()
            for sender in {s for room in m.spec.rooms for s in room_senders.get(room, [])}:
                sent, refused = finals.get(sender, (0, []))
                expected += sent - len(refused)
                received += m.received.next_seq.get(sender, 0) - len(m.received.gaps.get(sender, ()))
        return {**stats, "expected": expected, "received": received, "closed": closed}


def soak_worker_main(conn: Connection, cores: list[int] | None) -> None:
    """Entry point of a soak worker process."""
    if cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)
    raise_open_files_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(SoakWorker(conn).serve())


class SoakPool(WorkerPool):
    """The worker pool of bench/loadgen.py, running SoakWorkers."""

    worker_entry = staticmethod(soak_worker_main)


def server_log_problems(path: Path) -> tuple[int, list[str]]:
    """ERROR and CRITICAL records (and any traceback printed outside logging) in chatsvc's JSON log."""
    count = 0
    first: list[str] = []
    with contextlib.suppress(FileNotFoundError), path.open(errors="replace") as f:
        for line in f:
            try:
                bad = json.loads(line).get("level") in ("ERROR", "CRITICAL")
            except (ValueError, AttributeError):
                bad = line.startswith("Traceback")
            if bad:
                count += 1
                if len(first) < 3:
                    first.append(line.strip()[:300])
    return count, first


class Soak(Bench):
    """One soak run; users, rooms and the server come from the benchmark's coordinator."""

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
        return {**env, **SOAK_ENV, "PYTHONUNBUFFERED": "1"}

    async def layout(self) -> tuple[list[SocketSpec], dict[int, int]]:
        """Users and rooms through the API; one socket per user, socket i in room i % rooms, senders first."""
        args = self.args
        users: list[BenchUser] = await self.ensure_users(args.sockets)
        groups = [users[r :: args.rooms] for r in range(args.rooms)]
        began = time.monotonic()
        room_ids = await self.create_group_rooms("soak", groups)
        self.log(f"created {len(room_ids)} group rooms through the API ({time.monotonic() - began:.1f} s)")
        specs = []
        for i, user in enumerate(users):
            room = room_ids[i % args.rooms]
            if i < args.senders:
                specs.append(SocketSpec(i, user.id, user.token, (room,), room, i / args.senders))
            else:
                specs.append(SocketSpec(i, user.id, user.token, (room,)))
        return specs, {room: len(group) for room, group in zip(room_ids, groups, strict=True)}

    async def soak(self) -> dict[str, Any]:
        """Set up, connect, hold while sending, count; the figures as a dict."""
        args = self.args
        self.pool = pool = SoakPool(args.workers, self.gen_cores)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        try:
            await self.start_chatsvc()
            assert self.chatsvc is not None
            server = self.chatsvc
            specs, room_sizes = await self.layout()
            rss_start = rss_bytes(server.pid)

            began = time.monotonic()
            plans = [Plan((server.url,), specs[w :: pool.size], "open", args.rate) for w in range(pool.size)]
            ready = await pool.command("setup", [(plan,) for plan in plans])
            connected = sum(r["connected"] for r in ready)
            setup_failures = sum(r["failures"] for r in ready)
            setup_errors = [e for r in ready for e in r["errors"]][:5]
            connect_s = time.monotonic() - began
            self.log(f"{connected:,} of {len(specs):,} sockets connected and joined in {connect_s:.1f} s")
            if setup_errors:
                self.log(f"set-up errors: {setup_errors}")
            rss_connected = rss_bytes(server.pid)

            t_begin = time.monotonic() + 0.2
            t_warm = t_begin + args.warmup
            t_end = t_begin + args.duration
            ns = 1_000_000_000
            # Every delivery counts, warm-up included: t_measure is t_begin.
            started = asyncio.ensure_future(
                pool.command_all("start", int(t_begin * ns), int(t_begin * ns), int(t_end * ns))
            )
            self.log(f"holding for {args.duration:.0f} s; {args.senders} senders at {args.rate:g} messages/s each")
            rss_peak = rss_connected
            rss_warm: int | None = None
            cpu_first = CpuMark.take([server.pid])
            while (now := time.monotonic()) < t_end:
                if rss_warm is None and now >= t_warm:
                    rss_warm = rss_bytes(server.pid)
                    cpu_first = CpuMark.take([server.pid])
                    self.log(f"warm: server RSS {rss_warm / MB:.1f} MB")
                next_at = t_warm if rss_warm is None else t_end
                await _sleep_until(min(now + RSS_SAMPLE_S, next_at))
                rss_peak = max(rss_peak, rss_bytes(server.pid))
            rss_end = rss_bytes(server.pid)
            rss_peak = max(rss_peak, rss_end)
            if rss_warm is None:
                rss_warm = rss_end
            cpu = CpuMark.take([server.pid]).percent_since(cpu_first)[server.pid]
            held_s = time.monotonic() - began - connect_s
            self.log(f"hold over: server RSS {rss_end / MB:.1f} MB; waiting for acks and deliveries")

            stopped = await started
            finals: dict[int, tuple[int, list[int]]] = {}
            for reply in stopped:
                finals.update(reply["finals"])
            room_senders: dict[int, list[int]] = {}
            for spec in specs:
                if spec.send_room is not None:
                    room_senders.setdefault(spec.send_room, []).append(spec.index)
            stats = await pool.command_all("finish", finals, room_senders, DRAIN_S)
            await pool.command_all("close")
            log_errors, first_log_errors = server_log_problems(server.log_path)
        finally:
            await self.http.close()
            if self.chatsvc is not None:
                await self.chatsvc.stop()
            pool.close()
            if args.keep:
                self.log(f"work folder kept: {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

        sent = sum(s for s, _ in finals.values())
        closed = sum(s["closed"] for s in stats)
        return {
            "sockets": len(specs),
            "rooms": len(room_sizes),
            "members_per_room": [min(room_sizes.values()), max(room_sizes.values())],
            "senders": args.senders,
            "rate_per_sender": args.rate,
            "connected": connected,
            "setup_failures": setup_failures + len(specs) - connected,
            "setup_errors": setup_errors,
            "connect_s": connect_s,
            "held_s": held_s,
            "held_at_end": connected - closed,
            "unexpected_disconnects": closed,
            "messages_sent": sent,
            "messages_acked": sum(s["acks"] for s in stats),
            "error_acks": sum(s["ack_errors"] for s in stats),
            "unacked": sum(r["unacked"] for r in stopped),
            "first_error": next((s["first_error"] for s in stats if s["first_error"]), None),
            "deliveries_expected": sum(s["expected"] for s in stats),
            "deliveries_received": sum(s["received"] for s in stats),
            "missing": sum(s["missing"] for s in stats),
            "duplicates": sum(s["duplicates"] for s in stats),
            "out_of_order": sum(s["out_of_order"] for s in stats),
            "latency_ms": report.percentiles_ms(report.merge_samples(s["latencies"] for s in stats)),
            "ack_latency_ms": report.percentiles_ms(report.merge_samples(s["ack_latencies"] for s in stats)),
            "server_log_errors": log_errors,
            "server_log_first_errors": first_log_errors,
            "server_cpu_pct_after_warmup": cpu,
            "rss_start_mb": rss_start / MB,
            "rss_connected_mb": rss_connected / MB,
            "rss_warm_mb": rss_warm / MB,
            "rss_end_mb": rss_end / MB,
            "rss_peak_mb": rss_peak / MB,
            "rss_per_connection_kb": (rss_connected - rss_start) / max(connected, 1) / 1024,
            "rss_growth_pct": 100.0 * (rss_end - rss_warm) / rss_warm,
            "max_rss_growth_pct": args.max_rss_growth,
        }

    def meta(self, workers: int) -> dict[str, Any]:
        """The machine, versions and settings of this run."""
        total_s = time.monotonic() - self.started
        return {
            "started_at": (datetime.now(UTC) - timedelta(seconds=total_s)).isoformat(timespec="seconds"),
            "total_s": total_s,
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "versions": {p: _version(p) for p in ("chatsvc", "aiohttp", "python-socketio", "python-engineio")},
            "server_cores": self.server_cores,
            "loadgen_cores": self.gen_cores,
            "workers": workers,
            "server_env": SOAK_ENV,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
        }


def checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each pass/fail check of a soak result."""

    def check(name: str, passed: bool, detail: str) -> dict[str, Any]:
        return {"check": name, "passed": passed, "detail": detail}

    return [
        check(
            "every socket connected and joined",
            r["connected"] == r["sockets"] and r["setup_failures"] == 0,
            f"{r['connected']:,} of {r['sockets']:,}, {r['setup_failures']} failed",
        ),
        check(
            "no unexpected disconnect",
            r["unexpected_disconnects"] == 0,
            f"{r['unexpected_disconnects']} closed by the server or the network",
        ),
        check(
            "every send acknowledged without error",
            r["error_acks"] == 0 and r["unacked"] == 0 and (r["messages_sent"] > 0 or r["senders"] == 0),
            f"{r['messages_acked']:,} of {r['messages_sent']:,} acked, {r['error_acks']} errors, "
            f"{r['unacked']} never acked",
        ),
        check(
            "every acked message delivered to every member exactly once, in order",
            r["missing"] == 0 and r["duplicates"] == 0 and r["out_of_order"] == 0,
            f"{r['missing']} missing, {r['duplicates']} duplicates, {r['out_of_order']} out of order",
        ),
        check("no error in the server's log", r["server_log_errors"] == 0, f"{r['server_log_errors']} ERROR records"),
        check(
            "server RSS growth once warm within the bound",
            r["rss_growth_pct"] <= r["max_rss_growth_pct"],
            f"{r['rss_growth_pct']:+.1f}% (bound {r['max_rss_growth_pct']:g}%)",
        ),
    ]


def render(r: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The soak report as printed on stdout."""
    low, high = r["members_per_room"]
    members = str(low) if low == high else f"{low}-{high}"
    latency = r["latency_ms"]
    lines = [
        f"chatsvc soak: {r['sockets']:,} sockets in {r['rooms']:,} group rooms ({members} members each), "
        f"held {r['held_s']:.1f} s; {r['senders']} senders at {r['rate_per_sender']:g} messages/s",
        "",
        f"connections   {r['connected']:,} connected in {r['connect_s']:.1f} s, {r['held_at_end']:,} still held at "
        f"the end; {r['setup_failures']} refused or failed, {r['unexpected_disconnects']} unexpected disconnects",
        f"messages      {r['messages_sent']:,} sent, {r['messages_acked']:,} acked, {r['error_acks']} error acks, "
        f"{r['unacked']} never acked",
        f"deliveries    {r['deliveries_expected']:,} expected, {r['deliveries_received']:,} received; "
        f"{r['missing']} missing, {r['duplicates']} duplicates, {r['out_of_order']} out of order",
        f"latency       send->delivery p50 {_ms(latency['p50'])}, p99 {_ms(latency['p99'])}, "
        f"max {_ms(latency['max'])}; send->ack p99 {_ms(r['ack_latency_ms']['p99'])}",
        f"server RSS    start {r['rss_start_mb']:.1f} MB, connected {r['rss_connected_mb']:.1f} MB, "
        f"warm {r['rss_warm_mb']:.1f} MB, end {r['rss_end_mb']:.1f} MB (peak {r['rss_peak_mb']:.1f} MB)",
        f"              {r['rss_per_connection_kb']:.1f} KB per connection; growth once warm "
        f"{r['rss_growth_pct']:+.1f}% (bound {r['max_rss_growth_pct']:g}%)",
        f"server CPU    {r['server_cpu_pct_after_warmup']:.1f}% of a core after warm-up; "
        f"{r['server_log_errors']} ERROR records in its log",
        "",
    ]
    lines += [f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in results]
    if r["first_error"]:
        lines.append(f"first error ack: {r['first_error']}")
    if r["setup_errors"]:
        lines.append(f"set-up errors: {r['setup_errors']}")
    if r["server_log_first_errors"]:
        lines.append(f"server log: {r['server_log_first_errors']}")
    passed = all(c["passed"] for c in results)
    lines.append("soak " + ("passed" if passed else "FAILED"))
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _default_json_path() -> Path:
    return Path("bench-results") / f"soak-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print the report, write the JSON, and return 0 only if every check passed."""
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    soak = Soak(args)
    result = asyncio.run(soak.soak())
    results = checks(result)
    passed = all(c["passed"] for c in results)
    document = {"meta": soak.meta(args.workers), "result": result, "checks": results, "passed": passed}
    path: Path = args.json or _default_json_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(render(result, results))
    print(f"JSON report: {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
