"""The attacks simulation end to end, small: the command writes its matrix, and with one
protocol-correct attacker scaling its update by 1e6, the coordinate median keeps the honest
nodes' held-out loss within 5% of the honest-only swarm while FedAvg does not."""
from __future__ import annotations

import json

from bitswarm.simulations.attacks import main


def test_the_matrix_shows_median_robust_and_fedavg_not(tmp_path, capsys):
    out = tmp_path / "attacks"
    assert main(["--honest", "2", "--attackers", "1", "--rounds", "1", "--local-steps", "1",
                 "--rules", "fedavg,median", "--attacks", "none,scaled", "--files-per-node", "4",
                 "--eval-files", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    loss = {(r["rule"], r["attack"]): r["heldout_loss"] for r in results}
    assert all(r["honest_agree"] for r in results)
    assert abs(loss["median", "scaled"] / loss["median", "none"] - 1) < 0.05
    assert loss["fedavg", "scaled"] is None or loss["fedavg", "scaled"] > 1.2 * loss["fedavg", "none"]
    table = (out / "matrix.md").read_text()
    assert table.startswith("| rule | honest-only loss | scaled |") and "| median |" in table
