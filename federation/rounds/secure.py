"""A secure-aggregation round (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS'17, section 4; without a server: every member plays
the server's part on what gossip brought it, and the result is checked into a round record).

Phases of round r on one member (messages: secagg/messages.py; every wait has a deadline):
  1. keys: gossip fresh X25519 public keys (c: encryption, s: masks) and our tokens. Close
     when `min_peers` others' keys are in, or at round_timeout_s. U1 = keys heard (with ours).
  2. shares: Shamir-share (t of |U1|) our s private key and our self-mask seed b; encrypt
     each member's pair of shares to it (X25519(c) -> HKDF -> ChaCha20-Poly1305) and gossip
     them with a commitment SHA-256(b). Close when every other member of U1 sent us its
     shares, or at round_timeout_s. The masking cohort C = the members whose shares we hold.
  3. masked input: y = q(w x) + PRG(b) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod 2^32,
     w = our tokens / the cohort's; the payload (naming C) is served by content hash and
     announced by a signed UpdateManifest (codec secagg-masked/1). Close when every member of C
     masked for C, or at round_timeout_s. S = the members whose masked input for C we hold.
  4. consistency + unmask: if |S| >= t(|C|), gossip our one vote "S survived" (Bonawitz et
     al.'s consistency check). Once t members of some S' voted for the same S' (at most one
     set can: t is a majority, each votes once), gossip, once per round, our shares of b_v
     for v in S' and of s_v for v in C \\ S' (never both for one member). Every node that holds t shares of each
     member sums the masked inputs of S, removes the masks, checks each rebuilt secret (b
     against its commitment, s against its public key), dequantizes and divides by the
     survivors' weight: FedAvg of S. Fewer than t survivors: the round is abandoned
     (RoundAbandoned), nothing is revealed.
  5. record: as in every round (agreement.py), a signed record naming the masked manifests of
     S and the new adapter's hash; a record is adopted only if it recomputes from the masked
     inputs and the revealed shares, so all nodes hold the same bits.

t(n) = max(3, floor(n / 2) + 1): a majority, so two different survivor sets can never both
gather t honest reveals (an honest member reveals once per round), and never fewer than 3
survivors (the sum of 2 would hand each the other's update).

Logger: "bitswarm.federation.rounds.secure".
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from bitswarm.federation.round_record import RoundRecord, encode_record
from bitswarm.federation.secagg import Quantizer, RoundKeys, Share, reconstruct, split
from bitswarm.federation.secagg.keys import (SecAggCryptoError, aead_decrypt, aead_encrypt,
                                             derive_key, private_bytes, private_from_bytes,
                                             public_bytes, x25519_shared)
from bitswarm.federation.secagg.masking import apply_masks, pairwise_seed, round_context, unmask_sum
from bitswarm.federation.secagg.messages import (MASKED_CODEC, MAX_COHORT, SecAggMessage,
                                                 cohort_digest,
                                                 decode_masked, decode_message,
                                                 decode_share_plain,
                                                 encode_masked, encode_message,
                                                 encode_share_plain)
from bitswarm.federation.secagg.shamir import ShamirError
from bitswarm.federation.state_hash import adapter_digest
from bitswarm.federation.wire import UpdateManifest, WireError, encode_manifest

from .fetch import FetchFailed
from .intake import ManifestSeen
from .serving import publish

if TYPE_CHECKING:
    from .coordinator import RoundCoordinator, _Exchange

log = logging.getLogger("bitswarm.federation.rounds.secure")

MIN_SURVIVORS = 3
MAX_COMBINATIONS = 32          # share subsets tried per secret when one fails its check
# Rules computable from the sum of the updates alone.
SECURE_RULES = ("fedavg",)


def threshold(n: int) -> int:
    """Shamir threshold of a cohort of n members: max(3, floor(n/2) + 1)."""
    return max(MIN_SURVIVORS, n // 2 + 1)


class RoundAbandoned(Exception):
    """A secure round ended without a sum: too few members, too few survivors (< t), or the
    reveals did not rebuild. Nothing of it was revealed. The round passes empty: the node
    then holds G_{round+1} = G_round (same bits) and takes part in the next round from it.
    `reason` says why."""

    def __init__(self, round: int, reason: str) -> None:
        super().__init__(f"round {round} abandoned: {reason}")
        self.round, self.reason = round, reason


def quantizer_range(clip: float, noise: float) -> float:
    """The clamp R of every coordinate before quantization: the L2 clip bounds each coordinate
    by `clip`; with DP noise (std noise x clip) the clamp sits 8 standard deviations out
    (post-processing: clamping a noised value keeps its DP guarantee)."""
    return clip * (1.0 + 8.0 * noise)


class SecureRound:
    """One secure exchange of `coord` (a RoundCoordinator with secure aggregation on); see the
    module docstring. `run` returns (record, aggregate, adapter, S) or raises RoundAbandoned."""

    def __init__(self, coord: "RoundCoordinator", round: int, ex: "_Exchange",
                 delta: Mapping[str, np.ndarray], tokens: int) -> None:
        self.c, self.round, self.ex, self.tokens = coord, round, ex, tokens
        self.me = coord.peer_id
        self.base_state = coord._state
        self.base = ex.base
        self.context = round_context(coord.swarm, round, ex.base)
        self.keys = RoundKeys.fresh()
        self.names = sorted(coord.expected_shapes)
        self.n = sum(int(np.prod(coord.expected_shapes[k])) for k in self.names)
        self.x = np.concatenate([np.asarray(delta[k], np.float64).ravel() for k in self.names])
        if not np.isfinite(self.x).all():
            raise ValueError("delta holds non-finite values")
        self.quant = Quantizer(quantizer_range(*coord.secure))
        self.masked: dict[str, np.ndarray] = {}            # sender -> y, masked for our cohort
        self.masked_seen: dict[str, ManifestSeen] = {}
        self.cohort: list[str] = []
        self.shares_in: dict[str, tuple[int, Share, Share]] = {}   # owner -> (x, b, s) for us
        self.sa = coord._secagg
        self.cohort_fixed = trio.Event()         # masked inputs wait for our cohort
        self.keys_msgs: dict[str, SecAggMessage] = {}
        self.shares_msgs: dict[str, SecAggMessage] = {}
        self._computed: dict[tuple[str, ...], tuple[dict, dict]] = {}
        self._own_sent: list[SecAggMessage] = []

    # --- helpers -------------------------------------------------------------------------

    def _msgs(self, kind: str) -> dict[str, SecAggMessage]:
        return self.sa.messages(self.round, kind, self.base)

    async def _publish_sa(self, kind: str, **fields) -> SecAggMessage:
        data = encode_message(kind=kind, swarm=self.c.swarm, round=self.round,
                              base_adapter=self.base, rule=self.c.rule_name, sender=self.me,
                              issued_at=int(self.c._clock()), key_pair=self.c.key_pair, **fields)
        self.c._served.secagg.setdefault(self.round, []).append(data)
        msg = decode_message(data)
        self._own_sent.append(msg)
        await publish(self.c.transport, data, self.round, self.c.fetch_timeout_s)
        return msg

    async def _next_event(self, timeout_s: float) -> None:
        """Return at the next secure-aggregation gossip or exchange event, or after timeout_s."""
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as n:
                async def wake(ev):
                    await ev.wait()
                    n.cancel_scope.cancel()
                n.start_soon(wake, self.sa.changed)
                n.start_soon(wake, self.ex.changed)

    async def _until(self, done, timeout_s: float) -> bool:
        """Wait until done() (re-checked on every secagg or exchange event, and every
        republish interval); False at the deadline."""
        with trio.move_on_after(timeout_s):
            while not done():
                await self._next_event(self.c.republish_interval_s)
            return True
        return done()

    def _share_key(self, sender: str, recipient: str, shared: bytes) -> bytes:
        return derive_key(shared, b"share", self.context + sender.encode() + b"\0"
                          + recipient.encode())

    # --- phases --------------------------------------------------------------------------

    async def run(self) -> tuple[RoundRecord, dict, dict, list[str]]:
        c, rnd = self.c, self.round
        timeout = c.round_timeout_s
        # 1. keys
        own_keys = await self._publish_sa("keys", c_public=self.keys.c_public,
                                          s_public=self.keys.s_public, tokens=self.tokens)
        await self._until(lambda: len(self._msgs("keys")) >= c.min_peers, timeout)
        keys = {**self._msgs("keys"), self.me: own_keys}
        others = sorted(set(keys) - {self.me})[:MAX_COHORT - 1]      # the wire's bound
        u1 = sorted([*others, self.me])
        if len(u1) < MIN_SURVIVORS:
            raise RoundAbandoned(rnd, f"{len(u1)} member(s) advertised keys; secure "
                                 f"aggregation needs at least {MIN_SURVIVORS}")
        log.info("round %d: secure aggregation, %d members advertised keys", rnd, len(u1))
        # 2. shares
        t1 = threshold(len(u1))
        b_shares = split(self.keys.b, t1, len(u1))
        s_shares = split(private_bytes(self.keys.s), t1, len(u1))
        cts = []
        for i, v in enumerate(u1):
            if v == self.me:
                self.shares_in[self.me] = (i + 1, b_shares[i], s_shares[i])
                continue
            try:
                shared = x25519_shared(self.keys.c, keys[v].fields["c_public"])
            except SecAggCryptoError as e:
                ex_reject(self.ex, v, f"secure aggregation: bad key ({e.reason})")
                continue
            plain = encode_share_plain(self.me, v, i + 1, b_shares[i].y_bytes(),
                                       s_shares[i].y_bytes())
            cts.append([v, aead_encrypt(self._share_key(self.me, v, shared), plain,
                                        self.context)])
        commit = hashlib.sha256(b"bitswarm-secagg-b\0" + self.keys.b).digest()
        own_shares = await self._publish_sa("shares", cohort=u1, threshold=t1, commit_b=commit,
                                            ciphertexts=cts)
        others = set(u1) - {self.me}
        await self._until(lambda: others <= set(self._msgs("shares")), timeout)
        shares_msgs = {**self._msgs("shares"), self.me: own_shares}
        for v, m in sorted(shares_msgs.items()):
            if v == self.me or v not in keys:
                continue
            got = self._open_share(v, m, keys[v])
            if got is not None:
                self.shares_in[v] = got
        self.cohort = sorted(set(self.shares_in) & set(u1))
        self.keys_msgs, self.shares_msgs = keys, shares_msgs
        self.cohort_fixed.set()
        if len(self.cohort) < MIN_SURVIVORS:
            raise RoundAbandoned(rnd, f"shares of only {len(self.cohort)} member(s) arrived; "
                                 f"need at least {MIN_SURVIVORS}")
        # 3. masked input
        total_tokens = sum(keys[v].fields["tokens"] for v in self.cohort)
        weight = self.tokens / total_tokens
        seeds = {}
        for v in self.cohort:
            if v != self.me:
                seeds[v] = pairwise_seed(self.keys.s, keys[v].fields["s_public"], self.me, v,
                                         self.context)
        y = await c._run_blocking(lambda: apply_masks(self.quant.encode(self.x, weight), self.me,
                                                      self.keys.b, seeds))
        payload = encode_masked(self.cohort, y)
        sha = hashlib.sha256(payload).digest()
        manifest = UpdateManifest(
            swarm=c.swarm, round=rnd, base_model=c.base_model, lora=c.lora, sender=self.me,
            tokens=self.tokens, codec=MASKED_CODEC, payload_sha256=sha,
            payload_size=len(payload), base_adapter=self.base, issued_at=int(c._clock()),
            rule=c.rule_name)
        data = encode_manifest(manifest, c.key_pair)
        self.masked[self.me] = y
        self.masked_seen[self.me] = ManifestSeen(manifest, data)
        self.ex.manifests[self.me] = self.masked_seen[self.me]
        c._served.payloads[(rnd, sha)] = payload
        c._served.manifests[rnd] = data
        log.info("round %d: publishing masked input (%d bytes) for a cohort of %d", rnd,
                 len(payload), len(self.cohort))
        await publish(c.transport, data, rnd, c.fetch_timeout_s)
        await self._until(lambda: set(self.cohort) <= set(self.masked), timeout)
        survivors = sorted(set(self.masked) & set(self.cohort))
        t = threshold(len(self.cohort))
        if len(survivors) < max(t, c.secure_min_sum):
            if not self.ex.records:
                if len(survivors) >= t:    # enough to unmask, too few for the noise promised
                    raise RoundAbandoned(rnd, f"masked inputs of {len(survivors)} members "
                                         f"arrived; each added noise for a sum of at least "
                                         f"{c.secure_min_sum} (distributed DP): nothing is "
                                         f"revealed")
                raise RoundAbandoned(rnd, f"masked inputs of {len(survivors)} of the cohort's "
                                     f"{len(self.cohort)} members arrived; below the "
                                     f"threshold {t}: nothing is revealed")
        else:
            # 4a. consistency: our one vote of the round on who survived.
            await self._publish_sa("consistency", cohort_sha256=cohort_digest(self.cohort),
                                   survivors=survivors)
        agreed: list[str] | None = None

        def voted() -> bool:
            nonlocal agreed
            agreed = self._agreed_survivors()
            return agreed is not None
        await self._until(voted, timeout)
        if agreed is not None and len(agreed) < c.secure_min_sum:
            agreed = None       # never reveal a sum of fewer members than the noise assumes
        if agreed is None:
            if self.ex.records:
                return await self._adopt_only()
            raise RoundAbandoned(rnd, f"no survivor set gathered {t} votes in time")
        # 4b. unmask: once per round, for the one survivor set t members voted for.
        reveal = []
        for v in self.cohort:
            x, b, s = self.shares_in[v]
            reveal.append([v, x, (b if v in agreed else s).y_bytes()])
        await self._publish_sa("unmask", cohort_sha256=cohort_digest(self.cohort),
                               survivors=agreed, shares=reveal)
        result = None
        with trio.move_on_after(timeout):
            while result is None:
                result = await self._try_unmask(survivors=agreed)
                if result is None:
                    await self._next_event(c.republish_interval_s)
        if result is None:
            if self.ex.records:
                return await self._adopt_only()
            raise RoundAbandoned(rnd, "the survivors' reveals did not rebuild the masks in time")
        survivors, aggregate, adapter = result
        # 5. record
        record = encode_record(
            swarm=c.swarm, round=rnd, base_model=c.base_model, lora=c.lora, rule=c.rule_name,
            base_adapter=self.base, new_adapter=adapter_digest(adapter),
            issued_at=int(c._clock()),
            update_bytes=[self.masked_seen[v].data for v in survivors], key_pair=c.key_pair)
        self._computed = {tuple(survivors): (aggregate, adapter)}
        self.ex.records.append(record)
        await publish(c.transport, record.data, rnd, c.fetch_timeout_s)
        adopted = await c._agree(rnd, self.base_state, self.ex, contribute=False,
                                 verify=self._verify_record, own=(record, aggregate, adapter))
        return (*adopted, adopted[0].contributors)

    async def _adopt_only(self):
        self._computed = {}
        adopted = await self.c._agree(self.round, self.base_state, self.ex, contribute=False,
                                      verify=self._verify_record, own=None)
        if adopted is None:
            raise RoundAbandoned(self.round, "no round record of the swarm recomputed")
        return (*adopted, adopted[0].contributors)

    def _open_share(self, v: str, m: SecAggMessage, key_msg: SecAggMessage):
        """(x, b share, s share) that `v` sent us, or None (a rejection filed)."""
        f = m.fields
        if self.me not in f["cohort"]:
            return None                              # it did not hear our keys in time
        if f["threshold"] != threshold(len(f["cohort"])):
            ex_reject(self.ex, v, "secure aggregation: shares with a threshold other than "
                      f"t({len(f['cohort'])})")
            return None
        ct = dict((r, b) for r, b in f["ciphertexts"]).get(self.me)
        if ct is None:
            ex_reject(self.ex, v, "secure aggregation: shares message holds none for us")
            return None
        try:
            shared = x25519_shared(self.keys.c, key_msg.fields["c_public"])
            plain = aead_decrypt(self._share_key(v, self.me, shared), ct, self.context)
            sender, recipient, x, b_y, s_y = decode_share_plain(plain)
            if (sender, recipient, x) != (v, self.me, f["cohort"].index(self.me) + 1):
                raise WireError("share names another sender, recipient or index")
            return x, Share.from_bytes(x, b_y), Share.from_bytes(x, s_y)
        except (SecAggCryptoError, WireError, ShamirError) as e:
            ex_reject(self.ex, v, f"secure aggregation: bad share ({e})")
            return None

    def _agreed_survivors(self) -> list[str] | None:
        """The survivor set S of our cohort that t distinct members of S voted for (at most
        one can be: t is a majority and each member votes once), else None."""
        digest = cohort_digest(self.cohort)
        t = threshold(len(self.cohort))
        votes: dict[tuple[str, ...], set[str]] = {}
        for m in list(self._msgs("consistency").values()) + self._own("consistency"):
            s = tuple(m.fields["survivors"])
            if m.fields["cohort_sha256"] == digest and m.sender in s and set(s) <= set(self.cohort):
                votes.setdefault(s, set()).add(m.sender)
        good = sorted((s for s, who in votes.items() if len(s) >= t and len(who) >= t),
                      key=lambda s: (-len(s), s))
        return list(good[0]) if good else None

    async def _try_unmask(self, survivors: list[str] | None = None):
        """(S, aggregate, adapter) once some survivor set S of our cohort has t reveals and
        every masked input of S is held; else None."""
        digest = cohort_digest(self.cohort)
        groups: dict[tuple[str, ...], list[SecAggMessage]] = {}
        for m in list(self._msgs("unmask").values()) + self._own("unmask"):
            if m.fields["cohort_sha256"] == digest and m.sender in self.cohort \
                    and m.sender in m.fields["survivors"]:
                groups.setdefault(tuple(m.fields["survivors"]), []).append(m)
        t = threshold(len(self.cohort))
        for s_tuple, reveals in sorted(groups.items(), key=lambda g: (-len(g[0]), g[0])):
            if survivors is not None and list(s_tuple) != survivors:
                continue
            if len(s_tuple) < t or len({m.sender for m in reveals}) < t:
                continue
            if not set(s_tuple) <= set(self.masked):
                await self._fetch_masked(set(s_tuple) - set(self.masked))
                if not set(s_tuple) <= set(self.masked):
                    continue
            try:
                aggregate, adapter = await self.c._run_blocking(
                    functools.partial(self._compute, list(s_tuple), reveals))
            except (ShamirError, SecAggCryptoError, ValueError) as e:
                log.warning("round %d: reveals for %d survivors did not rebuild: %s",
                            self.round, len(s_tuple), e)
                continue
            return list(s_tuple), aggregate, adapter
        return None

    def _own(self, kind: str) -> list[SecAggMessage]:
        """Our own messages of `kind` this round (the intake skips our own gossip)."""
        return [m for m in self._own_sent if m.kind == kind]

    async def _fetch_masked(self, missing: set[str]) -> None:
        for v in sorted(missing):
            seen = next((s for s in self.ex.intake.manifests.values()
                         if s.manifest.sender == v and s.manifest.base_adapter == self.base
                         and s.manifest.codec == MASKED_CODEC), None)
            if seen is not None:
                await self.fetch_one(seen)

    def _compute(self, survivors: list[str], reveals: list[SecAggMessage]):
        """(aggregate, adapter) of the survivors' masked inputs and the revealed shares."""
        dropped = [v for v in self.cohort if v not in survivors]
        by_owner: dict[str, list[Share]] = {}
        for m in sorted(reveals, key=lambda m: m.sender):
            idx = self.shares_msgs.get
            for owner, x, y in m.fields["shares"]:
                sm = idx(owner)
                if sm is None or m.sender not in sm.fields["cohort"]:
                    continue
                if x != sm.fields["cohort"].index(m.sender) + 1:
                    continue                          # a share index that is not the revealer's
                by_owner.setdefault(owner, []).append(Share.from_bytes(x, y))
        self_seeds, dropped_keys = {}, {}
        for v in self.cohort:
            sm = self.shares_msgs[v]
            tv = sm.fields["threshold"]
            shares = by_owner.get(v, [])
            if v in survivors:
                commit = sm.fields["commit_b"]
                self_seeds[v] = _rebuild(shares, tv, lambda b: hashlib.sha256(
                    b"bitswarm-secagg-b\0" + b).digest() == commit, f"b of {v}")
            else:
                want = self.keys_msgs[v].fields["s_public"]
                dropped_keys[v] = _rebuild(shares, tv, lambda s: public_bytes(
                    private_from_bytes(s)) == want, f"s key of {v}")
        s_publics = {u: self.keys_msgs[u].fields["s_public"] for u in survivors}
        total = unmask_sum({u: self.masked[u] for u in survivors}, self_seeds, dropped_keys,
                           s_publics, self.context)
        tokens = {v: self.keys_msgs[v].fields["tokens"] for v in self.cohort}
        n_cohort = sum(tokens[v] for v in self.cohort)
        w_s = math.fsum(tokens[v] / n_cohort for v in survivors)
        flat = self.quant.decode(total) / w_s
        aggregate, off = {}, 0
        for k in self.names:
            shape = self.c.expected_shapes[k]
            size = int(np.prod(shape))
            aggregate[k] = flat[off:off + size].reshape(shape).astype(np.float32)
            off += size
        aggregate = {k: aggregate[k] for k in self.c.expected_shapes}
        if self.c.outer is not None:
            return aggregate, self.c.outer.step(self.base_state, aggregate)
        return aggregate, {k: (self.base_state[k] + aggregate[k]).astype(np.float32)
                           for k in self.base_state}

    async def _verify_record(self, round: int, base: Any, record: RoundRecord, ex: Any):
        """(aggregate, adapter) if `record` names a survivor set we can unmask and its new
        adapter recomputes; else None (rejection filed)."""
        s = record.contributors
        if any(m.codec != MASKED_CODEC for m in record.updates):
            ex_reject(ex, record.proposer, "round record names a plain update in a "
                      "secure-aggregation swarm")
            return None
        got = self._computed.get(tuple(s))
        if got is None and self.cohort and set(s) <= set(self.cohort):
            res = await self._try_unmask(survivors=s)
            got = None if res is None else (res[1], res[2])
            if got is not None:
                self._computed[tuple(s)] = got
        if got is None:
            ex_reject(ex, record.proposer, "round record: its survivors' masks could not be "
                      "removed here (no reveals of that set)")
            return None
        if adapter_digest(got[1]) != record.new_adapter:
            ex_reject(ex, record.proposer, "round record's new adapter does not recompute from "
                      "the masked inputs")
            return None
        return got

    # --- the dispatcher's fetch ----------------------------------------------------------

    async def fetch_one(self, seen: ManifestSeen) -> None:
        """Fetch and check one masked input; kept if it was masked for our cohort."""
        m = seen.manifest
        if m.codec != MASKED_CODEC:
            ex_reject(self.ex, m.sender, "plain update in a secure-aggregation swarm")
            return
        if m.sender in self.masked:
            return
        try:
            data, _ = await self.c._fetcher.fetch(m)
        except FetchFailed as e:
            ex_reject(self.ex, m.sender, e.reason)
            return
        try:
            cohort, y = await self.c._run_blocking(functools.partial(decode_masked, data, self.n))
        except WireError as e:
            ex_reject(self.ex, m.sender, f"bad masked input: {e.reason}")
            return
        self.c._served.payloads[(m.round, m.payload_sha256)] = data
        await self.cohort_fixed.wait()
        keys = self.keys_msgs
        if m.sender in keys and keys[m.sender].fields["tokens"] != m.tokens:
            ex_reject(self.ex, m.sender, "masked input claims other tokens than its keys")
            return
        if cohort != self.cohort:
            log.info("round %d: masked input of %s was masked for another cohort (%d members); "
                     "not summed", m.round, m.sender, len(cohort))
            return
        self.masked[m.sender] = y
        self.masked_seen[m.sender] = seen
        self.ex.manifests[m.sender] = seen
        self.ex.poke()


def _rebuild(shares: list[Share], t: int, check, what: str) -> bytes:
    """The 32-byte secret from t of `shares` that passes `check`; tries up to MAX_COMBINATIONS
    subsets. Raises ShamirError."""
    if len(shares) < t:
        raise ShamirError(f"{what}: {len(shares)} share(s) revealed, {t} needed")
    for combo in itertools.islice(itertools.combinations(shares, t), MAX_COMBINATIONS):
        try:
            secret = reconstruct(list(combo), t, 32)
        except ShamirError:
            continue
        try:
            if check(secret):
                return secret
        except SecAggCryptoError:
            continue
    raise ShamirError(f"{what}: no {t} of the revealed shares rebuild it")


def ex_reject(ex: Any, peer: str, reason: str) -> None:
    ex.intake.reject(peer, reason)
