"""Check that PEFT loads an adapter written by bitswarm's save_adapter. NOT part of CI.

Needs the transformers venv of tools/make_golden.py (plus peft):
    /tmp/hfvenv/bin/python tools/check_peft_load.py            # the adapter check below
    /tmp/hfvenv/bin/python tools/check_peft_load.py --latent   # the latent-layout check

--latent: the packed (`linear_class: bitlinear`) checkpoint bitswarm writes builds
transformers' BitLinear, which PEFT refuses; its save_bitnet(latent=True) re-save (the online
autobitlinear layout, also `node export --model DIR --format hf`) must load as nn.Linear-based
AutoBitLinear whose online absmean ternarization gives back bitswarm's codes (and scales, to the
ulp), be wrapped by PeftModel.from_pretrained, and give bitswarm's logits.

Writes a random adapter (A and B both nonzero, all seven projections, every layer) for
tests/data/tiny-bitnet with save_adapter, loads it with
peft.PeftModel.from_pretrained(transformers model, dir), and asserts: no missing or unexpected
LoRA keys, every loaded tensor equals the saved one, the logits differ from the base model's, and
one projection's output equals base_layer(x) + (alpha/r) * B A x (the LoRA path is added after
BitNet's ternary layer, never merged into the latent weight).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from bitswarm.formats.hf_checkpoint import read_config  # noqa: E402
from bitswarm.kernels.config import PROJECTIONS, LoRAConfig  # noqa: E402
from bitswarm.formats.peft_adapter import load_adapter, peft_key, save_adapter  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny-bitnet"


def main() -> int:
    cfg = read_config(TINY)
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS)
    rng = np.random.default_rng(7)
    lora = {}
    for i in range(cfg.num_hidden_layers):
        for proj in PROJECTIONS:
            out, inp = cfg.proj_shape(proj)
            lora[f"layers.{i}.{proj}.lora_A"] = rng.normal(0, 0.1, (lcfg.rank, inp)).astype(np.float32)
            lora[f"layers.{i}.{proj}.lora_B"] = rng.normal(0, 0.1, (out, lcfg.rank)).astype(np.float32)
    ids = torch.tensor([list(b"def wrap(text, width=70):")])
    with tempfile.TemporaryDirectory() as tmp:
        adir = Path(tmp) / "adapter"
        save_adapter(adir, lora, lcfg, base_model=str(TINY), metadata={"round": "3"})
        back, _, meta = load_adapter(adir)
        assert meta == {"round": "3"}, meta

        base = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
        with torch.no_grad():
            base_logits = base(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(base, adir).eval()
        # PeftModel.from_pretrained swallows the load result; load again to see it.
        result = peft_model.load_adapter(adir, adapter_name="check")
        lora_missing = [k for k in result.missing_keys if "lora_" in k and ".check." in k]
        assert not lora_missing, lora_missing
        assert not result.unexpected_keys, result.unexpected_keys
        peft_model.set_adapter("default")

        sd = peft_model.state_dict()
        n = 0
        for key, want in lora.items():
            _, i, proj, which = key.split(".")
            which = which.removeprefix("lora_")
            name = peft_key(int(i), proj, which).replace(
                f".lora_{which}.weight", f".lora_{which}.default.weight")
            assert np.array_equal(sd[name].numpy(), want), name
            n += 1
        with torch.no_grad():
            logits = peft_model(input_ids=ids).logits
        change = float((logits - base_logits).abs().max())
        assert change > 1e-3, change

        # One projection by hand: PEFT's LoRA output = base(x) + (alpha/r) * x A^T B^T.
        q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
        x = torch.randn(5, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
        A, B = (torch.from_numpy(lora[f"layers.0.q_proj.lora_{w}"]) for w in "AB")
        with torch.no_grad():
            want = q.base_layer(x) + lcfg.scaling * (x @ A.T @ B.T)
            got = q(x)
        err = float((got - want).abs().max() / want.abs().max())
        assert err < 1e-5, err
    print(f"PEFT loaded {n} tensors, no missing/unexpected LoRA keys; max |logit change| "
          f"{change:.3f}; q_proj LoRA path matches base + (alpha/r) B A x (rel err {err:.1e})")
    return 0


PACKED = TINY.with_name("tiny-bitnet-packed")


def main_latent() -> int:
    from bitswarm.formats.hf_checkpoint import hf_module_name, load_bitnet, save_bitnet
    from bitswarm.kernels.backend import CpuBackend
    from bitswarm.kernels.model import BitNetModel

    weights = load_bitnet(PACKED)
    cfg = weights.config
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS)
    rng = np.random.default_rng(11)
    lora = {}
    for i in range(cfg.num_hidden_layers):
        for proj in PROJECTIONS:
            out, inp = cfg.proj_shape(proj)
            lora[f"layers.{i}.{proj}.lora_A"] = rng.normal(0, 0.1, (lcfg.rank, inp)).astype(np.float32)
            lora[f"layers.{i}.{proj}.lora_B"] = rng.normal(0, 0.1, (out, lcfg.rank)).astype(np.float32)
    text = list(b"def wrap(text, width=70):")
    with tempfile.TemporaryDirectory() as tmp:
        mdir, adir = Path(tmp) / "model", Path(tmp) / "adapter"
        save_bitnet(weights, mdir, tokenizer_json=(PACKED / "tokenizer.json").read_text(),
                    latent=True)
        save_adapter(adir, lora, lcfg, base_model=str(mdir), metadata={})
        base = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
        worst_scale = 0.0
        for i in range(cfg.num_hidden_layers):
            for proj in PROJECTIONS:
                mod = base.get_submodule(hf_module_name(i, proj))
                assert isinstance(mod, torch.nn.Linear), type(mod)    # AutoBitLinear
                w = mod.weight.detach()
                scale = 1.0 / w.abs().mean().clamp(min=1e-5)          # transformers' WeightQuant
                codes = (w * scale).round().clamp(-1, 1).to(torch.int8).numpy()
                t = weights.layers[i].proj[proj]
                assert np.array_equal(codes, t.codes), (i, proj)
                worst_scale = max(worst_scale, abs(float(scale) / float(t.weight_scale) - 1))
        assert worst_scale < 2.5e-7, worst_scale
        peft_model = PeftModel.from_pretrained(base, adir).eval()
        ids = torch.tensor([text])
        with torch.no_grad():
            got = peft_model(input_ids=ids).logits[0].numpy()
        ours = BitNetModel(weights, CpuBackend(), lcfg)
        ours.set_lora(lora)
        want = np.asarray(ours.forward(np.asarray([text], np.int32)))
        err = float(np.abs(got - want).max() / np.abs(want).max())
        assert err < 1e-4, err
    print(f"latent layout: transformers built nn.Linear AutoBitLinear for all "
          f"{cfg.num_hidden_layers * len(PROJECTIONS)} projections, codes equal, scales within "
          f"{worst_scale:.1e}; PEFT wrapped it; logits with the adapter match bitswarm's (rel err "
          f"{err:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main_latent() if "--latent" in sys.argv[1:] else main())
