"""Node configuration: one flat dataclass, a comment on each field, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from multiaddr import Multiaddr

from bitswarm.kernels.config import (CPU_STE_CHOICES, GPU_RUNTIME_CHOICES, GPU_STE_CHOICES,
                                      PROJECTIONS, LoRAConfig)


@dataclass
class NodeConfig:
    swarm: str                              # swarm name; the gossipsub topic derives from it
    data: Path                              # folder of local text documents (never shared)
    data_dir: Path                          # node state: identity key, adapter, logs
    model: Path | None = None               # HF bitnet checkpoint dir; None = built-in default
    listen: str = "/ip4/127.0.0.1/tcp/0"    # libp2p listen multiaddr
    peers: list[str] = field(default_factory=list)   # multiaddrs (…/p2p/<peer-id>) to dial
    bootstrap: list[str] = field(default_factory=list)   # DHT entry points (…/p2p/<peer-id>)
    mdns: bool = False                      # find swarm members on the LAN (mDNS)
    relay: bool = False                     # also relay for NATed peers (circuit relay v2 HOP)
    allow: frozenset[str] | None = None     # peer IDs whose updates count; None = any member
    swarm_key: str | None = None            # pnet pre-shared key, 64 hex chars; None = public
    metrics: str | None = None              # HOST:PORT of a Prometheus endpoint; None = off
    max_conns_per_ip: int = 16              # inbound connections from one IP (peer_guard)
    rounds: int | None = None               # federated rounds; None = until stopped
    local_steps: int = 20                   # optimizer steps per round
    lr: float = 1e-3                        # AdamW learning rate
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank r, alpha, targets, freeze_A
    min_peers: int = 1                      # other peers' updates that complete a round (quorum)
    round_timeout_s: float = 300.0          # deadline to collect a round's updates, seconds
    aggregation: str = "bounded-fedavg"     # the swarm's rule (federation.aggregation registry)
    codec: str = "int8"                     # our updates' codec (federation.codecs CODEC_NAMES)
    topk_fraction: float = 0.03             # share of values the top-k codec sends
    outer_lr: float = 1.0                   # DiLoCo outer step; lr 1 + momentum 0 = plain
    outer_momentum: float = 0.0             # Nesterov momentum of the outer step
    dp_clip: float | None = None            # DP-FedAvg clip norm C of our updates; None = off
    dp_noise: float = 0.0                   # noise multiplier sigma (std sigma x C)
    dp_delta: float = 1e-5                  # delta of the reported (epsilon, delta)
    dp_epsilon_budget: float | None = None  # stop before spending more epsilon
    secure_aggregation: bool = False        # rounds as secure aggregations (federation/rounds/secure.py)
    device: str = "auto"                    # auto | gpu | cpu
    embeddings: str = "gpu"                 # gpu | host: where a GPU keeps the vocab table
    recompute: str = "auto"                 # auto | on | off: layer recomputation (see cli)
    activation_memory_mib: int | None = None  # recompute auto's budget for saved activations
    gpu_ste: str = "auto"                   # auto | f32 | f16 | i16 | i8: STE input gradient
    cpu_ste: str = "auto"                   # auto | f32 | i24 | i16: ... on the CPU
    gpu_runtime: str = "auto"               # auto | wgpu | dawn: the WebGPU implementation
    batch_size: int = 8                     # sequences per step
    ctx: int = 128                          # tokens per training sequence
    seed: int = 0                           # local data sampling seed

    def __post_init__(self) -> None:
        self.data, self.data_dir = Path(self.data), Path(self.data_dir)
        if self.model is not None:
            self.model = Path(self.model)
        if not self.swarm or len(self.swarm) > 64 or not self.swarm.isprintable():
            raise ValueError(f"--swarm must be 1-64 printable characters, got {self.swarm!r}")
        checks = {   # flag: (value, ok); the expected form is the setting's (node/settings.py)
            "--rounds": (self.rounds, self.rounds is None or self.rounds >= 1),
            "--max-conns-per-ip": (self.max_conns_per_ip, self.max_conns_per_ip >= 1),
            "--local-steps": (self.local_steps, self.local_steps >= 1),
            "--lr": (self.lr, 0 < self.lr < 1),
            "--min-peers": (self.min_peers, self.min_peers >= 0),
            "--round-timeout": (self.round_timeout_s, self.round_timeout_s > 0),
            "--batch-size": (self.batch_size, self.batch_size >= 1),
            "--ctx": (self.ctx, self.ctx >= 2),   # the model bound: cli.preflight
            "--activation-memory": (self.activation_memory_mib, self.activation_memory_mib is None
                                    or self.activation_memory_mib >= 0),
            "--dp-clip": (self.dp_clip, self.dp_clip is None or (math.isfinite(self.dp_clip)
                                                                and self.dp_clip > 0)),
            "--dp-noise": (self.dp_noise, math.isfinite(self.dp_noise) and self.dp_noise >= 0),
            "--dp-delta": (self.dp_delta, 0 < self.dp_delta < 1),
            "--topk-fraction": (self.topk_fraction, 0 < self.topk_fraction <= 1),
            "--outer-lr": (self.outer_lr, math.isfinite(self.outer_lr) and 0 < self.outer_lr <= 10),
            "--outer-momentum": (self.outer_momentum, 0 <= self.outer_momentum < 1),
            "--dp-epsilon-budget": (self.dp_epsilon_budget, self.dp_epsilon_budget is None
                                    or self.dp_epsilon_budget > 0),
        }
        for flag, (value, ok) in checks.items():
            if not ok:
                raise ValueError(out_of_range(flag, value))
        if self.dp_clip is None and (self.dp_noise or self.dp_epsilon_budget is not None):
            raise ValueError("--dp-noise and --dp-epsilon-budget need --dp-clip C (the L2 norm "
                             "each update is clipped to)")
        from bitswarm.federation.aggregation import AGGREGATION_RULES
        from bitswarm.federation.codecs import CODEC_NAMES
        if self.secure_aggregation and self.aggregation != "fedavg":
            raise ValueError(f"--secure-aggregation sums masked updates, so only --aggregation "
                             f"fedavg can be computed from it; {self.aggregation!r} needs the "
                             f"individual updates")
        if self.secure_aggregation and self.dp_clip is None:
            raise ValueError("--secure-aggregation needs --dp-clip C: every update is clipped "
                             "to the swarm's L2 norm C before masking (--dp-noise may stay 0)")
        if self.codec not in CODEC_NAMES:
            raise ValueError(f"--codec must be one of {', '.join(CODEC_NAMES)}, got {self.codec!r}")
        if self.aggregation not in AGGREGATION_RULES:
            raise ValueError(f"--aggregation must be one of {', '.join(sorted(AGGREGATION_RULES))}, "
                             f"got {self.aggregation!r}")
        if self.device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"--device must be auto, gpu or cpu, got {self.device!r}")
        if self.recompute not in ("auto", "on", "off"):
            raise ValueError(f"--recompute must be auto, on or off, got {self.recompute!r}")
        if self.activation_memory_mib is not None and self.recompute != "auto":
            raise ValueError(f"--activation-memory is the budget of --recompute auto; with "
                             f"--recompute {self.recompute} every layer is "
                             f"{'recomputed' if self.recompute == 'on' else 'saved'}")
        if self.gpu_runtime not in GPU_RUNTIME_CHOICES:
            raise ValueError(f"--gpu-runtime must be one of {', '.join(GPU_RUNTIME_CHOICES)}, "
                             f"got {self.gpu_runtime!r}")
        if self.cpu_ste not in CPU_STE_CHOICES:
            raise ValueError(f"--cpu-ste must be one of {', '.join(CPU_STE_CHOICES)}, "
                             f"got {self.cpu_ste!r}")
        if self.gpu_ste not in GPU_STE_CHOICES:
            raise ValueError(f"--gpu-ste must be one of {', '.join(GPU_STE_CHOICES)}, "
                             f"got {self.gpu_ste!r}")
        if self.embeddings not in ("gpu", "host"):
            raise ValueError(f"--embeddings must be gpu or host, got {self.embeddings!r}")
        for flag, addrs in [("--listen", [self.listen]), ("--peer", self.peers),
                            ("--bootstrap", self.bootstrap)]:
            for addr in addrs:
                try:
                    ma = Multiaddr(addr)
                except Exception as e:  # the multiaddr library raises several types
                    raise ValueError(f"{flag}: bad multiaddr {addr!r}: {e}") from None
                if flag != "--listen" and "p2p" not in [p.name for p in ma.protocols()]:
                    raise ValueError(f"{flag} {addr!r} lacks /p2p/<peer-id>")
        if not isinstance(self.lora, LoRAConfig):
            raise ValueError(f"lora must be a LoRAConfig, got {type(self.lora).__name__}")


def out_of_range(flag: str, value) -> str:
    """The one-line error for a flag's value outside its range, naming the range."""
    from bitswarm.node.settings import BY_KEY
    expect = BY_KEY[flag[2:].replace("-", "_")].expect
    return f"{flag}: {value!r} is out of range; expected {expect}"


def lora_config(rank: int, alpha: float, targets: tuple[str, ...], freeze_a: bool) -> LoRAConfig:
    """The LoRAConfig of the --rank / --alpha / --targets / --freeze-a flags; raises ValueError
    naming the flag for a bad value."""
    if rank < 1:
        raise ValueError(out_of_range("--rank", rank))
    if not alpha > 0:
        raise ValueError(out_of_range("--alpha", alpha))
    bad = [t for t in targets if t not in PROJECTIONS]
    if bad or not targets:
        raise ValueError(f"--targets: unknown module(s) {bad}; choose from {list(PROJECTIONS)} or 'all'")
    return LoRAConfig(rank=rank, alpha=alpha, target_modules=tuple(targets), freeze_A=freeze_a)
