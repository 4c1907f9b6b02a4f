"""The corpus builder's pure parts (training/prepare_corpus.py), offline: document cutting,
HTML text, the WordNet, Bible and dictd readers, the hash split. The package fetches are covered
by running the script (docs/default-model.md: two runs gave the same hashes)."""
import gzip

from bitswarm.training import prepare_corpus as pc


def test_chunks_cut_at_paragraphs_and_keep_every_byte_of_text():
    text = "".join(f"Paragraph {i} has a few words in it.\n\n" for i in range(3000))
    parts = pc.chunks("doc", text, size=2000)
    assert len(parts) > 10 and list(parts) == sorted(parts)
    assert all(k.startswith("doc#") for k in parts)
    assert all(v.endswith(".\n") for v in parts.values())          # cut between paragraphs
    words = lambda s: s.split()                                       # noqa: E731
    assert sum((words(v) for v in parts.values()), []) == words(text)
    assert max(len(v.encode()) for v in parts.values()) < 2 * 2000


def test_chunks_fall_back_to_sentences_for_text_without_line_breaks():
    text = "And it was so. " * 5000                    # like the WEB Bible: one line
    parts = pc.chunks("b", text, size=1000)
    assert len(parts) > 50
    assert all(len(v.encode()) < 1200 for v in parts.values())
    assert " ".join(v.strip() for v in parts.values()).split() == text.split()


def test_short_text_is_one_document():
    assert pc.chunks("x", "short\n") == {"x": "short\n"}


def test_html_text_prefers_the_article_and_drops_navigation():
    page = """<html><head><title>T</title><script>var x=1;</script></head><body>
      <nav>Prev Next</nav><div class="navheader">Chapter 3 Prev</div>
      <main><h1>Title<a class="headerlink" href="#">¶</a></h1><p>Some   text
      here.</p><pre>code  kept
  verbatim</pre></main><footer>(c) someone</footer></body></html>"""
    t = pc.html_to_text(page)
    assert t == "Title\n\nSome text here.\n\ncode  kept\n  verbatim\n"


def test_html_without_an_article_element_uses_the_body():
    t = pc.html_to_text("<body><div class='toc'>1. a</div><p>Body text.</p></body>")
    assert t == "Body text.\n"


def test_wordnet_synsets_become_gloss_sentences(tmp_path):
    d = tmp_path / "usr/share/wordnet"
    d.mkdir(parents=True)
    lines = ["  1 This software and database is being provided to you",
             "00401783 04 n 02 refreshment 0 recreation 1 005 @ 00401639 n 0000 | activity "
             "that refreshes; \"time for rest and refreshment\"  ",
             "00001740 00 a 01 able(a) 0 005 = 05207437 n 0000 | having the means  "]
    for pos in ("noun", "verb", "adj", "adv"):
        (d / f"data.{pos}").write_text("\n".join(lines) + "\n", encoding="latin-1")
    docs = pc.wordnet(tmp_path)
    assert docs["wordnet/noun"] == ('refreshment, recreation: activity that refreshes; '
                                    '"time for rest and refreshment"\nable: having the means\n')


def test_bible_reader_takes_the_longest_literal_without_importing(tmp_path):
    m = tmp_path / "pythonbible_x"
    m.mkdir()
    (m / "plain_text_readers_bible.py").write_text(
        'import does_not_exist\nbible = Bible(Version.X, """In the beginning God`s word.""", '
        '{"a": "b"})\n')
    assert pc.bible("pythonbible_x")(tmp_path) == {"pythonbible_x": "In the beginning God's word.\n"}


def test_dictd_reads_the_gzip_database_and_drops_source_lines(tmp_path):
    d = tmp_path / "usr/share/dictd"
    d.mkdir(parents=True)
    (d / "t.dict.dz").write_bytes(gzip.compress(
        b"Abjure \\Ab*jure\"\\, v. t.\n   To renounce upon oath.\n   [1913 Webster]\n\nNext\n"))
    assert pc.dictd("t", ("[1913 Webster]",))(tmp_path) == {
        "t": 'Abjure \\Ab*jure"\\, v. t.\n   To renounce upon oath.\n\nNext\n'}


def test_heldout_split_is_a_fixed_function_of_the_name():
    names = [f"src/doc{i}" for i in range(20000)]
    held = [n for n in names if pc.is_heldout(n)]
    assert 0.015 < len(held) / len(names) < 0.025
    assert held == [n for n in names if pc.is_heldout(n)]
    # a different salt gives an independent order (the training-stream shuffle)
    assert pc.name_hash("a") != pc.name_hash("a", "order")


def test_gutenberg_licence_text_is_stripped():
    t = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nStory.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlegal"
    assert pc.strip_gutenberg(t).strip() == "Story."


def test_sources_name_package_version_and_license():
    assert len({s.name for s in pc.SOURCES}) == len(pc.SOURCES)
    for s in pc.SOURCES:
        assert s.registry in ("debian", "pypi", "npm") and s.package and s.version and s.license
        assert "fortune" not in s.package and "bigbench" not in s.package
