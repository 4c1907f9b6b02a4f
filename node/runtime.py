"""The node runtime: load, listen, then train -> exchange -> aggregate, round after round.

Structure (trio): `serve` owns one nursery holding the transport and the round coordinator;
blocking compute (training steps, evaluation, encoding) runs on a worker thread behind a
CapacityLimiter(1) per device so the event loop keeps serving peers (a yamux sender gives up
after 5 s of a blocked loop: py-libp2p 0.8.1's yamux).

Round r: every node starts from the same global adapter G_r, trains --local-steps on its own
documents, publishes delta_r = L_r - G_r (compressed, signed, bound to G_r's hash), collects
peers' deltas, and the swarm agrees on one signed round record (protocol v2, docs/protocol.md):
G_{r+1} = G_r + bounded FedAvg(the record's decoded deltas): norms clipped and token claims
capped against the round's lower median, then weighted by tokens (McMahan et al. 2017).
G_0 is seeded from the swarm name and base-model hash. Before each round the node checks the
swarm view and catches up (fetching the head adapter by hash) when it is behind or on a
minority fork: a late joiner or a node back from sleep takes part from the swarm's round.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio

from bitswarm.federation.aggregation import BoundedFedAvg
from bitswarm.federation.codecs import Int8BlockCodec
from bitswarm.federation.discovery import SwarmDHT
from bitswarm.federation.identity import load_or_create_identity
from bitswarm.fsutil import append_line_durable
from bitswarm.federation.rounds import RoundCoordinator
from bitswarm.federation.state_hash import adapter_sha256
from bitswarm.federation.transport import TransportConfig, open_transport
from bitswarm.federation.wire import lora_dict
from bitswarm.kernels.backend import select_backend
from bitswarm.formats.peft_adapter import save_adapter
from bitswarm.kernels.lora import LoRAState, init_lora, lora_shapes
from bitswarm.kernels.model import BitNetModel
from bitswarm.node.config import NodeConfig
from bitswarm.node.data import find_text_files, split_train_heldout, tokenize, TrainSampler
from bitswarm.node.evaluate import evaluate
from bitswarm.node.models import load_model
from bitswarm.node.progress import RoundProgress
from bitswarm.node.resume import LocalState, Resumed, save_local_state
from bitswarm.node.resume import load as load_resume
from bitswarm.node.metrics import serve_metrics
from bitswarm.node.status import StatusFile
from bitswarm.node.swarm_watch import SwarmWatch
from bitswarm.node.trainer import LocalTrainer

log = logging.getLogger("bitswarm.node")


JOIN_WAIT_S = 10.0        # at start, how long a node with peers listens for the swarm's head
LINGER_S = 20.0           # after the last round, longest wait for the peers to hold our adapter


def swarm_topic(swarm: str) -> str:
    """Gossipsub topic of a swarm (protocol v2): hashed so any printable name is a safe topic."""
    return f"/bitswarm/2/{hashlib.sha256(swarm.encode()).hexdigest()[:32]}/updates"


def _initial_seed(swarm: str, base_model: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{swarm}\0{base_model}".encode()).digest()[:8], "little")


class Node:
    """Everything a node holds between rounds; built by `load` (blocking)."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.key_pair = load_or_create_identity(cfg.data_dir)
        loaded = load_model(cfg.model, data_dir=cfg.data_dir)
        weights, self.tokenizer, self.model_dir = loaded.weights, loaded.tokenizer, loaded.dir
        self.base_model = loaded.sha256
        self.backend = select_backend(cfg.device, cfg.embeddings)
        log.info("base model %s (sha256 %s…), backend %s", self.model_dir, self.base_model[:12], self.backend.name)
        self.model = BitNetModel(weights, self.backend, cfg.lora)
        if cfg.recompute != "auto":
            self.model.recompute = cfg.recompute == "on"
        self.shapes = lora_shapes(weights.config, cfg.lora)
        files = find_text_files(cfg.data)
        train_files, held_files = split_train_heldout(files)
        self.train_docs = [tokenize(self.tokenizer, f) for f in train_files]
        self.heldout_docs = [tokenize(self.tokenizer, f) for f in held_files]
        self.sampler = TrainSampler(self.train_docs, cfg.ctx, seed=cfg.seed)
        log.info("data: %d training file(s), %d tokens; %d held-out file(s)", len(train_files),
                 self.sampler.tokens, len(held_files))
        self.trainer = LocalTrainer(self.model, self.sampler, lr=cfg.lr, batch_size=cfg.batch_size)
        self.global_state = init_lora(weights.config, cfg.lora, _initial_seed(cfg.swarm, self.base_model))

    def heldout_loss(self) -> float | None:
        if not self.heldout_docs:
            return None
        self.model.set_lora(self.global_state)
        return evaluate(self.model, self.heldout_docs, self.cfg.ctx)["loss"]

    def resume(self) -> Resumed | None:
        """Continue from the data dir's last completed round, if it holds one (node/resume.py);
        sets the global adapter and the local optimizer / sampler state. The error-feedback
        residual is the caller's to restore into the coordinator."""
        r = load_resume(self.cfg.data_dir, swarm=self.cfg.swarm, base_model=self.base_model,
                        lora=self.cfg.lora)
        if r is None:
            return None
        if set(r.adapter) != set(self.global_state) or any(
                r.adapter[k].shape != self.global_state[k].shape for k in r.adapter):
            raise ValueError(f"--data-dir {self.cfg.data_dir}: its adapter does not fit this "
                             f"model and LoRA config; use another --data-dir")
        self.global_state = r.adapter
        if r.local is not None:
            self.trainer.optim.load_state_dict(r.local.t, r.local.moments)
            self.sampler.rng.bit_generator.state = r.local.rng
        return r

    def save(self, rnd: int, residual: dict) -> None:
        """The end of round rnd: the adapter (PEFT, atomic), then the local state (atomic)."""
        save_adapter(self.cfg.data_dir / "adapter", self.global_state, self.cfg.lora,
                     base_model=str(self.model_dir.resolve()),
                     metadata={"round": str(rnd), "base_model_sha256": self.base_model,
                               "swarm": self.cfg.swarm})
        t, moments = self.trainer.optim.state_dict()
        save_local_state(self.cfg.data_dir, rnd, LocalState(
            dict(residual), moments, t, self.sampler.rng.bit_generator.state))


