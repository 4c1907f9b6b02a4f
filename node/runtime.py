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
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio

from bitswarm.federation.aggregation import AGGREGATION_RULES, NesterovOuter
from bitswarm.federation.codecs import make_codec
from bitswarm.federation.discovery import AllOf, LanPeers, SwarmDHT
from bitswarm.federation.identity import load_or_create_identity
from bitswarm.federation.privacy import GaussianRDPAccountant, clip_and_noise
from bitswarm.fsutil import append_line_durable
from bitswarm.federation.rounds import RoundAbandoned, RoundCoordinator, SwarmMovedOn
from bitswarm.federation.rounds.secure import threshold as secure_threshold
from bitswarm.federation.state_hash import adapter_sha256
from bitswarm.federation.transport import GuardLimits, TransportConfig, open_transport
from bitswarm.federation.wire import lora_dict
from bitswarm.kernels.backend import select_backend
from bitswarm.formats.peft_adapter import save_adapter
from bitswarm.kernels.lora import init_lora, lora_shapes
from bitswarm.kernels.model import DEVICE_MEMORY_SHARE, BitNetModel
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
LINGER_S = 30.0           # after the last round, least wait for peers to hold our adapter
ANNOUNCE_S = 2.0          # before exiting, at most this long to gossip the adapter we hold


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
        self.backend = select_backend(cfg.device, cfg.embeddings, cfg.gpu_ste,
                                      cfg.gpu_runtime, cfg.cpu_ste)
        log.info("base model %s (sha256 %s…), backend %s", self.model_dir, self.base_model[:12], self.backend.name)
        warn = self.backend.device_warning
        (log.warning if warn else log.info)("compute device: %s%s", self.backend.device_info,
                                            f" ({warn})" if warn else "")
        self.model = BitNetModel(weights, self.backend, cfg.lora)
        if cfg.recompute != "auto":
            self.model.recompute = cfg.recompute == "on"
        if cfg.activation_memory_mib is not None:
            self.model.activation_budget = cfg.activation_memory_mib * 2**20   # bytes
        budget = self.model.effective_activation_budget()
        why = ""
        if budget is not None and self.backend.caps.device_memory_limited:
            why = f" (activation budget {budget / 2**20:,.0f} MiB" + (
                ")" if cfg.activation_memory_mib is not None
                else f": 1/{DEVICE_MEMORY_SHARE} of the GPU's memory)")
        log.info("training step: %d of %d layers recomputed in the backward at %d x %d tokens%s",
                 self.model.recomputed_layers(cfg.batch_size * cfg.ctx), len(self.model.layers),
                 cfg.batch_size, cfg.ctx, why)
        self.shapes = lora_shapes(weights.config, cfg.lora)
        # A training loss above twice a uniform guess's (2 ln V nats) means the step diverged.
        self.explode_loss = 2.0 * math.log(weights.config.vocab_size)
        files = find_text_files(cfg.data)
        train_files, held_files = split_train_heldout(files)
        self.train_docs = [tokenize(self.tokenizer, f) for f in train_files]
        self.heldout_docs = [tokenize(self.tokenizer, f) for f in held_files]
        self.sampler = TrainSampler(self.train_docs, cfg.ctx, seed=cfg.seed)
        log.info("data: %d training file(s), %d tokens; %d held-out file(s)", len(train_files),
                 self.sampler.tokens, len(held_files))
        self.trainer = LocalTrainer(self.model, self.sampler, lr=cfg.lr, batch_size=cfg.batch_size)
        self.global_state = init_lora(weights.config, cfg.lora, _initial_seed(cfg.swarm, self.base_model))
        self.dp = None if cfg.dp_clip is None else GaussianRDPAccountant(
            cfg.dp_noise, releases=_dp_releases(cfg.data_dir / "rounds.jsonl"))
        self.dp_rng = np.random.default_rng()            # OS entropy: noise nobody can replay

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



def member_noise(cfg) -> float:
    """The noise multiplier this node adds to its clipped update.

    Local DP (default): the full sigma, so every published update is a Gaussian release on
    its own. Distributed DP (with --secure-aggregation): only the cohort's masked sum is ever
    revealed, and it sums the updates of at least t = threshold(min_peers + 1) members
    (rounds/secure.py), so each adds sigma / sqrt(t): the sum carries std >= sigma x C,
    provided at least t members are honest (Bonawitz et al. 2017 with the distributed
    Gaussian mechanism; the accountant reports epsilon for sigma)."""
    if not cfg.secure_aggregation:
        return cfg.dp_noise
    return cfg.dp_noise / math.sqrt(secure_threshold(cfg.min_peers + 1))


