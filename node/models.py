"""Which base model a command runs on, loaded once: the one `load_model` used by `node start`,
`node eval` and `node generate`.

Resolution, first match wins: an explicit --model folder; the base model an adapter names
(`base_model_name_or_path` of its adapter_config.json, as PEFT writes it); the built-in default
model (copied into `<data-dir>/default-model/` for a node, read from the package otherwise).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from bitswarm.formats.hf_checkpoint import load_bitnet, model_hash, read_json
from bitswarm.formats.peft_adapter import CONFIG_FILE as ADAPTER_CONFIG_FILE
from bitswarm.formats.tokenizer import load_tokenizer
from bitswarm.node.default_model import PACKAGED_DIR, ensure_default_model


class LoadedModel:
    """A Hugging Face `bitnet` checkpoint read into host memory.

    dir: the checkpoint folder; weights: BitNetWeights (kernels/config.py); tokenizer: its
    tokenizers.Tokenizer; sha256: formats/hf_checkpoint.model_hash of the folder (computed on
    first use: peers compare it, eval and generate never need it).
    """

    def __init__(self, model_dir: Path) -> None:
        self.dir = Path(model_dir)
        self.weights = load_bitnet(self.dir)
        self.tokenizer = load_tokenizer(self.dir)

    @property
    def config(self):
        return self.weights.config

    @cached_property
    def sha256(self) -> str:
        return model_hash(self.dir)


def adapter_base_model(adapter_dir: Path) -> Path:
    """The base model folder an adapter names. Raises ValueError naming its adapter_config.json
    when the field is absent (pass --model then)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG_FILE
    base = read_json(path, "adapter config").get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: no base_model_name_or_path; pass --model")
    return Path(base)


def resolve_model_dir(model: Path | None, *, adapter: Path | None = None,
                      data_dir: Path | None = None) -> Path:
    """The checkpoint folder to load (module docstring: resolution order). With data_dir and no
    other source, the packaged default is first copied to data_dir/default-model."""
    if model is not None:
        return Path(model)
    if adapter is not None:
        return adapter_base_model(adapter)
    if data_dir is not None:
        return ensure_default_model(Path(data_dir) / "default-model")
    return PACKAGED_DIR


def load_model(model: Path | None, *, adapter: Path | None = None,
               data_dir: Path | None = None) -> LoadedModel:
    """Resolve (resolve_model_dir) and load a base model. Raises ValueError naming the file for
    a missing or malformed checkpoint (formats/hf_checkpoint.py)."""
    return LoadedModel(resolve_model_dir(model, adapter=adapter, data_dir=data_dir))
