"""Shaped links for the processes engine: one Linux network namespace per node, all joined by
a bridge in a hub namespace, every node's interface shaped by `tc netem` (delay, rate, loss:
the kernel's own network emulator, tc-netem(8)); nothing is modelled in Python. A kernel
without sch_netem can still shape bandwidth alone, with the token bucket filter (tc-tbf(8));
latency or loss then fail before anything starts, saying so.

A packet from node A to node B leaves A's interface through A's netem qdisc, so each
direction sees the scenario's one-way latency once, and `rate` caps each node's upload. Needs
root and iproute2 (`ip`, `tc`); `why_unavailable()` says what is missing. Addresses:
10.88.0.0/16, node i at 10.88.<i // 250>.<i % 250 + 1>.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid

from .scenario import LinkSpec


def _sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def _probe_qdisc(kind: list[str]) -> str | None:
    """None if qdisc `kind` can be added to a veth in a fresh namespace, else tc's error."""
    probe = f"bswp-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    try:
        subprocess.run(["ip", "-n", probe, "link", "add", "bswa", "type", "veth", "peer", "name",
                        "bswb"], capture_output=True)
        r = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "bswa",
                            "root", *kind], capture_output=True, text=True)
        return None if r.returncode == 0 else r.stderr.strip()
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def has_netem() -> bool:
    return _probe_qdisc(["netem", "delay", "1ms"]) is None


def why_unavailable(link: LinkSpec | None = None) -> str | None:
    """None when namespaces (and the qdisc `link` needs) can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2)"
    err = _probe_qdisc(["pfifo"])
    if err is not None:
        return err
    if link is not None and (link.latency_ms or link.loss) and not has_netem():
        return ("this kernel has no netem qdisc (sch_netem), which latency and loss need; "
                "bandwidth alone works (tc-tbf)")
    return None


class LinkLab:
    """Namespaces for `n` nodes with every link shaped as `link`. Use as a context manager:
    entering creates them (RuntimeError naming the failed command), leaving kills what runs
    inside and deletes them."""

    def __init__(self, n: int, link: LinkSpec) -> None:
        tag = uuid.uuid4().hex[:6]
        self.hub = f"bsw{tag}-hub"
        self.ns = [f"bsw{tag}-{i}" for i in range(n)]
        self.ip = [f"10.88.{i // 250}.{i % 250 + 1}" for i in range(n)]
        self.link = link

    def exec_prefix(self, i: int) -> list[str]:
        """Command prefix that runs a program in node i's namespace."""
        return ["ip", "netns", "exec", self.ns[i]]

    def qdisc_args(self) -> list[str]:
        """The root qdisc of every node's interface: netem, or tbf for bandwidth alone on a
        kernel without netem; [] for unshaped links."""
        L, args = self.link, []
        if L.latency_ms:
            args += ["delay", f"{L.latency_ms:g}ms"]
        if L.bandwidth_mbit:
            args += ["rate", f"{L.bandwidth_mbit:g}mbit"]
        if L.loss:
            args += ["loss", f"{100 * L.loss:g}%"]
        if args and not (L.latency_ms or L.loss) and not has_netem():
            # burst: 10 ms at the rate (at least a few MTUs); queued at most 500 ms.
            burst = max(16_000, int(L.bandwidth_mbit * 1e6 / 8 / 100))
            return ["tbf", "rate", f"{L.bandwidth_mbit:g}mbit", "burst", str(burst),
                    "latency", "500ms"]
        return ["netem", *args] if args else []

    def __enter__(self) -> "LinkLab":
        qdisc = self.qdisc_args()
        try:
            _sh("ip", "netns", "add", self.hub)
            _sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            _sh("ip", "-n", self.hub, "link", "set", "br0", "up")
            for i, ns in enumerate(self.ns):
                _sh("ip", "netns", "add", ns)
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
                _sh("ip", "-n", self.hub, "link", "add", f"p{i}", "type", "veth", "peer", "name",
                    "eth0", "netns", ns)
                _sh("ip", "-n", self.hub, "link", "set", f"p{i}", "master", "br0", "up")
                _sh("ip", "-n", ns, "addr", "add", f"{self.ip[i]}/16", "dev", "eth0")
                _sh("ip", "-n", ns, "link", "set", "eth0", "up")
                if qdisc:
                    _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                        *qdisc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in [*self.ns, self.hub]:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in [*self.ns, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
