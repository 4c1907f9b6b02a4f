"""Command line: `node id | swarm-key new | start | config show | status | eval | generate | export` (also `bitswarm ...`,
`python -m bitswarm.node`).

Exit codes (README, "Exit codes"):
    0  success
    1  the job failed (an unexpected error: its traceback is in the log)
    2  usage or input error: one line naming the flag or file and the expected form, printed
       before anything is created or changed
    3  the network goal failed: `node start --rounds N` never met a peer of its swarm, or every
       update peers sent was rejected (the line says which, and what to check)
  130  interrupted (Ctrl-C) before anything was saved
Bad flags and files fail fast, before the identity, the model copy or any file is written.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from bitswarm import __version__

log = logging.getLogger("bitswarm.node")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NETWORK, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_DEVICES = ("auto", "gpu", "cpu")

EXAMPLES = """\
examples:
  node start --swarm docs --data ~/notes --data-dir ~/.bitswarm/a --rounds 10
  node start --swarm docs --data ~/more --data-dir ~/.bitswarm/b \\
      --peer /ip4/127.0.0.1/tcp/40123/p2p/12D3KooW...
  node start --data-dir ~/.bitswarm/a          # again: settings from ~/.bitswarm/a/config.toml
  node config show --data-dir ~/.bitswarm/a    # effective settings and where each came from
  node eval --adapter ~/.bitswarm/a/adapter --data ~/held-out --json
  node generate --adapter ~/.bitswarm/a/adapter --prompt "The meeting" --max-new-tokens 40
  node export --adapter ~/.bitswarm/a/adapter --format gguf --out adapter.gguf
  node export --model ~/models/my-bitnet --format gguf --type tq2_0 --out model.gguf
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their line breaks; help lines stay as written (they state their defaults)."""


def _common() -> argparse.ArgumentParser:
    """Options every command accepts, before or after its name (default SUPPRESS, so a value
    given after the command is not overwritten by the main parser's default)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   default=argparse.SUPPRESS,
                   help="log verbosity (default INFO; env BITSWARM_LOG_LEVEL)")
    c.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                   help="text for people, json (one object per line) for machines (default "
                        "text; env BITSWARM_LOG_FORMAT)")
    return c


