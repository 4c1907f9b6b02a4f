"""A run's report: DIR/summary.json, DIR/rounds.csv (one row per node and round), and PNG plots
(matplotlib): held-out loss vs round and vs bytes sent (with the centralized baseline on the
same axes), divergence between nodes' adapters, per-node bytes in/out, round times.

summary.json keys: scenario, engine, surrogate (true when a quadratic stood in for training),
nodes, rounds_completed, initial_heldout_loss, final_heldout_loss, centralized_heldout_loss
(null without the baseline), reduction_captured ((initial - final) / (initial - centralized)),
bytes_sent_total (every byte the nodes sent: gossip copies and payloads), fp32_bytes_equivalent
(the same traffic with every update payload as raw float32), payload_compression (fp32 payload
bytes / actual payload bytes), adapters_identical (the final round, as the nodes adopted it),
final_adapters_identical (every node that reached the final adapter G_rounds held the same one
when it stopped: the processes engine counts the catch-ups after the final round; the virtual
engine's nodes stop as they adopt), final_adapters (how many distinct adapters those nodes held
then; null in the virtual engine), wall_s, notes, dp (null
without dp_clip: clip, noise, delta, secure_aggregation, epsilon, update_norm_median per round).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

log = logging.getLogger("bitswarm.simulations.report")

ROW_FIELDS = ("round", "node", "state", "trained", "included", "contributors", "adapter_sha256",
              "bytes_sent", "bytes_received", "round_s", "train_loss", "divergence",
              "heldout_loss")


def summarize(s, result: dict, centralized: list[float] | None) -> dict:
    rounds = result["rounds"]
    fp32_payload = result["payload_transfers"] * 4 * result["values_per_update"]
    init = result["initial_loss"]
    # The processes engine evaluates only the final adapter on the evaluation folder.
    final = result.get("final_eval_loss") or (rounds[-1]["heldout_loss"] if rounds else None)
    central = centralized[-1] if centralized else None
    captured = None
    if central is not None and final is not None and init - central != 0:
        captured = (init - final) / (init - central)
    return {
        "scenario": s.path, "name": s.name, "engine": s.engine, "surrogate": s.surrogate,
        "nodes": s.nodes, "rounds_completed": sum(1 for r in rounds if r.get("completed", True)),
        "initial_heldout_loss": init, "final_heldout_loss": final,
        "centralized_heldout_loss": central, "reduction_captured": captured,
        "final_vs_centralized": None if central is None else final / central - 1,
        "bytes_sent_total": result["bytes_sent_total"],
        "fp32_bytes_equivalent": result["bytes_sent_total"] - result["payload_bytes"] + fp32_payload,
        "payload_compression": fp32_payload / result["payload_bytes"] if result["payload_bytes"] else None,
        "adapters_identical": bool(rounds and rounds[-1]["adapters_identical"]),
        "final_adapters_identical": result["final_adapters"] == 1
        if "final_adapters" in result else bool(rounds and rounds[-1]["adapters_identical"]),
        "final_adapters": result.get("final_adapters"),
        "codec": s.codec, "aggregation": s.aggregation,
        "outer": None if (s.outer_lr, s.outer_momentum) == (1.0, 0.0)
        else {"lr": s.outer_lr, "momentum": s.outer_momentum},
        "dp": None if not s.dp_clip else {
            "clip": s.dp_clip, "noise": s.dp_noise, "delta": s.dp_delta,
            "secure_aggregation": s.secure_aggregation,
            "epsilon": rounds[-1].get("dp_epsilon") if rounds else None,
            "update_norm_median": [r.get("update_norm_median") for r in rounds]},
        "wall_s": result["wall_s"], "notes": result.get("notes", []),
    }


def write_report(out: Path, s, result: dict, centralized: list[float] | None) -> dict:
    """Write summary.json, rounds.csv, rounds_swarm.csv and the plots; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    held = {r["round"]: r["heldout_loss"] for r in result["rounds"]}
    with open(out / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in result["rows"]:
            w.writerow({**row, "heldout_loss": held.get(row["round"])})
    with open(out / "rounds_swarm.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in result["rounds"] for k in r))
        keys += ["centralized_heldout_loss"] if centralized else []
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for i, r in enumerate(result["rounds"]):
            w.writerow({**r, **({"centralized_heldout_loss": centralized[i]} if centralized else {})})
    summary = summarize(s, result, centralized)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:
        plot(out, s, result, centralized)
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'bitswarm[sim]')")
    return summary


def plot(out: Path, s, result: dict, centralized: list[float] | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    xs = [r["round"] + 1 for r in rounds]
    loss = [r["heldout_loss"] for r in rounds]
    tag = " (surrogate training)" if s.surrogate else ""
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot([0, *xs], [result["initial_loss"], *loss], "o-", label=f"swarm ({s.nodes} nodes)")
    if centralized:
        ax[0].plot([0, *xs], [result["initial_loss"], *centralized], "s--",
                   label="centralized (pooled data, same tokens)")
    ax[0].set(xlabel="round", ylabel="held-out loss", title=f"{s.name}: loss vs round{tag}")
    ax[0].legend()
    mb = [r["bytes_sent_cum"] / 1e6 for r in rounds]
    ax[1].plot([0, *mb], [result["initial_loss"], *loss], "o-")
    ax[1].set(xlabel="MB sent (all nodes)", ylabel="held-out loss",
              title=f"loss vs traffic, codec {s.codec}")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    by_node: dict[int, list] = {}
    for row in result["rows"]:
        if "divergence" in row:
            by_node.setdefault(row["node"], []).append(row)
    for n, rs in sorted(by_node.items())[:64]:
        ax[0].plot([r["round"] + 1 for r in rs], [r["divergence"] for r in rs], ".-", alpha=0.6)
    ax[0].set(xlabel="round", ylabel="L2 distance to the majority adapter",
              title="divergence between nodes")
    nodes = sorted(by_node)
    ax[1].bar([n - 0.2 for n in nodes], [sum(r["bytes_sent"] for r in by_node[n]) / 1e6
                                         for n in nodes], width=0.4, label="out")
    ax[1].bar([n + 0.2 for n in nodes], [sum(r["bytes_received"] for r in by_node[n]) / 1e6
                                         for n in nodes], width=0.4, label="in")
    ax[1].set(xlabel="node", ylabel="MB", title="bytes per node")
    ax[1].legend()
    ax[2].plot(xs, [r["round_s"] for r in rounds], "o-")
    ax[2].set(xlabel="round", ylabel="seconds" + (" (virtual)" if s.engine == "virtual" else ""),
              title="round time")
    fig.tight_layout()
    fig.savefig(out / "network.png", dpi=110)
    plt.close(fig)
