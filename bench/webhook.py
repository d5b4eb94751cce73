"""``python -m bench --webhook``: what webhooks for unseen messages cost the send path (issue 16).

Workload A's rooms and senders, with every other member offline (only the
senders' sockets connect), run twice against one chatsvc on the same
database: without webhooks ("plain"), then restarted with
``CHATSVC_WEBHOOK_URL`` pointing at a receiver on loopback in this process
("webhook on"), so that every message stored becomes an outbox row and one
signed call. The receiver answers 204 at once and counts the calls. The
check: the webhook run's sends/s is at least 90 % of the plain run's.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from bench import report
from bench.run import Bench, Target
from bench.servers import free_port

SECRET = "bench-webhook-secret-0123456789abcdef"
PLAIN, WITH_WEBHOOK = "plain", "webhook on"
# How long the outbox may take to drain after a run before the figures are taken.
DRAIN_S = 30.0


class WebhookBench(Bench):
    """Workload A with only the senders online, without and with webhooks, per repetition."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.webhook_on = False
        self.calls = 0
        self.receiver_url = ""
        self.drained: list[dict[str, Any]] = []

    def _server_env(self) -> dict[str, str]:
        env = super()._server_env()
        if self.webhook_on:
            env.update({"CHATSVC_WEBHOOK_URL": self.receiver_url, "CHATSVC_WEBHOOK_SECRET": SECRET})
        return env

    async def _receive(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        return web.Response(status=204)

    async def _pending(self) -> float | None:
        """chatsvc's ``chatsvc_webhook_pending`` gauge."""
        assert self.http is not None and self.chatsvc is not None
        async with self.http.get(self.chatsvc.url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("chatsvc_webhook_pending "):
                    return float(line.split()[1])
        return None

    async def _drain(self, calls_before: int) -> dict[str, Any]:
        """Wait (bounded) until the outbox is empty; what the receiver got."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        pending = await self._pending()
        while pending and loop.time() < deadline:
            await asyncio.sleep(0.2)
            pending = await self._pending()
        return {"calls": self.calls - calls_before, "pending_after_drain": pending}

    async def run(self) -> dict[str, Any]:
        """Per repetition: A (senders only) plain, then with webhooks; the report as a dict."""
        args = self.args
        workers = args.workers or max(1, len(self.gen_cores) if self.gen_cores else 1)
        self.pool = self.make_pool(workers)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        receiver = web.Application()
        receiver.router.add_post("/hook", self._receive)
        runner = web.AppRunner(receiver, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.receiver_url = f"http://127.0.0.1:{port}/hook"
        runs: list[dict[str, Any]] = []
        try:
            await self.start_chatsvc()
            specs, mode, rate = await self.specs_for("A")
            senders_only = [spec for spec in specs if spec.send_room is not None]
            for _ in range(args.repeat):
                pair: dict[str, Any] = {}
                for label, on in ((PLAIN, False), (WITH_WEBHOOK, True)):
                    if self.webhook_on != on:
                        assert self.chatsvc is not None
                        await self.chatsvc.stop()
                        self.webhook_on = on
                        await self.start_chatsvc()
                    assert self.chatsvc is not None
                    calls_before = self.calls
                    result = await self.socket_workload("A", Target(label, [self.chatsvc]), senders_only, mode, rate)
                    if on:
                        result["webhook"] = await self._drain(calls_before)
                    pair[label] = result
                runs.append(pair)
            self.results["A"] = report.median_run("A", runs)
            if len(runs) > 1:
                self.repetitions["A"] = runs
        finally:
            await self.tear_down()
            await runner.cleanup()
        return self.report(workers)

    def meta(self, workers: int) -> dict[str, Any]:
        """The main benchmark's meta, and what the comparison is."""
        meta = super().meta(workers)
        for key in ("baseline_loop", "node_versions", "node_skipped"):
            del meta[key]
        meta["webhook"] = {
            "labels": [PLAIN, WITH_WEBHOOK],
            "layout": "workload A with only the senders connected: every other member offline",
            "receiver": "aiohttp on loopback in the coordinator, 204 at once",
        }
        return meta
