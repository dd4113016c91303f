"""Prometheus metrics of the gateway, plus the shards' own counters fetched on scrape.

With several gateway processes prometheus_client's multiprocess mode aggregates
them (``PROMETHEUS_MULTIPROC_DIR``, set by ``tokpay serve``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from tokpay.actors.protocol import FSYNC_BUCKETS, ShardStats

REQUESTS = Counter("tokpay_http_requests_total", "HTTP requests answered", ["route", "status"])
LATENCY = Histogram(
    "tokpay_http_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
BATCH_SIZE = Histogram(
    "tokpay_gateway_batch_items",
    "Items per batch sent from the gateway to a shard or the coordinator",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)

_children: dict[tuple[str, int], Any] = {}
_latency_children: dict[str, Any] = {}


def observe_request(route: str, status: int, seconds: float) -> None:
    key = (route, status)
    counter = _children.get(key)
    if counter is None:
        counter = _children[key] = REQUESTS.labels(route, str(status))
    counter.inc()
    latency = _latency_children.get(route)
    if latency is None:
        latency = _latency_children[route] = LATENCY.labels(route)
    latency.observe(seconds)


SHARD_METRICS: list[tuple[str, type[GaugeMetricFamily | CounterMetricFamily], str, str]] = [
    ("tokpay_shard_accounts", GaugeMetricFamily, "accounts", "Accounts per shard"),
    ("tokpay_shard_log_sequence", GaugeMetricFamily, "log_sequence", "Last log sequence per shard"),
    (
        "tokpay_shard_prepared",
        GaugeMetricFamily,
        "prepared",
        "Prepared (in-doubt) transactions per shard",
    ),
    ("tokpay_shard_batches", CounterMetricFamily, "batches", "Batches logged per shard"),
    (
        "tokpay_shard_durable_sequence",
        GaugeMetricFamily,
        "durable_sequence",
        "Log sequence the shard's store holds durably (the log before it is deleted)",
    ),
    (
        "tokpay_shard_store_bytes",
        GaugeMetricFamily,
        "store_bytes",
        "Bytes of the shard's store files",
    ),
    ("tokpay_shard_transfers", GaugeMetricFamily, "transfers", "Transfers the shard's store holds"),
    (
        "tokpay_shard_checkpoint_failures",
        CounterMetricFamily,
        "checkpoint_failures",
        "Failed store checkpoints",
    ),
]
"""(metric, kind, ``ShardStats`` field, help): one sample per shard each."""


class _ShardCollector:
    def __init__(self, stats: list[ShardStats], coordinator: dict[str, int]) -> None:
        self._stats = stats
        self._coordinator = coordinator

    def collect(self) -> Iterator[Any]:
        families = [
            (kind(name, help_text, labels=["shard"]), field)
            for name, kind, field, help_text in SHARD_METRICS
        ]
        fsync = HistogramMetricFamily(
            "tokpay_shard_fsync_seconds", "Log append + fsync time per batch", labels=["shard"]
        )
        for s in self._stats:
            label = [str(s.shard)]
            for family, field in families:
                family.add_metric(label, getattr(s, field))
            cumulative = 0
            buckets = []
            for bound, count in zip(FSYNC_BUCKETS, s.fsync_buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            fsync.add_metric(label, buckets, s.fsync_seconds)
        yield from (family for family, _ in families)
        yield fsync
        for name, value in self._coordinator.items():
            yield GaugeMetricFamily(
                f"tokpay_coordinator_{name}", f"Coordinator {name}", value=value
            )


def render(stats: list[ShardStats], coordinator: dict[str, int]) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
        gateway = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        gateway = generate_latest(REGISTRY)
    shards = CollectorRegistry()
    shards.register(_ShardCollector(stats, coordinator))
    return gateway + generate_latest(shards)
