"""Uploads and downloads of large files: throughput, and the server's memory while many uploads run at once.

``python -m bench.files`` starts chatsvc on a loopback port with a fresh
database (files in the folder beside it), logs one user in, and measures:

1. upload throughput: ``--rounds`` sequential ``POST /file/upload`` of a
   ``--size`` MiB file (random bytes behind a PDF header, so it is accepted);
2. download throughput: as many sequential ``GET /file/<name>`` of it;
3. memory: ``--concurrent`` uploads of that file at once, ``--rounds`` times,
   while the server's RSS is sampled every 20 ms. An upload is streamed to disk,
   never held whole, so the peak must stay near the RSS before (the check:
   growth at most ``--max-rss-growth`` MiB, far below concurrent × size).

It prints a report, writes it as JSON (``bench-results/files-<time>.json``),
and exits 1 if the memory check failed. Throughputs are medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import _cpu_model
from bench.servers import ServerProcess, free_port, peak_rss_bytes, rss_bytes

MIB = 2**20
SERVER_ENV = {"CHATSVC_SCRYPT_N": "16", "CHATSVC_REGISTER_RATE": "0", "CHATSVC_LOG_LEVEL": "WARNING"}
RSS_SAMPLE_S = 0.02


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.files``."""
    p = argparse.ArgumentParser(prog="python -m bench.files", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, default=5.0, help="file size in MiB (5)")
    p.add_argument("--rounds", type=int, default=5, help="sequential uploads and downloads, and concurrent rounds (5)")
    p.add_argument("--concurrent", type=int, default=20, help="uploads at once in the memory rounds (20)")
    p.add_argument("--max-rss-growth", type=float, default=40.0, help="allowed peak RSS growth in MiB (40)")
    p.add_argument("--json", type=Path, help="where to write the JSON report (default bench-results/files-<time>.json)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, files, server log)")
    return p


def _payload(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


async def _upload(session: aiohttp.ClientSession, url: str, token: str, data: bytes) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="bench.pdf", content_type="application/pdf")
    async with session.post(url + "/file/upload", data=form, headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"upload answered {resp.status}: {body}")
        return dict(body)


async def _login(session: aiohttp.ClientSession, url: str) -> str:
    user = {"username": "bench", "password": "bench-secret", "nickName": "Bench", "email": "bench@example.com"}
    async with session.post(url + "/user/register", json=user) as resp:
        assert resp.status == 201, await resp.text()
    async with session.post(url + "/user/login", json=user) as resp:
        return str((await resp.json())["token"])


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the three measurements against a fresh chatsvc; the figures."""
    size = int(args.size * MIB)
    data = _payload(size)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
    serve = ["-m", "chatsvc", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(workdir / "chat.db")]
    limit = {"CHATSVC_MAX_UPLOAD": str(max(size, 10 * MIB))}
    server = ServerProcess("chatsvc", serve, port, {**env, **SERVER_ENV, **limit}, workdir / "chatsvc.log")
    await server.start(None)
    try:
        async with aiohttp.ClientSession() as session:
            token = await _login(session, server.url)
            uploads, downloads = [], []
            stored: dict[str, Any] = {}
            for _ in range(args.rounds):
                started = time.perf_counter()
                stored = await _upload(session, server.url, token, data)
                uploads.append(size / MIB / (time.perf_counter() - started))
            for _ in range(args.rounds):
                started = time.perf_counter()
                async with session.get(stored["url"]) as resp:
                    got = await resp.read()
                downloads.append(size / MIB / (time.perf_counter() - started))
                assert got == data, "downloaded bytes differ"
            rss_before = rss_bytes(server.pid)
            peak = rss_before
            stop = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, rss_bytes(server.pid))
                    await asyncio.sleep(RSS_SAMPLE_S)

            sampler = asyncio.create_task(sample())
            concurrent_rates = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                await asyncio.gather(*(_upload(session, server.url, token, data) for _ in range(args.concurrent)))
                concurrent_rates.append(args.concurrent * size / MIB / (time.perf_counter() - started))
            stop.set()
            await sampler
            rss_after = rss_bytes(server.pid)
            return {
                "size_mib": args.size,
                "rounds": args.rounds,
                "concurrent": args.concurrent,
                "upload_mib_s": statistics.median(uploads),
                "download_mib_s": statistics.median(downloads),
                "concurrent_upload_mib_s": statistics.median(concurrent_rates),
                "rss_before_mib": rss_before / MIB,
                "rss_peak_mib": peak / MIB,
                "rss_after_mib": rss_after / MIB,
                "rss_growth_mib": (peak - rss_before) / MIB,
                "vm_hwm_mib": peak_rss_bytes(server.pid) / MIB,
            }
    finally:
        await server.stop()


def render(r: dict[str, Any], passed: bool, limit: float) -> str:
    """The report as text."""
    return "\n".join(
        [
            f"files: {r['size_mib']:g} MiB file, {r['rounds']} rounds, {r['concurrent']} concurrent uploads",
            f"upload   {r['upload_mib_s']:8.1f} MiB/s (one at a time, median)",
            f"download {r['download_mib_s']:8.1f} MiB/s (one at a time, median)",
            f"upload   {r['concurrent_upload_mib_s']:8.1f} MiB/s in all with {r['concurrent']} at once (median)",
            f"server RSS {r['rss_before_mib']:.1f} MiB before, {r['rss_peak_mib']:.1f} MiB peak during the concurrent "
            f"uploads (+{r['rss_growth_mib']:.1f} MiB; {r['concurrent']} files in memory would be "
            f"+{r['concurrent'] * r['size_mib']:g} MiB), {r['rss_after_mib']:.1f} MiB after",
            f"memory check (growth <= {limit:g} MiB): " + ("passed" if passed else "FAILED"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Measure; print the report, write the JSON, and return 0 only if the memory check passed."""
    args = build_parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chatsvc-bench-files-"))
    try:
        result = asyncio.run(measure(args, workdir))
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    passed = result["rss_growth_mib"] <= args.max_rss_growth
    document = {"meta": {"cpu": _cpu_model(), "python": sys.version.split()[0]}, "result": result, "passed": passed}
    path: Path = args.json or Path("bench-results") / f"files-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(render(result, passed, args.max_rss_growth))
    print(f"JSON report: {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
