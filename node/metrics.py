"""`node start --metrics HOST:PORT`: the status fields (node/status.py) as Prometheus metrics,
read at scrape time from the same dict status.json is written from, so both always agree.

Served by prometheus_client's own HTTP server thread (a daemon thread of the library, outside the
trio loop: a scrape never waits on training). Metric names: bitswarm_round,
bitswarm_rounds_completed, bitswarm_peers, bitswarm_swarm_members, bitswarm_train_loss,
bitswarm_heldout_loss (nats/token), bitswarm_received_bytes_total, bitswarm_sent_bytes_total,
bitswarm_uptime_seconds, bitswarm_adapter_agrees (0/1), bitswarm_info{swarm, peer_id,
adapter_sha256}.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

_GAUGES = (("round", "round in progress"), ("rounds_completed", "rounds completed this session"),
           ("last_train_loss", "mean training loss of the last round, nats/token"),
           ("last_heldout_loss", "held-out loss after the last round, nats/token"),
           ("uptime_s", "seconds since the node started"),
           ("adapter_agrees", "1 when the last round aggregated every swarm member seen"))
_NAMES = {"last_train_loss": "train_loss", "last_heldout_loss": "heldout_loss",
          "uptime_s": "uptime_seconds"}


class _StatusCollector:
    def __init__(self, status) -> None:
        self.status = status

    def collect(self):
        f = self.status.fields
        for key, doc in _GAUGES:
            v = f.get(key)
            if v is not None:
                yield GaugeMetricFamily(f"bitswarm_{_NAMES.get(key, key)}", doc, value=float(v))
        yield GaugeMetricFamily("bitswarm_peers", "peers connected", value=len(f["peers"]))
        yield GaugeMetricFamily("bitswarm_swarm_members", "peers on the swarm's topic",
                                value=len(f["swarm_members"]))
        yield CounterMetricFamily("bitswarm_received_bytes", "bytes received", value=f["bytes_in"])
        yield CounterMetricFamily("bitswarm_sent_bytes", "bytes sent", value=f["bytes_out"])
        yield InfoMetricFamily("bitswarm", "the node", value={
            "swarm": str(f.get("swarm")), "peer_id": str(f.get("peer_id")),
            "adapter_sha256": str(f.get("adapter_sha256"))})


def parse_hostport(s: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port); ValueError otherwise."""
    host, sep, port = str(s).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{s!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def serve_metrics(hostport: str, status) -> None:
    """Start the metrics endpoint on hostport for `status` (a StatusFile). Raises ValueError
    naming --metrics when the address cannot be bound."""
    host, port = parse_hostport(hostport)
    reg = CollectorRegistry()
    reg.register(_StatusCollector(status))
    try:
        start_http_server(port, addr=host, registry=reg)
    except OSError as e:
        raise ValueError(f"--metrics {hostport}: cannot listen ({e.strerror or e})") from None
