"""DP in the virtual engine: with `secure_aggregation` the coordinators run masked rounds and
each member adds only its share of the noise (distributed DP), on the surrogate learners."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bitswarm.federation.privacy import GaussianRDPAccountant
from bitswarm.federation.rounds.secure import threshold
from bitswarm.simulations.runner import run_scenario
from bitswarm.simulations.scenario import ScenarioError, load_scenario

BASE = """
name = "dp"
nodes = 4
rounds = 3
surrogate = true
local_steps = 3
codec = "fp32"
dp_clip = 1.0
"""


def run(tmp_path: Path, name: str, extra: str) -> dict:
    p = tmp_path / f"{name}.toml"
    p.write_text(BASE + extra)
    run_scenario(p, tmp_path / name, log=lambda *_: None)
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_secure_aggregation_sum_equals_local_noise_of_the_members_share(tmp_path):
    """Secure rounds at sigma give the swarm plain FedAvg would give with every member adding
    sigma / sqrt(t) (t = threshold(4) = 3): the same noise draws (one seeded source), so the
    held-out losses agree within the masked sum's fixed-point step (2^-30 of the clamp); the
    accountant reports epsilon for sigma (the sum's), not for the share. Without noise, secure
    and plain rounds agree too."""
    sigma, t = 0.5, threshold(4)
    secure = run(tmp_path, "secure", f"dp_noise = {sigma}\nsecure_aggregation = true\n")
    share = run(tmp_path, "share", f"dp_noise = {sigma / math.sqrt(t)}\n")
    full = run(tmp_path, "full", f"dp_noise = {sigma}\n")
    for s in (secure, share, full):
        assert s["rounds_completed"] == 3 and s["adapters_identical"]
    assert secure["dp"]["secure_aggregation"] and not share["dp"]["secure_aggregation"]
    assert secure["final_heldout_loss"] == pytest.approx(share["final_heldout_loss"], rel=1e-6)
    # the full local noise lands elsewhere: the share really is smaller
    assert abs(full["final_heldout_loss"] - share["final_heldout_loss"]) > 1e-4
    assert secure["dp"]["epsilon"] == pytest.approx(GaussianRDPAccountant(sigma, 3).epsilon(1e-5))
    assert share["dp"]["epsilon"] > secure["dp"]["epsilon"]
    plain0 = run(tmp_path, "plain0", "")
    secure0 = run(tmp_path, "secure0", "secure_aggregation = true\n")
    assert secure0["final_heldout_loss"] == pytest.approx(plain0["final_heldout_loss"], rel=1e-6)
    assert secure0["dp"]["epsilon"] is None


@pytest.mark.parametrize("extra, why", [
    ('aggregation = "median"\n', "fedavg"),
    ("dp_clip = 0.0\n", "dp_clip > 0"),
    ('engine = "processes"\nsurrogate = false\n', "processes"),
])
def test_secure_aggregation_needs_fedavg_a_clip_and_the_virtual_engine(tmp_path, extra, why):
    p = tmp_path / "bad.toml"
    p.write_text(BASE.replace("dp_clip = 1.0\n", "").replace("surrogate = true\n", "")
                 + ("" if "dp_clip" in extra else "dp_clip = 1.0\n")
                 + ("" if "surrogate" in extra else "surrogate = true\n")
                 + extra + "secure_aggregation = true\n")
    with pytest.raises(ScenarioError, match=f"secure_aggregation.*{why}"):
        load_scenario(p)


def test_secure_rounds_of_two_nodes_are_abandoned_and_reveal_nothing(tmp_path):
    """The masked rounds really run: a sum of 2 would hand each node the other's update, so
    every round is abandoned (fewer than 3 members) and the swarm stays at G_0."""
    p = tmp_path / "two.toml"
    p.write_text(BASE.replace("nodes = 4", "nodes = 2") + "secure_aggregation = true\n")
    lines: list[str] = []
    s = run_scenario(p, tmp_path / "two", log=lines.append)
    assert sum("abandoned" in line for line in lines) == 2 * 3      # both nodes, every round
    assert s["final_heldout_loss"] == s["initial_heldout_loss"]


def test_dp_plot_draws_local_and_distributed_sweeps_on_one_figure(tmp_path):
    """`bitswarm simulate dp-plot`: two real (surrogate) DP sweeps, local and distributed, and
    a reference run in one PNG; a folder without sweep.csv and a bad pair fail with exit 2."""
    from bitswarm.simulations.cli import main
    from bitswarm.simulations.runner import sweep
    p = tmp_path / "local.toml"
    p.write_text(BASE)
    q = tmp_path / "secure.toml"
    q.write_text(BASE + "secure_aggregation = true\n")
    quiet = dict(log=lambda *_: None)
    sweep(p, "dp_noise", ["0", "1"], tmp_path / "a", **quiet)
    sweep(q, "dp_noise", ["0", "1"], tmp_path / "b", **quiet)
    png = tmp_path / "fig" / "dp.png"
    assert main(["dp-plot", "--sweep", f"local={tmp_path / 'a'}", "--sweep",
                 f"distributed={tmp_path / 'b'}", "--reference",
                 f"no DP={tmp_path / 'a' / 'dp_noise=0' / 'summary.json'}", "--out",
                 str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["dp-plot", "--sweep", f"x={tmp_path}", "--out", str(png)]) == 2
    assert main(["dp-plot", "--sweep", "no-label", "--out", str(png)]) == 2


def test_sweep_add_keeps_earlier_values_and_sorts_them(tmp_path):
    """`sweep --add`: a later sweep into the same folder adds its values to the earlier
    sweep.csv (sorted by value; a value run again replaces its row); another key is refused."""
    from bitswarm.simulations.runner import sweep
    p = tmp_path / "s.toml"
    p.write_text(BASE)
    quiet = dict(log=lambda *_: None)
    first = sweep(p, "dp_noise", ["0", "4"], tmp_path / "sw", **quiet)
    rows = sweep(p, "dp_noise", ["1", "4"], tmp_path / "sw", add=True, **quiet)
    assert [r["dp_noise"] for r in rows] == ["0", "1", "4"]
    assert rows[0]["final_heldout_loss"] == pytest.approx(first[0]["final_heldout_loss"])
    assert rows[0]["dp_epsilon"] is None and rows[1]["dp_epsilon"] > rows[2]["dp_epsilon"]
    assert (tmp_path / "sw" / "sweep.md").read_text().count("\n") == 5
    with pytest.raises(ScenarioError, match="--add needs the same key"):
        sweep(p, "dp_clip", ["2"], tmp_path / "sw", add=True, **quiet)
