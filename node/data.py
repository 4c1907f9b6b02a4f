"""Local documents: discovery, tokenization, the eval windows and the training sampler.

Raw text never leaves this module's callers' machine: only adapter deltas are federated.

Eval protocol (README "Evaluation"): each file is tokenized on its own (no special tokens),
split into consecutive non-overlapping windows of ctx tokens, the last partial window kept if it
has >= 2 tokens; each window is an independent sequence; the loss is the mean next-token
cross-entropy over all predicted positions. Bits per byte = total nats / ln 2 / UTF-8 bytes of
the predicted tokens.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}


@dataclass
class Document:
    path: Path
    ids: np.ndarray          # int32 (n_tokens,)
    token_bytes: np.ndarray  # int32 (n_tokens,): UTF-8 bytes each token covers


def find_text_files(data_dir: Path) -> list[Path]:
    """Text files (.txt/.md/.rst/.text) under data_dir, sorted. Raises ValueError naming the
    directory when it is missing or holds none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"--data {data_dir}: not a directory")
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise ValueError(f"--data {data_dir}: no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
    return files


def read_text(path: Path) -> str:
    """UTF-8 text of a file; undecodable bytes fail fast naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None


def tokenize(tokenizer, path: Path) -> Document:
    """Tokenize one file on its own (add_special_tokens=False)."""
    text = read_text(path)
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int32)
    # Bytes per token from character offsets: offsets are in characters of `text`.
    nbytes = np.fromiter((len(text[a:b].encode("utf-8")) for a, b in enc.offsets), np.int32, len(ids))
    return Document(path, ids, nbytes)


def split_train_heldout(files: list[Path], heldout_fraction: float = 0.1) -> tuple[list[Path], list[Path]]:
    """Deterministic split by a hash of each file name: ~heldout_fraction of files are held out
    (at least one when there are >= 2 files), the rest train."""
    if len(files) < 2:
        return list(files), []
    ranked = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).digest())
    n_held = max(1, int(round(len(files) * heldout_fraction)))
    held = set(ranked[:n_held])
    return [f for f in files if f not in held], [f for f in files if f in held]


def eval_windows(doc: Document, ctx: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(inputs, targets, target_bytes) windows of the eval protocol: consecutive, non-overlapping,
    ctx tokens, last partial kept if >= 2 tokens. inputs = w[:-1], targets = w[1:]."""
    out = []
    for s in range(0, len(doc.ids), ctx):
        w = doc.ids[s:s + ctx]
        if len(w) >= 2:
            out.append((w[:-1], w[1:], doc.token_bytes[s + 1:s + len(w)]))
    return out


def pack_batch(windows: list[tuple[np.ndarray, ...]], T: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad windows to T: ids (B, T) int32 (pad 0), targets (B, T) int32 (pad -1)."""
    ids = np.zeros((len(windows), T), np.int32)
    tgt = np.full((len(windows), T), -1, np.int32)
    for b, (x, y, *_) in enumerate(windows):
        ids[b, :len(x)] = x
        tgt[b, :len(y)] = y
    return ids, tgt


class TrainSampler:
    """Random training windows of ctx+1 tokens drawn from the concatenated training documents
    (each document separately, so no window spans two files), seeded for reproducibility."""

    def __init__(self, docs: list[Document], ctx: int, seed: int) -> None:
        self.ctx = ctx
        self.docs = [d for d in docs if len(d.ids) >= 2]
        if not self.docs:
            raise ValueError("training documents hold fewer than 2 tokens in total")
        lengths = np.array([max(1, len(d.ids) - 1) for d in self.docs], np.float64)
        self.p = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)
        self.tokens = int(sum(len(d.ids) for d in self.docs))

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """ids, targets int32 (batch_size, ctx); short documents are padded (target -1)."""
        wins = []
        for di in self.rng.choice(len(self.docs), size=batch_size, p=self.p):
            ids = self.docs[di].ids
            start = int(self.rng.integers(0, max(1, len(ids) - self.ctx - 1) + 1))
            w = ids[start:start + self.ctx + 1]
            wins.append((w[:-1], w[1:]))
        return pack_batch(wins, self.ctx)
