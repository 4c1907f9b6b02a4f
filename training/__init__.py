"""Pretraining of the default model: the quantization-aware training engine (engine.py: latent
weights, absmean ternary + absmax int8 forward, straight-through backward for every parameter),
the corpus builder (prepare_corpus.py) and the pretraining script (pretrain.py, reproduce.sh;
docs/default-model.md). Only this package and its scripts use the engine; the node never does.
May import bitswarm.kernels and bitswarm.formats.
"""
