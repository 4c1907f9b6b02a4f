"""bitswarm: peer-to-peer federated LoRA fine-tuning of BitNet b1.58 models."""
__version__ = "0.1.0"