def _fmt_default(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "none"
    return "none" if v is None else str(v)


def _add_start_flags(s: argparse.ArgumentParser) -> None:
    """Every `node start` setting as a flag (node/settings.py); absent flags stay absent so the
    environment, the config file and the default can fill them."""
    from bitswarm.node.settings import START
    s.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                   help="TOML file of settings (default: <data-dir>/config.toml if present; "
                        "env BITSWARM_CONFIG)")
    for st in START:
        dflt = "required" if st.required else f"default: {_fmt_default(st.default)}"
        hint = f"{st.help} ({dflt}; env {st.env})"
        kw = dict(dest=st.key, default=argparse.SUPPRESS, help=hint)
        if st.is_flag:
            s.add_argument(st.flag, action=argparse.BooleanOptionalAction, **kw)
        elif st.repeat:
            s.add_argument(st.flag, action="append",
                           metavar="PEER_ID" if st.key == "allow" else "MULTIADDR", **kw)
        else:
            s.add_argument(st.flag, metavar=st.key.upper(), **kw)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(
        prog="node", parents=[common], formatter_class=_Formatter, epilog=EXAMPLES,
        description="bitswarm: federated LoRA fine-tuning of BitNet b1.58 models, peer to peer. "
                    "Raw documents never leave this machine; signed, compressed adapter updates "
                    "do.")
    p.add_argument("--version", action="version", version=f"bitswarm {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common],
                              formatter_class=_Formatter, epilog=EXAMPLES)

    s = cmd("id", "print this node's libp2p peer ID (creating the identity if absent)")
    s.add_argument("--data-dir", type=Path, required=True,
                   help="node state folder; the Ed25519 identity is <data-dir>/identity.key")

    s = cmd("swarm-key", "make a private network key: only nodes started with --swarm-key "
            "FILE can connect to each other")
    s.add_argument("action", choices=["new"], help="new: write a fresh key (never overwrites)")
    s.add_argument("file", type=Path, metavar="FILE", help="the key file to create (mode 0600)")

    s = cmd("start", "join a swarm and fine-tune; saves the adapter after every round")
    _add_start_flags(s)

    s = cmd("config", "show the effective `node start` settings and where each came from")
    s.add_argument("action", choices=["show"], help="show: print every setting, value, source")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _add_start_flags(s)

    s = cmd("status", "what the node on a data dir is doing (from <data-dir>/status.json)")
    s.add_argument("--data-dir", type=Path, required=True, help="the node's state folder")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    s = cmd("eval", "held-out loss (nats/token) and bits per byte of the model (+ adapter)")
    s.add_argument("--model", type=Path, help="checkpoint folder or .gguf file (default: the adapter's base "
                                              "model, else the built-in model)")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder (e.g. <data-dir>/adapter)")
    s.add_argument("--data", type=Path, required=True,
                   help="folder of text files to evaluate on (each file on its own; .jsonl "
                        "chat lines count assistant tokens only)")
    s.add_argument("--strict", action="store_true",
                   help="a bad .jsonl line or non-UTF-8 file is fatal (default: skipped with a "
                        "warning naming it)")
    s.add_argument("--ctx", type=int, default=128, help="tokens per evaluation window, at most "
                   "the model's max_position_embeddings (default: 128)")
    s.add_argument("--device", default="auto", choices=_DEVICES, help="default: auto")
    s.add_argument("--embeddings", default="gpu", choices=["gpu", "host"],
                   help="where a GPU keeps the embedding/lm_head table (default: gpu)")
    s.add_argument("--json", action="store_true", help="print one JSON line")

    s = cmd("generate", "stream text from the model (+ adapter), KV-cached")
    s.add_argument("--model", type=Path, help="checkpoint folder or .gguf file (default: the adapter's base "
                                              "model, else the built-in model)")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder (e.g. <data-dir>/adapter)")
    s.add_argument("--prompt", required=True, help="text to continue")
    s.add_argument("--max-new-tokens", type=int, default=64, help="default: 64")
    s.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy; else sample softmax(logits/T) (default: 0)")
    s.add_argument("--seed", type=int, default=None, help="sampling seed (numpy default_rng)")
    s.add_argument("--device", default="auto", choices=_DEVICES, help="default: auto")
    s.add_argument("--embeddings", default="gpu", choices=["gpu", "host"],
                   help="where a GPU keeps the embedding/lm_head table (default: gpu)")

    s = cmd("export", "write an adapter as a PEFT folder or a llama.cpp GGUF LoRA, or a base "
                      "model as a llama.cpp GGUF model or a PEFT-wrappable HF folder")
    s.add_argument("--adapter", type=Path, help="adapter folder to export")
    s.add_argument("--model", type=Path, help="base model to export (checkpoint folder or .gguf)")
    s.add_argument("--format", required=True, choices=["peft", "gguf", "hf"],
                   help="adapters: peft or gguf; base models: gguf (llama.cpp) or hf (online "
                        "autobitlinear folder that PEFT can wrap)")
    s.add_argument("--type", choices=["f32", "f16", "tq1_0", "tq2_0"], default=None,
                   help="--model only: projection type; tq* only for rows that are a multiple "
                        "of 256 values, F16 otherwise (default: tq2_0)")
    s.add_argument("--out", type=Path, required=True, help="output folder (peft) or file (gguf)")
    return p


