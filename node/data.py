"""Local documents: discovery, tokenization, the eval windows and the training sampler.

Raw text never leaves this module's callers' machine: only adapter deltas are federated.

Files under --data: plain text (.txt .md .rst .text), one document each, and JSON Lines
(.jsonl), one JSON object per line, in either of two forms (blank lines are ignored):

    {"text": "..."}                                         plain text, every token a target
    {"messages": [{"role": "system"|"user"|"assistant"|..., "content": "..."}, ...]}
                                       the Hugging Face / OpenAI chat format, rendered with
                                       CHAT_TEMPLATE; only assistant tokens are targets

A .jsonl file is one Document: its records in order, each record's text ending in a newline.
Chat template (ChatML, as used by Qwen and OpenAI's chat markup), each message:

    <|im_start|>{role}\n{content}<|im_end|>\n

The loss mask marks `{content}<|im_end|>\n` of assistant messages (the reply and its end
marker, so the model learns to stop); the `<|im_start|>assistant\n` header and every system,
user or other message are context only. Each part is encoded on its own (no special tokens) and
the ids concatenated, so the mask is exact at token level; the markers are plain text to
tokenizers that do not define them.

Bad input: a .jsonl line that is not such an object, or a file that is not UTF-8, is skipped
with a warning naming it (`file:line`); with strict=True (`--strict`) it raises ValueError
instead, naming the file (and line) and the expected form.

Eval protocol (README "Evaluation"): each file is tokenized on its own (no special tokens),
split into consecutive non-overlapping windows of ctx tokens, the last partial window kept if it
has >= 2 tokens; each window is an independent sequence; the loss is the mean next-token
cross-entropy over all predicted positions. Bits per byte = total nats / ln 2 / UTF-8 bytes of
the predicted tokens.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("bitswarm.node")

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl"}
DATA_SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES
JSONL_FORM = ('a JSON object {"text": str} or {"messages": [{"role": str, "content": str}, '
              '...]} per line')
CHAT_TEMPLATE = "<|im_start|>{role}\n{content}<|im_end|>\n"
_CHAT_END = "<|im_end|>\n"


@dataclass
class Document:
    path: Path
    ids: np.ndarray          # int32 (n_tokens,)
    token_bytes: np.ndarray  # int32 (n_tokens,): UTF-8 bytes each token covers
    # bool (n_tokens,): token t is a training/eval target (predicted from t-1); None = all are
    loss_mask: np.ndarray | None = None


def find_text_files(data_dir: Path) -> list[Path]:
    """Data files (.txt/.md/.rst/.text and .jsonl) under data_dir, sorted. Raises ValueError
    naming the directory when it is missing or holds none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"--data {data_dir}: not a directory")
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise ValueError(f"--data {data_dir}: no text files ({', '.join(sorted(DATA_SUFFIXES))})")
    return files


def read_text(path: Path) -> str:
    """UTF-8 text of a file; undecodable bytes raise ValueError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected "
                         "UTF-8 text") from None


def parse_jsonl_record(line: str) -> list[tuple[str, bool]]:
    """One .jsonl line -> its text as (part, is_target) pieces (module docstring: the forms and
    the chat template). Raises ValueError saying what is wrong with the line."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError('"messages" is not a non-empty list')
        parts: list[tuple[str, bool]] = []
        for j, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and m["role"]
                    and isinstance(m.get("content"), str)):
                raise ValueError(f'message {j} is not {{"role": str, "content": str}}')
            header = CHAT_TEMPLATE.split("{content}")[0].format(role=m["role"])
            if m["role"] == "assistant":
                parts += [(header, False), (m["content"] + _CHAT_END, True)]
            else:
                parts.append((CHAT_TEMPLATE.format(role=m["role"], content=m["content"]), False))
        return parts
    if isinstance(rec.get("text"), str):
        text = rec["text"]
        return [(text if text.endswith("\n") else text + "\n", True)]
    raise ValueError('neither a "text" string nor a "messages" list')