def secure_min_sum(cfg) -> int:
    """The fewest members a revealed secure sum may hold: with distributed DP noise the count
    member_noise divides sigma by (threshold(min_peers + 1)), so every revealed sum carries
    std >= sigma x C; 0 (the Shamir threshold alone) without noise or secure aggregation."""
    if not cfg.secure_aggregation or not cfg.dp_noise:
        return 0
    return secure_threshold(cfg.min_peers + 1)


def outer_step(cfg) -> NesterovOuter | None:
    """The swarm's outer optimizer from --outer-lr / --outer-momentum (None: the plain step)."""
    if cfg.outer_lr == 1.0 and cfg.outer_momentum == 0.0:
        return None
    return NesterovOuter(cfg.outer_lr, cfg.outer_momentum)

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
    if resumed is not None:
        _recover_round_line(rounds_log, resumed.round, adapter_sha256(node.global_state))
    if cfg.rounds is not None and first >= cfg.rounds:
        log.info("the swarm's rounds 0..%d are already complete in %s; nothing to do",
                 cfg.rounds - 1, cfg.data_dir)
        return ServeOutcome(0)
    tcfg = TransportConfig(listen=cfg.listen, topic=swarm_topic(cfg.swarm), psk=cfg.swarm_key,
                           relay=cfg.relay,
                           limits=GuardLimits(max_conns_per_ip=cfg.max_conns_per_ip))
    dialed = [*cfg.peers, *cfg.bootstrap]
    discovery = SwarmDHT(dialed, cfg.swarm)
    if cfg.mdns:
        discovery = AllOf(discovery, LanPeers(cfg.swarm))
    async with open_transport(node.key_pair, tcfg, discovery=discovery) as transport:
        for addr in transport.listen_multiaddrs:
            print(f"listening on {addr}", flush=True)
        coord = RoundCoordinator(
            transport, node.key_pair, swarm=cfg.swarm, base_model=node.base_model,
            lora=lora_dict(cfg.lora), expected_shapes=node.shapes, min_peers=cfg.min_peers,
            round_timeout_s=cfg.round_timeout_s,
            codec=make_codec(cfg.codec, topk_fraction=cfg.topk_fraction),
            aggregation=AGGREGATION_RULES[cfg.aggregation](), outer=outer_step(cfg),
            dp=None if cfg.dp_clip is None else (cfg.dp_clip, cfg.dp_noise),
            secure_aggregation=cfg.secure_aggregation, secure_min_sum=secure_min_sum(cfg),
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
        history = {first: bytes.fromhex(coord.adapter_sha256)}   # round -> digest of G_round
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
                        await _catch_up(node, coord, rounds_log, compute, status)
                        rnd = coord.round
                        if cfg.rounds is not None and rnd >= cfg.rounds:
                            break
                        if _dp_budget_spent(node):
                            break
                        await _one_round(node, coord, transport, rnd, compute, progress,
                                         rounds_log, watch)
                        history[coord.round] = bytes.fromhex(coord.adapter_sha256)
                        done += 1
                    if done:
                        await _linger(node, coord, transport, compute, rounds_log, status)
                interrupted = stop.cancelled_caught
                nursery.cancel_scope.cancel()
        watch.poll(transport)
        # A peer agrees when its latest signed claim is an adapter this node held at that round.
        watch.peers_agreeing = sum(1 for r, d in coord.view.latest(exclude=transport.peer_id).values()
                                   if history.get(r) == d)
        status.update(phase="stopped")
        status.write()
    failure = None if interrupted or cfg.rounds is None else \
        watch.failure(swarm=cfg.swarm, dialed=dialed, min_peers=cfg.min_peers)
    return ServeOutcome(done, interrupted, failure)


def _recover_round_line(path: Path, rnd: int, sha: str) -> None:
    """A kill between the checkpoint and the rounds.jsonl append leaves the resumed round
    without its line: write it (marked recovered; its losses and bytes were not kept), so the
    file keeps one object per completed round."""
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("round") == rnd:
                return
        except (ValueError, AttributeError):
            continue
    log.warning("rounds.jsonl lacks round %d (killed after its checkpoint): recording it from "
                "the checkpoint", rnd)
    _append_jsonl(path, {"round": rnd, "adapter_sha256": sha, "recovered": True,
                         "train_loss": None, "heldout_loss": None, "tokens": None})


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
    manifest every 2 s, longer in a large swarm) before it decides which round it is in: at most
    JOIN_WAIT_S."""
    with trio.move_on_after(JOIN_WAIT_S):
        while not transport.topic_peers():
            await trio.sleep(0.2)
        heard = trio.current_time() + 2 * coord.republish_period_s + 0.5
        while coord.view.signers(exclude=coord.peer_id) == 0 or trio.current_time() < heard:
            await trio.sleep(0.2)


async def _linger(node: Node, coord, transport, compute, rounds_log: Path,
                  status: StatusFile | None = None) -> None:
    """After the last round, keep serving (at most max(LINGER_S, 2 x --round-timeout)) until
    every connected swarm member that takes part in agreement (it gossiped a round record) or
    has not been heard from yet (still training its first round) claims the adapter we hold or
    a later one: a straggler still checking the final rounds' records needs our payloads, and
    a node that exits at once would leave it on its own proposal. Members whose messages we
    refuse as incompatible are not waited for. If the final round split the
    swarm, the minority side re-syncs here. Then it gossips its claim once more (announce), so
    peers that wait for it see where it ended."""
    def waiting() -> set[str]:
        claims = coord.view.latest()
        mine = (coord.round, bytes.fromhex(coord.adapter_sha256))
        # A member we refuse as incompatible never claims anything we accept: not waited for
        # (one with another --rank held every such run 30 s past its last round).
        members = {p for p in set(transport.topic_peers()) - coord.incompatible_peers
                   if p in coord.view.recorders() or p not in claims}
        return {p for p in members if claims.get(p) != mine and claims.get(p, (-1,))[0] <= coord.round}

    limit = max(LINGER_S, 2 * node.cfg.round_timeout_s)
    if waiting():
        log.info("waiting up to %.0f s for %d peer(s) to reach the final adapter", limit,
                 len(waiting()))
    with trio.move_on_after(limit):
        while waiting():
            await trio.sleep(0.5)
            await _catch_up(node, coord, rounds_log, compute, status)
    # Say where we ended before leaving (a catch-up just now may have moved us there), and give
    # the gossip a moment to leave before the transport closes.
    with trio.move_on_after(ANNOUNCE_S):
        await coord.announce()
        await trio.sleep(ANNOUNCE_S / 2)


async def _catch_up(node: Node, coord, rounds_log: Path, compute,
                    status: StatusFile | None = None) -> None:
    """Adopt the swarm's head when the view says we are behind or on a minority fork, and save
    it as the last completed round's adapter (a restart resumes from it); `status` (node
    status's file) then shows the adapter held."""
    sync = await coord.catch_up()
    if sync is None:
        return
    node.global_state = dict(sync.adapter)
    coord.error_feedback.reset()        # residuals of another history would only add noise
    log.info("synced to the swarm's round %d (adapter sha256 %s, from %s, claimed by %d peer(s))",
             sync.round, sync.adapter_sha256, sync.source, sync.signers)
    if sync.round > 0:
        await compute(node.save, sync.round - 1, {})
    if status is not None:                  # before the log line: readers of both agree
        status.update(adapter_sha256=sync.adapter_sha256)
        status.write()
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
    losses, tokens, diverged = [], 0, None
    for s in range(cfg.local_steps):
        try:
            loss, count = await compute(node.trainer.step)
        except FloatingPointError as e:          # a non-finite loss: never trained on
            diverged = f"step {s + 1}: {e}"
            break
        if loss > node.explode_loss:
            diverged = f"step {s + 1}: loss {loss:.2f} > {node.explode_loss:.1f} (2 ln vocab)"
            break
        losses.append(loss)
        tokens += count
        progress.step(rnd, s + 1, loss, len(transport.connected_peers()),
                      transport.bytes_received, transport.bytes_sent, tokens=count)
    local = await compute(node.trainer.adapter)
    delta = {k: local[k] - node.global_state[k] for k in node.global_state}
    if diverged is None and not all(np.isfinite(v).all() for v in delta.values()):
        diverged = "the local adapter holds non-finite values"
    t_train = time.monotonic() - t0
    if diverged is not None:
        result = await _roll_back(node, coord, rnd, diverged, compute, rounds_log)
        if result is None:
            return
        losses = []
    else:
        watch.status.update(phase="exchanging", last_train_loss=float(np.mean(losses)))
        if cfg.min_peers:
            progress.phase(rnd, "waiting for peers", cfg.round_timeout_s,
                           f"{cfg.min_peers} peer update(s) complete the round, "
                           f"{len(transport.topic_peers())} swarm member(s) connected")
        if node.dp is not None:
            sigma = member_noise(cfg)
            delta, norm = clip_and_noise(delta, cfg.dp_clip, sigma, node.dp_rng)
            log.info("round %d: DP: update norm %.4g clipped to %.4g, noise sigma %.3g%s", rnd,
                     norm, cfg.dp_clip, sigma, " (our share of the cohort's)"
                     if cfg.secure_aggregation else "")
        try:
            result = await coord.exchange(rnd, delta, tokens)
        except SwarmMovedOn as e:
            log.warning("%s: our update of round %d is dropped; catching up", e, rnd)
            return
        except RoundAbandoned as e:          # secure aggregation: nothing was revealed
            log.warning("%s; the round passes without an update", e)
            _append_jsonl(rounds_log, {"abandoned_round": rnd, "reason": e.reason})
            return
        if node.dp is not None:                  # published: one more Gaussian release
            node.dp.step()
    watch.add_round(result)
    node.global_state = dict(result.adapter)
    sha = result.adapter_sha256
    held = await compute(node.heldout_loss)
    if held is not None and not math.isfinite(held):
        log.warning("round %d: held-out loss is %s; recorded as null", rnd, held)
        held = None
    progress.phase(rnd, "saving", detail=str(cfg.data_dir / "adapter"))
    await compute(node.save, rnd, coord.error_feedback.residual)
    watch.status.update(phase="round done", adapter_sha256=sha, last_heldout_loss=held,
                        rounds_completed=watch.status.fields["rounds_completed"] + 1,
                        adapter_agrees=coord.view.agrees(coord.round, bytes.fromhex(sha),
                                                         exclude=coord.peer_id))
    watch.status.write()
    peers = len(transport.connected_peers())
    train_loss = float(np.mean(losses)) if losses else None
    progress.round_done(rnd, train_loss, held, len(result.contributors), peers,
                        transport.bytes_received, transport.bytes_sent, sha)
    dp = {} if node.dp is None else {"dp_epsilon": node.dp.epsilon(cfg.dp_delta),
                                     "dp_delta": cfg.dp_delta, "dp_releases": node.dp.releases}
    if dp and not math.isfinite(dp["dp_epsilon"]):
        dp["dp_epsilon"] = None          # --dp-noise 0 (clipping only): no DP guarantee; JSON null
    if dp:
        log.info("round %d: DP: epsilon %s at delta %g after %d published update(s)", rnd,
                 "inf (no noise)" if dp["dp_epsilon"] is None else f"{dp['dp_epsilon']:.3f}",
                 cfg.dp_delta, node.dp.releases)
        watch.status.update(dp_epsilon=dp["dp_epsilon"])
    _append_jsonl(rounds_log, {**dp,
        "round": rnd, "train_loss": train_loss, "heldout_loss": held, "tokens": tokens,
        "contributors": result.contributors, "included": result.included,
        "proposer": result.proposer, "rejected": [list(r) for r in result.rejected],
        "adapter_sha256": sha, "train_s": round(t_train, 3), "round_s": round(time.monotonic() - t0, 3),
        "bytes_sent": transport.bytes_sent, "bytes_received": transport.bytes_received})