# ------------------------------------------------------------------------------ commands
def check_state_dir(path: Path, flag: str = "--data-dir") -> None:
    """Fail fast (ValueError naming the flag) unless `path` is, or can become, a writable
    folder; creates it. Called before anything is written into it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot create it ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: not writable by this user")


def cmd_id(args) -> int:
    from bitswarm.federation.identity import load_or_create_identity, peer_id_of
    check_state_dir(args.data_dir)
    print(peer_id_of(load_or_create_identity(args.data_dir)))
    return EXIT_OK


def cmd_swarm_key(args) -> int:
    from bitswarm.federation.swarm_key import write_new_swarm_key
    try:
        write_new_swarm_key(args.file)
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"{args.file}: cannot create it: {e.strerror}") from None
    print(f"wrote a new swarm key to {args.file}; give it to every member (--swarm-key "
          f"{args.file}) and to no one else")
    return EXIT_OK


def _given(args) -> dict:
    """The start settings given on the command line (argparse leaves absent ones out)."""
    from bitswarm.node.settings import START
    return {s.key: getattr(args, s.key) for s in START if hasattr(args, s.key)}


def resolve_start(args, require: bool = True):
    from bitswarm.node.settings import resolve
    return resolve(_given(args), os.environ, getattr(args, "config", None), require=require)


def node_config(values: dict):
    """NodeConfig from resolved settings (ValueError naming the flag for a bad value)."""
    from bitswarm.node.config import NodeConfig, lora_config
    from bitswarm.federation.swarm_key import read_swarm_key
    from bitswarm.node.settings import read_allow_list
    v = values
    return NodeConfig(
        swarm=v["swarm"], data=v["data"], data_dir=v["data_dir"], model=v["model"],
        listen=v["listen"], peers=list(v["peer"]), bootstrap=list(v["bootstrap"]), mdns=v["mdns"],
        relay=v["relay"], metrics=v["metrics"], rounds=v["rounds"],
        max_conns_per_ip=v["max_conns_per_ip"],
        allow=read_allow_list(v["allow"], v["allow_file"]),
        swarm_key=None if v["swarm_key"] is None else read_swarm_key(v["swarm_key"]),
        local_steps=v["local_steps"], lr=v["lr"],
        lora=lora_config(v["rank"], v["alpha"], v["targets"], v["freeze_a"]),
        min_peers=v["min_peers"], round_timeout_s=v["round_timeout"],
        aggregation=v["aggregation"], codec=v["codec"], topk_fraction=v["topk_fraction"],
        outer_lr=v["outer_lr"], outer_momentum=v["outer_momentum"], dp_clip=v["dp_clip"], dp_noise=v["dp_noise"],
        dp_delta=v["dp_delta"], dp_epsilon_budget=v["dp_epsilon_budget"], device=v["device"],
        embeddings=v["embeddings"], recompute=v["recompute"],
        activation_memory_mib=v["activation_memory"], gpu_ste=v["gpu_ste"],
        cpu_ste=v["cpu_ste"], gpu_runtime=v["gpu_runtime"],
        batch_size=v["batch_size"],
        ctx=v["ctx"], seed=v["seed"], secure_aggregation=v["secure_aggregation"])


def preflight(cfg, strict: bool = False) -> None:
    """Every check `node start` can make before a side effect: the documents (with strict,
    every file and .jsonl line: node/data.py check_data), the model's config (and --ctx
    against its max_position_embeddings), the GPU runtime's package, the data dir."""
    import importlib.util
    from bitswarm.node.data import check_data, find_text_files
    from bitswarm.node.default_model import DEFAULT_CONFIG
    from bitswarm.node.models import model_config
    files = find_text_files(cfg.data)
    if strict:
        check_data(files)
    mcfg = DEFAULT_CONFIG if cfg.model is None else model_config(cfg.model)
    if cfg.ctx > mcfg.max_position_embeddings:
        raise ValueError(f"--ctx: {cfg.ctx} is out of range; expected 2 to the model's "
                         f"max_position_embeddings ({mcfg.max_position_embeddings})")
    if (cfg.gpu_runtime == "dawn" and cfg.device != "cpu"
            and importlib.util.find_spec("wgpudawn") is None):
        raise ValueError("--gpu-runtime dawn: wgpudawn is not installed; expected "
                         "pip install 'bitswarm[dawn]', or --gpu-runtime auto or wgpu")
    check_state_dir(cfg.data_dir)


