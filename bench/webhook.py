"""``python -m bench --webhook``: what webhooks for unseen messages cost the send path (issue 16).

Workload A's rooms and senders, with every other member offline (only the
senders' sockets connect), run twice against one chatsvc on the same
database: without webhooks ("plain"), then restarted with
``CHATSVC_WEBHOOK_URL`` pointing at a receiver on loopback in this process
("webhook on"), so that every message stored becomes an outbox row and one
signed call. The receiver answers 204 at once and counts the calls. The
check: the webhook run's sends/s is at least 90 % of the plain run's.

The receiver stands for the host application, which runs on other
machines: here it is a process of its own at niceness +10 beside the load
generator, so that its CPU (an aiohttp server answering every call) is
taken from idle time, not from the generator's, whose every delay lowers a
closed-loop workload's sends/s as much as the server's would.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
from pathlib import Path
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
# How long chatsvc may take to start its webhook sender process.
SENDER_START_S = 30.0
SENDER_MODULE = b"chatsvc.webhook_process"
# The receiver's niceness, as chatsvc's sender process has (chatsvc/webhook_process.py).
RECEIVER_NICE = 10


def serve_receiver(port: int, calls: Any, ready: Any) -> None:
    """The receiver process: count each POST to /hook (in ``calls``, shared) and answer 204 at once."""
    os.nice(RECEIVER_NICE)

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        calls.value += 1
        return web.Response(status=204)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


def sender_pid(server_pid: int) -> int | None:
    """The webhook sender process chatsvc started (chatsvc/webhook_process.py), if it runs (Linux)."""
    for task in Path(f"/proc/{server_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                if SENDER_MODULE in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WebhookBench(Bench):
    """Workload A with only the senders online, without and with webhooks, per repetition."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.webhook_on = False
        # Written by the receiver process only.
        self._calls = multiprocessing.get_context("spawn").RawValue("q", 0)
        self.receiver_url = ""
        self.drained: list[dict[str, Any]] = []
        self.sender: int | None = None

    def _server_env(self) -> dict[str, str]:
        env = super()._server_env()
        if self.webhook_on:
            env.update(
                {
                    "CHATSVC_WEBHOOK_URL": self.receiver_url,
                    "CHATSVC_WEBHOOK_SECRET": SECRET,
                    "CHATSVC_WEBHOOK_SENDER": self.args.webhook_sender,
                }
            )
        return env

    @property
    def calls(self) -> int:
        """Calls the receiver has answered."""
        return int(self._calls.value)

    async def _start_receiver(self, port: int) -> multiprocessing.process.BaseProcess:
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        process = context.Process(target=serve_receiver, args=(port, self._calls, ready), daemon=True)
        process.start()
        if not await asyncio.to_thread(ready.wait, SENDER_START_S):
            process.kill()
            raise RuntimeError(f"the webhook receiver was not up within {SENDER_START_S:g}s")
        return process

    async def _gauge(self, name: str) -> float | None:
        """One of chatsvc's gauges (``chatsvc_webhook_pending``, ``chatsvc_webhook_sender_up``)."""
        assert self.http is not None and self.chatsvc is not None
        async with self.http.get(self.chatsvc.url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    async def _pending(self) -> float | None:
        """chatsvc's ``chatsvc_webhook_pending`` gauge."""
        return await self._gauge("chatsvc_webhook_pending")

    async def _drain(self, calls_before: int, stored: int) -> dict[str, Any]:
        """Wait (bounded) until the outbox is empty and a call came for each message stored; what the receiver got."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        pending = await self._pending()
        # The gauge is as of the sender's last round: the calls tell whether it has seen the last messages.
        while (pending or self.calls - calls_before < stored) and loop.time() < deadline:
            await asyncio.sleep(0.2)
            pending = await self._pending()
        return {"calls": self.calls - calls_before, "pending_after_drain": pending}

    async def _place_sender(self) -> None:
        """Find chatsvc's webhook sender process and, when pinning, put it on the load generator's cores.

        chatsvc runs on one core here to stand for a busy server; its sender
        process inherits that core, where a real host's scheduler would run it
        on any other. It goes with the generator and the receiver instead, and
        its CPU is reported. With CHATSVC_WEBHOOK_SENDER=inline there is none.
        """
        assert self.chatsvc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SENDER_START_S
        self.sender = None
        while self.args.webhook_sender == "process" and loop.time() < deadline:
            self.sender = sender_pid(self.chatsvc.pid)
            if self.sender is not None:
                break
            await asyncio.sleep(0.1)
        if self.sender is None:
            self.log("no webhook sender process (inline sender)")
        else:
            if self.gen_cores:
                os.sched_setaffinity(self.sender, self.gen_cores)
            self.log(f"webhook sender pid {self.sender} on cores {self.gen_cores or 'any'}")
        # The run starts once the sender makes rounds: a process still starting would leave the outbox to fill.
        while await self._gauge("chatsvc_webhook_sender_up") != 1:
            if loop.time() > deadline:
                raise RuntimeError(f"chatsvc's webhook sender was not up within {SENDER_START_S:g}s")
            await asyncio.sleep(0.1)

    async def run(self) -> dict[str, Any]:
        """Per repetition: A (senders only) plain, then with webhooks; the report as a dict."""
        args = self.args
        workers = args.workers or max(1, len(self.gen_cores) if self.gen_cores else 1)
        self.pool = self.make_pool(workers)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        port = free_port()
        receiver = await self._start_receiver(port)
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
                        if on:
                            await self._place_sender()
                    assert self.chatsvc is not None
                    calls_before = self.calls
                    sender_cpu = cpu_seconds(self.sender) if on and self.sender is not None else None
                    result = await self.socket_workload("A", Target(label, [self.chatsvc]), senders_only, mode, rate)
                    if on:
                        result["webhook"] = await self._drain(calls_before, result["messages_sent"])
                        if sender_cpu is not None and self.sender is not None:
                            result["webhook"]["sender_cpu_s"] = round(cpu_seconds(self.sender) - sender_cpu, 2)
                    pair[label] = result
                runs.append(pair)
            self.results["A"] = report.median_run("A", runs)
            if len(runs) > 1:
                self.repetitions["A"] = runs
        finally:
            await self.tear_down()
            receiver.kill()
            await asyncio.to_thread(receiver.join)
        return self.report(workers)

    def meta(self, workers: int) -> dict[str, Any]:
        """The main benchmark's meta, and what the comparison is."""
        meta = super().meta(workers)
        for key in ("baseline_loop", "node_versions", "node_skipped"):
            del meta[key]
        meta["webhook"] = {
            "labels": [PLAIN, WITH_WEBHOOK],
            "layout": "workload A with only the senders connected: every other member offline",
            "receiver": f"aiohttp on loopback, a process of its own at niceness +{RECEIVER_NICE}, 204 at once",
            "sender": f"CHATSVC_WEBHOOK_SENDER={self.args.webhook_sender}; a sender process is pinned to the load "
            "generator's cores (its CPU: sender_cpu_s)",
        }
        return meta
