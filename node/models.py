"""Which base model a command runs on, loaded once: the one `load_model` used by `node start`,
`node eval`, `node generate` and `node export`.

A base model is a Hugging Face `bitnet` checkpoint folder (formats/hf_checkpoint.py) or a
llama.cpp arch-"bitnet" `.gguf` file (formats/gguf_model.py, with its tokenizer.ggml.* vocabulary).

Resolution, first match wins: an explicit --model; the base model an adapter names
(`base_model_name_or_path` of its adapter_config.json, a path relative to the adapter folder as
bitswarm writes it, or an absolute one as older versions did, checked against the
`base_model_sha256` of the adapter's metadata when it has one); the built-in default model
(copied into `<data-dir>/default-model/` for a node, read from the package otherwise).
"""
from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

from bitswarm.formats.gguf_model import load_gguf, load_gguf_config, load_gguf_tokenizer
from bitswarm.formats.hf_checkpoint import load_bitnet, model_hash, read_config, read_json
from bitswarm.formats.peft_adapter import CONFIG_FILE as ADAPTER_CONFIG_FILE
from bitswarm.formats.peft_adapter import read_adapter_metadata
from bitswarm.formats.tokenizer import load_tokenizer
from bitswarm.kernels.config import BitNetConfig
from bitswarm.node.default_model import PACKAGED_DIR, ensure_default_model

GGUF_SUFFIX = ".gguf"


def is_gguf(path: Path | str) -> bool:
    """Whether --model names a GGUF file (by its .gguf suffix)."""
    return Path(path).suffix.lower() == GGUF_SUFFIX


def model_config(path: Path | str) -> BitNetConfig:
    """The BitNetConfig of a checkpoint folder (config.json) or a .gguf file (its metadata),
    without loading weights. Raises ValueError naming the file."""
    return load_gguf_config(path) if is_gguf(path) else read_config(path)


def model_sha256(path: Path | str) -> str:
    """Hex SHA-256 identifying a base model: formats/hf_checkpoint.model_hash of a folder, the
    SHA-256 of the file's bytes for a .gguf. Raises ValueError naming a missing file."""
    path = Path(path)
    if not is_gguf(path):
        return model_hash(path)
    if not path.is_file():
        raise ValueError(f"missing file {path}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LoadedModel:
    """A base model read into host memory.

    dir: the checkpoint folder, or the .gguf file; weights: BitNetWeights (kernels/config.py);
    tokenizer: a tokenizers.Tokenizer (tokenizer.json, or rebuilt from the GGUF vocabulary);
    sha256: model_sha256 of `dir` (computed on first use: peers compare it, eval and generate
    never need it).
    """

    def __init__(self, model_path: Path) -> None:
        self.dir = Path(model_path)
        if is_gguf(self.dir):
            self.weights = load_gguf(self.dir)
            self.tokenizer = load_gguf_tokenizer(self.dir)
            if self.tokenizer is None:
                raise ValueError(f"{self.dir}: its tokenizer.ggml vocabulary is not byte-level "
                                 "BPE ('gpt2' with pre 'gpt-2' or 'llama-bpe'), which bitswarm "
                                 "needs")
        else:
            self.weights = load_bitnet(self.dir)
            self.tokenizer = load_tokenizer(self.dir)

    @property
    def config(self):
        return self.weights.config

    @cached_property
    def sha256(self) -> str:
        return model_sha256(self.dir)


def adapter_base_model(adapter_dir: Path) -> Path:
    """The base model an adapter names (module docstring), checked to exist and, when the
    adapter's metadata holds base_model_sha256, to have that hash. Raises ValueError naming its
    adapter_config.json when the field is absent, the base is missing or its hash differs (the
    message says to pass --model)."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / ADAPTER_CONFIG_FILE
    base = read_json(path, "adapter config").get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: no base_model_name_or_path; pass --model")
    want = read_adapter_metadata(adapter_dir).get("base_model_sha256")
    named = f" (sha256 {want[:12]}…)" if want else ""
    found = Path(base) if Path(base).is_absolute() else adapter_dir / base
    if not found.exists():
        raise ValueError(f"{path}: base model {base!r}{named} not found at {found}; pass "
                         "--model with that model")
    if want and model_sha256(found) != want:
        raise ValueError(f"{path}: base model at {found} is not the one the adapter was trained "
                         f"on (sha256 {want[:12]}…); pass --model with that model")
    return found


def resolve_model_dir(model: Path | None, *, adapter: Path | None = None,
                      data_dir: Path | None = None) -> Path:
    """The checkpoint folder or .gguf file to load (module docstring: resolution order). With
    data_dir and no other source, the packaged default is first copied to data_dir/default-model."""
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
    a missing or malformed checkpoint (formats/hf_checkpoint.py, formats/gguf_model.py)."""
    return LoadedModel(resolve_model_dir(model, adapter=adapter, data_dir=data_dir))