def cmd_start(args) -> int:
    import trio

    from bitswarm.fsutil import write_file_atomic
    from bitswarm.node import logs
    from bitswarm.node.lock import lock_data_dir
    from bitswarm.node.runtime import serve
    from bitswarm.node.settings import CONFIG_FILE, to_toml

    res = resolve_start(args)
    cfg = node_config(res.values)
    preflight(cfg, strict=res.values["strict"])
    lock_data_dir(cfg.data_dir)                  # one node per data dir, before any write
    written = cfg.data_dir / CONFIG_FILE
    if res.config_path is None and not written.exists():
        write_file_atomic(written, to_toml(res.values).encode("utf-8"))
    logs.add_file(cfg.data_dir, args.log_format)
    if res.config_path is not None:
        log.info("settings from %s (flags and BITSWARM_* override it)", res.config_path)
    try:
        outcome = trio.run(serve, cfg)
    except BaseException as e:  # noqa: BLE001 - only Ctrl-C is handled; the rest re-raised
        if not _is_interrupt(e):
            raise
        log.info("stopped by Ctrl-C; the adapter of the last completed round is in %s",
                 cfg.data_dir / "adapter")
        return EXIT_OK
    if outcome.interrupted:
        log.info("stopped by Ctrl-C after %d round(s); the adapter of the last completed round "
                 "is in %s", outcome.rounds, cfg.data_dir / "adapter")
        return EXIT_OK
    log.info("finished %d round(s); adapter saved in %s", outcome.rounds, cfg.data_dir / "adapter")
    if outcome.network_failure:
        print(f"node start: network goal failed: {outcome.network_failure}", file=sys.stderr)
        return EXIT_NETWORK
    return EXIT_OK


def cmd_config(args) -> int:
    from bitswarm.node.settings import plain
    res = resolve_start(args, require=False)
    if args.json:
        print(json.dumps({k: {"value": plain(v), "source": res.sources[k]}
                          for k, v in res.values.items()}))
        return EXIT_OK
    width = max(map(len, res.values))
    for k, v in res.values.items():
        print(f"{k:<{width}}  {_fmt_default(v):<40}  {res.sources[k]}")
    return EXIT_OK


def cmd_status(args) -> int:
    from bitswarm.node.status import read_status
    st = read_status(args.data_dir)
    if args.json:
        print(json.dumps(st))
        return EXIT_OK
    state = "running" if st["running"] else "not running"
    print(f"{state} (pid {st['pid']}), swarm {st.get('swarm')!r}, peer ID {st.get('peer_id')}")
    print(f"round {st.get('round')} ({st.get('phase')}), {st.get('rounds_completed')} round(s) "
          f"completed this session" + (f", resumed after round {st['resumed_from']}"
                                      if st.get("resumed_from") is not None else ""))
    print(f"peers {len(st.get('peers', []))} connected, {len(st.get('swarm_members', []))} in "
          f"the swarm: {', '.join(st.get('peers', [])) or '-'}")
    print(f"last train loss {st.get('last_train_loss')}, held-out loss "
          f"{st.get('last_heldout_loss')}")
    print(f"adapter sha256 {st.get('adapter_sha256')} (last round aggregated every swarm member "
          f"seen: {st.get('adapter_agrees')})")
    print(f"bytes in {st.get('bytes_in')} / out {st.get('bytes_out')}, uptime "
          f"{st.get('uptime_s')} s, updated {time.strftime('%H:%M:%S', time.localtime(st['updated']))}")
    return EXIT_OK


def _leaf(e: BaseException) -> BaseException:
    """The first non-group exception inside trio's (Base)ExceptionGroups."""
    while getattr(e, "exceptions", None):
        e = e.exceptions[0]
    return e


def _is_interrupt(e: BaseException) -> bool:
    """KeyboardInterrupt, possibly wrapped in trio's (Base)ExceptionGroups by the nurseries it
    unwound through."""
    if isinstance(e, KeyboardInterrupt):
        return True
    subs = getattr(e, "exceptions", None)
    return bool(subs) and all(_is_interrupt(x) for x in subs)


def cmd_eval(args) -> int:
    from bitswarm.kernels.backend import select_backend
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.node.data import check_data, find_text_files, tokenize
    from bitswarm.node.evaluate import evaluate
    from bitswarm.node.models import load_model, model_config, resolve_model_dir

    files = find_text_files(args.data)
    if args.strict:
        check_data(files)
    state, lcfg = _adapter(args)
    limit = model_config(resolve_model_dir(args.model, adapter=args.adapter)).max_position_embeddings
    if not 2 <= args.ctx <= limit:
        raise ValueError(f"--ctx: {args.ctx} is out of range; expected 2 to the model's "
                         f"max_position_embeddings ({limit})")
    m = load_model(args.model, adapter=args.adapter)
    docs = [tokenize(m.tokenizer, f, strict=args.strict) for f in files]
    model = BitNetModel(m.weights, select_backend(args.device, args.embeddings), lcfg)
    model.set_lora(state)
    res = evaluate(model, docs, args.ctx)
    if not all(math.isfinite(res[k]) for k in ("loss", "bits_per_byte")):
        print(f"node eval: error: the loss is {res['loss']} (not finite): the model or adapter "
              f"holds values that overflow", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({**res, "ctx": args.ctx, "files": len(docs), "device": model.be.name},
                         allow_nan=False))
    else:
        print(f"loss {res['loss']:.4f} nats/token, {res['bits_per_byte']:.4f} bits/byte "
              f"over {res['tokens']} tokens ({len(docs)} files, ctx {args.ctx}, device {model.be.name})")
    return EXIT_OK


