"""The gateway's own Prometheus metrics, on prometheus_client's default registry (which
/metrics exposes, with whatever else the process registered there)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "vars_gateway_requests_total", "HTTP requests answered by the gateway", ["route", "status"]
)
TTFT = Histogram(
    "vars_gateway_ttft_seconds",
    "Time from a chat request's arrival to its first content token leaving the gateway",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
STREAMS = Gauge("vars_gateway_active_streams", "Chat replies being relayed right now")
DISCONNECTS = Counter(
    "vars_gateway_client_disconnects_total", "Streamed replies whose client went away before the end"
)