@dataclass(frozen=True)
class ServeOutcome:
    """rounds: rounds completed; interrupted: stopped by Ctrl-C (SIGINT); network_failure: why
    the network goal failed (SwarmWatch.failure), or None."""

    rounds: int
    interrupted: bool = False
    network_failure: str | None = None


async def serve(cfg: NodeConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> ServeOutcome:
    """Run a node until cfg.rounds rounds are done, or forever, or the first Ctrl-C (SIGINT:
    the node stops after the current step, keeping the last completed round's adapter; a second
    one quits at once, exit 130). Reports started (with the Transport) once it listens and is
    subscribed to the swarm topic. Raises ValueError for bad files/flags before touching the
    network.
    """
    limiter = trio.CapacityLimiter(1)   # one compute job at a time on the device

    async def compute(fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    node = await compute(Node, cfg)
    resumed = await compute(node.resume)
    first = 0 if resumed is None else resumed.round + 1
    rounds_log = cfg.data_dir / "rounds.jsonl"
    _start_session(rounds_log, first, resumed)
    if cfg.rounds is not None and first >= cfg.rounds:
        log.info("the swarm's rounds 0..%d are already complete in %s; nothing to do",
                 cfg.rounds - 1, cfg.data_dir)
        return ServeOutcome(0)
    tcfg = TransportConfig(listen=cfg.listen, topic=swarm_topic(cfg.swarm), relay=cfg.relay)
    dialed = [*cfg.peers, *cfg.bootstrap]
    async with open_transport(node.key_pair, tcfg, discovery=SwarmDHT(dialed, cfg.swarm)) as transport:
        for addr in transport.listen_multiaddrs:
            print(f"listening on {addr}", flush=True)
        coord = RoundCoordinator(
            transport, node.key_pair, swarm=cfg.swarm, base_model=node.base_model,
            lora=lora_dict(cfg.lora), expected_shapes=node.shapes, min_peers=cfg.min_peers,
            round_timeout_s=cfg.round_timeout_s, codec=Int8BlockCodec(), aggregation=BoundedFedAvg(),
            allowed_senders=cfg.allow, initial_adapter=node.global_state, initial_round=first,
            run_blocking=trio.to_thread.run_sync)
        if resumed is not None and resumed.local is not None:
            coord.error_feedback.residual = dict(resumed.local.residual)
        status = StatusFile(cfg.data_dir, swarm=cfg.swarm, peer_id=transport.peer_id,
                            resumed_from=None if resumed is None else resumed.round,
                            adapter_sha256=adapter_sha256(node.global_state))
        if cfg.metrics:
            serve_metrics(cfg.metrics, status)
            log.info("metrics on http://%s/metrics", cfg.metrics)
        watch = SwarmWatch(transport.peer_id, status=status)
        done, interrupted, rnd = 0, False, first
        with RoundProgress(cfg.rounds, cfg.local_steps) as progress:
            async with trio.open_nursery() as nursery:
                await nursery.start(coord.run)
                await nursery.start(watch.run, transport, progress, dialed)
                stop = await nursery.start(_stop_on_sigint)
                task_status.started(transport)
                with stop:
                    if resumed is None:
                        log.info("evaluating the held-out loss before training")
                        held = await compute(node.heldout_loss)
                        _append_jsonl(rounds_log, {"round": -1, "heldout_loss": held,
                                                   "adapter_sha256": adapter_sha256(node.global_state)})
                    else:
                        log.info("resuming after round %d (adapter sha256 %s)", resumed.round,
                                 adapter_sha256(node.global_state))
                    if dialed:
                        await _listen_for_head(coord, transport)
                    while True:
                        await _catch_up(node, coord, rounds_log, compute)
                        rnd = coord.round
                        if cfg.rounds is not None and rnd >= cfg.rounds:
                            break
                        await _one_round(node, coord, transport, rnd, compute, progress,
                                         rounds_log, watch)
                        done += 1
                    if done:
                        await _linger(node, coord, transport, compute, rounds_log)
                interrupted = stop.cancelled_caught
                nursery.cancel_scope.cancel()
        watch.poll(transport)
        watch.peers_agreeing = len(coord.view.support(
            coord.round, bytes.fromhex(coord.adapter_sha256), exclude=transport.peer_id))
        status.update(phase="stopped")
        status.write()
    failure = None if interrupted or cfg.rounds is None else \
        watch.failure(swarm=cfg.swarm, dialed=dialed, min_peers=cfg.min_peers)
    return ServeOutcome(done, interrupted, failure)


async def _stop_on_sigint(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Hand the caller a cancel scope that the first SIGINT cancels (with one line saying so,
    at once, although the step running on the worker thread finishes first); a second SIGINT
    exits the process (status 130): checkpoints are atomic, so nothing half-written remains."""
    scope = trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        task_status.started(scope)
        async for _ in signals:
            if scope.cancel_called:
                log.warning("second Ctrl-C: quitting now")
                os._exit(130)
            log.info("Ctrl-C: stopping after the current step (Ctrl-C again quits at once); the "
                     "adapter of the last completed round is kept")
            scope.cancel()


def _start_session(path: Path, first: int, resumed: Resumed | None) -> None:
    """Mark a new session in rounds.jsonl; a torn last line (a kill mid-append) is cut first,
    so every line stays one JSON object."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    _append_jsonl(path, {"session": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "pid": os.getpid(), "first_round": first,
                         "resumed_from": None if resumed is None else resumed.round})


async def _listen_for_head(coord, transport) -> None:
    """Give a joining node a moment to hear the swarm (peers republish their latest record and
    manifest every 2 s) before it decides which round it is in: at most JOIN_WAIT_S."""
    with trio.move_on_after(JOIN_WAIT_S):
        while not transport.topic_peers():
            await trio.sleep(0.2)
        heard = trio.current_time() + 2 * coord.republish_interval_s + 0.5
        while coord.view.signers(exclude=coord.peer_id) == 0 or trio.current_time() < heard:
            await trio.sleep(0.2)


async def _linger(node: Node, coord, transport, compute, rounds_log: Path) -> None:
    """After the last round, keep serving (at most LINGER_S) until every connected swarm member
    active in it (a signed claim of the last round or later) claims the adapter we hold: a
    straggler still checking the final round's record needs our payloads, and a node that
    exits at once would leave it on its own proposal. If the final round split the swarm, the
    minority side re-syncs here."""
    with trio.move_on_after(LINGER_S):
        while not set(coord.view.active(coord.round - 1, transport.topic_peers())) <= set(
                coord.view.support(coord.round, bytes.fromhex(coord.adapter_sha256))):
            await trio.sleep(0.5)
            await _catch_up(node, coord, rounds_log, compute)


async def _catch_up(node: Node, coord, rounds_log: Path, compute) -> None:
    """Adopt the swarm's head when the view says we are behind or on a minority fork, and save
    it as the last completed round's adapter (a restart resumes from it)."""
    sync = await coord.catch_up()
    if sync is None:
        return
    node.global_state = dict(sync.adapter)
    coord.error_feedback.reset()        # residuals of another history would only add noise
    log.info("synced to the swarm's round %d (adapter sha256 %s, from %s, claimed by %d peer(s))",
             sync.round, sync.adapter_sha256, sync.source, sync.signers)
    if sync.round > 0:
        await compute(node.save, sync.round - 1, {})
    _append_jsonl(rounds_log, {"synced_to_round": sync.round, "adapter_sha256": sync.adapter_sha256,
                               "source": sync.source, "signers": sync.signers})


async def _one_round(node: Node, coord, transport, rnd: int, compute, progress, rounds_log: Path,
                     watch: SwarmWatch) -> None:
    cfg = node.cfg
    t0 = time.monotonic()
    watch.status.update(round=rnd, phase="training")
    watch.status.write()
    progress.phase(rnd, "training", detail=f"{cfg.local_steps} local step(s) of "
                                            f"{cfg.batch_size} x {cfg.ctx} tokens")
    await compute(node.trainer.set_adapter, node.global_state)
    losses, tokens = [], 0
    for s in range(cfg.local_steps):
        loss, count = await compute(node.trainer.step)
        losses.append(loss)
        tokens += count
        progress.step(rnd, s + 1, loss, len(transport.connected_peers()),
                      transport.bytes_received, transport.bytes_sent, tokens=count)
    local = await compute(node.trainer.adapter)
    delta = {k: local[k] - node.global_state[k] for k in node.global_state}
    t_train = time.monotonic() - t0
    watch.status.update(phase="exchanging", last_train_loss=float(np.mean(losses)))
    if cfg.min_peers:
        progress.phase(rnd, "waiting for peers", cfg.round_timeout_s,
                       f"{cfg.min_peers} peer update(s) complete the round, "
                       f"{len(transport.topic_peers())} swarm member(s) connected")
    result = await coord.exchange(rnd, delta, tokens)
    watch.add_round(result)
    node.global_state = dict(result.adapter)
    sha = result.adapter_sha256
    held = await compute(node.heldout_loss)
    progress.phase(rnd, "saving", detail=str(cfg.data_dir / "adapter"))
    await compute(node.save, rnd, coord.error_feedback.residual)
    watch.status.update(phase="round done", adapter_sha256=sha, last_heldout_loss=held,
                        rounds_completed=watch.status.fields["rounds_completed"] + 1,
                        adapter_agrees=coord.view.agrees(coord.round, bytes.fromhex(sha),
                                                         exclude=coord.peer_id))
    watch.status.write()
    peers = len(transport.connected_peers())
    progress.round_done(rnd, float(np.mean(losses)), held, len(result.contributors), peers,
                        transport.bytes_received, transport.bytes_sent, sha)
    _append_jsonl(rounds_log, {
        "round": rnd, "train_loss": float(np.mean(losses)), "heldout_loss": held, "tokens": tokens,
        "contributors": result.contributors, "included": result.included,
        "proposer": result.proposer, "rejected": [list(r) for r in result.rejected],
        "adapter_sha256": sha, "train_s": round(t_train, 3), "round_s": round(time.monotonic() - t0, 3),
        "bytes_sent": transport.bytes_sent, "bytes_received": transport.bytes_received})


def _append_jsonl(path: Path, record: dict) -> None:
    append_line_durable(path, json.dumps(record, allow_nan=False))   # JSON has no NaN
