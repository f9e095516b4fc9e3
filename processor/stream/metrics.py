"""Prometheus metrics and the HTTP endpoints operators and Kubernetes probe.

`/metrics` (Prometheus text format), `/healthz` (the processing loop has turned recently:
a stalled loop fails it and the pod is restarted) and `/readyz` (a model is loaded, the
state of the assigned partitions is restored and partitions are assigned).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class Metrics:
    """Every metric of one processor, in its own registry (tests run several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records_in = Counter("anomaly_records_in", "Input records consumed",
                                  ["partition"], registry=r)
        self.records_scored = Counter("anomaly_records_scored", "Scored records written",
                                      ["status"], registry=r)
        self.alerts = Counter("anomaly_alerts", "Alerts written", registry=r)
        self.dead_letters = Counter("anomaly_dead_letters", "Dead letters written",
                                    ["reason"], registry=r)
        self.batch_size = Histogram("anomaly_batch_size", "Records per batch",
                                    buckets=_SIZE_BUCKETS, registry=r)
        self.inference_seconds = Histogram("anomaly_inference_seconds",
                                           "One forward pass over a batch's windows",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("anomaly_batch_seconds",
                                       "Decode, score, produce and commit of one batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.delay_seconds = Histogram(
            "anomaly_end_to_end_delay_seconds",
            "From the oldest record's Kafka timestamp to its batch being committed",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge("anomaly_consumer_lag", "Records behind the partition end",
                                  ["partition"], registry=r)
        self.state_keys = Gauge("anomaly_state_keys", "Keys with a window in memory",
                                registry=r)
        self.restore_seconds = Histogram("anomaly_restore_seconds",
                                         "Restoring windows from the changelog",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("anomaly_model_info", "The active model version (value 1)",
                                ["version"], registry=r)
        self.aborted = Counter("anomaly_transactions_aborted", "Aborted batch transactions",
                               registry=r)
        self.ready = Gauge("anomaly_ready", "1 when the processor is ready", registry=r)

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)


class Health:
    """What the probes ask: is the loop turning, and is the processor ready?"""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self._beat = time.monotonic()
        self.model_loaded = False
        self.restored = False
        self.assigned = False
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._beat = time.monotonic()

    def alive(self) -> bool:
        with self._lock:
            return time.monotonic() - self._beat < self.stall_after_s

    def ready(self) -> bool:
        return self.model_loaded and self.restored and self.assigned and self.alive()


class HealthServer:
    """A small threaded HTTP server; it never touches the Kafka clients."""

    def __init__(self, port: int, metrics: Metrics, health: Health, host: str = "0.0.0.0"
                 ) -> None:
        metrics_, health_ = metrics, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    metrics_.ready.set(1 if health_.ready() else 0)
                    self._send(200, generate_latest(metrics_.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = health_.alive()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif self.path == "/readyz":
                    ok = health_.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the structured logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
