"""BitNetWeights + tokenizer.json -> llama.cpp arch-"bitnet" GGUF (formats/gguf_export.py).

Expected names come from gguf-py itself (MODEL_TENSORS[MODEL_ARCH.BITNET] and TENSOR_NAMES), and
files are parsed with gguf.GGUFReader; the round trip HF -> GGUF -> bitswarm compares losses
(f32 within 1e-5, f16 / TQ types within 1e-3, as issue 12 asks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from bitswarm.formats.gguf_export import gguf_tokenizer_fields, write_gguf_model  # noqa: E402
from bitswarm.formats.gguf_model import load_gguf, load_gguf_tokenizer  # noqa: E402
from bitswarm.formats.hf_checkpoint import load_bitnet, random_bitnet, save_bitnet  # noqa: E402
from bitswarm.formats.tokenizer import byte_level_tokenizer, load_tokenizer  # noqa: E402
from bitswarm.kernels.backend import CpuBackend  # noqa: E402
from bitswarm.kernels.config import PROJECTIONS, BitNetConfig, LoRAConfig  # noqa: E402
from bitswarm.kernels.model import BitNetModel  # noqa: E402

PACKAGED = Path(__file__).resolve().parents[2] / "node" / "default_model"
# in_features 256 (q/k/v/o, gate/up): TQ blocks; down_proj's 384: the F16 fallback.
CFG = BitNetConfig(vocab_size=259, hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=True,
                   bos_token_id=256, eos_token_id=257)
TEXTS = ["Hello world, the quick brown fox.\n", "  indented\tand  spaced   runs\n\n",
         "It's 12345 caf\u00e9s \u00fcber \u4e16\u754c <|eos|> done", "def f(x):\n    return x ** 2\n"]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "model"
    w = random_bitnet(CFG, seed=3)
    rng = np.random.default_rng(4)
    for layer in w.layers:          # non-trivial norms, so a misplaced norm shows in the loss
        layer.attn_sub_norm = (1 + 0.2 * rng.standard_normal(CFG.hidden_size)).astype(np.float32)
        layer.ffn_sub_norm = (1 + 0.2 * rng.standard_normal(CFG.intermediate_size)).astype(np.float32)
    save_bitnet(w, d, tokenizer_json=byte_level_tokenizer().to_str())
    return d


def _loss(weights, ids) -> float:
    model = BitNetModel(weights, CpuBackend(), LoRAConfig())
    tgt = np.concatenate([ids[:, 1:], np.full((ids.shape[0], 1), -1, np.int32)], axis=1)
    total, n = model.loss(ids, tgt)
    return total / n


@pytest.mark.parametrize("qtype, tol", [("f32", 1e-5), ("f16", 1e-3), ("tq1_0", 1e-3),
                                        ("tq2_0", 1e-3)])
def test_round_trip_loss(tmp_path, hf_model, qtype, tol):
    src = load_bitnet(hf_model)
    out = write_gguf_model(tmp_path / f"m-{qtype}.gguf", src,
                           (hf_model / "tokenizer.json").read_text(), qtype=qtype)
    got = load_gguf(out)
    assert got.config == CFG
    for a, b in zip(src.layers, got.layers):
        for p in PROJECTIONS:       # codes exact, the float32 scale within 1 ulp, every type
            np.testing.assert_array_equal(a.proj[p].codes, b.proj[p].codes)
            assert abs(float(b.proj[p].weight_scale) / float(a.proj[p].weight_scale) - 1) < 2e-7
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, 48)).astype(np.int32)
    ref, new = _loss(src, ids), _loss(got, ids)
    assert abs(new - ref) <= tol, (ref, new)

    r = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type for t in r.tensors}
    want_proj = {"f32": Q.F32, "f16": Q.F16, "tq1_0": Q.TQ1_0, "tq2_0": Q.TQ2_0}[qtype]
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_gate.weight"] == want_proj
    assert types["blk.0.ffn_down.weight"] == (Q.F32 if qtype == "f32" else Q.F16)  # 384 % 256
    assert types["token_embd.weight"] == (Q.F32 if qtype == "f32" else Q.F16)
    assert types["blk.0.ffn_sub_norm.weight"] == types["blk.0.attn_q.scale"] == Q.F32


def test_layout_is_llama_cpp_bitnet(tmp_path, hf_model):
    out = write_gguf_model(tmp_path / "m.gguf", load_bitnet(hf_model),
                           (hf_model / "tokenizer.json").read_text(), qtype="tq2_0")
    r = gguf.GGUFReader(out)
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "bitnet"
    assert field("bitnet.hidden_activation") == "relu2"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("bitnet.block_count") == 2 and field("bitnet.attention.head_count_kv") == 2
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_TQ2_0
    arch = gguf.MODEL_ARCH.BITNET
    names = {t.name for t in r.tensors}
    bases = {n.rsplit(".", 1)[0] for n in names}
    want = {gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[arch] for i in range(2)}
    assert bases == want, bases ^ want
    assert all(n.endswith((".weight", ".scale")) for n in names)
    scales = {n for n in names if n.endswith(".scale")}
    assert len(scales) == 2 * len(PROJECTIONS)        # one per projection
    # TQ2_0 blocks of ternary codes carry d = 1 (all-zero blocks d = 0), the scale apart.
    t = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    d = np.asarray(t.data).reshape(-1, 66)[:, 64:66].copy().view(np.float16)
    assert set(np.unique(d).tolist()) <= {0.0, 1.0} and (d == 1).any()


def test_tokenizer_round_trip_with_merges(tmp_path):
    """The default model's BPE (7933 merges, GPT-2 byte-level regex) survives as gpt2 /
    gpt-2: the tokenizer rebuilt from the GGUF encodes like tokenizer.json."""
    ref = load_tokenizer(PACKAGED)
    out = write_gguf_model(tmp_path / "d.gguf", load_bitnet(PACKAGED),
                           (PACKAGED / "tokenizer.json").read_text(), qtype="f16")
    got = load_gguf_tokenizer(out)
    for text in TEXTS + [(PACKAGED.parents[1] / "README.md").read_text()[:4000]
                         if (PACKAGED.parents[1] / "README.md").exists() else ""]:
        assert got.encode(text).ids == ref.encode(text).ids
        assert got.decode(ref.encode(text).ids) == ref.decode(ref.encode(text).ids)


def test_llama3_split_maps_to_llama_bpe():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from bitswarm.formats.gguf_model import LLAMA3_SPLIT
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")],
                               ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    f = gguf_tokenizer_fields(tok.to_str(), 5, "t.json")
    assert f["pre"] == "llama-bpe" and f["merges"] == ["a b"]
    assert f["tokens"] == ["a", "b", "ab", "[PAD3]", "[PAD4]"] and f["types"] == [1, 1, 1, 5, 5]


def test_unsupported_tokenizers_and_types_are_refused(tmp_path, hf_model):
    tj = json.loads((hf_model / "tokenizer.json").read_text())
    w = load_bitnet(hf_model)
    with pytest.raises(ValueError, match="--type must be one of f32, f16, tq1_0, tq2_0"):
        write_gguf_model(tmp_path / "x.gguf", w, tj, qtype="q4_0")
    bad = dict(tj, normalizer={"type": "NFC"})
    with pytest.raises(ValueError, match="tok.json: a normalizer"):
        write_gguf_model(tmp_path / "x.gguf", w, bad, tokenizer_where="tok.json")
    bad = dict(tj, pre_tokenizer={"type": "Whitespace"})
    with pytest.raises(ValueError, match="tokenizer.json: pre-tokenizer"):
        write_gguf_model(tmp_path / "x.gguf", w, bad)
    with pytest.raises(ValueError, match="has id 200, outside the model's vocab_size 200"):
        gguf_tokenizer_fields(tj, 200, "tokenizer.json")
    assert not list(tmp_path.iterdir())          # nothing written on any error
