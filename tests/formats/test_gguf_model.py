"""GGUF (llama.cpp arch "bitnet", TQ1_0 / TQ2_0 projections) -> BitNetWeights.

Files are written here with gguf-py's own GGUFWriter and quantizer, the way llama.cpp's
BitnetModel converter lays them out (dequantized ternary weights codes / s quantized to TQ*_0);
the loader's decoding is checked against gguf-py's dequantization.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from bitswarm.kernels.backend import CpuBackend  # noqa: E402
from bitswarm.formats.hf_checkpoint import random_bitnet  # noqa: E402
from bitswarm.kernels.config import (PROJECTIONS, BitNetConfig, BitNetWeights,  # noqa: E402
                                     LoRAConfig)
from bitswarm.formats.gguf_model import (GGUF_PROJ, decode_tq1_0, decode_tq2_0,  # noqa: E402
                                          load_gguf)
from bitswarm.kernels.model import BitNetModel  # noqa: E402

CFG = BitNetConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
                   rope_theta=500000.0, max_position_embeddings=128, tie_word_embeddings=True,
                   bos_token_id=1, eos_token_id=2)
TQ_TYPES = [Q.TQ1_0, Q.TQ2_0]


def exact_scale(s: np.float32) -> np.float32:
    """A weight_scale near s that survives the GGUF trip exactly: d = fp16(1/s) is what the
    file stores and the loader returns fl32(1/d); step d until fl32(1/fl32(1/d)) == d."""
    d = np.float16(np.float32(1) / s)
    while np.float32(1) / (np.float32(1) / np.float32(d)) != np.float32(d):
        d = np.nextafter(d, np.float16(np.inf))
    return np.float32(np.float32(1) / np.float32(d))


def make_weights(config: BitNetConfig = CFG, seed: int = 0) -> BitNetWeights:
    """random_bitnet with GGUF-exact scales and non-trivial norm weights."""
    w = random_bitnet(config, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in w.layers:
        for name in ("input_layernorm", "post_attention_layernorm", "attn_sub_norm",
                     "ffn_sub_norm"):
            v = getattr(layer, name)
            setattr(layer, name, (1 + 0.1 * rng.standard_normal(v.shape)).astype(np.float32))
        for t in layer.proj.values():
            t.weight_scale = exact_scale(t.weight_scale)
    w.norm = (1 + 0.1 * rng.standard_normal(w.norm.shape)).astype(np.float32)
    return w


def write_gguf(path: Path, w: BitNetWeights, qtype: Q = Q.TQ2_0, *, act: str | None = "relu2",
               arch: str = "bitnet", proj_data=None, extra_tensors=()) -> Path:
    """Write `w` as llama.cpp's BitNet converter would: projections = codes / weight_scale
    (= codes * mean|W|) quantized to `qtype`. `proj_data(i, proj, dequantized)` may replace a
    projection by (array, raw_dtype)."""
    c = w.config
    wr = gguf.GGUFWriter(path, arch)
    wr.add_block_count(c.num_hidden_layers)
    wr.add_context_length(c.max_position_embeddings)
    wr.add_embedding_length(c.hidden_size)
    wr.add_feed_forward_length(c.intermediate_size)
    wr.add_head_count(c.num_attention_heads)
    wr.add_head_count_kv(c.num_key_value_heads)
    wr.add_rope_freq_base(c.rope_theta)
    wr.add_layer_norm_rms_eps(c.rms_norm_eps)
    wr.add_rope_dimension_count(c.head_dim)
    wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)   # as BitnetModel.set_gguf_parameters
    wr.add_rope_scaling_factor(1.0)
    wr.add_bos_token_id(c.bos_token_id)
    wr.add_eos_token_id(c.eos_token_id)
    if act is not None:
        wr.add_string(f"{arch}.hidden_activation", act)
    wr.add_tensor("token_embd.weight", w.embed_tokens)
    wr.add_tensor("output_norm.weight", w.norm)
    if w.lm_head is not None:
        wr.add_tensor("output.weight", w.lm_head)
    for i, layer in enumerate(w.layers):
        b = f"blk.{i}"
        wr.add_tensor(f"{b}.attn_norm.weight", layer.input_layernorm)
        wr.add_tensor(f"{b}.ffn_norm.weight", layer.post_attention_layernorm)
        wr.add_tensor(f"{b}.attn_sub_norm.weight", layer.attn_sub_norm)
        wr.add_tensor(f"{b}.ffn_sub_norm.weight", layer.ffn_sub_norm)
        for proj in PROJECTIONS:
            t = layer.proj[proj]
            deq = t.codes.astype(np.float32) / t.weight_scale
            data, dtype = (proj_data(i, proj, deq) if proj_data else None) or (
                gguf.quants.quantize(deq, qtype), qtype)
            wr.add_tensor(f"{b}.{GGUF_PROJ[proj]}.weight", data, raw_dtype=dtype)
    for name, arr in extra_tensors:
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def forward(w: BitNetWeights, ids: np.ndarray) -> np.ndarray:
    return np.asarray(BitNetModel(w, CpuBackend(), LoRAConfig()).forward(ids))


# ---------------------------------------------------------------------------------------------
# block decoders against gguf-py

@pytest.mark.parametrize("qtype", TQ_TYPES)
def test_decoders_match_gguf_dequantize(qtype):
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 2, size=(16, 256)).astype(np.float32)
    d = np.abs(rng.standard_normal((16, 1))).astype(np.float16).astype(np.float32)
    data = gguf.quants.quantize(codes * d, qtype)           # (16, bytes per block)
    nbytes = data.shape[1]
    got_codes, got_d = (decode_tq1_0 if qtype == Q.TQ1_0 else decode_tq2_0)(
        data.reshape(-1, nbytes))
    np.testing.assert_array_equal(got_codes, codes.astype(np.int8))
    ref = gguf.quants.dequantize(data, qtype)
    assert np.array_equal(got_codes.astype(np.float32) * got_d.astype(np.float32)[:, None], ref)


def test_tq2_0_rejects_code_3():
    data = gguf.quants.quantize(np.ones((1, 256), np.float32), Q.TQ2_0)
    data[0, 0] |= 0x03
    with pytest.raises(ValueError, match="code 3"):
        decode_tq2_0(data)


# ---------------------------------------------------------------------------------------------
# whole files

@pytest.mark.parametrize("qtype", TQ_TYPES)
def test_load_matches_source_and_gguf_dequantize(tmp_path, qtype):
    src = make_weights()
    path = write_gguf(tmp_path / "m.gguf", src, qtype)
    got = load_gguf(path)
    assert got.config == CFG
    np.testing.assert_array_equal(got.embed_tokens, src.embed_tokens)
    np.testing.assert_array_equal(got.norm, src.norm)
    assert got.lm_head is None
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    for i, (lg, ls) in enumerate(zip(got.layers, src.layers)):
        for name in ("input_layernorm", "post_attention_layernorm", "attn_sub_norm",
                     "ffn_sub_norm"):
            np.testing.assert_array_equal(getattr(lg, name), getattr(ls, name))
        for proj in PROJECTIONS:
            g, s = lg.proj[proj], ls.proj[proj]
            assert g.codes.dtype == np.int8 and g.shape == CFG.proj_shape(proj)
            np.testing.assert_array_equal(g.codes, s.codes)
            assert g.weight_scale.dtype == np.float32 and g.weight_scale == s.weight_scale
            t = tensors[f"blk.{i}.{GGUF_PROJ[proj]}.weight"]
            assert t.tensor_type == qtype
            ref = gguf.quants.dequantize(t.data, qtype).reshape(g.shape)
            assert np.array_equal(g.codes.astype(np.float32) / g.weight_scale, ref), (i, proj)


@pytest.mark.parametrize("qtype", TQ_TYPES)
def test_forward_bit_identical_to_direct_weights(tmp_path, qtype):
    src = make_weights(seed=5)
    got = load_gguf(write_gguf(tmp_path / "m.gguf", src, qtype))
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, 7))
    a, b = forward(src, ids), forward(got, ids)
    assert a.shape == (14, CFG.vocab_size) and np.isfinite(a).all()
    assert np.array_equal(a, b)


def test_inexact_fp16_scale_is_within_one_ulp(tmp_path):
    # d whose float32 reciprocal never maps back to d: codes exact, weight 1 ulp off at most.
    d = np.float16(4.172325e-07)
    assert np.float32(1) / (np.float32(1) / np.float32(d)) != np.float32(d)
    src = make_weights()
    t = src.layers[0].proj["q_proj"]
    path = write_gguf(tmp_path / "m.gguf", src, Q.TQ2_0, proj_data=lambda i, p, deq: (
        (gguf.quants.quantize(np.sign(deq) * np.float32(d), Q.TQ2_0), Q.TQ2_0)
        if (i, p) == (0, "q_proj") else None))
    g = load_gguf(path).layers[0].proj["q_proj"]
    np.testing.assert_array_equal(g.codes, t.codes)
    deq = g.codes.astype(np.float32) / g.weight_scale
    ref = g.codes.astype(np.float32) * np.float32(d)
    assert np.max(np.abs(deq - ref)) <= np.spacing(np.float32(d))


def test_untied_output_scale_tensor_and_float_projection(tmp_path):
    cfg = dataclasses.replace(CFG, tie_word_embeddings=False, num_hidden_layers=1)
    src = make_weights(cfg)
    src.lm_head = np.random.default_rng(9).normal(0, 0.02, (cfg.vocab_size, cfg.hidden_size)) \
        .astype(np.float32)
    # an F16 ternary projection (converter --outtype f16) and a separate output scale tensor
    # (llama.cpp multiplies the projection's output by blk.N.<proj>.scale).
    path = write_gguf(tmp_path / "m.gguf", src, Q.TQ1_0,
                      proj_data=lambda i, p, deq: (deq.astype(np.float16), Q.F16)
                      if p == "up_proj" else None,
                      extra_tensors=[("blk.0.attn_v.scale", np.array([4.0], np.float32))])
    got = load_gguf(path)
    assert got.config == cfg
    np.testing.assert_array_equal(got.lm_head, src.lm_head)
    up, v = got.layers[0].proj["up_proj"], got.layers[0].proj["v_proj"]
    np.testing.assert_array_equal(up.codes, src.layers[0].proj["up_proj"].codes)
    assert up.weight_scale == src.layers[0].proj["up_proj"].weight_scale
    np.testing.assert_array_equal(v.codes, src.layers[0].proj["v_proj"].codes)
    assert v.weight_scale == np.float32(src.layers[0].proj["v_proj"].weight_scale / 4)


def test_activation_key(tmp_path):
    src = make_weights()
    no_act = write_gguf(tmp_path / "a.gguf", src, act=None)
    with pytest.raises(ValueError, match=r"a\.gguf.*hidden_activation.*relu2"):
        load_gguf(no_act)
    assert load_gguf(no_act, hidden_act="relu2").config == CFG
    with pytest.raises(ValueError, match=r"b\.gguf.*'silu' unsupported"):
        load_gguf(write_gguf(tmp_path / "b.gguf", src, act="silu"))
    with pytest.raises(ValueError, match="caller passed"):
        load_gguf(write_gguf(tmp_path / "c.gguf", src), hidden_act="silu")


def test_differing_block_scales_rejected(tmp_path):
    src = make_weights()

    def two_scales(i, proj, deq):
        if (i, proj) != (1, "down_proj"):
            return None
        deq = deq.copy()
        deq[0] *= 2                    # first row = first blocks: another absmax
        return gguf.quants.quantize(deq, Q.TQ1_0), Q.TQ1_0

    path = write_gguf(tmp_path / "m.gguf", src, Q.TQ1_0, proj_data=two_scales)
    with pytest.raises(ValueError, match=r"m\.gguf: tensor 'blk\.1\.ffn_down\.weight'.*"
                                         r"different scales"):
        load_gguf(path)


def test_unsupported_projection_type(tmp_path):
    src = make_weights()
    path = write_gguf(tmp_path / "m.gguf", src, proj_data=lambda i, p, deq: (
        (gguf.quants.quantize(deq, Q.Q8_0), Q.Q8_0) if (i, p) == (0, "k_proj") else None))
    with pytest.raises(ValueError, match=r"m\.gguf: tensor 'blk\.0\.attn_k\.weight' has type "
                                         r"Q8_0"):
        load_gguf(path)


def test_malformed_files(tmp_path):
    src = make_weights()
    good = write_gguf(tmp_path / "good.gguf", src).read_bytes()
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"trunc\.gguf"):
        load_gguf(trunc)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.gguf"):
        load_gguf(junk)
    with pytest.raises(ValueError, match=r"missing file .*none\.gguf"):
        load_gguf(tmp_path / "none.gguf")
    with pytest.raises(ValueError, match=r"llama\.gguf: general\.architecture is 'llama'"):
        load_gguf(write_gguf(tmp_path / "llama.gguf", src, arch="llama"))
    # a missing tensor is named
    cut = write_gguf(tmp_path / "cut.gguf", dataclasses.replace(src, layers=src.layers[:1]))
    with pytest.raises(ValueError, match=r"cut\.gguf: tensor 'blk\.1\.attn_norm\.weight' "
                                         r"missing"):
        load_gguf(cut)


# ---------------------------------------------------------------------------------------------
# tokenizer

def _llama3_style_reference():
    """A small byte-level BPE trained here, then serialized in Llama 3's tokenizer.json layout
    (Split(llama3 regex, isolated) + ByteLevel(use_regex=False), ignore_merges, ByteLevel
    decoder): the reference the GGUF rebuild must match."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from bitswarm.formats.gguf_model import LLAMA3_SPLIT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok.train_from_iterator(
        ["Hello world, the quick brown fox jumps over 12345 lazy dogs.\n",
         "It's fine!  Ünïcödé"] * 5,
        trainers.BpeTrainer(vocab_size=330, special_tokens=specials, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    return Tokenizer.from_str(json.dumps(j)), j, specials


def test_tokenizer_llama_bpe(tmp_path):
    from bitswarm.formats.gguf_model import load_gguf_tokenizer

    ref, j, specials = _llama3_style_reference()
    vocab = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    tokens = [t for t, _ in vocab]
    path = tmp_path / "tok.gguf"
    wr = gguf.GGUFWriter(path, "bitnet")
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("llama-bpe")
    wr.add_token_list(tokens)
    wr.add_token_merges([" ".join(m) for m in j["model"]["merges"]])
    wr.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
                        for t in tokens])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    tok = load_gguf_tokenizer(path)
    assert tok is not None and tok.get_vocab_size() == ref.get_vocab_size()
    for text in ["Hello world, the quick brown fox!", "It's 1234567 dogs\n\n  end",
                 "<|begin_of_text|>Ünïcödé über 😀<|end_of_text|>", "", "   lazy\r\nfox's"]:
        ids = tok.encode(text).ids
        assert ids == ref.encode(text).ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text
    # a weights-only file has no tokenizer
    assert load_gguf_tokenizer(write_gguf(tmp_path / "m.gguf", make_weights())) is None
