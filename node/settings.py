"""`node start`'s settings from four layers, each naming where a value came from.

Precedence, highest first (as git, uv and Flower's run config do):
  1. a command-line flag              --local-steps 40
  2. an environment variable          BITSWARM_LOCAL_STEPS=40
  3. the config file (TOML)           local_steps = 40
       --config FILE (or BITSWARM_CONFIG), else <data-dir>/config.toml when it exists;
       `node start` writes <data-dir>/config.toml on first start with the settings it ran with
  4. the built-in default

Keys are the flag names with `_` for `-` (`round_timeout`, `min_peers`, `peer` is a list,
`targets` a list or "all", `freeze_a` a bool). `node config show` prints the effective value and
source of each. Every value, whatever its source, goes through the same parser, and a bad one
fails with one line naming the flag, the source and the expected form (ValueError).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitswarm.federation.aggregation import AGGREGATION_RULES
from bitswarm.federation.codecs import CODEC_NAMES
from bitswarm.kernels.config import (ATTN_PROJECTIONS, CPU_STE_CHOICES, GPU_RUNTIME_CHOICES,
                                     GPU_STE_CHOICES, PROJECTIONS)

try:
    import tomllib
except ModuleNotFoundError:      # Python 3.10: the same parser, as a package
    import tomli as tomllib

ENV_PREFIX = "BITSWARM_"
CONFIG_FILE = "config.toml"


def _bool(s: Any) -> bool:
    if isinstance(s, bool):
        return s
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{s!r} is not a boolean")


def _targets(s: Any) -> tuple[str, ...]:
    items = s if isinstance(s, (list, tuple)) else str(s).split(",")
    items = [str(t).strip() for t in items if str(t).strip()]
    if items == ["all"]:
        return PROJECTIONS
    bad = [t for t in items if t not in PROJECTIONS]
    if bad or not items:
        raise ValueError(f"unknown module(s) {bad}; choose from {list(PROJECTIONS)} or 'all'")
    return tuple(items)


def _peers(s: Any) -> list[str]:
    items = s if isinstance(s, (list, tuple)) else str(s).replace(",", " ").split()
    return [str(p) for p in items]


def _hostport(s: Any) -> str | None:
    if s is None or s == "":
        return None
    from bitswarm.node.metrics import parse_hostport
    parse_hostport(s)
    return str(s)


def _peer_ids(s: Any) -> list[str]:
    """Peer IDs (base58 multihash, as `node id` prints) from a list or a comma/space string."""
    from libp2p.peer.id import ID
    items = s if isinstance(s, (list, tuple)) else str(s).replace(",", " ").split()
    out = []
    for p in map(str, items):
        try:
            ID.from_base58(p)
        except Exception:  # base58 / multihash errors come in several types
            raise ValueError(f"{p!r} is not a peer ID") from None
        out.append(p)
    return out


def _opt_path(s: Any) -> Path | None:
    return None if s is None or s == "" else _path(s)


def _opt_int(s: Any) -> int | None:
    return None if s is None or s == "" else _int(s)


def _opt_float(s: Any) -> float | None:
    return None if s is None or s == "" else _float(s)


def _int(s: Any) -> int:
    try:
        if isinstance(s, bool) or (isinstance(s, float) and not s.is_integer()):
            raise ValueError
        return int(s)
    except (TypeError, ValueError):
        raise ValueError(f"{s!r} is not an integer") from None


def _float(s: Any) -> float:
    try:
        if isinstance(s, bool):
            raise ValueError
        return float(s)
    except (TypeError, ValueError):
        raise ValueError(f"{s!r} is not a number") from None


def _path(s: Any) -> Path:
    if not str(s):
        raise ValueError("empty path")
    return Path(os.path.expanduser(str(s)))


@dataclass(frozen=True)
class Setting:
    """One setting of `node start`: its key, parser, default and help (the flag is derived)."""

    key: str                        # TOML key and the argparse dest, e.g. "local_steps"
    parse: Callable[[Any], Any]     # str (flag/env) or TOML value -> value; raises ValueError
    default: Any
    help: str
    expect: str                     # the expected form, named in errors
    choices: tuple[str, ...] | None = None
    required: bool = False
    repeat: bool = False            # flag given several times (--peer)
    is_flag: bool = False           # a switch without a value (--freeze-a)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(s: Any) -> str:
        if str(s) not in options:
            raise ValueError(f"{s!r} is not one of {', '.join(options)}")
        return str(s)
    return parse


START: tuple[Setting, ...] = (
    Setting("swarm", str, None, "swarm name: peers with the same name train together "
            "(the gossipsub topic derives from it)", "1-64 printable characters", required=True),
    Setting("data", _path, None, "folder of local documents (.txt .md .rst, .jsonl text or "
            "chat lines); they never leave this machine", "a folder of text files",
            required=True),
    Setting("strict", _bool, False, "a bad .jsonl line or a non-UTF-8 file is fatal (default: "
            "skipped with a warning naming it)", "true or false", is_flag=True),
    Setting("data_dir", _path, None, "node state: identity key, adapter, rounds.jsonl, "
            "node.log, config.toml", "a writable folder", required=True),
    Setting("model", _path, None, "Hugging Face bitnet checkpoint folder or llama.cpp bitnet "
            ".gguf file (default: the built-in model)", "a checkpoint folder or .gguf file"),
    Setting("listen", str, "/ip4/127.0.0.1/tcp/0", "libp2p listen multiaddr", "a multiaddr"),
    Setting("peer", _peers, [], "multiaddr .../p2p/<peer-id> of a peer to dial (repeatable)",
            "multiaddrs ending in /p2p/<peer-id>", repeat=True),
    Setting("bootstrap", _peers, [], "multiaddr .../p2p/<peer-id> of any reachable bitswarm "
            "node (repeatable): swarm members are then found through the Kademlia DHT",
            "multiaddrs ending in /p2p/<peer-id>", repeat=True),
    Setting("relay", _bool, False, "also relay for peers behind NATs (circuit relay v2); give it "
            "on a publicly reachable node, e.g. the bootstrap node", "true or false", is_flag=True),
    Setting("allow", _peer_ids, [], "peer ID whose updates may count (repeatable; with "
            "--allow-file: the union); default: every peer of the swarm", "peer IDs as `node id` "
            "prints them", repeat=True),
    Setting("mdns", _bool, False, "find swarm members on the same LAN with mDNS", "true or false",
            is_flag=True),
    Setting("swarm_key", _opt_path, None, "private network key file (`node swarm-key new "
            "FILE`): only nodes holding the same key can connect", "a swarm key file"),
    Setting("allow_file", _opt_path, None, "file of allowed peer IDs, one per line (# comments)",
            "a text file of peer IDs"),
    Setting("max_conns_per_ip", _int, 16, "inbound connections accepted from one IP address "
            "(raise it for many nodes behind one NAT, or many local nodes on 127.0.0.1)",
            "an integer >= 1"),
    Setting("metrics", _hostport, None, "serve the node's status as Prometheus metrics at "
            "HOST:PORT (e.g. 127.0.0.1:9464)", "HOST:PORT"),
    Setting("rounds", _opt_int, None, "federated rounds to run (default: until Ctrl-C)",
            "an integer >= 1"),
    Setting("local_steps", _int, 20, "AdamW steps on local data per round", "an integer >= 1"),
    Setting("lr", _float, 1e-3, "AdamW learning rate", "a number with 0 < lr < 1"),
    Setting("rank", _int, 8, "LoRA rank r", "an integer >= 1"),
    Setting("alpha", _float, 16.0, "LoRA alpha (the update is scaled by alpha / r)",
            "a number > 0"),
    Setting("targets", _targets, ATTN_PROJECTIONS, "comma-separated LoRA target modules, or "
            "'all'", f"names from {','.join(PROJECTIONS)}, or all"),
    Setting("freeze_a", _bool, False, "FFA-LoRA: train B only, so FedAvg is exact",
            "true or false", is_flag=True),
    Setting("min_peers", _int, 1, "other peers' updates that complete a round (quorum); 0 "
            "trains alone", "an integer >= 0"),
    Setting("round_timeout", _float, 300.0, "seconds to wait for peers' updates per round",
            "a number of seconds > 0"),
    Setting("aggregation", _choice(*sorted(AGGREGATION_RULES)), "bounded-fedavg",
            "the swarm's aggregation rule (every member must use the same: updates and round "
            "records name it)", ", ".join(sorted(AGGREGATION_RULES)),
            choices=tuple(sorted(AGGREGATION_RULES))),
    Setting("codec", _choice(*CODEC_NAMES), "int8", "how this node compresses its updates "
            "(with error feedback); peers decode every codec", ", ".join(CODEC_NAMES),
            choices=tuple(CODEC_NAMES)),
    Setting("topk_fraction", _float, 0.03, "top-k codec: the share of each tensor's values "
            "sent (the largest in magnitude)", "a number with 0 < fraction <= 1"),
    Setting("outer_lr", _float, 1.0, "outer learning rate of the global step (DiLoCo; with "
            "--outer-momentum 0 and 1.0 here: plain FedAvg); every member must use the same",
            "a number in (0, 10]"),
    Setting("outer_momentum", _float, 0.0, "Nesterov momentum of the global step (DiLoCo uses "
            "0.9 with --outer-lr 0.7); every member must use the same", "a number in [0, 1)"),
    Setting("dp_clip", _opt_float, None, "DP-FedAvg: clip each published update to this L2 "
            "norm (off by default)", "a number > 0"),
    Setting("dp_noise", _float, 0.0, "DP-FedAvg: Gaussian noise multiplier sigma (std sigma x "
            "dp-clip per coordinate), needs --dp-clip", "a number >= 0"),
    Setting("secure_aggregation", _bool, False, "secure aggregation (Bonawitz et al. 2017): "
            "peers see only the round cohort's sum of masked updates; needs --aggregation "
            "fedavg and --dp-clip (the bound each update is clipped to before masking); "
            "every member must use it", "true or false", is_flag=True),
    Setting("dp_delta", _float, 1e-5, "DP: the delta of the (epsilon, delta) reported",
            "a number in (0, 1)"),
    Setting("dp_epsilon_budget", _opt_float, None, "DP: stop before a round would spend more "
            "than this epsilon", "a number > 0"),
    Setting("batch_size", _int, 8, "sequences per training step", "an integer >= 1"),
    Setting("ctx", _int, 128, "tokens per training sequence (at most the model's "
            "max_position_embeddings)", "an integer >= 2"),
    Setting("seed", _int, 0, "local data sampling seed", "an integer"),
    Setting("device", _choice("auto", "gpu", "cpu"), "auto", "auto: a real GPU through wgpu if "
            "there is one, else NumPy; gpu: wgpu on any adapter; cpu: NumPy",
            "auto, gpu or cpu", choices=("auto", "gpu", "cpu")),
    Setting("embeddings", _choice("gpu", "host"), "gpu", "where a GPU keeps the "
            "embedding/lm_head table: host saves V x D x 2 bytes of GPU memory for streaming "
            "it each step (same results)", "gpu or host", choices=("gpu", "host")),
    Setting("recompute", _choice("auto", "on", "off"), "auto", "recompute layer activations "
            "in the backward pass (less memory, one more forward; same results); auto: on for a "
            "GPU when they would exceed 512 MiB", "auto, on or off", choices=("auto", "on", "off")),
    Setting("gpu_ste", _choice(*GPU_STE_CHOICES), "auto", "arithmetic of the STE input "
            "gradient on a GPU: f32; f16 (packed-f16 sums, ~7e-4 relative error); i16 / i8 (dy "
            "quantized per row to 15 / 8 bits, int8 dot products: i16 ~1e-4, i8 ~1e-2 relative "
            "error and the fastest); auto: f16 where it measured faster (H100/H200; i16 there on "
            "Dawn, which has no f16), else f32",
            ", ".join(GPU_STE_CHOICES), choices=GPU_STE_CHOICES),
    Setting("cpu_ste", _choice(*CPU_STE_CHOICES), "auto", "arithmetic of the STE input "
            "gradient on the CPU (--device cpu): f32 (float32 GEMM); i24 (three int8 terms, "
            "float32's precision); i16 (the GPU's i16: dy quantized per row to 15 bits, int8 "
            "GEMMs, ~1e-4 relative error, 1.5-2x faster than f32 for wide layers); auto: i16 "
            "for layers of >= 256 outputs when onnxruntime and numba are installed, else f32",
            ", ".join(CPU_STE_CHOICES), choices=CPU_STE_CHOICES),
    Setting("gpu_runtime", _choice(*GPU_RUNTIME_CHOICES), "auto", "the WebGPU implementation "
            "that runs the kernels: wgpu (wgpu-native) or dawn (Dawn, pip install "
            "'bitswarm[dawn]'; 1.16-1.46x faster on an H200, int8 tensor cores); auto: dawn when installed and it sees "
            "a real GPU, else wgpu", ", ".join(GPU_RUNTIME_CHOICES), choices=GPU_RUNTIME_CHOICES),
    Setting("activation_memory", _opt_int, None, "MiB of GPU memory for saved layer "
            "activations under --recompute auto: the last layers that fit keep theirs (faster), "
            "the others are recomputed (one more layer forward each; same results); without it: "
            "1/4 of a discrete GPU's memory where the runtime reports it (Dawn), else all kept "
            "when they fit in 512 MiB and all recomputed above", "an integer of MiB >= 0"),
)
BY_KEY = {s.key: s for s in START}


@dataclass(frozen=True)
class Resolved:
    """Effective settings: values[key] and sources[key] ("flag --x", "env BITSWARM_X",
    "config /path/config.toml", "default"); config_path: the file read, if any."""

    values: dict[str, Any]
    sources: dict[str, str]
    config_path: Path | None


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings of a TOML file. Raises ValueError naming the file for unreadable TOML or an
    unknown key (with the known keys)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config {path}: not a readable TOML file ({e})") from None
    unknown = sorted(set(raw) - set(BY_KEY))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(BY_KEY)}")
    return raw


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], config: Path | None = None, *,
            require: bool = True) -> Resolved:
    """Merge the layers (module docstring). flags: the argparse values that were GIVEN (absent
    keys fall through). config: an explicit --config file; without it <data_dir>/config.toml
    is read when data_dir is known from a flag or the environment and the file exists.
    Raises ValueError with one line naming the setting, its source and the expected form
    (require=False: a missing required setting is left None, for `node config show`)."""
    if config is None and env.get(ENV_PREFIX + "CONFIG"):
        config = _path(env[ENV_PREFIX + "CONFIG"])
    if config is None:
        dd = flags.get("data_dir") or (env.get(BY_KEY["data_dir"].env) or None)
        if dd is not None and (_path(dd) / CONFIG_FILE).is_file():
            config = _path(dd) / CONFIG_FILE
    from_file = read_config_file(config) if config is not None else {}
    values, sources = {}, {}
    for s in START:
        if s.key in flags:
            raw, src = flags[s.key], f"flag {s.flag}"
        elif s.env in env:
            raw, src = env[s.env], f"env {s.env}"
        elif s.key in from_file:
            raw, src = from_file[s.key], f"config {config}"
        else:
            values[s.key], sources[s.key] = s.default, "default"
            continue
        try:
            values[s.key] = s.parse(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{s.flag} ({src}): {e}; expected {s.expect}") from None
        sources[s.key] = src
    missing = [s for s in START if s.required and values[s.key] is None]
    if missing and require:
        s = missing[0]
        raise ValueError(f"{s.flag} is required ({s.expect}): give the flag, {s.env}, or "
                         f"`{s.key} = ...` in a --config file")
    return Resolved(values, sources, config)


def read_allow_list(ids: list[str], path: Path | None) -> frozenset[str] | None:
    """The --allow peer IDs plus those of --allow-file (one per line, # comments), or None when
    neither is given (everyone in the swarm counts). ValueError naming the file and line."""
    if not ids and path is None:
        return None
    out = set(ids)
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--allow-file {path}: cannot read it ({e})") from None
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                try:
                    out.update(_peer_ids(line))
                except ValueError as e:
                    raise ValueError(f"--allow-file {path}:{n}: {e}; expected one peer ID per "
                                     f"line") from None
    return frozenset(out)


def plain(v: Any) -> Any:
    """A setting's value as TOML / JSON can hold it (paths as strings, tuples as lists)."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, frozenset)):
        return list(v)
    return v


def to_toml(values: Mapping[str, Any]) -> str:
    """The settings as a config.toml (unset optional settings as comments), data_dir left out:
    the file lives in it."""
    import tomli_w
    lines = ["# bitswarm node settings (written by the first `node start`; flags and BITSWARM_*",
             "# environment variables override them). Keys: `node start --help`.", ""]
    for s in START:
        if s.key == "data_dir":
            continue
        v = values.get(s.key, s.default)
        if v is None:
            lines.append(f"# {s.key} =   # {s.help}")
            continue
        lines.append(tomli_w.dumps({s.key: plain(v)}).rstrip("\n"))
    return "\n".join(lines) + "\n"
