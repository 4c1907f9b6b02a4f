"""File formats bitswarm reads and writes, each in its own module, none of them doing math:

hf_checkpoint  Hugging Face `bitnet` model folders (config.json, safetensors, latent or packed
               ternary weights) <-> kernels.config.BitNetWeights
gguf_model     llama.cpp GGUF models with TQ1_0 / TQ2_0 ternary tensors -> BitNetWeights
gguf_export    BitNetWeights + tokenizer.json -> a llama.cpp arch-"bitnet" GGUF model
gguf_lora      a LoRA adapter as a llama.cpp GGUF LoRA file
peft_adapter   LoRA adapters in Hugging Face PEFT's folder layout (adapter_config.json +
               adapter_model.safetensors), written atomically
tokenizer      Hugging Face tokenizer.json (byte-level BPE) via `tokenizers`

May import bitswarm.kernels.config / kernels.lora (the in-memory forms) and bitswarm.fsutil;
never node/ or federation/.
"""