async def _roll_back(node: Node, coord, rnd: int, why: str, compute, rounds_log: Path):
    """Local training diverged: back to the round's global adapter with fresh optimizer
    moments and half the learning rate, no update of ours this round (the swarm's record is
    followed when peers are expected). Returns the followed RoundResult, or None (the round is
    tried again, at the lower rate)."""
    lr = await compute(node.trainer.roll_back, node.global_state)
    log.warning("round %d: local training diverged (%s): rolled back to the round's global "
                "adapter, optimizer reset, learning rate now %.3g; no update of ours this round",
                rnd, why, lr)
    _append_jsonl(rounds_log, {"diverged_round": rnd, "reason": why, "lr": lr})
    if node.cfg.min_peers == 0:
        return None
    return await coord.follow(rnd)


def _dp_releases(rounds_log: Path) -> int:
    """Updates this data dir already published under DP (a resumed node's accountant)."""
    if not rounds_log.exists():
        return 0
    n = 0
    for line in rounds_log.read_text().splitlines():
        try:
            n = max(n, int(json.loads(line).get("dp_releases", 0)))
        except (ValueError, AttributeError):
            continue
    return n


def _dp_budget_spent(node: Node) -> bool:
    """Whether one more published update would exceed --dp-epsilon-budget (then the node stops)."""
    cfg = node.cfg
    if node.dp is None or cfg.dp_epsilon_budget is None:
        return False
    nxt = node.dp.epsilon(cfg.dp_delta, node.dp.releases + 1)
    if nxt <= cfg.dp_epsilon_budget:
        return False
    log.warning("DP budget: one more update would reach epsilon %.3f > --dp-epsilon-budget %g "
                "(delta %g, %d update(s) published); stopping", nxt, cfg.dp_epsilon_budget,
                cfg.dp_delta, node.dp.releases)
    return True


def _append_jsonl(path: Path, record: dict) -> None:
    append_line_durable(path, json.dumps(record, allow_nan=False))   # JSON has no NaN
