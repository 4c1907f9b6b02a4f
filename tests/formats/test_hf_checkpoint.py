"""Hugging Face bitnet checkpoint I/O against the committed transformers-made tiny model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bitswarm.formats.hf_checkpoint import (absmean_ternarize, load_bitnet, model_hash,
                                         pack_ternary, random_bitnet, read_config,
                                         read_safetensors, save_bitnet, unpack_ternary)
from bitswarm.kernels.config import PROJECTIONS, BitNetConfig

DATA = Path(__file__).resolve().parents[1] / "data"
TINY, PACKED = DATA / "tiny-bitnet", DATA / "tiny-bitnet-packed"


def _copy(tmp_path: Path, src: Path = TINY) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def _assert_same_weights(a, b) -> None:
    assert a.config == b.config
    np.testing.assert_array_equal(a.embed_tokens, b.embed_tokens)
    np.testing.assert_array_equal(a.norm, b.norm)
    assert (a.lm_head is None) == (b.lm_head is None)
    for la, lb in zip(a.layers, b.layers, strict=True):
        for name in ("input_layernorm", "post_attention_layernorm", "attn_sub_norm",
                     "ffn_sub_norm"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))
        for p in PROJECTIONS:
            np.testing.assert_array_equal(la.proj[p].codes, lb.proj[p].codes)
            assert la.proj[p].weight_scale == lb.proj[p].weight_scale


def _write_safetensors_bf16(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file written byte by byte, every float tensor as BF16 (truncating)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = np.ascontiguousarray(t)
        if t.dtype == np.float32:
            data, dtype = (t.view(np.uint32) >> 16).astype("<u2").tobytes(), "BF16"
        else:
            data, dtype = t.tobytes(), {np.dtype(np.uint8): "U8"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_tiny_config_fields():
    c = read_config(TINY)
    assert c == BitNetConfig(vocab_size=259, hidden_size=64, intermediate_size=160,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                             max_position_embeddings=256, tie_word_embeddings=True,
                             bos_token_id=256, eos_token_id=257)


def test_rope_theta_both_spellings_and_defaults(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, rope_parameters=None, rope_theta=1234.5, head_dim=None)
    c = read_config(d)
    assert c.rope_theta == 1234.5          # transformers 4.x top-level spelling
    assert c.head_dim == 64 // 4           # default hidden / heads
    _edit_config(d, rope_parameters={"rope_type": "default", "rope_theta": 777.0},
                 rope_theta=None)
    assert read_config(d).rope_theta == 777.0   # transformers 5 spelling
    _edit_config(d, rope_parameters=None)
    assert read_config(d).rope_theta == 500000.0  # BitNetConfig.default_theta


def test_untied_by_default_needs_lm_head(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, tie_word_embeddings=None)   # transformers' BitNetConfig default: False
    assert read_config(d).tie_word_embeddings is False
    with pytest.raises(ValueError, match=r"'lm_head\.weight' missing from .*model\.safetensors"):
        load_bitnet(d)


def test_wrong_model_type_names_file(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, model_type="llama")
    with pytest.raises(ValueError, match=r"config\.json.*model_type is 'llama'"):
        load_bitnet(d)


def test_ternarization_matches_numpy_absmean():
    w = load_bitnet(TINY)
    latent, _ = read_safetensors(TINY / "model.safetensors")
    n = 0
    for i, layer in enumerate(w.layers):
        for p in PROJECTIONS:
            block = "self_attn" if p in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            W = latent[f"model.layers.{i}.{block}.{p}.weight"]     # float32 (from bf16)
            s = np.float32(1.0) / np.float32(max(np.abs(W.astype(np.float64)).mean(), 1e-5))
            codes = np.clip(np.round(W * s), -1, 1)               # fp32 product, half-to-even
            assert layer.proj[p].codes.dtype == np.int8
            assert layer.proj[p].weight_scale == pytest.approx(float(s), rel=1e-6)
            np.testing.assert_array_equal(layer.proj[p].codes, codes)
            assert 0.2 < (codes == 0).mean() < 0.5    # absmean leaves ~1/3 zeros on Gaussians
            n += 1
    assert n == 14


def test_absmean_round_half_to_even_and_eps():
    # mean|W| = 1 -> s = 1: 0.5 rounds to 0, 1.5 to 2 -> clamped to 1, -0.5 to -0.
    t = absmean_ternarize(np.array([[0.5, 1.5, -0.5, -1.5]], np.float32))
    assert t.weight_scale == 1.0 and t.codes.tolist() == [[0, 1, 0, -1]]
    zero = absmean_ternarize(np.zeros((4, 4), np.float32))
    assert zero.weight_scale == np.float32(1e5) and not zero.codes.any()


def test_unpack_matches_transformers_docstring_example():
    # transformers/integrations/bitnet.py unpack_weights docstring.
    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8)
    want = [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]]
    assert unpack_ternary(packed).tolist() == want
    np.testing.assert_array_equal(pack_ternary(np.array(want, np.int8)), packed)
    with pytest.raises(ValueError, match="code 3"):
        unpack_ternary(np.array([[0b11]], np.uint8))
    with pytest.raises(ValueError, match="% 4"):
        pack_ternary(np.zeros((6, 2), np.int8))


def test_packed_roundtrip_and_committed_packed_copy(tmp_path):
    w = load_bitnet(TINY)
    save_bitnet(w, tmp_path / "m", tokenizer_json='{"x": 1}')
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "bitnet", "linear_class": "bitlinear",
                                          "quantization_mode": "offline"}
    tensors, _ = read_safetensors(tmp_path / "m" / "model.safetensors")
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == np.uint8
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (16, 64)
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (1,)
    assert "lm_head.weight" not in tensors
    _assert_same_weights(w, load_bitnet(tmp_path / "m"))
    _assert_same_weights(w, load_bitnet(PACKED))   # made by tools/make_golden.py
    assert (tmp_path / "m" / "tokenizer.json").read_text() == '{"x": 1}'
    assert not [p for p in (tmp_path / "m").iterdir() if ".tmp-" in p.name]


def test_autobitlinear_offline_scale_is_reciprocal(tmp_path):
    d = _copy(tmp_path, PACKED)
    tensors, meta = read_safetensors(d / "model.safetensors")
    tensors = {k: (np.float32(1) / v if k.endswith("weight_scale") else v)
               for k, v in tensors.items()}
    save_file(tensors, str(d / "model.safetensors"), metadata=meta)
    _edit_config(d, quantization_config={"quant_method": "bitnet", "quantization_mode": "offline",
                                         "linear_class": "autobitlinear"})
    a, b = load_bitnet(PACKED), load_bitnet(d)
    for la, lb in zip(a.layers, b.layers):
        for p in PROJECTIONS:
            assert lb.proj[p].weight_scale == pytest.approx(float(la.proj[p].weight_scale),
                                                            rel=1e-6)


def test_bf16_written_by_hand_loads(tmp_path):
    header = json.loads((TINY / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (TINY / "model.safetensors").read_bytes()[:8], "little")])
    assert header["model.embed_tokens.weight"]["dtype"] == "BF16"   # transformers wrote bf16
    tensors, _ = read_safetensors(TINY / "model.safetensors")
    assert all(t.dtype == np.float32 for t in tensors.values())
    # Known values through the bf16 path: 1.0, -2.0, 0.15625 and a bf16-exact pi approximation.
    vals = np.array([1.0, -2.0, 0.15625, 3.140625], np.float32)
    d = tmp_path / "bf16"
    shutil.copytree(TINY, d)
    f32 = dict(tensors)
    f32["model.norm.weight"] = np.resize(vals, 64).astype(np.float32)
    save_file(f32, str(d / "model.safetensors"))          # float32 twin ...
    want = load_bitnet(d)
    _write_safetensors_bf16(d / "model.safetensors", f32)  # ... and the same values as BF16
    got = load_bitnet(d)
    np.testing.assert_array_equal(got.norm[:4], vals)
    _assert_same_weights(want, got)


def test_sharded_checkpoint_loads(tmp_path):
    d = _copy(tmp_path, PACKED)
    tensors, _ = read_safetensors(d / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / fname), metadata={"format": "pt"})
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    _assert_same_weights(load_bitnet(PACKED), load_bitnet(d))


def test_missing_tensor_and_wrong_shape_name_it(tmp_path):
    d = _copy(tmp_path)
    tensors, _ = read_safetensors(d / "model.safetensors")
    gone = dict(tensors)
    del gone["model.layers.1.mlp.down_proj.weight"]
    save_file(gone, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'model\.layers\.1\.mlp\.down_proj\.weight' missing "
                                         r"from .*tiny-bitnet/model\.safetensors"):
        load_bitnet(d)
    bad = dict(tensors)
    bad["model.layers.0.mlp.ffn_sub_norm.weight"] = np.ones(64, np.float32)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.ffn_sub_norm\.weight' in "
                       r".*model\.safetensors has shape \(64,\), expected \(160,\)"):
        load_bitnet(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"cannot read safetensors file .*model\.safetensors"):
        load_bitnet(d)


def test_model_hash_stable_and_sensitive(tmp_path):
    h = model_hash(TINY)
    assert len(h) == 64 and h == model_hash(TINY)
    d = _copy(tmp_path)
    assert model_hash(d) == h                              # location-independent
    (d / "tokenizer.json").write_text("{}")
    assert model_hash(d) == h                              # tokenizer is not the base model
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (d / "model.safetensors").write_bytes(bytes(raw))
    assert model_hash(d) != h
    d2 = _copy(tmp_path / "b")
    _edit_config(d2, rms_norm_eps=1e-6)
    assert model_hash(d2) != h
    assert model_hash(TINY) != model_hash(PACKED)
    (d2 / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weight files"):
        model_hash(d2)


def test_random_bitnet_seeded(tmp_path):
    cfg = BitNetConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       tie_word_embeddings=False)
    a, b, c = random_bitnet(cfg, 1), random_bitnet(cfg, 1), random_bitnet(cfg, 2)
    _assert_same_weights(a, b)
    assert not np.array_equal(a.embed_tokens, c.embed_tokens)
    assert a.embed_tokens.dtype == np.float32 and a.embed_tokens.std() == pytest.approx(0.02,
                                                                                         rel=0.1)
    q = a.layers[0].proj["q_proj"]
    assert q.shape == (32, 32) and set(np.unique(q.codes)) <= {-1, 0, 1}
    assert float(q.weight_scale) == pytest.approx(1 / (0.02 * np.sqrt(2 / np.pi)), rel=0.15)
    assert a.lm_head is not None and a.lm_head.shape == (40, 32)
    save_bitnet(a, tmp_path / "r")
    _assert_same_weights(a, load_bitnet(tmp_path / "r"))
