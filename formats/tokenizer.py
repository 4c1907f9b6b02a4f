"""Tokenizers: a model's own `tokenizer.json`, or a built-in byte-level one.

The byte-level tokenizer needs no download, so the default random model (and the golden test
checkpoint in tests/data/tiny-bitnet) can run offline. Its ids 0..255 are the 256 byte values in
the order of GPT-2's byte-to-unicode table (`tokenizers.pre_tokenizers.ByteLevel.alphabet()`
sorted by the byte each symbol stands for), followed by the special tokens in SPECIAL_TOKENS.
Because every byte has a symbol and there are no merges, encode/decode is lossless for any
unicode text.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)          # ids 256, 257, 258
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode symbol table (the one ByteLevel uses)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_tokenizer() -> Tokenizer:
    """A lossless byte-level BPE tokenizer with no merges; vocab size BYTE_VOCAB_SIZE (259).

    Token id b (0..255) is byte b; "<|bos|>" = 256, "<|eos|>" = 257, "<|pad|>" = 258. Encoding
    adds no special tokens (no post-processor); callers add BOS/EOS explicitly if they want them.
    """
    table = _bytes_to_unicode()
    if set(table.values()) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("tokenizers' ByteLevel alphabet differs from GPT-2's byte table")
    vocab = {table[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    # use_regex=False: no GPT-2 word splitting is needed when there are no merges, and it keeps
    # whitespace runs intact; add_prefix_space=False keeps decode(encode(t)) == t.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def load_tokenizer(model_dir: Path | str) -> Tokenizer:
    """Load `model_dir/tokenizer.json` (Hugging Face tokenizers format).

    Raises ValueError naming the path if the file is missing or cannot be parsed.
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"cannot parse tokenizer file {path}: {exc}") from exc
