"""Build the tiny BitNet golden checkpoint and its reference numbers with Hugging Face transformers.

NOT part of CI (needs torch + transformers). Run once, commit tests/data/:

    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.13.0 transformers peft safetensors tokenizers numpy accelerate
    /tmp/hfvenv/bin/pip install --no-deps -e .          # for bitswarm.formats.{hf_checkpoint,tokenizer}
    /tmp/hfvenv/bin/python tools/make_golden.py

Writes
  tests/data/tiny-bitnet/          transformers' save_pretrained of a seeded random BitNetForCausalLM
                                   (latent weights stored bfloat16, quantization_config
                                   autobitlinear/online) + tokenizer.json (byte_level_tokenizer()).
  tests/data/tiny-bitnet-packed/   bitswarm's save_bitnet(load_bitnet(tiny-bitnet)): packed uint8
                                   + weight_scale, bitlinear/offline.
  tests/data/golden.json           loss, tokens, ctx, versions, ... (protocol below).
  tests/data/golden_logits_first4.npy     float32 (4, V): logits of window 0, positions 0..3.
  tests/data/golden_hidden_layer0.npy     float32 (T0, D): window 0 hidden states after decoder
                                          layer 0 (before the next layer's input_layernorm).
  tests/data/golden_embed_first.npy       float32 (T0, D): window 0 embeddings (layer-0 input).

Eval protocol (what `node eval` must reproduce): each file of tests/data/golden_text/ (sorted by
name) is read as UTF-8 (no newline translation) and tokenized on its own with
add_special_tokens=False; its ids are cut into consecutive non-overlapping windows of ctx=32
tokens, the last partial window kept if it has >= 2 tokens; each window is an independent
sequence starting at position 0 (no BOS added); loss = mean next-token cross-entropy in nats over
all predicted positions (len(window) - 1 per window) of all windows of all files.

Why the latent weights are stored in bfloat16: the fp32 file would be ~410 KB; bf16 halves it and
exercises the bf16 loading path that real `-bf16` checkpoints need. transformers loads it with
dtype=float32, so every forward here runs in fp32 on bf16-representable weights (the upcast is
exact), which is what bitswarm's fp32 kernels compute.

weight_scale convention (settled by this script, see `check_packed`): transformers' BitLinear
(linear_class "bitlinear") DIVIDES by the stored weight_scale, y = (xq @ codes^T) /
(x_scale * weight_scale), so the packed file stores s = 1/mean|W| (bitswarm's TernaryLinear
convention, stored as is). Loading our packed save gives the online loss within rounding, and layer
0's q_proj output equals the online AutoBitLinear's to ~1e-7 relative; storing the reciprocal
instead (mean|W|, what AutoBitLinear-offline multiplies by) would scale every projection by s^2.
Note the loss alone is a weak witness of a scale error: the sub-norms and the final norm absorb
much of a global scale (on this model the reciprocal scales moved the loss by < 0.5%).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # eager semantics; no C compiler on the path

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM  # noqa: E402

from bitswarm.formats.hf_checkpoint import load_bitnet, model_hash, save_bitnet  # noqa: E402
from bitswarm.formats.tokenizer import BOS, EOS, PAD, byte_level_tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TINY, PACKED = DATA / "tiny-bitnet", DATA / "tiny-bitnet-packed"
TEXT_DIR = DATA / "golden_text"
SEED = 20261121
CTX = 32
# A default-initialized model (std 0.02) predicts ~uniformly (loss ~ ln V) whatever its layers do,
# so a golden loss from it would not catch a wrong scale or a skipped block. These stds make every
# block's output about as large as the residual stream it adds to: projection outputs ~
# sqrt(in * 2/3) * std * sqrt(2/pi) ~ 1, tied logits ~ sqrt(D) * EMBED_STD ~ 1.6. Measured on the
# first 40 windows: loss 6.76; with o_proj/down_proj scaled by 1e-3 (blocks off) 11.7.
EMBED_STD = 0.2
PROJ_STD = 0.15     # latent projection weights
NORM_JITTER = 0.1   # norm weights 1 + 0.1*N(0,1), so a kernel that ignores a norm weight fails


def windows_of(ids: list[int], ctx: int) -> list[list[int]]:
    """Consecutive non-overlapping windows of ctx ids; a last partial window needs >= 2 ids."""
    return [ids[s:s + ctx] for s in range(0, len(ids), ctx) if len(ids[s:s + ctx]) >= 2]


def eval_windows(tokenizer) -> list[list[int]]:
    wins = []
    for path in sorted(TEXT_DIR.glob("*.txt")):
        text = path.read_bytes().decode("utf-8")
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        wins.extend(windows_of(ids, CTX))
    return wins


@torch.no_grad()
def eval_loss(model, wins: list[list[int]]) -> tuple[float, int]:
    """(mean next-token CE in nats, predicted tokens) over independent windows."""
    total, count = 0.0, 0
    for w in wins:
        ids = torch.tensor([w])
        logits = model(input_ids=ids).logits[0].float()            # (T, V)
        ce = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum")
        total += float(ce.double())
        count += len(w) - 1
    return total / count, count


def build_tiny(tokenizer) -> None:
    """Seeded random BitNetForCausalLM saved with save_pretrained, bf16 latent weights.

    Weights drawn with torch.manual_seed(SEED) in named_parameters() order (see EMBED_STD).
    """
    V = tokenizer.get_vocab_size()
    cfg = BitNetConfig(
        vocab_size=V, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tokenizer.token_to_id(BOS), eos_token_id=tokenizer.token_to_id(EOS),
        pad_token_id=tokenizer.token_to_id(PAD))
    torch.manual_seed(SEED)
    model = BitNetForCausalLM(cfg).eval()                 # plain nn.Linear, init N(0, 0.02)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_JITTER * torch.randn_like(p))
            elif name.endswith("proj.weight"):
                p.copy_(PROJ_STD * torch.randn_like(p))
            elif name == "model.embed_tokens.weight":
                p.copy_(EMBED_STD * torch.randn_like(p))
    if TINY.exists():
        shutil.rmtree(TINY)
    model.to(torch.bfloat16).save_pretrained(TINY, safe_serialization=True)
    (TINY / "generation_config.json").unlink(missing_ok=True)
    config = json.loads((TINY / "config.json").read_text())
    # Without this block transformers would load the checkpoint as a plain float model.
    config["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                     "quantization_mode": "online"}
    (TINY / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (TINY / "tokenizer.json").write_text(tokenizer.to_str(pretty=False))


def load_hf(model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model


def check_online_layers(model) -> None:
    from transformers.integrations.bitnet import AutoBitLinear
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, AutoBitLinear) and q.online_quant, type(q)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def check_codes_match_weightquant(model, ours) -> int:
    """Our absmean codes/scales equal transformers' WeightQuant on every projection."""
    n = 0
    for i, layer in enumerate(model.model.layers):
        for proj, mod in [*((p, getattr(layer.self_attn, p)) for p in ("q_proj", "k_proj",
                                                                     "v_proj", "o_proj")),
                          *((p, getattr(layer.mlp, p)) for p in ("gate_proj", "up_proj",
                                                                 "down_proj"))]:
            w = mod.weight.detach().float()
            s = 1.0 / w.abs().mean().clamp(min=1e-5)
            codes = (w * s).round().clamp(-1, 1).to(torch.int8).numpy()
            t = ours.layers[i].proj[proj]
            assert np.array_equal(codes, t.codes), (i, proj)
            assert abs(float(s) - float(t.weight_scale)) <= 1e-6 * float(s), (i, proj, s,
                                                                              t.weight_scale)
            n += 1
    return n