def _encode(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """ids int32 (n,) of text (add_special_tokens=False) and the UTF-8 bytes each covers."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int32)
    # Bytes per token from character offsets: offsets are in characters of `text`.
    nbytes = np.fromiter((len(text[a:b].encode("utf-8")) for a, b in enc.offsets), np.int32, len(ids))
    return ids, nbytes


def tokenize(tokenizer, path: Path, *, strict: bool = False) -> Document:
    """Tokenize one data file on its own (add_special_tokens=False) -> Document.

    Text files: every token a target (loss_mask None). .jsonl: records and chat template as
    in the module docstring, loss_mask bool (n_tokens,). A non-UTF-8 file or a bad .jsonl line
    is skipped with a warning (an unreadable file gives an empty Document); strict=True raises
    ValueError naming file[:line] and the expected form instead.
    """
    path = Path(path)
    try:
        text = read_text(path)
    except ValueError as e:
        if strict:
            raise
        log.warning("%s; skipped", e)
        return Document(path, np.zeros(0, np.int32), np.zeros(0, np.int32))
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return Document(path, *_encode(tokenizer, text))
    ids, nbytes, mask = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            parts = parse_jsonl_record(line)
        except ValueError as e:
            msg = f"{path}:{lineno}: {e}; expected {JSONL_FORM}"
            if strict:
                raise ValueError(msg) from None
            log.warning("%s; line skipped", msg)
            continue
        for part, target in parts:
            i, b = _encode(tokenizer, part)
            ids.append(i)
            nbytes.append(b)
            mask.append(np.full(len(i), target, bool))
    if not ids:
        return Document(path, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool))
    return Document(path, np.concatenate(ids), np.concatenate(nbytes), np.concatenate(mask))


def check_data(files: list[Path]) -> None:
    """The `--strict` preflight: read every file as UTF-8 and parse every .jsonl line, before
    any side effect. Raises ValueError naming the first bad file[:line] and the expected form;
    nothing is tokenized."""
    for path in files:
        text = read_text(path)
        if path.suffix.lower() not in JSONL_SUFFIXES:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    parse_jsonl_record(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: {e}; expected {JSONL_FORM}") from None


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
    ctx tokens, last partial kept if >= 2 tokens. inputs = w[:-1], targets = w[1:]; targets
    outside the document's loss_mask are -1 (with 0 bytes), and windows left with no target
    are dropped."""
    out = []
    for s in range(0, len(doc.ids), ctx):
        w = doc.ids[s:s + ctx]
        if len(w) < 2:
            continue
        tgt, nbytes = w[1:], doc.token_bytes[s + 1:s + len(w)]
        if doc.loss_mask is not None:
            m = doc.loss_mask[s + 1:s + len(w)]
            if not m.any():
                continue
            tgt, nbytes = np.where(m, tgt, -1).astype(np.int32), np.where(m, nbytes, 0)
        out.append((w[:-1], tgt, nbytes))
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
    (each document separately, so no window spans two files), seeded for reproducibility.

    A document with a loss_mask only yields windows holding at least one target, and its
    non-target positions get target -1 (no loss, so no gradient: kernels/model.py treats
    target < 0 as padding); documents without a target are dropped."""

    def __init__(self, docs: list[Document], ctx: int, seed: int) -> None:
        self.ctx = ctx
        self.docs, self.starts = [], []
        for d in docs:
            if len(d.ids) < 2:
                continue
            starts = self._valid_starts(d)
            if starts is None or len(starts):
                self.docs.append(d)
                self.starts.append(starts)
        if not self.docs:
            raise ValueError("training documents hold fewer than 2 tokens (or no assistant "
                             "tokens) in total")
        lengths = np.array([max(1, len(d.ids) - 1) for d in self.docs], np.float64)
        self.p = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)
        self.tokens = int(sum(len(d.ids) for d in self.docs))

    def _hi(self, n: int) -> int:
        """Largest window start of a document of n tokens."""
        return max(1, n - self.ctx - 1)

    def _valid_starts(self, d: Document) -> np.ndarray | None:
        """Window starts whose targets d.ids[s+1 : s+ctx+1] include a masked-in token (None: the
        document has no mask, every start is valid)."""
        if d.loss_mask is None:
            return None
        n = len(d.ids)
        c = np.concatenate([[0], np.cumsum(d.loss_mask, dtype=np.int64)])
        s = np.arange(self._hi(n) + 1)
        hits = c[np.minimum(s + self.ctx + 1, n)] - c[np.minimum(s + 1, n)]
        return s[hits > 0]

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """ids, targets int32 (batch_size, ctx); short documents are padded (target -1), and
        positions outside a document's loss_mask are -1 too."""
        wins = []
        for di in self.rng.choice(len(self.docs), size=batch_size, p=self.p):
            d, valid = self.docs[di], self.starts[di]
            if valid is None:
                start = int(self.rng.integers(0, self._hi(len(d.ids)) + 1))
            else:
                start = int(valid[self.rng.integers(0, len(valid))])
            w = d.ids[start:start + self.ctx + 1]
            tgt = w[1:]
            if d.loss_mask is not None:
                tgt = np.where(d.loss_mask[start + 1:start + len(w)], tgt, -1).astype(np.int32)
            wins.append((w[:-1], tgt))
        return pack_batch(wins, self.ctx)
