"""Figures from raw samples, the table printed on stdout, and the targets of issues 5, 13 and 14."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

from bench import steadiness

SOCKET_WORKLOADS = "ABCD"
SATURATED_PCT = 90.0
# chatsvc on PostgreSQL: its row in A-D, and its part of H and R.
PG_LABEL = "chatsvc-pg"


def percentiles_ms(samples_ns: array[int]) -> dict[str, float | None]:
    """p50, p90, p99 and max of nanosecond samples, in milliseconds (nearest rank)."""
    if not samples_ns:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(samples_ns)
    count = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * count) - 1)] / 1e6

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1] / 1e6}


def merge_samples(chunks: Iterable[bytes]) -> array[int]:
    """Concatenate the int64 sample arrays the workers sent."""
    merged = array("q")
    for chunk in chunks:
        merged.frombytes(chunk)
    return merged


def handshake_figures(ready: list[dict[str, Any]]) -> dict[str, Any]:
    """socket.io-client workers: how many sockets moved to WebSocket, and the connect and upgrade times."""
    if not ready or "upgraded" not in ready[0]:
        return {}
    return {
        "upgraded": sum(r["upgraded"] for r in ready),
        "connect_ms": percentiles_ms(merge_samples(r["connect_ms"] for r in ready)),
        "upgrade_ms": percentiles_ms(merge_samples(r["upgrade_ms"] for r in ready)),
    }


# The figure each socket workload's target is about, for picking the median of repeated runs.
KEY_FIGURE = {"A": "sends_per_s", "B": "deliveries_per_s", "C": "sends_per_s", "D": "p99"}


def median_run(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server, the repetition whose key figure is the median (the lower middle one for an even count)."""
    field = KEY_FIGURE[name]

    def key(result: dict[str, Any]) -> float:
        value = result["latency_ms"]["p99"] if field == "p99" else result[field]
        return float(value or 0.0)

    chosen: dict[str, Any] = {}
    for server in runs[0]:
        ordered = sorted((run[server] for run in runs), key=key)
        chosen[server] = ordered[(len(ordered) - 1) // 2]
    return chosen


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def socket_table(results: dict[str, Any]) -> str:
    """Workloads A–D, one row per server."""
    header = [
        "load", "server", "sockets", "sends/s", "deliv/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
        "ack p99", "missing", "dup", "srv CPU%", "srv RSS MB", "gen CPU%",
    ]  # fmt: skip
    rows = []
    for name in SOCKET_WORKLOADS:
        for server, r in results.get(name, {}).items():
            lat = r["latency_ms"]
            rows.append(
                [
                    name,
                    server,
                    str(r["sockets"]),
                    _num(r["sends_per_s"], 0),
                    _num(r["deliveries_per_s"], 0),
                    _num(lat["p50"]),
                    _num(lat["p90"]),
                    _num(lat["p99"]),
                    _num(lat["max"]),
                    _num(r["ack_latency_ms"]["p99"]),
                    str(r["missing"]),
                    str(r["duplicates"]),
                    _num(r["server_cpu_pct"], 0),
                    _num(r["server_rss_mb"], 0),
                    _num(r["loadgen_cpu_pct"], 0) + ("!" if r["loadgen_saturated"] else ""),
                ]
            )
    return _table(rows, header) if rows else ""


def http_table(results: dict[str, Any]) -> str:
    """Workloads H and R: one row per request kind, latency at the HTTP client."""
    header = [
        "load", "server", "request", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "srv CPU%",
    ]  # fmt: skip
    rows = []
    for name in "HR":
        for server, kind, r in http_requests(results.get(name, {})):
            lat = r["latency_ms"]
            rows.append(
                [
                    name,
                    server,
                    kind,
                    str(r["requests"]),
                    _num(r["per_s"], 0),
                    _num(lat["p50"]),
                    _num(lat["p90"]),
                    _num(lat["p99"]),
                    _num(lat["max"]),
                    str(r["errors"]),
                    _num(r["server_cpu_pct"], 0),
                ]
            )
    return _table(rows, header) if rows else ""


def http_requests(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """H's or R's requests as (server, kind, figures): chatsvc on SQLite, then on PostgreSQL if it ran."""
    rows = [("chatsvc", kind, r) for kind, r in result.get("requests", {}).items()]
    pg = result.get(PG_LABEL, {})
    rows += [(PG_LABEL, kind, r) for kind, r in pg.get("requests", {}).items()]
    return rows


def idle_summary(server: str, result: dict[str, Any]) -> str:
    """Workload I against one server in one paragraph."""
    return (
        f"I  {server}: {result['sockets']:,} idle sockets (connected in {result['connect_s']:.1f} s): "
        f"server RSS {result['rss_before_mb']:.0f} MB -> {result['rss_after_mb']:.0f} MB, "
        f"{result['rss_per_connection_kb']:.1f} KB per connection; "
        f"idle CPU {result['idle_cpu_pct']:.1f}% of a core over {result['idle_window_s']:.0f} s; "
        f"load generator CPU {result['loadgen_cpu_pct']:.1f}%"
    )


def _figure(result: dict[str, Any], field: str) -> float | None:
    value = result["latency_ms"]["p99"] if field == "p99" else result.get(field)
    return None if value is None else float(value)


def _ratio(
    results: dict[str, Any], name: str, field: str, other: str = "baseline", server: str = "chatsvc"
) -> float | None:
    """chatsvc's figure (or ``server``'s) over another server's, both from this run; None if either is missing."""
    pair = results.get(name, {})
    if server not in pair or other not in pair:
        return None
    mine, theirs = _figure(pair[server], field), _figure(pair[other], field)
    if mine is None or not theirs:
        return None
    return mine / theirs


# The figures compared between chatsvc and the other servers: (workload, field, label).
RATIO_FIGURES = [
    *[(name, field, label) for name in SOCKET_WORKLOADS for field, label in (
        ("sends_per_s", "sends/s"), ("deliveries_per_s", "deliveries/s"), ("p99", "p99"),
    )],
    ("I", "rss_per_connection_kb", "RSS per idle connection"),
    ("I", "idle_cpu_pct", "idle CPU"),
]  # fmt: skip
OTHER_SERVERS = ("baseline", "node")


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """chatsvc's figures over the baseline's and the Node peer's, as measured in this run."""
    table: dict[str, dict[str, float]] = {}
    for other in OTHER_SERVERS:
        for name, field, label in RATIO_FIGURES:
            value = _ratio(results, name, field, other)
            if value is not None:
                table.setdefault(f"chatsvc/{other}", {})[f"{name} {label}"] = value
    for name, field, label in RATIO_FIGURES:
        value = _ratio(results, name, field, "chatsvc", PG_LABEL)
        if value is not None:
            table.setdefault(f"{PG_LABEL}/chatsvc", {})[f"{name} {label}"] = value
    return table


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5 that this run measured: the figure, the bound and whether it is met."""
    checks: list[dict[str, Any]] = []

    def add(label: str, value: float | None, op: str, bound: float, unit: str = "") -> None:
        if value is None:
            return
        met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        checks.append({"target": label, "value": value, "op": op, "bound": bound, "unit": unit, "met": met})

    add("A sends/s chatsvc/baseline", _ratio(results, "A", "sends_per_s"), ">=", 1.2, "x")
    add("B deliveries/s chatsvc/baseline", _ratio(results, "B", "deliveries_per_s"), ">=", 2.0, "x")
    add("C sends/s chatsvc/baseline", _ratio(results, "C", "sends_per_s"), ">=", 1.2, "x")
    # Issue 13: against the seed's own stack, the Node peer, in the same run.
    add("A sends/s chatsvc/node", _ratio(results, "A", "sends_per_s", "node"), ">=", 1.1, "x")
    add("C sends/s chatsvc/node", _ratio(results, "C", "sends_per_s", "node"), ">=", 1.5, "x")
    add("D p99 chatsvc/node", _ratio(results, "D", "p99", "node"), "<=", 1.0, "x")
    add("I RSS per idle connection chatsvc/node", _ratio(results, "I", "rss_per_connection_kb", "node"), "<=", 1.0, "x")
    if "chatsvc" in results.get("D", {}):
        add("D p99 send->delivery", results["D"]["chatsvc"]["latency_ms"]["p99"], "<=", 5.0, " ms")
    requests = results.get("H", {}).get("requests", {})
    if "newest" in requests:
        add("H newest page p50", requests["newest"]["latency_ms"]["p50"], "<=", 2.0, " ms")
    if "random" in requests:
        add("H random-depth page p99", requests["random"]["latency_ms"]["p99"], "<=", 10.0, " ms")
    for kind, r in results.get("R", {}).get("requests", {}).items():
        add(f"R {kind} p50", r["latency_ms"]["p50"], "<=", 2.0, " ms")
    # Issue 14: chatsvc on PostgreSQL, in the same run as on SQLite.
    add(f"A sends/s {PG_LABEL}/chatsvc", _ratio(results, "A", "sends_per_s", "chatsvc", PG_LABEL), ">=", 0.7, "x")
    add(f"C sends/s {PG_LABEL}/chatsvc", _ratio(results, "C", "sends_per_s", "chatsvc", PG_LABEL), ">=", 0.7, "x")
    if PG_LABEL in results.get("D", {}):
        add(f"D p99 send->delivery {PG_LABEL}", results["D"][PG_LABEL]["latency_ms"]["p99"], "<=", 5.0, " ms")
    pg_requests = results.get("H", {}).get(PG_LABEL, {}).get("requests", {})
    if "newest" in pg_requests:
        add(f"H newest page p50 {PG_LABEL}", pg_requests["newest"]["latency_ms"]["p50"], "<=", 3.0, " ms")
    if "random" in pg_requests:
        add(f"H random-depth page p99 {PG_LABEL}", pg_requests["random"]["latency_ms"]["p99"], "<=", 15.0, " ms")
    for kind, r in results.get("R", {}).get(PG_LABEL, {}).get("requests", {}).items():
        add(f"R {kind} p50 {PG_LABEL}", r["latency_ms"]["p50"], "<=", 3.0, " ms")
    if "chatsvc" in results.get("I", {}):
        idle = results["I"]["chatsvc"]
        add("I RSS per idle connection", idle["rss_per_connection_kb"], "<=", 100.0, " KB")
        add("I idle server CPU", idle["idle_cpu_pct"], "<", 10.0, "% of a core")
    lost = [
        (f"{name} {server}", r["missing"], r["duplicates"])
        for name in SOCKET_WORKLOADS
        for server, r in results.get(name, {}).items()
    ]
    if lost:
        add("missing + duplicate deliveries (all of A-D)", float(sum(m + d for _, m, d in lost)), "<=", 0.0)
    return checks


def targets_text(checks: list[dict[str, Any]]) -> str:
    """The targets as lines: figure, bound, met or not."""
    lines = []
    width = max((len(c["target"]) for c in checks), default=0)
    for c in checks:
        value = f"{c['value']:.2f}{c['unit']}"
        bound = f"{c['op']} {c['bound']:g}{c['unit']}"
        lines.append(
            f"  {c['target'].ljust(width)}  {value:>14}  target {bound:<18} {'met' if c['met'] else 'NOT MET'}"
        )
    return "\n".join(lines)


def saturation_warning(results: dict[str, Any]) -> list[str]:
    """A warning paragraph if the load generator was saturated in any socket workload."""
    saturated = [
        f"{name}/{server}"
        for name in SOCKET_WORKLOADS
        for server, r in results.get(name, {}).items()
        if r["loadgen_saturated"]
    ]
    if not saturated:
        return []
    return [
        f"WARNING: the load generator was saturated in {', '.join(saturated)}: those figures are lower bounds; "
        "rerun with more --workers on more cores.",
        "",
    ]


def cluster_comparison(results: dict[str, Any], single: str, several: str) -> list[str]:
    """Per workload: both throughputs, their ratio, latency and Redis's CPU, one line each."""
    lines = []
    for name in SOCKET_WORKLOADS:
        pair = results.get(name, {})
        if single not in pair or several not in pair:
            continue
        one, many = pair[single], pair[several]

        def ratio(field: str, one: dict[str, Any] = one, many: dict[str, Any] = many) -> str:
            return f"{many[field] / one[field]:.2f}x" if one[field] else "-"

        lines.append(
            f"  {name}: sends/s {_num(one['sends_per_s'], 0)} -> {_num(many['sends_per_s'], 0)} "
            f"({ratio('sends_per_s')}), deliveries/s {_num(one['deliveries_per_s'], 0)} -> "
            f"{_num(many['deliveries_per_s'], 0)} ({ratio('deliveries_per_s')}); "
            f"p99 {_num(one['latency_ms']['p99'])} -> {_num(many['latency_ms']['p99'])} ms; "
            f"missing {one['missing'] + many['missing']}, dup {one['duplicates'] + many['duplicates']}; "
            f"Redis CPU {_num(many.get('redis_cpu_pct'), 0)}%"
        )
    return lines


def render_cluster(report: dict[str, Any]) -> str:
    """The report of ``--cluster N`` as printed on stdout."""
    results, meta = report["results"], report["meta"]
    cluster = meta["cluster"]
    single, several = cluster["labels"]
    n = cluster["instances"]
    parts = [
        f"chatsvc cluster benchmark — {meta['cpu_model']}, {meta['cpu_count']} cores: the same workload against "
        f"1 instance (no Redis) and against {n} instances sharing rooms through Redis, on one database: "
        + (f"{meta.get('postgres')} (bench/pg.py)" if cluster.get("engine") == "postgres" else "an SQLite file"),
        f"1 instance on cores {cluster['single_instance_cores']}; {n} instances on {cluster['instance_cores']}, "
        f"Redis on {cluster['redis_cores']} ({cluster['redis_server'] or 'redis-server'}); "
        f"load generator on {meta['loadgen_cores']} ({meta['workers']} worker process(es))",
        "server env: " + " ".join(f"{k}={v}" for k, v in meta["server_env"].items()),
        f"sockets of the {n}-instance run: {cluster['placement']}, so most deliveries cross Redis",
        "",
    ]
    table = socket_table(results)
    if table:
        parts += [
            "Socket workloads (sends/s = acked; srv CPU% and RSS summed over the instances, Redis not included):",
            table,
            "",
        ]
    comparison = cluster_comparison(results, single, several)
    if comparison:
        parts += [f"{several} / {single}:", *comparison, ""]
    if cluster["shared_cores"]:
        if cluster["redis_cores"]:
            where = (
                f"shared {len(cluster['redis_cores'])} core(s) of this {meta['cpu_count']}-core machine "
                "(the load generator had the rest)"
            )
        else:
            where = "were not pinned (they shared every core with the load generator)"
        parts += [
            f"NOTE: the {n} instances and Redis {where}: the {n}-instance figure cannot show scaling; "
            "it shows what the Redis fan-out costs. With a core per instance it would show scaling.",
            "",
        ]
    parts += saturation_warning(results)
    if report["targets"]:
        parts += ["Checks:", targets_text(report["targets"]), ""]
    parts.append(f"total time {meta['total_s']:.0f} s")
    return "\n".join(parts)


def webhook_cost(results: dict[str, Any]) -> float | None:
    """Issue 16: A's sends/s with webhooks on (every recipient offline) over the plain figure."""
    pair = results.get("A", {})
    if "plain" not in pair or "webhook on" not in pair or not pair["plain"]["sends_per_s"]:
        return None
    return float(pair["webhook on"]["sends_per_s"]) / float(pair["plain"]["sends_per_s"])


def render_webhook(report: dict[str, Any]) -> str:
    """The report of ``--webhook`` as printed on stdout."""
    results, meta = report["results"], report["meta"]
    parts = [
        f"chatsvc webhook benchmark — {meta['cpu_model']}, {meta['cpu_count']} cores; server on cores "
        f"{meta['server_cores']}, load generator on {meta['loadgen_cores']} ({meta['workers']} worker process(es))",
        f"{meta['webhook']['layout']}; receiver: {meta['webhook']['receiver']}",
        "server env: " + " ".join(f"{k}={v}" for k, v in meta["server_env"].items()),
        "",
        socket_table(results),
        "",
    ]
    ratio = webhook_cost(results)
    if ratio is not None:
        on = results["A"]["webhook on"]
        hook = on.get("webhook", {})
        parts += [
            f"webhook on / plain: sends/s {ratio:.3f}x (cost {100 * (1 - ratio):.1f} %); "
            f"calls received {hook.get('calls')}, outbox pending after the drain {hook.get('pending_after_drain')}",
            f"{meta['webhook'].get('sender', 'sender: on the server')}; sender CPU {hook.get('sender_cpu_s', '-')} s",
            "",
        ]
        check = {"target": "A sends/s webhook on / plain", "value": ratio, "op": ">=", "bound": 0.9, "unit": "x"}
        check["met"] = ratio >= 0.9
        parts += ["Checks:", targets_text([check]), ""]
    parts += saturation_warning(results)
    parts.append(f"total time {meta['total_s']:.0f} s")
    return "\n".join(parts)


def node_peer_line(meta: dict[str, Any]) -> str:
    """Which Node peer ran, or why it did not."""
    versions = meta.get("node_versions") or {}
    if not versions:
        skipped = meta.get("node_skipped")
        return f"node: Node peer skipped ({skipped})" if skipped else "node: Node peer not run (--no-node)"
    return (
        f"node: Node peer, socket.io {versions.get('socket.io')} on Node {versions.get('node')}, every message "
        f"committed by better-sqlite3 {versions.get('better-sqlite3')} (WAL, synchronous=FULL), any token accepted"
    )


def postgres_line(meta: dict[str, Any]) -> str:
    """Which PostgreSQL the PostgreSQL column ran on, or why it did not."""
    version = meta.get("postgres")
    if not version:
        skipped = meta.get("postgres_skipped")
        return (
            f"{PG_LABEL}: PostgreSQL column skipped ({skipped})"
            if skipped
            else f"{PG_LABEL}: PostgreSQL column not run (--no-postgres, or no workload of A-D, H, R)"
        )
    settings = meta.get("postgres_settings") or {}
    shown = ", ".join(f"{k}={settings[k]}" for k in ("fsync", "synchronous_commit", "shared_buffers") if k in settings)
    return f"{PG_LABEL}: chatsvc on the benchmark's own {version} ({shown}; bench/pg.py), same users and rooms"


def client_line(meta: dict[str, Any]) -> str:
    """Which load generator drove the sockets."""
    if meta.get("client") == "sio-js":
        version = (meta.get("node_versions") or {}).get("socket.io-client")
        return (
            f"load generator: socket.io-client {version} on Node (long-polling first, then the upgrade; "
            "every packet decoded by the client)"
        )
    return "load generator: bench/rawsio.py (WebSocket only, frames cut by hand, events found by substring search)"


def node_ratio_lines(results: dict[str, Any]) -> list[str]:
    """chatsvc over the Node peer: sends/s and p99 of A-D, and RSS per idle connection in I."""
    lines = []
    for name in SOCKET_WORKLOADS:
        sends = _ratio(results, name, "sends_per_s", "node")
        deliveries = _ratio(results, name, "deliveries_per_s", "node")
        p99 = _ratio(results, name, "p99", "node")
        if sends is not None and deliveries is not None:
            lines.append(
                f"  {name}: sends/s {sends:.2f}x, deliveries/s {deliveries:.2f}x, p99 {_num(p99)}x "
                f"({_num(results[name]['chatsvc']['latency_ms']['p99'])} vs "
                f"{_num(results[name]['node']['latency_ms']['p99'])} ms)"
            )
    rss = _ratio(results, "I", "rss_per_connection_kb", "node")
    if rss is not None:
        idle = results["I"]
        lines.append(
            f"  I: RSS per idle connection {rss:.2f}x ({idle['chatsvc']['rss_per_connection_kb']:.1f} vs "
            f"{idle['node']['rss_per_connection_kb']:.1f} KB), idle CPU {idle['chatsvc']['idle_cpu_pct']:.1f}% vs "
            f"{idle['node']['idle_cpu_pct']:.1f}%"
        )
    return lines


def handshake_lines(results: dict[str, Any]) -> list[str]:
    """socket.io-client runs: per workload and server, sockets upgraded to WebSocket and how long it took."""
    lines = []
    for name in [*SOCKET_WORKLOADS, "I"]:
        for server, r in results.get(name, {}).items():
            if "upgraded" not in r:
                continue
            lines.append(
                f"  {name} {server}: {r['upgraded']:,} of {r['sockets']:,} upgraded; connect p50 "
                f"{_num(r['connect_ms']['p50'])} p99 {_num(r['connect_ms']['p99'])} ms, upgrade p50 "
                f"{_num(r['upgrade_ms']['p50'])} p99 {_num(r['upgrade_ms']['p99'])} ms"
            )
    return lines


def render(report: dict[str, Any]) -> str:
    """The whole report as printed on stdout."""
    if "cluster" in report["meta"]:
        return render_cluster(report)
    if "webhook" in report["meta"]:
        return render_webhook(report)
    results = report["results"]
    meta = report["meta"]
    parts = [
        f"chatsvc benchmark — {meta['cpu_model']}, {meta['cpu_count']} cores; server on cores {meta['server_cores']}, "
        f"load generator on {meta['loadgen_cores']} ({meta['workers']} worker process(es))",
        "server env: "
        + " ".join(f"{k}={v}" for k, v in meta["server_env"].items())
        + "  (SCRYPT_N=16: cheap password hashing, only to create the users quickly)",
        f"baseline: plain python-socketio AsyncServer on aiohttp, {meta['baseline_loop']} event loop, broadcast only",
        node_peer_line(meta),
        postgres_line(meta),
        client_line(meta),
        *([steadiness.describe(meta["steadiness"])] if meta.get("steadiness") else []),
        "",
    ]
    table = socket_table(results)
    if table:
        parts += [
            "Socket workloads (latency = send -> delivery at every receiver; sends/s = acked; "
            "'!' = load generator saturated):",
            table,
            "",
        ]
    ratios = []
    for name in SOCKET_WORKLOADS:
        sends, deliveries = _ratio(results, name, "sends_per_s"), _ratio(results, name, "deliveries_per_s")
        if sends is not None and deliveries is not None:
            ratios.append(f"  {name}: sends/s {sends:.2f}x, deliveries/s {deliveries:.2f}x")
    if ratios:
        parts += ["chatsvc/baseline ratios:", *ratios, ""]
    pg_ratios = []
    for name in SOCKET_WORKLOADS:
        sends = _ratio(results, name, "sends_per_s", "chatsvc", PG_LABEL)
        p99 = _ratio(results, name, "p99", "chatsvc", PG_LABEL)
        if sends is not None and p99 is not None:
            pg_ratios.append(f"  {name}: sends/s {sends:.2f}x, p99 {p99:.2f}x")
    if pg_ratios:
        parts += [f"{PG_LABEL}/chatsvc ratios (chatsvc on PostgreSQL over chatsvc on SQLite):", *pg_ratios, ""]
    node_ratios = node_ratio_lines(results)
    if node_ratios:
        parts += ["chatsvc/node ratios (Node peer: socket.io 4 + better-sqlite3, synchronous=FULL):", *node_ratios, ""]
    handshakes = handshake_lines(results)
    if handshakes:
        parts += ["socket.io-client handshakes (connect = long-polling open + namespace; upgrade = from the start):"]
        parts += [*handshakes, ""]
    parts += saturation_warning(results)
    table = http_table(results)
    if table:
        parts += ["HTTP workloads (sequential requests, latency at the client):", table]
        for name in "HR":
            if name in results:
                parts.append(f"  {name}: {results[name]['scale']}")
                if PG_LABEL in results[name]:
                    parts.append(f"  {name} ({PG_LABEL}): {results[name][PG_LABEL]['scale']}")
        parts.append("")
    if "I" in results:
        parts += [idle_summary(server, result) for server, result in results["I"].items()]
        parts.append("")
    if report["targets"]:
        parts += [
            f"Targets (issue 5; chatsvc/node: issue 13; {PG_LABEL}: issue 14):",
            targets_text(report["targets"]),
            "",
        ]
    parts.append(f"total time {meta['total_s']:.0f} s")
    return "\n".join(parts)