def check_packed(tokenizer, wins, online_loss: float) -> dict:
    """Save our packed layout, load it in transformers (BitLinear), compare losses."""
    weights = load_bitnet(TINY)
    if PACKED.exists():
        shutil.rmtree(PACKED)
    save_bitnet(weights, PACKED, tokenizer_json=tokenizer.to_str(pretty=False))
    packed_model = load_hf(PACKED)
    from transformers.integrations.bitnet import BitLinear
    assert isinstance(packed_model.model.layers[0].self_attn.q_proj, BitLinear)
    packed_loss, _ = eval_loss(packed_model, wins)
    rel = abs(packed_loss - online_loss) / online_loss
    assert rel < 0.005, f"packed loss {packed_loss} vs online {online_loss} (rel {rel:.2e})"

    # Module level, the sharpest evidence: the same input through q_proj of layer 0, online
    # AutoBitLinear (latent) vs BitLinear over our packed file. Equal up to fp32 rounding; had the
    # file needed mean|W| (the reciprocal), the outputs would differ by a factor s^2 (~69 here).
    online_model = load_hf(TINY)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, online_model.config.hidden_size, generator=gen)
    with torch.no_grad():
        y_online = online_model.model.layers[0].self_attn.q_proj(x)
        y_packed = packed_model.model.layers[0].self_attn.q_proj(x)
    q_rel = float((y_packed - y_online).abs().max() / y_online.abs().max())
    assert q_rel < 1e-5, q_rel
    s = float(weights.layers[0].proj["q_proj"].weight_scale)
    return {"packed_loss": packed_loss, "packed_rel_diff": rel,
            "packed_q_proj_max_rel_err": q_rel, "layer0_q_proj_weight_scale": s}


def main() -> int:
    tokenizer = byte_level_tokenizer()
    build_tiny(tokenizer)
    model = load_hf(TINY)
    check_online_layers(model)
    ours = load_bitnet(TINY)
    n_proj = check_codes_match_weightquant(model, ours)

    wins = eval_windows(tokenizer)
    loss, tokens = eval_loss(model, wins)

    first = torch.tensor([wins[0]])
    captured = {}
    hook = model.model.layers[0].register_forward_hook(
        lambda mod, args, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        out = model(input_ids=first)
        embeds = model.model.embed_tokens(first)
    hook.remove()
    np.save(DATA / "golden_logits_first4.npy", out.logits[0, :4].float().numpy())
    np.save(DATA / "golden_hidden_layer0.npy", captured["h"][0].float().numpy())
    np.save(DATA / "golden_embed_first.npy", embeds[0].float().numpy())

    packed = check_packed(tokenizer, wins, loss)
    golden = {
        "loss": loss, "tokens": tokens, "ctx": CTX, "windows": len(wins),
        "files": [p.name for p in sorted(TEXT_DIR.glob("*.txt"))],
        "first_window_ids": wins[0],
        "model": "tiny-bitnet", "model_sha256": model_hash(TINY),
        "packed_model_sha256": model_hash(PACKED),
        "seed": SEED,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        **packed,
        "protocol": ("per file (sorted), UTF-8, add_special_tokens=False; non-overlapping windows "
                     "of ctx tokens, last partial kept if >= 2 tokens; each window from position "
                     "0; loss = mean next-token CE (nats) over all predicted positions; "
                     "transformers dtype float32, online AutoBitLinear, eager (no torch.compile)"),
    }
    (DATA / "golden.json").write_text(json.dumps(golden, indent=2) + "\n")
    print(json.dumps({k: v for k, v in golden.items() if k != "first_window_ids"}, indent=2))
    print(f"codes/scales identical to WeightQuant on {n_proj} projections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
