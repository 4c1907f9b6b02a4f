"""Build the default model's pretraining corpus and tokenizer (deterministic; no network except
`apt-get download` of one Debian package).

Sources, both under the Python Software Foundation License:
  * the Python 3.11 documentation, Debian package `python3.11-doc` (HTML, ~530 pages): plain text
    is extracted from each page's main content with the stdlib html.parser;
  * the docstrings of the Python standard library of the running interpreter, rendered as plain
    text by `pydoc` (one document per top-level module).

Output (default build/corpus/, git-ignored):
    train/*.txt, heldout/*.txt   one document per file; ~2% of documents (chosen by a SHA-256 of
                                 the document name) are held out, for `node eval --data heldout`
    tokenizer.json               byte-level BPE (Hugging Face `tokenizers`), BOS/EOS/PAD specials
    train.bin, heldout.bin       uint16 token ids, documents joined as <|bos|> doc <|eos|>
    manifest.json                counts, hashes, source versions

    python training/prepare_corpus.py [--out build/corpus] [--vocab 4096] [--deb FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

DOC_PACKAGE = "python3.11-doc"
HTML_ROOT = "usr/share/doc/python3.11/html"
SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")      # ids 0, 1, 2
HELDOUT_FRACTION = 0.02

# Pages that are indexes or legal boilerplate rather than prose.
SKIP_PAGES = {"genindex", "py-modindex", "search", "contents", "copyright", "license"}
# Modules not imported for their docstrings: GUI/side effects on import, test suites, packaging.
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
                "lib2to3", "ensurepip", "venv", "pydoc_data", "__hello__", "__phello__",
                "_pydev_bundle", "msilib", "winreg", "winsound", "_winapi", "nt", "msvcrt",
                "_msi", "_overlapped", "_wmi", "sre_constants", "sre_compile", "sre_parse"}


# ------------------------------------------------------------------------------------- HTML
class _MainText(html.parser.HTMLParser):
    """Text of a Sphinx page's <div role="main"> (the article), blocks separated by newlines,
    <pre> kept verbatim, header-link pilcrows and scripts dropped."""

    BLOCK = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr",
             "table", "ul", "ol", "dl", "blockquote", "br", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.depth = 0          # nesting depth inside the main div (0 = outside)
        self.pre = 0
        self.skip = 0           # inside script/style
        self.headerlink = False  # inside a pilcrow link

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.depth == 0:
            if tag == "div" and (a.get("role") == "main" or "body" in (a.get("class") or "").split()):
                self.depth = 1
            return
        if tag == "div":
            self.depth += 1
        if tag in ("script", "style"):
            self.skip += 1
        if tag == "a" and "headerlink" in (a.get("class") or ""):
            self.headerlink = True
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if self.depth == 0:
            return
        if tag in ("script", "style") and self.skip:
            self.skip -= 1
        if tag == "a":
            self.headerlink = False
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCK:
            self.out.append("\n")
        if tag == "div":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth == 0 or self.skip or self.headerlink:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        t = "".join(self.out)
        lines = [ln.rstrip() for ln in t.split("\n")]
        t = "\n".join(ln if ln.strip() else "" for ln in lines)
        return re.sub(r"\n{3,}", "\n\n", t).strip() + "\n"


def html_to_text(html: str) -> str:
    p = _MainText()
    p.feed(html)
    p.close()
    return p.text()


def doc_pages(deb: Path | None, workdir: Path) -> tuple[dict[str, str], str]:
    """{doc name: text} of the documentation pages, and the .deb file name used."""
    if deb is None:
        subprocess.run(["apt-get", "download", DOC_PACKAGE], cwd=workdir, check=True,
                       stdout=subprocess.DEVNULL)
        debs = sorted(workdir.glob(f"{DOC_PACKAGE}_*.deb"))
        if not debs:
            raise SystemExit(f"apt-get download {DOC_PACKAGE} produced no .deb in {workdir}")
        deb = debs[-1]
    root = workdir / "x"
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    html_dir = root / HTML_ROOT
    docs = {}
    for f in sorted(html_dir.rglob("*.html")):
        rel = f.relative_to(html_dir).with_suffix("").as_posix()
        if rel.startswith(("_", "genindex")) or rel in SKIP_PAGES:
            continue
        text = html_to_text(f.read_text(encoding="utf-8"))
        if len(text) > 200:
            docs["doc/" + rel] = text
    return docs, deb.name


# ------------------------------------------------------------------------------------- pydoc
def _render_pydoc_pages() -> dict[str, str]:
    """Worker body (run in a clean subprocess): pydoc plain text of every importable module."""
    import pydoc
    names = sorted(n for n in sys.stdlib_module_names if n not in SKIP_MODULES
                   and not n.startswith("_"))
    docs = {}
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = __import__(name)
            text = pydoc.render_doc(mod, title="%s", renderer=pydoc.plaintext)
        except BaseException:   # missing optional C module, platform-specific, SystemExit
            continue
        if len(text) > 200:
            docs["pydoc/" + name] = scrub(text)
    return docs


def scrub(text: str) -> str:
    """Remove what differs between runs or machines from a pydoc page: source file paths, the
    DATA section (module-level values: sys.path, prefixes, temp dirs, os.environ...), object
    addresses, and os.environ rendered as a default argument. None of the machine's state may
    reach the corpus."""
    out, in_data = [], False
    for line in text.split("\n"):
        if line in ("DATA", "FILE", "MODULE REFERENCE"):
            in_data = True
            continue
        if in_data and line and not line.startswith(" "):
            in_data = False
        if not in_data:
            out.append(line)
    text = "\n".join(out)
    text = re.sub(r"environ\(\{.*?\}\)", "environ({...})", text)
    text = re.sub(r"(environb? = )environ\(.*", r"\1environ({...})", text)
    text = text.replace(repr(sys.executable), "sys.executable")
    text = re.sub(r" at 0x[0-9a-f]+", " at 0x0", text)
    return re.sub(r"handle [0-9a-f]+>", "handle 0>", text)


def stdlib_docstrings() -> dict[str, str]:
    """{"pydoc/<module>": plain-text pydoc page} for every importable top-level stdlib module.

    Rendered in a subprocess with a minimal fixed environment (PATH, LANG, PYTHONHASHSEED=0):
    imports have side effects, set/dict reprs depend on the hash seed, and nothing of the
    caller's environment may leak into the text.
    """
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with tempfile.TemporaryDirectory() as cwd:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--pydoc-worker"],
                           env=env, cwd=cwd, capture_output=True, check=True)
    return json.loads(r.stdout.decode("utf-8").split("\n__PYDOC_JSON__\n", 1)[1])


# ------------------------------------------------------------------------------------- split
def is_heldout(name: str) -> bool:
    """Deterministic ~2% hold-out by the SHA-256 of the document name."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return h / 2.0 ** 64 < HELDOUT_FRACTION


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".txt"


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def encode_join(tok, texts: list[str]) -> np.ndarray:
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    out = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.append(np.asarray([bos, *enc.ids, eos], np.uint16))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/corpus"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--deb", type=Path, help=f"a downloaded {DOC_PACKAGE} .deb (default: apt-get download)")
    ap.add_argument("--pydoc-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pydoc_worker:
        docs = _render_pydoc_pages()
        sys.stdout.write("\n__PYDOC_JSON__\n" + json.dumps(docs))
        return 0
    if args.vocab > 65535:
        raise SystemExit("--vocab must fit uint16 token files (<= 65535)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    out = args.out
    with tempfile.TemporaryDirectory() as tmp:
        docs, deb_name = doc_pages(args.deb.resolve() if args.deb else None, Path(tmp))
    n_html = len(docs)
    docs.update(stdlib_docstrings())
    names = sorted(docs)
    held = [n for n in names if is_heldout(n)]
    train = [n for n in names if not is_heldout(n)]
    for sub, group in (("train", train), ("heldout", held)):
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.txt"):
            old.unlink()
        for n in group:
            (d / file_name(n)).write_text(docs[n], encoding="utf-8")
    tok = train_tokenizer([docs[n] for n in train], args.vocab)
    tok.save(str(out / "tokenizer.json"))
    tr = encode_join(tok, [docs[n] for n in train])
    ho = encode_join(tok, [docs[n] for n in held])
    tr.tofile(out / "train.bin")
    ho.tofile(out / "heldout.bin")
    nbytes = lambda group: sum(len(docs[n].encode()) for n in group)  # noqa: E731
    manifest = {
        "sources": {"python_docs": deb_name, "html_pages": n_html,
                    "pydoc_modules": len(docs) - n_html, "python": sys.version.split()[0]},
        "license": "PSF-2.0 (Python documentation and standard library)",
        "documents": {"train": len(train), "heldout": len(held)},
        "bytes": {"train": nbytes(train), "heldout": nbytes(held)},
        "tokens": {"train": int(tr.size), "heldout": int(ho.size)},
        "vocab_size": tok.get_vocab_size(), "specials": dict(zip(SPECIALS, range(3))),
        "heldout_names": held,
        "sha256": {f: hashlib.sha256((out / f).read_bytes()).hexdigest()
                   for f in ("tokenizer.json", "train.bin", "heldout.bin")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "heldout_names"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
