"""Autoregressive generation with a KV cache on the backend (CPU or GPU).

`Generator` runs the BitNet layers of kernels/model.py (`BitNetModel._layer`: the same code,
fused q/k/v GEMM and LoRA path as training) with a `CachedAttention` hook, in two modes:
  prefill(ids)  one forward over the whole prompt (causal `attention`); each layer's K (after
                RoPE) and V rows are written into a per-layer cache of (max_len, Hkv*hd) float32
                tensors that stays on the backend; returns the logits of the last prompt token.
  step(token)   one token at position L = tokens so far: `rope_at` position L, `kv_append_` its
                K/V at row L, `attention_decode` of its query over cache rows 0..L; returns its
                logits.
Every op is per token except attention, and a decode row attends over exactly the keys the
causal mask lets the same row see in a full forward, so prefill + steps give the logits of
BitNetModel.forward over the whole sequence (tests/kernels/test_generate.py checks each
position). Only the (V,) logits of one token are downloaded per step.

Sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise one draw from
softmax(logits / T) (float64) with the caller's numpy Generator, so a seed reproduces a run.

Symbols: kernels/config.py. Decode ops (rope_at, kv_append_, attention_decode): Backend methods,
kernels/ops/rope and kernels/ops/attention.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from bitswarm.kernels.backend import Backend
from bitswarm.kernels.config import BitNetWeights, LoRAConfig
from bitswarm.kernels.lora import LoRAState
from bitswarm.kernels.model import BitNetModel

def sample_token(logits: np.ndarray, temperature: float, rng: np.random.Generator | None) -> int:
    """Next token from logits float (V,): argmax when temperature == 0, else a draw from
    softmax(logits / temperature) with rng. Raises ValueError for temperature < 0 or NaN
    logits, and when sampling without an rng."""
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = np.asarray(logits)
    if np.isnan(logits).any():
        raise ValueError("logits hold NaN")
    if temperature == 0:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng")
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(p.size, p=p / p.sum()))


class CachedAttention:
    """The `Attention` hook of BitNetModel._layer for decoding: RoPE at absolute positions
    pos..pos+M-1 (`rope_at`), K/V rows appended to the generator's per-layer cache, then causal
    attention within the prompt (pos == 0) or one query over cache rows 0..pos."""

    def __init__(self, gen: "Generator", pos: int) -> None:
        self.gen, self.pos = gen, pos

    def __call__(self, model: BitNetModel, i: int, q, k, v) -> tuple:
        c, be, pos = model.cfg, model.be, self.pos
        Hq, Hkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q = be.rope_at(q, pos, Hq, hd, c.rope_theta)
        k = be.rope_at(k, pos, Hkv, hd, c.rope_theta)
        be.kv_append_(self.gen._k[i], k, pos)
        be.kv_append_(self.gen._v[i], v, pos)
        if pos == 0:
            o, _ = be.attention(q, k, v, 1, q.shape[0], Hq, Hkv, hd)
        else:
            o = be.attention_decode(q, self.gen._k[i], self.gen._v[i], pos + 1, Hq, Hkv, hd)
        return q, k, v, o, None


class Generator:
    """Cached autoregressive decoding of one sequence.

    Args:
        weights: host base weights (uploaded once to `backend`).
        backend: CpuBackend or GpuBackend.
        lora_cfg, lora_state: adapter (kernels/lora.py flat state); None for the base model.
    """

    def __init__(self, weights: BitNetWeights, backend: Backend,
                 lora_cfg: LoRAConfig | None = None, lora_state: LoRAState | None = None) -> None:
        if lora_state and lora_cfg is None:
            raise ValueError("lora_state given without lora_cfg")
        self.cfg = weights.config
        self.be = backend
        self.model = BitNetModel(weights, backend, lora_cfg or LoRAConfig())
        if lora_state:
            self.model.set_lora(lora_state)
        self.pos = 0                      # tokens in the cache
        self.max_len = 0
        self._k: list = []
        self._v: list = []

    # ------------------------------------------------------------------ layers
    def _blocks(self, x, pos: int):
        """All decoder layers (BitNetModel._layer, the training layer code) over M tokens at
        positions pos..pos+M-1: M rows from pos 0 (prefill, causal attention within the chunk)
        or one row at pos > 0 (cached)."""
        attn = CachedAttention(self, pos)
        for i in range(len(self.model.layers)):
            x = self.model._layer(i, x, attn, None)
        return x

    def _logits(self, x) -> np.ndarray:
        """Final norm + lm_head of one row x (1, D) -> float32 (V,) on the host."""
        nf, _ = self.be.rmsnorm(x, self.model.norm, self.cfg.rms_norm_eps)
        logits = self.be.matmul(nf, self.model.lm_head, trans_b=True)
        return np.asarray(self.be.numpy(logits), dtype=np.float32).reshape(-1)

    def _embed(self, ids: np.ndarray):
        return self.be.embedding(self.be.tensor(ids.astype(np.int32)), self.model.embed)

    # ------------------------------------------------------------------ API
    def prefill(self, ids, max_len: int | None = None) -> np.ndarray:
        """Reset the cache and run the prompt: ids int (T,), T >= 1 -> logits float32 (V,) of
        its last token. max_len: cache rows (prompt + tokens to come), default
        max_position_embeddings. Raises ValueError for an empty prompt or T > max_len, and
        IndexError for ids outside the vocabulary."""
        ids = np.asarray(ids).reshape(-1)
        T = ids.size
        if T < 1:
            raise ValueError("prefill needs at least one token")
        cap = int(max_len or self.cfg.max_position_embeddings)
        if T > cap:
            raise ValueError(f"prompt of {T} tokens is longer than the cache ({cap} rows)")
        kvw = self.cfg.num_key_value_heads * self.cfg.head_dim
        zeros = np.zeros((cap, kvw), np.float32)
        n_layers = len(self.model.layers)
        self._k = [self.be.tensor(zeros) for _ in range(n_layers)]
        self._v = [self.be.tensor(zeros) for _ in range(n_layers)]
        self.max_len, self.pos = cap, 0
        x = self._blocks(self._embed(ids), 0)
        self.pos = T
        # Only the last row goes through lm_head: gather it with the embedding op (exact copy).
        last = self.be.embedding(self.be.tensor(np.array([T - 1], np.int32)), x)
        return self._logits(last)

    def step(self, token: int) -> np.ndarray:
        """Append one token at position `self.pos` -> its logits float32 (V,). Raises
        RuntimeError before prefill, ValueError when the cache is full."""
        if not self._k:
            raise RuntimeError("step() before prefill()")
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache full ({self.max_len} rows)")
        x = self._blocks(self._embed(np.array([int(token)])), self.pos)
        self.pos += 1
        return self._logits(x)

    def generate(self, ids, max_new_tokens: int, temperature: float = 0.0,
                 rng: np.random.Generator | None = None) -> Iterator[int]:
        """Yield up to max_new_tokens new token ids after the prompt ids (T,); stops early at
        the config's eos_token_id, which is not yielded. temperature 0 = greedy; else sampled
        with rng (default: an unseeded default_rng). Raises ValueError when the prompt plus
        max_new_tokens exceeds max_position_embeddings, or for max_new_tokens < 0."""
        ids = np.asarray(ids).reshape(-1)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        limit = self.cfg.max_position_embeddings
        if ids.size + max_new_tokens > limit:
            raise ValueError(f"prompt ({ids.size} tokens) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds the model's max_position_embeddings ({limit})")
        if max_new_tokens == 0:
            return
        if temperature > 0 and rng is None:
            rng = np.random.default_rng()
        logits = self.prefill(ids, max_len=ids.size + max_new_tokens)
        eos = self.cfg.eos_token_id
        for n in range(max_new_tokens):
            tok = sample_token(logits, temperature, rng)
            if eos is not None and tok == eos:
                return
            yield tok
            if n + 1 < max_new_tokens:
                logits = self.step(tok)


def stream_text(decode, tokens: Iterable[int]) -> Iterator[str]:
    """Printable text pieces of a token stream, for byte-level BPE.

    decode(list[int]) -> str decodes cumulative ids (so merges across tokens come out right);
    each piece is the new suffix. A trailing U+FFFD (an incomplete UTF-8 sequence so far) is
    held back until later tokens complete it; whatever is held at the end is flushed.
    """
    ids: list[int] = []
    shown = ""
    for t in tokens:
        ids.append(int(t))
        text = decode(ids)
        ready = text.rstrip("\ufffd")
        if not ready.startswith(shown):
            # a decoder that rewrote earlier text (not byte-level BPE): show from the divergence
            common = 0
            while common < min(len(ready), len(shown)) and ready[common] == shown[common]:
                common += 1
            shown = shown[:common]
        if len(ready) > len(shown):
            yield ready[len(shown):]
            shown = ready
    if ids:
        text = decode(ids)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]
