"""Model shapes the benchmarks run at (BitNet-style layers; tokens = batch 4 x ctx 128 = 512).

125m: GPT-2-small-sized BitNet (D 768, I 2048, 12 heads of 64, MHA, 12 layers).
1b:   TinyLlama-1.1B dims (D 2048, I 5632, 32 query / 4 KV heads of 64, 22 layers), BitNet blocks.
2b4t: microsoft/bitnet-b1.58-2B-4T (D 2560, I 6912, 20 / 5 heads of 128, 30 layers, vocab 128256).
tiny: lavapipe smoke shapes.
"""
from __future__ import annotations

from bitswarm.kernels.config import BitNetConfig

CONFIGS = {
    "tiny": BitNetConfig(vocab_size=512, hidden_size=128, intermediate_size=320,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, tie_word_embeddings=True),
    "125m": BitNetConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                         head_dim=64, tie_word_embeddings=True),
    "1b": BitNetConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                       num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                       head_dim=64, tie_word_embeddings=True),
    "2b4t": BitNetConfig(vocab_size=128256, hidden_size=2560, intermediate_size=6912,
                         num_hidden_layers=30, num_attention_heads=20, num_key_value_heads=5,
                         head_dim=128, tie_word_embeddings=True),
}
