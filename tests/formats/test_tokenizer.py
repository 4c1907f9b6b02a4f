"""Byte-level tokenizer: lossless, fixed ids, and loading tokenizer.json from a model dir."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitswarm.formats.tokenizer import BYTE_VOCAB_SIZE, byte_level_tokenizer, load_tokenizer

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"

TEXTS = ["", "hello  world\n\tfoo\r\n", " leading and trailing  ", "héllo ✓ 𝔘 日本語 🚀",
         "\x00\x01\x7f control", "emoji 👩‍👩‍👧 zwj", "a" * 300]


@pytest.mark.parametrize("text", TEXTS)
def test_lossless_and_one_id_per_byte(text):
    tok = byte_level_tokenizer()
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_vocab_layout():
    tok = byte_level_tokenizer()
    assert tok.get_vocab_size() == BYTE_VOCAB_SIZE == 259
    assert [tok.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|pad|>")] == [256, 257, 258]
    assert tok.decode([256, 72, 105, 257], skip_special_tokens=True) == "Hi"


def test_load_tokenizer_from_model_dir(tmp_path):
    tok = load_tokenizer(TINY)      # written by tools/make_golden.py from byte_level_tokenizer()
    assert tok.encode("Zen ✓").ids == list("Zen ✓".encode())
    with pytest.raises(ValueError, match=r"tokenizer file not found: .*tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"cannot parse tokenizer file .*tokenizer\.json"):
        load_tokenizer(tmp_path)
