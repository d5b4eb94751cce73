"""How steady this machine's cores are: a fixed piece of arithmetic, timed over and over on every core at once.

On a virtual machine the host may take the CPUs away for several milliseconds, a few times a second, without
the guest's steal counter showing it, and a thread's CPU time then counts the pause as running. Every
latency measured on such a machine carries those pauses in its tail whatever the server does, so the report
prints them next to the workloads (workload D's p99 above all). docs/performance.md, "The machine's own
pauses", has what they did to the figures of this project's machine.

Run alone: ``python -m bench.steadiness --seconds 10`` (every core), or ``--core N`` for one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

# About a millisecond of work per chunk: short enough to see a pause of a few milliseconds on its own.
CHUNK_S = 0.001
# A chunk that took this many times the median was interrupted: its extra time was taken from the process.
STRETCHED = 4.0


def _arithmetic(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i
    return total


def _rounds_per_chunk() -> int:
    rounds = 1000
    while True:
        start = time.perf_counter()
        _arithmetic(rounds)
        took = time.perf_counter() - start
        if took >= CHUNK_S / 4:
            return max(1, int(rounds * CHUNK_S / took))
        rounds *= 2


def measure(seconds: float) -> dict[str, Any]:
    """Time chunks of arithmetic on the calling thread for ``seconds``; how many were stretched, and by how much."""
    rounds = _rounds_per_chunk()
    durations: list[float] = []
    started = time.perf_counter()
    end = started + seconds
    while True:
        before = time.perf_counter()
        if before >= end:
            break
        _arithmetic(rounds)
        durations.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    median = statistics.median(durations)
    stretched = [d for d in durations if d >= STRETCHED * median]
    ordered = sorted(durations)
    return {
        "seconds": elapsed,
        "chunks": len(durations),
        "chunk_median_ms": median * 1e3,
        "chunk_p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        "longest_ms": ordered[-1] * 1e3,
        "stretched": len(stretched),
        # The share of the window the stretched chunks spent beyond the median: time the process did not get,
        # taken by the host or by another process on the core.
        "lost_pct": 100.0 * sum(d - median for d in stretched) / elapsed,
    }


def probe(cores: list[int], seconds: float) -> dict[str, Any]:
    """``measure`` on each of ``cores`` at once (a process pinned to each); the worst figures over all of them."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.steadiness", "--core", str(core), "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    per_core = {}
    for core, proc in zip(cores, procs, strict=True):
        out, _ = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"the steadiness probe on core {core} failed (exit {proc.returncode})")
        per_core[core] = json.loads(out)
    results = list(per_core.values())
    return {
        "seconds": seconds,
        "cores": cores,
        "per_core": per_core,
        "longest_ms": max(r["longest_ms"] for r in results),
        "chunk_p99_ms": max(r["chunk_p99_ms"] for r in results),
        "lost_pct": max(r["lost_pct"] for r in results),
        "stretched_per_s": max(r["stretched"] / r["seconds"] for r in results),
    }


def describe(result: dict[str, Any]) -> str:
    """One line for the report's header."""
    return (
        f"machine steadiness ({result['seconds']:g} s of ~1 ms arithmetic chunks on cores {result['cores']} at once, "
        f"before the workloads): {result['stretched_per_s']:.1f} chunks/s stretched >= {STRETCHED:g}x, "
        f"{result['lost_pct']:.1f} % of the time lost, chunk p99 {result['chunk_p99_ms']:.1f} ms, "
        f"longest {result['longest_ms']:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure one core (``--core``) and print its JSON, or every core and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.steadiness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to measure (5)")
    parser.add_argument("--core", type=int, default=None, help="measure this core only and print JSON")
    args = parser.parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
        print(json.dumps(measure(args.seconds)))
        return 0
    result = probe(list(range(os.cpu_count() or 1)), args.seconds)
    print(describe(result))
    for core, figures in result["per_core"].items():
        print(
            f"  core {core}: "
            + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