def cmd_generate(args) -> int:
    import numpy as np

    from bitswarm.kernels.backend import select_backend
    from bitswarm.kernels.generate import Generator, stream_text
    from bitswarm.node.models import load_model

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: {args.max_new_tokens} is out of range; expected an "
                         f"integer >= 1")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature: {args.temperature} is out of range; expected a "
                         f"number >= 0")
    state, lcfg = _adapter(args)
    m = load_model(args.model, adapter=args.adapter)
    tok = m.tokenizer
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise ValueError("--prompt encodes to no tokens")
    limit = m.config.max_position_embeddings
    if len(ids) + args.max_new_tokens > limit:
        raise ValueError(f"--prompt ({len(ids)} tokens) + --max-new-tokens ({args.max_new_tokens}) "
                         f"exceeds the model's max_position_embeddings ({limit})")
    gen = Generator(m.weights, select_backend(args.device, args.embeddings), lcfg, state)
    rng = np.random.default_rng(args.seed)
    tokens = gen.generate(np.asarray(ids), args.max_new_tokens, args.temperature, rng)
    try:
        for piece in stream_text(tok.decode, tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return EXIT_INTERRUPTED
    sys.stdout.write("\n")
    sys.stdout.flush()
    return EXIT_OK


def cmd_export(args) -> int:
    from bitswarm.node.export import export
    out = export(adapter=args.adapter, model=args.model, fmt=args.format, out=args.out,
                 qtype=args.type)
    print(f"exported {args.adapter or args.model} as {args.format} to {out}")
    return EXIT_OK


def _adapter(args):
    """(LoRAState, LoRAConfig) of --adapter, or the empty adapter (the base model alone)."""
    from bitswarm.formats.peft_adapter import load_adapter
    from bitswarm.kernels.config import LoRAConfig
    if args.adapter is None:
        return {}, LoRAConfig()
    state, lcfg, _meta = load_adapter(args.adapter)
    return state, lcfg


COMMANDS = {"id": cmd_id, "swarm-key": cmd_swarm_key, "start": cmd_start, "config": cmd_config, "status": cmd_status,
            "eval": cmd_eval,
            "generate": cmd_generate, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    from bitswarm.node import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return EXIT_USAGE
    level = getattr(args, "log_level", None) or os.environ.get("BITSWARM_LOG_LEVEL", "INFO")
    fmt = getattr(args, "log_format", None) or os.environ.get("BITSWARM_LOG_FORMAT", "text")
    if level not in logs.LEVELS or fmt not in logs.FORMATS:
        print(f"node {args.cmd}: error: BITSWARM_LOG_LEVEL must be one of {logs.LEVELS} and "
              f"BITSWARM_LOG_FORMAT one of {logs.FORMATS}", file=sys.stderr)
        return EXIT_USAGE
    args.log_format = fmt
    logs.configure(level, fmt)
    logs.quiet_vulkan_loader()
    try:
        return COMMANDS[args.cmd](args)
    except BaseException as group:  # noqa: BLE001 - unwrap trio's groups to the real error
        e = _leaf(group)
        if isinstance(e, (ValueError, FileNotFoundError)):
            print(f"node {args.cmd}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, KeyboardInterrupt):
            print(f"node {args.cmd}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if not isinstance(e, Exception):
            raise
        log.error("node %s failed", args.cmd, exc_info=group, extra={"file_only": True})
        print(f"node {args.cmd}: failed: {type(e).__name__}: {e} (traceback in the log)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
