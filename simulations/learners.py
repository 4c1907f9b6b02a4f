"""What trains on each simulated node: the real model (a LocalTrainer per node over one shared
BitNetModel on the NumPy backend: the node's own training step), or, only when a scenario says
`surrogate = true`, a cheap quadratic stand-in for swarms of thousands of nodes.

Both give: `shapes` (LoRA tensor name -> shape), `initial` (G_0), `train(i, adapter, steps)`
-> (delta, tokens, mean train loss), `evaluate(adapter)` -> held-out loss (nats/token for the
model), and `centralized(steps_per_checkpoint)` -> the held-out loss after each checkpoint of
the centralized baseline: the same LoRA trained on the pooled data of all nodes for the same
number of tokens (Sequential steps at the same batch size and learning rate).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bitswarm.kernels.backend import select_backend
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import init_lora, lora_shapes
from bitswarm.kernels.model import BitNetModel
from bitswarm.node.data import TrainSampler, find_text_files, tokenize
from bitswarm.node.default_model import ensure_default_model
from bitswarm.node.evaluate import evaluate
from bitswarm.node.models import load_model
from bitswarm.node.trainer import LocalTrainer

from .local_swarm import BBC_TOPICS
from .scenario import Scenario


_CENTRALIZED: dict[tuple, list[float]] = {}


def lora_of(s: Scenario) -> LoRAConfig:
    return LoRAConfig(rank=s.rank, alpha=s.alpha, freeze_A=s.freeze_a)


class ModelLearners:
    """Real LoRA training of the scenario's model on each node's documents."""

    surrogate = False

    def __init__(self, s: Scenario, node_dirs: list[Path], eval_dir: Path, work: Path) -> None:
        model_dir = ensure_default_model(work / "default-model") if s.model == "default" \
            else Path(s.model)
        loaded = load_model(model_dir)
        self.s, self.lora = s, lora_of(s)
        self.model = BitNetModel(loaded.weights, select_backend("cpu", "gpu"), self.lora)
        self.shapes = lora_shapes(loaded.weights.config, self.lora)
        self.initial = init_lora(loaded.weights.config, self.lora, s.seed)
        tok = loaded.tokenizer
        self.docs = [[tokenize(tok, f) for f in find_text_files(d)] for d in node_dirs]
        self.eval_docs = [tokenize(tok, f) for f in find_text_files(eval_dir)]
        self.trainers = [LocalTrainer(self.model, TrainSampler(d, s.ctx, seed=s.seed + i),
                                      lr=s.lr, batch_size=s.batch_size)
                         for i, d in enumerate(self.docs)]

    def train(self, i: int, adapter: dict, steps: int) -> tuple[dict, int, float]:
        tr = self.trainers[i]
        tr.set_adapter(adapter)
        losses, tokens = [], 0
        for _ in range(steps):
            loss, n = tr.step()
            losses.append(loss)
            tokens += n
        after = tr.adapter()
        return {k: after[k] - adapter[k] for k in self.shapes}, tokens, float(np.mean(losses))

    def evaluate(self, adapter: dict) -> float:
        self.model.set_lora(adapter)
        return float(evaluate(self.model, self.eval_docs, self.s.ctx)["loss"])

    def centralized(self, checkpoints: list[int]) -> list[float]:
        """Held-out loss after each cumulative step count in `checkpoints` (increasing).
        Cached per process for the settings it depends on (a sweep over codecs, rules or
        DP trains it once)."""
        s = self.s
        key = (s.model, s.data, s.nodes, s.seed, s.centralized_lr or s.lr, s.batch_size, s.ctx,
               s.rank, s.alpha, s.freeze_a, tuple(checkpoints))
        if key not in _CENTRALIZED:
            _CENTRALIZED[key] = self._centralized(checkpoints)
        return list(_CENTRALIZED[key])

    def _centralized(self, checkpoints: list[int]) -> list[float]:
        pooled = TrainSampler([d for docs in self.docs for d in docs], self.s.ctx,
                              seed=self.s.seed + 10_007)
        tr = LocalTrainer(self.model, pooled, lr=self.s.centralized_lr or self.s.lr,
                          batch_size=self.s.batch_size)
        tr.set_adapter(self.initial)
        out, done = [], 0
        for c in checkpoints:
            for _ in range(c - done):
                tr.step()
            done = c
            out.append(self.evaluate(tr.adapter()))
        return out


class SurrogateLearners:
    """A quadratic stand-in for LoRA training (scenario `surrogate = true`), cheap enough for
    1,000+ nodes: each topic t has an optimum mu_t (N(0, 1) per value); node i's local loss is
    1/2 |x - c_i|^2 / dim with c_i its documents' topic mix of the mu_t; a local step is SGD
    with Gaussian gradient noise (std 0.1). The held-out loss is the mean over topics of
    1/2 |x - mu_t|^2 / dim (the evaluation set is the union of the topics)."""

    surrogate = True

    def __init__(self, s: Scenario, topics: list[dict[str, int]]) -> None:
        self.s, self.lora = s, lora_of(s)
        r, d = s.rank, s.surrogate_dim
        self.shapes = {"layers.0.q_proj.lora_A": (r, d), "layers.0.q_proj.lora_B": (d, r)}
        rng = np.random.default_rng(s.seed)
        self.mu = {t: {k: rng.standard_normal(sh).astype(np.float32)
                       for k, sh in self.shapes.items()} for t in BBC_TOPICS}
        self.dim = sum(int(np.prod(sh)) for sh in self.shapes.values())
        self.targets = []
        for counts in topics:
            total = sum(counts.values())
            self.targets.append({k: sum(c / total * self.mu[t][k] for t, c in counts.items())
                                 for k in self.shapes})
        self.initial = {k: np.zeros(sh, np.float32) for k, sh in self.shapes.items()}
        self.rngs = [np.random.default_rng(s.seed * 7919 + i) for i in range(len(topics))]

    def _steps(self, x: dict, target: dict, steps: int, rng) -> dict:
        x = {k: v.astype(np.float32).copy() for k, v in x.items()}
        lr = np.float32(self.s.surrogate_lr)
        for _ in range(steps):
            for k in x:
                noise = rng.standard_normal(x[k].shape).astype(np.float32) * np.float32(0.1)
                x[k] -= lr * (x[k] - target[k] + noise)
        return x

    def _loss(self, x: dict, target: dict) -> float:
        return float(sum(np.sum((x[k].astype(np.float64) - target[k]) ** 2) for k in x)
                     / 2 / self.dim)

    def train(self, i: int, adapter: dict, steps: int) -> tuple[dict, int, float]:
        after = self._steps(adapter, self.targets[i], steps, self.rngs[i])
        tokens = steps * self.s.batch_size * self.s.ctx
        return ({k: after[k] - adapter[k] for k in self.shapes}, tokens,
                self._loss(after, self.targets[i]))

    def evaluate(self, adapter: dict) -> float:
        return float(np.mean([self._loss(adapter, self.mu[t]) for t in BBC_TOPICS]))

    def centralized(self, checkpoints: list[int]) -> list[float]:
        n = len(self.targets)
        pooled = {k: sum(t[k] for t in self.targets) / n for k in self.shapes}
        x, out, done = self.initial, [], 0
        rng = np.random.default_rng(self.s.seed + 10_007)
        for c in checkpoints:
            x = self._steps(x, pooled, c - done, rng)
            done = c
            out.append(self.evaluate(x))
        return out
