"""A NAT lab in Linux network namespaces, for tests of circuit relay, AutoNAT and DCUtR.

    ns pub   (the "internet"): bridge br0, 203.0.113.10/24 (TEST-NET-3, RFC 5737)
    ns ra    router of side a: wan 203.0.113.1/24 on br0, lan 10.0.1.1/24, MASQUERADE out of wan
    ns na    node of side a: eth0 10.0.1.2/24, default route via 10.0.1.1
    ns rb/nb the same for side b: 203.0.113.2, 10.0.2.0/24

A router's MASQUERADE keeps the source port when it can (Linux picks the original port first),
so the mapping of a node's listen port is predictable and a TCP hole punch (DCUtR's simultaneous
open from both listen ports) can pass: a "cone" side. Unsolicited packets to a router are dropped
(as home routers do), not answered with a RST. With `--random-fully` every new mapping gets
a random port: a "symmetric" side, where the punch cannot pass. Routers have no default route,
so a dial to the other side's private address fails at once (ICMP unreachable) instead of
hanging until the dial timeout.

Fixture `nat_lab(kind_a, kind_b)`: builds the lab with unique namespace names, yields a NatLab,
and always removes it (killing what still runs inside). Skips only where namespaces cannot be
made (not root, no `ip`/`iptables`), saying why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

PUBLIC_NET = "203.0.113"
RELAY_IP = f"{PUBLIC_NET}.10"


def _sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


class NatLab:
    """Namespaces `pub`, and per side ('a', 'b') a router and a node; see the module docstring."""

    def __init__(self, kinds: dict[str, str]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.kinds = kinds
        self.ns = {name: f"bsw-{tag}-{name}" for name in ("pub", "ra", "na", "rb", "nb")}
        self.node_ip = {"a": "10.0.1.2", "b": "10.0.2.2"}
        self.wan_ip = {"a": f"{PUBLIC_NET}.1", "b": f"{PUBLIC_NET}.2"}

    def exec_prefix(self, where: str) -> list[str]:
        """Command prefix that runs a program inside namespace `where` ('pub', 'na', 'nb', ...)."""
        return ["ip", "netns", "exec", self.ns[where]]

    def create(self) -> None:
        for ns in self.ns.values():
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        pub = self.ns["pub"]
        _sh("ip", "-n", pub, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", pub, "addr", "add", f"{RELAY_IP}/24", "dev", "br0")
        _sh("ip", "-n", pub, "link", "set", "br0", "up")
        for side, sub in (("a", "1"), ("b", "2")):
            r, n = self.ns[f"r{side}"], self.ns[f"n{side}"]
            _sh("ip", "-n", r, "link", "add", "wan", "type", "veth", "peer", "name", f"w{side}",
                "netns", pub)
            _sh("ip", "-n", pub, "link", "set", f"w{side}", "master", "br0", "up")
            _sh("ip", "-n", r, "addr", "add", f"{self.wan_ip[side]}/24", "dev", "wan")
            _sh("ip", "-n", r, "link", "set", "wan", "up")
            _sh("ip", "-n", r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", n)
            _sh("ip", "-n", r, "addr", "add", f"10.0.{sub}.1/24", "dev", "lan")
            _sh("ip", "-n", r, "link", "set", "lan", "up")
            _sh("ip", "-n", n, "addr", "add", f"{self.node_ip[side]}/24", "dev", "eth0")
            _sh("ip", "-n", n, "link", "set", "eth0", "up")
            _sh("ip", "-n", n, "route", "add", "default", "via", f"10.0.{sub}.1")
            _sh(*self.exec_prefix(f"r{side}"), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            rule = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if self.kinds[side] == "symmetric":
                rule.append("--random-fully")
            _sh(*self.exec_prefix(f"r{side}"), "iptables", *rule)
            # Like a home router: unsolicited packets to the router itself are dropped, not
            # answered with a RST (a RST would abort the other side's half of a hole punch).
            _sh(*self.exec_prefix(f"r{side}"), "iptables", "-A", "INPUT", "-i", "wan", "-m",
                "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP")

    def destroy(self) -> None:
        """Kill what still runs in our namespaces, then delete them (veths go with them)."""
        for ns in self.ns.values():
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (the CI machine runs the suite as root)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/setup.sh installs iptables)"
    probe = f"bsw-probe-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def nat_lab():
    """Factory: nat_lab(kind_a, kind_b) with kinds 'cone' or 'symmetric' -> a created NatLab."""
    why = _why_no_netns()
    if why:
        pytest.skip(why)
    labs: list[NatLab] = []

    def make(kind_a: str, kind_b: str) -> NatLab:
        lab = NatLab({"a": kind_a, "b": kind_b})
        labs.append(lab)
        lab.create()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.destroy()
