"""Command line: `node id`, `node start`, `node eval`, `node generate`, `node export` (also
`bitswarm ...`, `python -m bitswarm.node`).

Bad flags and files fail fast with a message naming them and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bitswarm.kernels.config import PROJECTIONS

log = logging.getLogger("bitswarm.node")


def _targets(s: str) -> tuple[str, ...]:
    if s == "all":
        return PROJECTIONS
    return tuple(t.strip() for t in s.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="node", description="bitswarm: federated LoRA fine-tuning of BitNet b1.58 models, peer to peer.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("id", help="print this node's libp2p peer ID (creating the identity if absent)")
    s.add_argument("--data-dir", type=Path, required=True)

    s = sub.add_parser("start", help="join a swarm and fine-tune")
    s.add_argument("--swarm", required=True, help="swarm name (peers with the same name train together)")
    s.add_argument("--data", type=Path, required=True, help="folder of local text documents (never leaves this machine)")
    s.add_argument("--data-dir", type=Path, required=True, help="node state: identity, adapter, logs")
    s.add_argument("--model", type=Path, help="Hugging Face bitnet checkpoint folder (default: built-in model)")
    s.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0", help="libp2p listen multiaddr")
    s.add_argument("--peer", action="append", default=[], help="multiaddr .../p2p/<peer-id> to dial (repeatable)")
    s.add_argument("--rounds", type=int, help="rounds to run (default: until Ctrl-C)")
    s.add_argument("--local-steps", type=int, default=20)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    s.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    s.add_argument("--targets", type=_targets, default=("q_proj", "k_proj", "v_proj", "o_proj"),
                   help="comma-separated LoRA target modules, or 'all' (default q,k,v,o)")
    s.add_argument("--freeze-a", action="store_true", help="FFA-LoRA: train B only (exact FedAvg)")
    s.add_argument("--min-peers", type=int, default=1, help="other peers' updates that complete a round")
    s.add_argument("--round-timeout", type=float, default=300.0, help="seconds to wait for peers' updates per round")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--ctx", type=int, default=128, help="tokens per training sequence")
    s.add_argument("--seed", type=int, default=0, help="local data sampling seed")
    s.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    s.add_argument("--embeddings", default="gpu", choices=["gpu", "host"],
                   help="where a GPU keeps the embedding/lm_head table: host memory saves "
                        "V x D x 2 bytes of GPU memory for an upload of it per step")
    s.add_argument("--recompute", default="auto", choices=["auto", "on", "off"],
                   help="recompute layer activations in the backward pass (less memory, one "
                        "more forward); auto: on for a GPU when the activations would exceed "
                        "512 MiB, off for NumPy")

    s = sub.add_parser("eval", help="held-out loss (nats/token) and bits per byte")
    s.add_argument("--model", type=Path, help="checkpoint folder (default: the adapter's base model, else the built-in model)")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder (e.g. <data-dir>/adapter)")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--ctx", type=int, default=128)
    s.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    s.add_argument("--embeddings", default="gpu", choices=["gpu", "host"],
                   help="where a GPU keeps the embedding/lm_head table (host: saves GPU memory)")
    s.add_argument("--json", action="store_true", help="print one JSON line")

    s = sub.add_parser("generate", help="stream text from the model (+ adapter), KV-cached")
    s.add_argument("--model", type=Path, help="checkpoint folder (default: the adapter's base model, else the built-in model)")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder (e.g. <data-dir>/adapter)")
    s.add_argument("--prompt", required=True, help="text to continue")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; else sample softmax(logits/T)")
    s.add_argument("--seed", type=int, default=None, help="sampling seed (numpy default_rng)")
    s.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    s.add_argument("--embeddings", default="gpu", choices=["gpu", "host"],
                   help="where a GPU keeps the embedding/lm_head table (host: saves GPU memory)")

    s = sub.add_parser("export", help="write an adapter as a PEFT folder or a llama.cpp GGUF LoRA")
    s.add_argument("--adapter", type=Path, required=True, help="adapter folder to export")
    s.add_argument("--format", required=True, choices=["peft", "gguf"])
    s.add_argument("--out", type=Path, required=True, help="output folder (peft) or file (gguf)")
    return p


def cmd_id(args) -> int:
    from bitswarm.federation.identity import load_or_create_identity, peer_id_of
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(peer_id_of(load_or_create_identity(args.data_dir)))
    return 0


def cmd_start(args) -> int:
    import trio

    from bitswarm.node.config import NodeConfig, lora_config
    from bitswarm.node.runtime import serve
    cfg = NodeConfig(
        swarm=args.swarm, data=args.data, data_dir=args.data_dir, model=args.model, listen=args.listen,
        peers=args.peer, rounds=args.rounds, local_steps=args.local_steps, lr=args.lr,
        lora=lora_config(args.rank, args.alpha, args.targets, args.freeze_a),
        min_peers=args.min_peers, round_timeout_s=args.round_timeout, device=args.device,
        embeddings=args.embeddings, recompute=args.recompute, batch_size=args.batch_size,
        ctx=args.ctx, seed=args.seed)
    try:
        done = trio.run(serve, cfg)
    except BaseException as e:  # noqa: BLE001 - only Ctrl-C is handled; the rest re-raised
        if not _is_interrupt(e):
            raise
        log.info("stopped by Ctrl-C; the adapter of the last completed round is in %s", cfg.data_dir / "adapter")
        return 0
    log.info("finished %d round(s); adapter saved in %s", done, cfg.data_dir / "adapter")
    return 0


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
    from bitswarm.node.data import find_text_files, tokenize
    from bitswarm.node.evaluate import evaluate
    from bitswarm.node.models import load_model

    state, lcfg = _adapter(args)
    m = load_model(args.model, adapter=args.adapter)
    docs = [tokenize(m.tokenizer, f) for f in find_text_files(args.data)]
    model = BitNetModel(m.weights, select_backend(args.device, args.embeddings), lcfg)
    model.set_lora(state)
    res = evaluate(model, docs, args.ctx)
    if args.json:
        print(json.dumps({**res, "ctx": args.ctx, "files": len(docs), "device": model.be.name}))
    else:
        print(f"loss {res['loss']:.4f} nats/token, {res['bits_per_byte']:.4f} bits/byte "
              f"over {res['tokens']} tokens ({len(docs)} files, ctx {args.ctx}, device {model.be.name})")
    return 0


def cmd_generate(args) -> int:
    import numpy as np

    from bitswarm.kernels.backend import select_backend
    from bitswarm.kernels.generate import Generator, stream_text
    from bitswarm.node.models import load_model

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
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
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def cmd_export(args) -> int:
    from bitswarm.node.export import export_adapter
    out = export_adapter(args.adapter, args.format, args.out)
    print(f"exported {args.adapter} as {args.format} to {out}")
    return 0


def _adapter(args):
    """(LoRAState, LoRAConfig) of --adapter, or the empty adapter (the base model alone)."""
    from bitswarm.formats.peft_adapter import load_adapter
    from bitswarm.kernels.config import LoRAConfig
    if args.adapter is None:
        return {}, LoRAConfig()
    state, lcfg, _meta = load_adapter(args.adapter)
    return state, lcfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bitswarm.node.progress import log_handler
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[log_handler()], force=True)
    try:
        return {"id": cmd_id, "start": cmd_start, "eval": cmd_eval, "generate": cmd_generate,
                "export": cmd_export}[args.cmd](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"node {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
