"""Two benchmark reports side by side: ``python -m bench.compare BEFORE.json AFTER.json``.

Absolute figures drift between runs on a shared machine; the ratios of
chatsvc to the baseline and to the Node peer measured within each run are the
fairer comparison, so they are shown too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Pick = Callable[[dict[str, Any]], float | None]


def _get(*keys: str) -> Pick:
    def pick(results: dict[str, Any]) -> float | None:
        node: Any = results
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) else None

    return pick


def _ratio(name: str, *field: str, other: str = "baseline") -> Pick:
    def pick(results: dict[str, Any]) -> float | None:
        chatsvc, theirs = _get(name, "chatsvc", *field)(results), _get(name, other, *field)(results)
        return chatsvc / theirs if chatsvc is not None and theirs else None

    return pick


def _either(*picks: Pick) -> Pick:
    """The first figure found: reports before the Node peer held workload I's figures without a server level."""

    def pick(results: dict[str, Any]) -> float | None:
        return next((value for value in (p(results) for p in picks) if value is not None), None)

    return pick


FIGURES: list[tuple[str, Pick]] = [
    *[
        row
        for name in "ABCD"
        for row in (
            (f"{name} chatsvc sends/s", _get(name, "chatsvc", "sends_per_s")),
            (f"{name} chatsvc deliveries/s", _get(name, "chatsvc", "deliveries_per_s")),
            (f"{name} chatsvc p99 ms", _get(name, "chatsvc", "latency_ms", "p99")),
            (f"{name} sends/s ratio to baseline", _ratio(name, "sends_per_s")),
            (f"{name} server CPU %", _get(name, "chatsvc", "server_cpu_pct")),
        )
    ],
    ("H newest p50 ms", _get("H", "requests", "newest", "latency_ms", "p50")),
    ("H random p99 ms", _get("H", "requests", "random", "latency_ms", "p99")),
    ("R findChatroom p50 ms", _get("R", "requests", "findChatroom", "latency_ms", "p50")),
    ("R list p50 ms", _get("R", "requests", "list", "latency_ms", "p50")),
    ("A sends/s ratio to node", _ratio("A", "sends_per_s", other="node")),
    ("C sends/s ratio to node", _ratio("C", "sends_per_s", other="node")),
    ("D p99 ratio to node", _ratio("D", "latency_ms", "p99", other="node")),
    (
        "I KB per idle connection",
        _either(_get("I", "chatsvc", "rss_per_connection_kb"), _get("I", "rss_per_connection_kb")),
    ),
    ("I idle CPU %", _either(_get("I", "chatsvc", "idle_cpu_pct"), _get("I", "idle_cpu_pct"))),
    ("I KB per idle connection to node", _ratio("I", "rss_per_connection_kb", other="node")),
]


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A table of the figures both reports have: before, after, and after/before."""
    lines = [f"{'figure':<32} {'before':>12} {'after':>12} {'after/before':>13}"]
    for label, pick in FIGURES:
        old, new = pick(before["results"]), pick(after["results"])
        if old is None and new is None:
            continue
        change = f"{new / old:.2f}x" if old and new is not None else "-"
        lines.append(f"{label:<32} {_fmt(old):>12} {_fmt(new):>12} {change:>13}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def main(argv: list[str] | None = None) -> None:
    """Print the comparison of two JSON reports."""
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    print(compare(json.loads(args.before.read_text()), json.loads(args.after.read_text())))


if __name__ == "__main__":
    main()
