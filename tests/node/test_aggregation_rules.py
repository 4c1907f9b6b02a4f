"""`--aggregation` end to end: two real nodes on the coordinate-wise median agree round after
round; a third node of the same swarm on another rule is never aggregated (updates and round
records name the rule), with the reason logged by the side that refused."""
from __future__ import annotations

import json

from bitswarm.simulations.local_swarm import kill_all, prepare_documents, start_node, wait_all

FAST = ["--local-steps", "3", "--ctx", "64", "--batch-size", "4", "--device", "cpu",
        "--rounds", "2", "--round-timeout", "60"]
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _rounds(p):
    return [json.loads(x) for x in (p.data_dir / "rounds.jsonl").read_text().splitlines()
            if json.loads(x).get("round", -1) >= 0]


def test_a_median_swarm_agrees_and_refuses_a_member_on_another_rule(tmp_path):
    docs = prepare_documents(tmp_path, 3, files_per_node=10)
    procs = []
    try:
        a = start_node(0, tmp_path, docs[0], "rules", [], ["--aggregation", "median",
                                                           "--min-peers", "2", *FAST,
                                                           "--round-timeout", "20"], ENV)
        procs.append(a)
        addr = a.multiaddr(timeout_s=120)
        b = start_node(1, tmp_path, docs[1], "rules", [addr], ["--aggregation", "median",
                                                               "--min-peers", "2", *FAST,
                                                           "--round-timeout", "20"], ENV)
        # Trains alone (--min-peers 0); a and b wait for 2 peer updates, so their rounds run to
        # the deadline while c's refused updates and records arrive.
        c = start_node(2, tmp_path, docs[2], "rules", [addr], ["--aggregation", "fedavg",
                                                               "--min-peers", "0", *FAST,
                                                               "--local-steps", "8"], ENV)
        procs += [b, c]
        wait_all(procs, 300)
    finally:
        kill_all(procs)
    ra, rb = _rounds(a), _rounds(b)
    assert [x["adapter_sha256"] for x in ra] == [x["adapter_sha256"] for x in rb]
    for x, y in zip(ra, rb):
        assert len(x["contributors"]) == 2 and x["contributors"] == y["contributors"]
    # The refusal is logged by whichever side hears the other first: with gossipsub peer
    # scoring on (peer_guard), a node that refused ~10 of a peer's messages stops publishing
    # to it, so c, which listens first, may silence a and b before they ever hear c.
    logs = a.log_path.read_text() + procs[2].log_path.read_text()
    assert ("aggregation rule 'fedavg' (ours is 'median')" in logs
            or "aggregation rule 'median' (ours is 'fedavg')" in logs)
