"""Rate-limited logging of what peers can trigger: bounded lines, counted suppression, every
kind of refusal still visible; and a flood of bad gossip through the real intake."""
from __future__ import annotations

import logging

from bitswarm.federation.log_limit import RateLimitedLog, reason_key
from bitswarm.federation.rounds import intake as intake_mod
from bitswarm.federation.rounds.intake import ManifestIntake


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_suppressed_then_summary(caplog):
    clock = Clock()
    lim = RateLimitedLog(logging.getLogger("t.limit"), burst=3, period_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, "t.limit"):
        shown = [lim.log(logging.INFO, "k", "line %d", i) for i in range(100)]
        assert shown == [True] * 3 + [False] * 97
        assert lim.log(logging.INFO, "other", "another kind")          # its own budget
        clock.t = 10.5
        assert lim.log(logging.INFO, "k", "line after")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[:4] == ["line 0", "line 1", "line 2", "another kind"]
    assert msgs[4] == "97 more 'k' message(s) suppressed in 10 s" and msgs[5] == "line after"


def test_keys_are_bounded():
    lim = RateLimitedLog(logging.getLogger("t.keys"), max_keys=8, clock=Clock())
    for i in range(10_000):
        lim.log(logging.DEBUG, f"key {i}", "x")
    assert len(lim._keys) == 8
    assert reason_key("rejected", "wrong swarm: 'a' != 'b'") == "rejected: wrong swarm"
    assert len(reason_key("p", "x" * 1000)) < 60


def test_a_flood_of_invalid_gossip_logs_a_few_lines(caplog):
    intake = ManifestIntake(peer_id="12D3KooWme", swarm="s", base_model="00" * 32,
                            lora={"rank": 1, "alpha": 1.0, "target_modules": ["q_proj"],
                                  "freeze_A": False},
                            max_payload=1000, max_rounds_ahead=2, max_peers_per_round=8,
                            rule="fedavg")
    intake_mod._LOG._keys.clear()         # a fresh window: earlier tests share the limiter
    with caplog.at_level(logging.INFO, "bitswarm.federation.rounds.intake"):
        for i in range(2000):
            intake.on_gossip(f"peer{i % 50}", b"\x00junk" + bytes([i % 256]))
    lines = [r for r in caplog.records if "invalid gossip" in r.getMessage()]
    assert 1 <= len(lines) <= 5, len(lines)
