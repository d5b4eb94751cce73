"""Prometheus metrics of one application, in its own registry (tests build many apps in one process).

The send path pays almost nothing: the writer and the fan-out only add to
plain integers, which a collector reads when ``/metrics`` is scraped; gauges
of sockets and rooms are counted at scrape time from the Socket.IO manager.
The time to each send's ack goes into a histogram of plain integers too
(:class:`PlainHistogram`); only HTTP requests use prometheus_client's own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from chatsvc.state import AppState

# Most requests and acks take well under a millisecond to tens of milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Label of requests that matched no route, so unknown paths cannot grow the label set.
UNMATCHED_ROUTE = "(unmatched)"
SEND_EVENT = "sendMessage"


class Metrics:
    """The metrics of one chatsvc application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "chatsvc_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "chatsvc_http_request_duration_seconds",
            "Time from receiving an HTTP request to its response, by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.send_ack = PlainHistogram(
            "chatsvc_send_ack_seconds",
            "sendMessage: time from receiving the event to sending its acknowledgement (stored durably)",
            LATENCY_BUCKETS,
        )
        self.registry.register(self.send_ack)

    def bind(self, state: AppState) -> None:
        """Also report what the application's writer and Socket.IO server count."""
        self.registry.register(_StateCollector(state))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request."""
        method = method if method in KNOWN_METHODS else "OTHER"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def observe_socket_event(self, event: str, seconds: float) -> None:
        """Record how long a socket event took up to its ack; only sends are kept."""
        if event == SEND_EVENT:
            self.send_ack.observe(seconds)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class PlainHistogram(Collector):
    """A histogram without labels or locks, for an observation on every send.

    prometheus_client's ``Histogram.observe`` walks the buckets and takes a
    lock twice; the event loop is the only writer here, so a list of counts
    and a bisection do, and the cumulative buckets are summed when scraped.
    """

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, bounds
        # counts[i]: observations above bounds[i - 1] and at most bounds[i]; the last one above every bound.
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def describe(self) -> list[Metric]:
        """Nothing up front, like the other collectors here."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The cumulative buckets, their count and sum."""
        buckets, seen = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            seen += count
            buckets.append((bound, seen))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.total)


class _StateCollector(Collector):
    """Reads counters kept as plain integers by the writer and the fan-out, and counts sockets and rooms."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        """Nothing up front: names are only known from collect()."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        state = self._state
        sockets, rooms, memberships = state.sio.socket_counts()
        yield GaugeMetricFamily("chatsvc_connected_sockets", "Socket.IO connections open on this instance", sockets)
        yield GaugeMetricFamily(
            "chatsvc_joined_rooms", "Chat rooms with at least one socket of this instance in them", rooms
        )
        yield GaugeMetricFamily(
            "chatsvc_room_sockets", "Sockets in chat rooms on this instance, counted once per room joined", memberships
        )
        writer = state.writer
        yield CounterMetricFamily(
            "chatsvc_messages_stored",
            "Chat messages stored (retries of a stored message not counted)",
            writer.messages_stored,
        )
        yield CounterMetricFamily(
            "chatsvc_db_write_batches",
            "Message batches committed by the writer, one transaction each",
            writer.batches_written,
        )
        yield CounterMetricFamily(
            "chatsvc_deliveries",
            "Socket.IO event packets queued to sockets of this instance (a broadcast counts once per recipient)",
            state.sio.deliveries,
        )
        yield CounterMetricFamily(
            "chatsvc_socket_events_inline",
            "sendMessage, markRead and typing events handled as their WebSocket frame was read, "
            "without python-socketio's dispatch",
            state.sio.inline_events,
        )
        yield CounterMetricFamily(
            "chatsvc_read_marks",
            "markRead events (and sidecar marks) handed to the read positions",
            state.reads.marks_received,
        )
        yield CounterMetricFamily(
            "chatsvc_read_mark_writes",
            "UPDATE statements that stored read positions, one transaction each (marks waiting together are one)",
            state.reads.statements,
        )
        engine = state.sio.eio
        yield GaugeMetricFamily(
            "chatsvc_pending_sessions",
            "Engine.IO sessions open on this instance that have not completed the Socket.IO connect",
            len(engine.pending),
        )
        yield CounterMetricFamily(
            "chatsvc_handshakes_refused",
            "Engine.IO handshakes refused because too many sessions had not completed the Socket.IO connect",
            engine.handshakes_refused,
        )
        yield CounterMetricFamily(
            "chatsvc_sockets_cut_off",
            "Sockets disconnected because more waited unread on them than their send queue may hold",
            engine.sockets_cut_off,
        )
        yield CounterMetricFamily(
            "chatsvc_malformed_packets",
            "Malformed Engine.IO or Socket.IO packets received (each logged, within a rate, as one warning line)",
            engine.malformed_input.count,
        )
        webhooks = state.webhooks
        if webhooks is not None:
            yield GaugeMetricFamily(
                "chatsvc_webhook_pending",
                "Webhook deliveries in the outbox (all instances), as of this instance's last round",
                webhooks.pending,
            )
            yield GaugeMetricFamily(
                "chatsvc_webhook_sender_up",
                "1 while the webhook sender runs (with CHATSVC_WEBHOOK_SENDER=process: its process has made a round)",
                1 if webhooks.up else 0,
            )
            yield CounterMetricFamily(
                "chatsvc_webhook_sent", "Webhook deliveries answered with 2xx by this instance", webhooks.sent
            )
            yield CounterMetricFamily(
                "chatsvc_webhook_failed",
                "Webhook deliveries given up by this instance after the retry window",
                webhooks.failed,
            )
            yield CounterMetricFamily(
                "chatsvc_webhook_attempts_failed",
                "Webhook attempts that failed and were scheduled again (error answer, timeout, no connection)",
                webhooks.attempts_failed,
            )
            yield CounterMetricFamily(
                "chatsvc_webhook_unneeded",
                "Webhook deliveries settled without a call: every member but the sender was online in the room",
                webhooks.unneeded,
            )


METRICS = web.AppKey("chatsvc_metrics", Metrics)
