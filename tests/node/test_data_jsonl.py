""".jsonl training data: {"text"} and chat {"messages"} lines, the assistant-only loss mask
through the sampler and the trainer, and bad lines / non-UTF-8 files (skipped with a warning
naming file:line, fatal with --strict)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitswarm.formats.hf_checkpoint import load_bitnet
from bitswarm.formats.tokenizer import load_tokenizer
from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.config import PROJECTIONS, LoRAConfig
from bitswarm.kernels.lora import init_lora
from bitswarm.kernels.model import BitNetModel
from bitswarm.node.data import (CHAT_TEMPLATE, TrainSampler, check_data, eval_windows,
                                find_text_files, tokenize)
from bitswarm.node.trainer import LocalTrainer

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
NODE = [sys.executable, "-m", "bitswarm.node"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_text_lines_and_template_rendering(tmp_path, tok):
    f = write_jsonl(tmp_path / "a.jsonl", [{"text": "first line"}, "", {"text": "second\n"},
                                           chat(("system", "Be brief."), ("user", "Hi?"),
                                                ("assistant", "Hello!"))])
    doc = tokenize(tok, f)
    rendered = ("first line\n" "second\n"
                + CHAT_TEMPLATE.format(role="system", content="Be brief.")
                + CHAT_TEMPLATE.format(role="user", content="Hi?")
                + CHAT_TEMPLATE.format(role="assistant", content="Hello!"))
    assert rendered.endswith("<|im_start|>assistant\nHello!<|im_end|>\n")
    assert tok.decode(doc.ids.tolist()) == rendered
    assert int(doc.token_bytes.sum()) == len(rendered.encode("utf-8"))
    # Targets: both text records, and only the assistant's reply with its end marker.
    assert tok.decode(doc.ids[doc.loss_mask].tolist()) == "first line\nsecond\nHello!<|im_end|>\n"
    assert tok.decode(doc.ids[~doc.loss_mask].tolist()) == rendered[len("first line\nsecond\n"):
                                                                     -len("Hello!<|im_end|>\n")]
    assert find_text_files(tmp_path) == [f]


def test_eval_windows_count_only_assistant_targets(tmp_path, tok):
    f = write_jsonl(tmp_path / "c.jsonl", [chat(("user", "u" * 40), ("assistant", "a" * 5))])
    doc = tokenize(tok, f)
    wins = eval_windows(doc, 16)
    # The eval protocol predicts every token but each window's first; of those, the assistant's.
    predicted = np.arange(len(doc.ids)) % 16 != 0
    n_target = int((doc.loss_mask & predicted).sum())
    assert 0 < n_target <= 5 + len("<|im_end|>\n") == int(doc.loss_mask.sum())
    assert sum(int((t >= 0).sum()) for _, t, _ in wins) == n_target
    assert sum(int(b.sum()) for *_, b in wins) == n_target          # byte-level: 1 byte each
    assert all((t >= 0).any() for _, t, _ in wins)     # user-only windows are left out


def _trainer(doc, ctx=200):
    weights = load_bitnet(TINY)
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS)
    model = BitNetModel(weights, CpuBackend(), lcfg)
    state = init_lora(weights.config, lcfg, seed=7)
    # B = 0 at init would zero every A gradient: start from a non-zero B so all LoRA
    # matrices get gradients.
    rng = np.random.default_rng(3)
    state = {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if k.endswith("lora_B") else v)
             for k, v in state.items()}
    model.set_lora(state)
    return LocalTrainer(model, TrainSampler([doc], ctx=ctx, seed=0), lr=1e-2, batch_size=2)


@pytest.mark.parametrize("role", ["user", "system"])
def test_non_assistant_tokens_give_no_gradient(tmp_path, tok, role):
    """Two chats that differ only in a trailing `role` turn (after the last assistant reply):
    causally those tokens feed nothing but their own predictions, so with the loss mask the
    trainer's gradients and updated adapters are identical; trained as plain text (every token
    a target) the same pair gives different gradients."""
    head = [("system", "Answer in one word."), ("user", "Colour of the sky?"),
            ("assistant", "Blue.")]
    docs, plain = [], []
    for tail in ("aaaaaaaa", "zqzqzqzq"):
        f = write_jsonl(tmp_path / f"{role}-{tail}.jsonl", [chat(*head, (role, tail))])
        docs.append(tokenize(tok, f))
        plain.append(tokenize(tok, write_jsonl(tmp_path / f"{role}-{tail}-plain.jsonl",
                                               [{"text": tok.decode(docs[-1].ids.tolist())}])))
    assert len(docs[0].ids) == len(docs[1].ids) and (docs[0].ids != docs[1].ids).any()

    def grads(doc):
        tr = _trainer(doc)
        ids, tgt = tr.sampler.batch(tr.batch_size)
        _, count, g = tr.model.loss_and_grads(ids, tgt)
        tr.sampler.rng = np.random.default_rng(0)          # the same batch for the step
        tr.step()
        return ids, tgt, {k: np.asarray(v) for k, v in g.items()}, tr.adapter()

    ids0, tgt0, g0, a0 = grads(docs[0])
    ids1, tgt1, g1, a1 = grads(docs[1])
    assert (ids0 != ids1).any() and (tgt0 == tgt1).all()
    # Every target is an assistant token: "Blue.<|im_end|>\n".
    assert tok.decode(tgt0[0][tgt0[0] >= 0].tolist()) == "Blue.<|im_end|>\n"
    assert set(g0) == set(g1) and len(g0) == 2 * 2 * len(PROJECTIONS)
    for k in g0:
        assert np.abs(g0[k]).max() > 0, k
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-6, atol=1e-9, err_msg=k)
        np.testing.assert_allclose(a1[k], a0[k], rtol=1e-6, atol=1e-9, err_msg=k)
    _, _, p0, _ = grads(plain[0])
    _, _, p1, _ = grads(plain[1])
    assert max(float(np.abs(p0[k] - p1[k]).max()) for k in p0) > 1e-4


def test_all_masked_documents_are_dropped(tmp_path, tok):
    only_user = tokenize(tok, write_jsonl(tmp_path / "u.jsonl", [chat(("user", "hello there"))]))
    assert not only_user.loss_mask.any()
    with pytest.raises(ValueError, match="assistant"):
        TrainSampler([only_user], ctx=16, seed=0)
    text = tokenize(tok, write_jsonl(tmp_path / "t.jsonl", [{"text": "some text " * 5}]))
    s = TrainSampler([only_user, text], ctx=16, seed=0)
    assert s.docs == [text]


BAD_LINES = [
    ('{"text": 5}', 'neither a "text" string'),
    ("not json", "not JSON"),
    ("[1, 2]", "not an object"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user"}]}', "message 0"),
]


@pytest.mark.parametrize("line, why", BAD_LINES)
def test_bad_line_is_skipped_with_a_warning_or_fatal_when_strict(tmp_path, tok, caplog, line, why):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "good one"}, line, {"text": "good two"}])
    with caplog.at_level(logging.WARNING, logger="bitswarm.node"):
        doc = tokenize(tok, f)
    assert tok.decode(doc.ids.tolist()) == "good one\ngood two\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{f}:2: " in warnings[0] and why in warnings[0]
    for strict in (lambda: tokenize(tok, f, strict=True), lambda: check_data([f])):
        with pytest.raises(ValueError, match=rf"{f}:2: .*{why}.*expected a JSON object"):
            strict()


def test_non_utf8_file_is_skipped_or_fatal(tmp_path, tok, caplog):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="bitswarm.node"):
        doc = tokenize(tok, bad)
    assert len(doc.ids) == 0
    assert any(str(bad) in r.getMessage() and "not UTF-8" in r.getMessage() for r in caplog.records)
    for strict in (lambda: tokenize(tok, bad, strict=True), lambda: check_data([bad])):
        with pytest.raises(ValueError, match=rf"{bad}: not UTF-8 .*expected UTF-8 text"):
            strict()


def test_cli_eval_warns_or_exits_2_with_strict(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    f = write_jsonl(docs / "chat.jsonl", [chat(("user", "hi"), ("assistant", "hello " * 10)),
                                          "{broken"])
    base = [*NODE, "eval", "--model", str(TINY), "--data", str(docs), "--ctx", "32", "--json",
            "--device", "cpu"]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"{f}:2: not JSON" in ok.stderr
    res = json.loads(ok.stdout)
    # Byte-level tokens: the assistant part's byte positions, minus each 32-window's first.
    start = len(CHAT_TEMPLATE.format(role="user", content="hi") + "<|im_start|>assistant\n")
    span = range(start, start + len("hello " * 10 + "<|im_end|>\n"))
    assert res["tokens"] == sum(1 for j in span if j % 32) == res["bytes"]
    strict = subprocess.run([*base, "--strict"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2
    err = strict.stderr.strip().splitlines()
    assert len(err) == 1 and f"{f}:2: not JSON" in err[0] and "expected a JSON object" in err[0]


def test_cli_start_strict_fails_before_side_effects(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("fine text " * 20)
    (docs / "bad.md").write_bytes(b"\xff\xfe broken")
    data_dir = tmp_path / "n"
    r = subprocess.run([*NODE, "start", "--swarm", "s", "--data", str(docs), "--data-dir",
                        str(data_dir), "--rounds", "1", "--strict"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"{docs / 'bad.md'}: not UTF-8" in r.stderr and "expected UTF-8 text" in r.stderr
    assert not data_dir.exists()
