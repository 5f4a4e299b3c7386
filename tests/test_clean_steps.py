"""Each cleaning step on crafted documents: URL rules, extraction, language ID, quality rules, dedup, PII."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmlab.data.clean.dedup import ExactDedup, MinHashDedup, minhash_signatures, near_duplicate_roots, normalize_text
from llmlab.data.clean.documents import Document
from llmlab.data.clean.extract import Extract
from llmlab.data.clean.langid import LanguageFilter, LanguageIdentifier
from llmlab.data.clean.pii import PiiRedaction, iban_valid, luhn_valid, redact
from llmlab.data.clean.quality import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, split_words
from llmlab.data.clean.url_filter import UrlFilter
from llmlab.errors import ConfigError

ENGLISH = (
    "The river that runs through the old town floods almost every spring. Engineers have argued for years about "
    "whether a new wall would protect the houses near the bridge or simply push the water further downstream. "
    "Last winter the council finally asked a university team to build a model of the valley, and their results "
    "surprised everyone who had followed the debate."
)
FRENCH = (
    "La rivière qui traverse la vieille ville déborde presque chaque printemps. Les ingénieurs se disputent depuis "
    "des années pour savoir si un nouveau mur protégerait les maisons près du pont."
)
GERMAN = (
    "Der Fluss, der durch die Altstadt fließt, tritt fast jeden Frühling über die Ufer. Seit Jahren streiten die "
    "Ingenieure darüber, ob eine neue Mauer die Häuser an der Brücke schützen würde."
)
SPANISH = (
    "El río que atraviesa el casco antiguo se desborda casi cada primavera. Los ingenieros llevan años discutiendo "
    "si un nuevo muro protegería las casas cercanas al puente."
)


def doc(text: str, url: str = "https://example.com/a") -> Document:
    return Document(url, text=text)


def kept(step, text: str) -> bool:
    return not isinstance(step.process(doc(text)), str)


def reason(step, text: str) -> str | None:
    out = step.process(doc(text))
    return out if isinstance(out, str) else None


def vocabulary(n: int, seed: int = 0, length: int = 6) -> list[str]:
    """n distinct lower-case pseudo-words of `length` letters."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(length // 2)))
    return sorted(words)


# --- URL filter ------------------------------------------------------------------------------------

@pytest.fixture
def lists(tmp_path):
    def write(name, *lines):
        p = tmp_path / name
        p.write_text("# comment\n" + "\n".join(lines) + "\n")
        return [str(p)]

    return UrlFilter(
        use_shipped_lists=False,
        domains_files=write("domains", "badsite.com", "blog.mixed.org"),
        urls_files=write("urls", "https://fine.org/one/bad/page"),
        banned_words_files=write("banned", "casino"),
        banned_subwords_files=write("subwords", "warez"),
        soft_banned_words_files=write("soft", "free", "money"),
    )


def test_url_filter_blocks_registered_domain_and_its_subdomains(lists):
    assert lists.check("https://badsite.com/x") == "domain"
    assert lists.check("https://www.badsite.com/x") == "domain"
    assert lists.check("https://notbadsite.com/x") is None


def test_url_filter_blocks_listed_subdomain_but_not_its_parent(lists):
    assert lists.check("https://blog.mixed.org/post") == "subdomain"
    assert lists.check("https://mixed.org/post") is None
    assert lists.check("https://shop.mixed.org/post") is None


def test_url_filter_full_url_exact_match(lists):
    assert lists.check("https://fine.org/one/bad/page") == "url"
    assert lists.check("https://fine.org/one/bad/page2") is None


def test_url_filter_banned_word_is_a_whole_word(lists):
    assert lists.check("https://fine.org/casino/poker") == "banned_word"
    assert lists.check("https://fine.org/Casino-Night") == "banned_word"
    assert lists.check("https://fine.org/casinos") is None  # not the word itself


def test_url_filter_soft_banned_words_need_two(lists):
    assert lists.check("https://fine.org/free/ebook") is None
    assert lists.check("https://fine.org/free-money") == "soft_banned_words"


def test_url_filter_banned_subword_anywhere(lists):
    assert lists.check("https://fine.org/bestwarezsite") == "banned_subword"


def test_url_filter_shipped_lists_work_offline():
    step = UrlFilter()
    assert step.check("https://www.pornhub.com/") == "domain"
    assert step.check("https://docs.python.org/3/library/json.html") is None
    result = step([doc("x", "https://xvideos.com/a"), doc("y", "https://example.com/")])
    assert [d.url for d in result.kept] == ["https://example.com/"]
    assert result.removed[0].step == "url_filter" and result.removed[0].reason == "domain"


# --- extraction ------------------------------------------------------------------------------------

ARTICLE = " ".join(f"<p>{s}.</p>" for s in ENGLISH.split(". "))


def page(article: str, comment: str = "I disagree with every word of this article, frankly.") -> str:
    return (
        "<html><head><title>Floods</title></head><body>"
        "<nav><ul><li><a href='/'>Home</a></li><li><a href='/about'>About us</a></li></ul></nav>"
        f"<main><article><h1>The river question</h1>{article}</article>"
        f"<section id='comments' class='comments'><h2>Comments</h2><div class='comment'><p>{comment}</p></div></section></main>"
        "<footer><p>Copyright 2024 Riverside Gazette. All rights reserved.</p></footer></body></html>"
    )


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_extraction_keeps_main_content_and_drops_boilerplate(extractor):
    out = Extract(extractor=extractor).process(Document("https://example.com/", html=page(ARTICLE)))
    assert not isinstance(out, str)
    assert "university team to build a model of the valley" in out.text
    assert out.html is None
    assert "About us" not in out.text
    assert "All rights reserved" not in out.text
    if extractor == "trafilatura":  # trafilatura drops comment sections (resiliparse has no such notion)
        assert "I disagree" not in out.text


def test_documentation_recipe_keeps_list_items_and_drops_navigation():
    """A DocBook page (PostgreSQL's manual) listing 35 environment variables: resiliparse's main-content
    heuristic kept none of them but kept the Prev/Up/Home/Next bar."""
    from llmlab.data.clean.pipeline import load_recipe

    names = [f"PGVARIABLE{i}" for i in range(35)]
    items = "".join(
        f'<li class="listitem"><p><a class="indexterm"></a><code class="envar">{n}</code> behaves the same as the '
        f'<a class="xref" href="c.html#{n}">{n.lower()}</a> connection parameter.</p></li>' for n in names
    )
    bar = '<tr><td><a href="a.html">Prev</a></td><td><a href="b.html">Up</a></td><td><a href="d.html">Next</a></td></tr>'
    page = (
        f'<html><body><div class="navheader"><table>{bar}</table><hr/></div><div class="sect1">'
        "<h2>34.15. Environment Variables</h2><p>The following environment variables can be used to select default "
        "connection parameter values, used by the connection functions if the calling code gives none.</p>"
        f'<div class="itemizedlist"><ul class="itemizedlist">{items}</ul></div></div>'
        f'<div class="navfooter"><hr/><table>{bar}</table></div></body></html>'
    )
    step = next(s for s in load_recipe("documentation").build() if s.name == "extract")
    text = step.process(Document("u", html=page)).text
    assert all(n in text for n in names) and "connection parameter values" in text
    assert "Prev" not in text and "Next" not in text


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_extraction_turns_no_break_spaces_into_spaces(extractor):
    article = ARTICLE.replace("university team", "university&nbsp;team")
    out = Extract(extractor=extractor).process(Document("https://example.com/", html=page(article)))
    assert "university team to build" in out.text and "\u00a0" not in out.text


def test_extraction_does_not_depend_on_document_order():
    shared = "<p>This paragraph is syndicated on many pages of the same site and must not vanish.</p>"
    first = Document("https://example.com/1", html=page(shared + ARTICLE))
    second = Document("https://example.com/2", html=page(shared + "<p>Another story entirely, told in full.</p>" + ARTICLE))
    step = Extract()
    alone = step.process(second).text
    step.process(first)
    assert step.process(second).text == alone
    assert "syndicated" in alone


def test_extraction_drops_errors_and_non_html_with_reasons():
    step = Extract()
    result = step([
        Document("https://e.com/404", metadata={"http_status": 404}),
        Document("https://e.com/img", metadata={"http_status": 200, "content_type": "image/png"}),
        Document("https://e.com/empty", html="<html><body></body></html>"),
        Document("https://e.com/text", text="Already text."),
    ])
    assert [d.url for d in result.kept] == ["https://e.com/text"]
    assert [r.reason for r in result.removed] == ["http_404", "not_html", "no_text"]


# --- language ID -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fasttext", "py3langid"])
def test_language_identification(backend):
    lid = LanguageIdentifier(backend)
    for text, lang in ((ENGLISH, "en"), (FRENCH, "fr"), (GERMAN, "de"), (SPANISH, "es")):
        label, score = lid.predict(text)
        assert label == lang and score > 0.65


def test_language_filter_keeps_english_and_labels_it():
    result = LanguageFilter()([doc(ENGLISH), doc(FRENCH), doc(GERMAN)])
    assert len(result.kept) == 1
    assert result.kept[0].metadata["language"] == "en" and result.kept[0].metadata["language_score"] >= 0.65
    assert [r.reason for r in result.removed] == ["language_fr", "language_de"]


def test_language_threshold_is_applied_to_the_whole_document():
    # The English sentence comes after a French one, so a prefix-only model would call it French.
    mixed = FRENCH + "\n" + ENGLISH
    label, score = LanguageIdentifier().predict(mixed)
    assert label == "en"
    assert kept(LanguageFilter(threshold=score - 0.01), mixed)
    assert reason(LanguageFilter(threshold=score + 0.01), mixed) == "low_language_score"
    assert kept(LanguageFilter(languages=[], threshold=0.5), FRENCH)  # empty list: any language


# --- Gopher repetition -----------------------------------------------------------------------------

def only(cls, **enabled):
    """A quality step with every optional rule off except `enabled`."""
    import dataclasses

    settings = {f.name: None for f in dataclasses.fields(cls) if "None" in str(f.type)}
    if cls is GopherRepetition:
        settings |= {"top_ngrams": {}, "dup_ngrams": {}}
    return cls(**(settings | enabled))


def lines_text(n_unique: int, repeats: int, repeated: str = "ok", seed: int = 0) -> str:
    words = vocabulary(n_unique * 8, seed)
    unique = [" ".join(words[i * 8 : (i + 1) * 8]) for i in range(n_unique)]
    return "\n".join(unique + [repeated] * (repeats + 1))


def test_gopher_dup_line_fraction():
    step = only(GopherRepetition, dup_line_frac=0.3)
    assert kept(step, lines_text(6, 3))  # 3 repeats of 10 lines = 0.30
    assert reason(step, lines_text(6, 4)) == "dup_line_frac"  # 4 of 11 = 0.36


def test_gopher_dup_paragraph_fraction():
    step = only(GopherRepetition, dup_para_frac=0.3)
    assert kept(step, lines_text(6, 3).replace("\n", "\n\n"))
    assert reason(step, lines_text(6, 4).replace("\n", "\n\n")) == "dup_para_frac"


def test_gopher_dup_line_char_fraction():
    step = only(GopherRepetition, dup_line_char_frac=0.2)
    unique = lines_text(10, 0, repeated="")  # 10 lines of 8 six-letter words = 550 chars
    line = "x" * 60
    passing, failing = unique + "\n" + "\n".join([line] * 3), unique + "\n" + "\n".join([line] * 4)
    assert 120 / len(passing) <= 0.2 < 180 / len(failing)
    assert kept(step, passing)
    assert reason(step, failing) == "dup_line_char_frac"


def test_gopher_top_ngram_fraction():
    step = only(GopherRepetition, top_ngrams={"2": 0.2})
    words = vocabulary(38)
    # the 2-gram "aa bb" (5 characters) k times after 38 distinct words
    def text(k):
        return " ".join(words + ["aa bb"] * k)
    ok, bad = text(13), text(14)
    assert 5 * 13 / len(ok) <= 0.2 < 5 * 14 / len(bad)
    assert kept(step, ok)
    assert reason(step, bad) == "top_2_gram"


def test_gopher_duplicated_ngram_fraction():
    step = only(GopherRepetition, dup_ngrams={"5": 0.15})
    words = vocabulary(400)
    block = words[:5]  # a 5-gram of 30 characters (joined without spaces, as Gopher counts)
    def text(copies, filler):
        return " ".join(block * copies + words[5 : 5 + filler])
    assert kept(step, text(2, 150))  # one repeat: 30 / ~1100 chars
    assert reason(step, text(12, 50)) == "duplicated_5_grams"


# --- Gopher quality --------------------------------------------------------------------------------

def sentence_text(n_words: int, seed: int = 0) -> str:
    return " ".join(vocabulary(n_words, seed))


def test_gopher_min_words():
    step = only(GopherQuality, min_words=50)
    assert kept(step, sentence_text(50))
    assert reason(step, sentence_text(49)) == "too_few_words"


def test_gopher_max_words():
    step = only(GopherQuality, max_words=100_000)
    assert kept(step, "word " * 100_000)
    assert reason(step, "word " * 100_001) == "too_many_words"


def test_gopher_mean_word_length():
    step = only(GopherQuality, min_avg_word_length=3, max_avg_word_length=10)
    assert kept(step, " ".join(["abc"] * 50))
    assert reason(step, " ".join(["abc"] * 49 + ["ab"])) == "short_words"
    assert kept(step, " ".join(["a" * 10] * 50))
    assert reason(step, " ".join(["a" * 10] * 49 + ["a" * 11])) == "long_words"


def test_gopher_hash_and_ellipsis_ratios():
    step = only(GopherQuality, max_symbol_word_ratio=0.1)
    base = sentence_text(100).split()
    assert kept(step, " ".join(base + ["#"] * 11))  # 11 / 111 tokens
    assert reason(step, " ".join(base + ["#"] * 12)) == "hash_ratio"  # 12 / 112
    assert kept(step, " ".join(base + ["..."] * 11))
    assert reason(step, " ".join(base + ["..."] * 12)) == "ellipsis_ratio"


def test_gopher_bullet_and_ellipsis_lines():
    bullets = only(GopherQuality, max_bullet_lines_ratio=0.9)
    lines = sentence_text(200).split()
    assert kept(bullets, "\n".join(["- " + w for w in lines[:9]] + [lines[9]]))  # 9 of 10
    assert reason(bullets, "\n".join("• " + w for w in lines[:10])) == "bullet_lines"
    ellipses = only(GopherQuality, max_ellipsis_lines_ratio=0.3)
    assert kept(ellipses, "\n".join([w + "..." for w in lines[:3]] + lines[3:10]))  # 3 of 10
    assert reason(ellipses, "\n".join([w + "…" for w in lines[:4]] + lines[4:10])) == "ellipsis_lines"


def test_gopher_alphabetic_words():
    step = only(GopherQuality, min_alpha_words_ratio=0.8)
    words = sentence_text(80).split()
    assert kept(step, " ".join(words + ["42"] * 20))  # 80 / 100
    assert reason(step, " ".join(words[:79] + ["42"] * 21)) == "alpha_words"


def test_gopher_stop_words():
    step = only(GopherQuality, min_stop_words=2)
    words = sentence_text(60).split()
    assert kept(step, " ".join(words + ["The", "and"]))
    assert reason(step, " ".join(words + ["the", "the"])) == "stop_words"


# --- C4 --------------------------------------------------------------------------------------------

FIVE_SENTENCES = "\n".join(
    f"This is line number {w} of the text. It has two sentences." if i % 2 else f"A single sentence about {w} here."
    for i, w in enumerate(vocabulary(4))
)  # 2 + 1 + 2 + 1... = 6 sentences over 4 lines


def test_c4_sentence_minimum():
    step = C4Quality()
    four = "\n".join(f"Sentence {w} is short but fine." for w in vocabulary(4))
    five = "\n".join(f"Sentence {w} is short but fine." for w in vocabulary(5))
    assert reason(step, four) == "too_few_sentences"
    assert kept(step, five)
    assert kept(step, FIVE_SENTENCES)


def test_c4_whole_document_rules():
    assert reason(C4Quality(), FIVE_SENTENCES + "\nLorem ipsum dolor sit amet.") == "lorem_ipsum"
    assert reason(C4Quality(), FIVE_SENTENCES + "\nThe dict {a: b} is here.") == "curly_bracket"
    assert kept(C4Quality(drop_curly_bracket=False), FIVE_SENTENCES + "\nThe dict {a: b} is here.")


def test_c4_line_rules_rewrite_the_text():
    text = "\n".join([
        FIVE_SENTENCES,
        "Enable JavaScript to see this page properly.",
        "Read our privacy policy before you continue.",
        "Two words.",
        "A cited claim stands here.[12]",
        "Word " + "x" * 1001 + " ends here.",
    ])
    out = C4Quality().process(doc(text))
    assert "JavaScript" not in out.text and "privacy" not in out.text and "Two words" not in out.text
    assert "A cited claim stands here." in out.text and "[12]" not in out.text
    assert "x" * 1001 not in out.text
    strict = C4Quality(require_terminal_punct=True).process(doc(FIVE_SENTENCES + "\nno terminal punctuation here"))
    assert "no terminal punctuation" not in strict.text


# --- FineWeb ---------------------------------------------------------------------------------------

def long_lines(n: int, seed: int = 0) -> list[str]:
    words = vocabulary(n * 6, seed)
    return [" ".join(words[i * 6 : (i + 1) * 6]) for i in range(n)]  # 41 characters each


def test_fineweb_line_punctuation_ratio():
    step = only(FineWebQuality, min_line_punct_ratio=0.12)
    lines = long_lines(100)
    assert kept(step, "\n".join([l + "." for l in lines[:12]] + lines[12:]))
    assert reason(step, "\n".join([l + "." for l in lines[:11]] + lines[11:])) == "line_punct_ratio"


def test_fineweb_short_line_ratio():
    step = only(FineWebQuality, max_short_line_ratio=0.67)
    lines = long_lines(100)
    assert kept(step, "\n".join([l[:30] for l in lines[:67]] + lines[67:]))
    assert reason(step, "\n".join([l[:30] for l in lines[:68]] + lines[68:])) == "short_line_ratio"


def test_fineweb_duplicate_line_characters_uses_the_papers_threshold():
    step = only(FineWebQuality, max_dup_line_char_ratio=0.1)
    lines = long_lines(40)
    ok = "\n".join(lines + lines[:4])  # 4 repeated of 44 lines of equal length: 0.09
    bad = "\n".join(lines + lines[:5])  # 5 of 45: 0.111
    assert kept(step, ok)
    assert reason(step, bad) == "dup_line_char_ratio"
    assert FineWebQuality().max_dup_line_char_ratio == 0.1


def test_fineweb_list_ratio():
    step = only(FineWebQuality, max_newline_word_ratio=0.3)
    words = vocabulary(100)
    assert kept(step, "\n".join(" ".join(words[i : i + 4]) for i in range(0, 100, 4)))  # 24 newlines / 100 words
    assert reason(step, "\n".join(" ".join(words[i : i + 3]) for i in range(0, 99, 3))) == "list_ratio"  # 32 / 99


def test_word_splitting_follows_spacy_conventions():
    assert split_words("Isn't it 3.11.7? See https://x.org/a-b ... e-mail") == [
        "Is", "n't", "it", "3.11.7", "?", "See", "https://x.org/a-b", "...", "e", "-", "mail",
    ]
    # Dates and ranges split at the hyphen, '+' after a version and '&' of an entity come off: near
    # Gopher's 80% alphabetic-words threshold, each such token decides whether a page is kept.
    assert split_words("On 2024-08-17, 3-4 of 5.3+ &gt;") == [
        "On", "2024", "-", "08", "-", "17", ",", "3", "-", "4", "of", "5.3", "+", "&", "gt", ";",
    ]


def test_punctuation_runs_split_as_spacy_splits_them():
    # Markdown tables, ASCII rules and strike-through: datatrove's Gopher filter sees these through spaCy.
    assert split_words("|---|---| ----+----  ~~old~~ <!-- :-) (...)") == [
        "|---|---|", "----+----", "~~old~~", "<", "!", "--", ":-)", "(", "...", ")",
    ]
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    rng = random.Random(0)
    runs = ["".join(rng.choice("|-+~=*#_.:;!?()[]{}<>/\\'\"`@^&%$") for _ in range(rng.randint(1, 6))) for _ in range(2000)]
    assert [split_words(r) for r in runs] == [[t.text for t in nlp(r)] for r in runs]


@pytest.mark.slow  # loading datatrove's spaCy word splitter takes ~20 s on 2 cores
def test_quality_rules_agree_with_datatrove_on_crafted_documents():
    pytest.importorskip("spacy")
    filters = pytest.importorskip("datatrove.pipeline.filters")
    from datatrove.data import Document as DtDocument

    texts = [ENGLISH * 3, sentence_text(49), sentence_text(60) + " the and", lines_text(6, 4), FIVE_SENTENCES,
             "\n".join(long_lines(30)), "\n".join([l + "." for l in long_lines(30)]), ENGLISH + "\n" + ENGLISH]
    pairs = [
        (GopherRepetition(), filters.GopherRepetitionFilter()),
        (GopherQuality(), filters.GopherQualityFilter()),
        (C4Quality(), filters.C4QualityFilter(filter_no_terminal_punct=False)),
        (FineWebQuality(), filters.FineWebQualityFilter(char_duplicates_ratio=0.1)),
    ]
    for ours, theirs in pairs:
        for text in texts:
            verdict = theirs.filter(DtDocument(text=text, id="0"))
            theirs_kept = verdict if isinstance(verdict, bool) else verdict[0]
            assert kept(ours, text) == bool(theirs_kept), (ours.name, text[:60])


# --- dedup -----------------------------------------------------------------------------------------

def test_exact_dedup_normalises_case_punctuation_and_whitespace():
    docs = [doc("Hello, World!  Same text.", "u1"), doc("hello world same   text", "u2"), doc("Different text.", "u3")]
    result = ExactDedup()(docs)
    assert [d.url for d in result.kept] == ["u1", "u3"]
    assert result.removed[0].reason == "exact_duplicate" and result.removed[0].document.metadata["duplicate_of"] == "u1"


def test_normalize_text():
    assert normalize_text("Café, 2024 — ÉTÉ!") == "cafe 0 ete"


def planted_corpus(n_base=30, n_words=300, rate=0.01, seed=0):
    rng = random.Random(seed)
    vocab = vocabulary(5000, seed)
    base = [" ".join(rng.choice(vocab) for _ in range(n_words)) for _ in range(n_base)]
    dups = []
    for i in range(0, n_base, 3):
        words = base[i].split()
        for _ in range(int(rate * n_words)):
            words[rng.randrange(n_words)] = rng.choice(vocab)
        dups.append((i, " ".join(words)))
    return base, dups


def test_minhash_finds_planted_near_duplicates_and_merges_nothing_else():
    base, dups = planted_corpus()
    docs = [doc(t, f"base{i}") for i, t in enumerate(base)] + [doc(t, f"dup{i}") for i, t in dups]
    result = MinHashDedup()(docs)
    assert [d.url for d in result.kept] == [f"base{i}" for i in range(len(base))]
    assert {r.document.metadata["duplicate_of"] for r in result.removed} == {f"base{i}" for i, _ in dups}
    assert {r.reason for r in result.removed} == {"near_duplicate"}


def test_minhash_signatures_estimate_jaccard():
    base, dups = planted_corpus(n_base=3, rate=0.05)
    sig = minhash_signatures([base[0], dups[0][1], base[1]], num_hashes=256)
    same = (sig[0] == sig[1]).mean()
    words0, words1 = normalize_text(base[0]).split(), normalize_text(dups[0][1]).split()
    grams = lambda w: {tuple(w[i : i + 5]) for i in range(len(w) - 4)}  # noqa: E731
    truth = len(grams(words0) & grams(words1)) / len(grams(words0) | grams(words1))
    assert abs(same - truth) < 0.1
    assert (sig[0] == sig[2]).mean() < 0.05


def test_lsh_bands_need_a_whole_band_to_agree():
    sig = np.arange(3 * 112, dtype=np.uint32).reshape(3, 112)
    sig[1, :8] = sig[0, :8]  # one full band equal
    sig[2, 8:15] = sig[0, 8:15]  # seven of eight in another band
    assert near_duplicate_roots(sig).tolist() == [0, 0, 2]


# --- PII -------------------------------------------------------------------------------------------

def test_pii_redacts_each_kind_with_stable_placeholders():
    text = (
        "Write to jane.roe@mail.posteo.de or call +44 20 7946 0958 or (555) 123-4567. "
        "Our server is 81.2.69.142 (2a00:1450:4001:82b::200e), card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32."
    )
    out, counts = redact(text)
    assert out == (
        "Write to <EMAIL> or call <PHONE> or <PHONE>. "
        "Our server is <IP_ADDRESS> (<IP_ADDRESS>), card <CREDIT_CARD>, IBAN <IBAN>."
    )
    assert counts == {"email": 1, "phone": 2, "ip_address": 2, "credit_card": 1, "iban": 1}
    assert redact(text)[0] == out


@pytest.mark.parametrize("text", [
    "Python 3.11.7.1 is out.", "Install version 3.11.7.1 now.", "Tag v1.2.3.4 and 1.2.3.4.5 and 3.11.7.1-rc1.",
    "Private 192.168.1.20, loopback 127.0.0.1, docs 203.0.113.9.", "Card 4111 1111 1111 1112 fails Luhn.",
    "IBAN GB82 WEST 1234 5698 7654 33 fails mod 97.", "On 2024-01-15 we sold 1234567 units.",
    "IPv6 docs 2001:db8::1, link-local fe80::1, loopback ::1, multicast ff02::1.",
    "Meet at 20:30:45 or 23:59; use std::vector and a::b; 2a00:1450: is cut short.",
])
def test_pii_leaves_lookalikes_alone(text):
    assert redact(text) == (text, {})


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE88 3704 0044 0532 0130 00")


@pytest.mark.parametrize("text", [
    "4.8.1.1. Introduction\nThe parser reads the stream.",  # a heading's number
    "## 4.8.1.1 Parsing\n",
    "9.15.3.2. xpath_exists\n  • 6.2.9.4. Asynchronous generators\n43.6.5.5.\u00a0FOR (Integer Variant)",
    "Sent as Mozilla/5.0 Firefox/2.0.0.11 by default.",
    "As Section 4.1.2.3 explains, and sections 4.1.2.2 and 4.1.2.4 repeat, see § 4.8.1.1.",
    "Card-like zeros 0000 0000 0000 0000 and 4111 1111-1111 1111 fail the rules.",  # one digit; mixed separators
    "-rw-r--r-- 1 1000 1000 4007 Dec  5 07:12 notes.txt",  # ls -l (its digits pass Luhn)
    "Year  Q1   Q2   Q3\n2021 1200 3400 1005\n",  # a table row (passes Luhn, no card network starts 2021)
])
def test_pii_documentation_numbers_are_not_pii(text):
    assert redact(text) == (text, {})


# What the documentation recipe's PII step redacted on Debian's Python and PostgreSQL manuals before
# these rules, one class per case (docs/data.md lists the counts).
@pytest.mark.parametrize("text", [
    "3.3.2.4. __slots__\n__slots__ allow us to declare data members.",  # a heading whose title is an identifier
    "  • 3.3.5.2. __class_getitem__ versus __getitem__",  # the same heading in a table of contents
    '"[GCC 2.7.2.2]" and Thunderbird 1.5.0.9 (X11/20061227) and Z_RLE (zlib 1.2.0.1)',  # versions after a name
    "(tutorial-env) $ python -m pip list\nnovas (3.1.1.3)\nnumpy (1.9.2)",
    "lca(array['1.2.3'::ltree,'1.2.3.4']) → 1.2",  # an ltree path
    "192.168.0.0/24 and 128.1.0.0/16, except 192.0.0.9/32; 2002::/16 and 2001:db00::0/24; ::ffff:1.2.3.0/120",
    "# combinations(range(4), 3) --> 012 013 023 123\n# product(range(2), repeat=3) --> 000 001 010 011 100 101",
    "('admin','Admin','111-222-3333') and ('bob','Bob','123-456-7890')",  # no NANP area code starts with 0 or 1
    "Resolvers such as 8.8.8.8 and 1.1.1.1 are nobody's address.",
])
def test_pii_documentation_false_positive_classes(text):
    assert redact(text) == (text, {})


# Values reserved for examples (pii_reserved.py), each beside a real-looking neighbour that is still redacted.
@pytest.mark.parametrize("kept, redacted", [
    # RFC 2606 / 6761 domains, subdomains included; a look-alike registrable domain is someone's
    ("jane@example.com, ops@mail.example.org, x@EXAMPLE.NET", "jane@example.community"),
    ("a@host.example, b@site.test, c@nowhere.invalid, d@box.localhost", "a@example.co.uk"),
    # RFC 5737 / 3849 documentation blocks, private, shared (CGNAT), loopback and link-local: not global
    ("192.0.2.1, 198.51.100.7, 203.0.113.250, 10.1.2.33, 100.64.3.9, 169.254.10.20", "192.0.3.6"),
    ("2001:db8:85a3::8a2e:370:7334 and fe80::1ff:fe23:4567:890a", "2001:db9:85a3::8a2e:370:7334"),
    # example.com's long-time address, as manuals show a lookup
    ("('93.184.216.34', 80) and ('2606:2800:220:1:248:1893:25c8:1946', 80, 0, 0)", "('93.184.216.35', 80)"),
    # digits typed as a placeholder: counting up or down, or one number and its anagrams
    ("for example, '123.45.67.89' or '12.34.56.78'", "for example, '123.45.67.98'"),
    ("hosts 123.123.123.123 and 123.231.231.123", "host 123.231.231.124"),
    ("Alice, '098-765-4321', and (234) 567-8901", "Alice, '098-765-4312'"),
    # NANP's fictional 555-01XX in any area code, with or without the 1
    ("call (212) 555-0123, 1-800-555-0199 or +1 415 555 0100", "call (212) 555-0200"),
])
def test_pii_keeps_values_reserved_for_examples(kept, redacted):
    assert redact(kept) == (kept, {})
    out, counts = redact(redacted)
    assert sum(counts.values()) == 1 and out.count("<") == 1, out


# The documentation recipe's rule: inside a `>>> ` transcript (to the next blank line, as doctest reads
# it) phone numbers and IP addresses are example data; e-mails there, and everything in prose, are redacted.
TRANSCRIPT_PAGE = """Call Ross on 834.345.1255 or write to ross.mcfluff@posteo.de before you start.
>>> text = \"\"\"Ross McFluff: 834.345.1254 155 Elm Street
...
... Frank Burger: 925.541.7625 662 South Dogwood Way\"\"\"
>>> IPv4Address('127.0.0.2') - 3
IPv4Address('126.255.255.255')
>>> over['from']
'Martin <martin@v.loewis.net>'

Our office line is 925.541.7626 and the server is at 81.2.69.142.
  >>> 1 + 1
  2
The next line after an answer still belongs to the example: 81.2.69.143

But a paragraph after the blank line is prose again: 81.2.69.144 and +49 30 12345678.
"""


def test_documentation_pii_keeps_numbers_in_transcripts_and_redacts_prose_beside_them():
    from llmlab.data.clean.pipeline import load_recipe

    step = next(s for s in load_recipe("documentation").build() if s.name == "pii")
    found: list[tuple[str, str]] = []
    out, counts = step.redact(TRANSCRIPT_PAGE, found)
    for kept in ("834.345.1254", "925.541.7625", "126.255.255.255", "81.2.69.143"):
        assert kept in out
    assert sorted(value for _, value in found) == sorted([
        "834.345.1255", "ross.mcfluff@posteo.de", "martin@v.loewis.net", "925.541.7626", "81.2.69.142",
        "81.2.69.144", "+49 30 12345678",
    ])
    assert counts == {"email": 2, "phone": 3, "ip_address": 2}
    # The default step (the fineweb recipe) redacts transcripts too.
    assert redact(TRANSCRIPT_PAGE)[1] == {"email": 2, "phone": 5, "ip_address": 4}
    with pytest.raises(ConfigError, match="unknown PII kind 'phones'"):
        PiiRedaction(keep_in_transcripts=["phones"])


def test_pii_finds_real_pii_in_sentences():
    planted = {
        "phone": ["+49 30 12345678", "020 7946 0958", "1-800-555-2671", "+33 1 42 68 53 00", "(555) 123-4567",
                  "+1 (555) 123-4567", "555.123.4567", "030 12345678", "+44 (0)20 7946 0958", "+81 3-1234-5678",
                  "+61 2 9876 5432", "0113 496 0000", "+1 415 555 2671", "(02) 9876 5432", "06 1234 5678",
                  "03-1234-5678", "0049 30 12345678", "07700 900123", "+34 912 345 678", "+91 98765 43210"],
        "credit_card": ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500 0000 0000 0004", "3782 822463 10005",
                        "6011111111111117", "3530111333300000"],
        "ip_address": ["81.2.69.142", "151.101.1.69", "2a00:1450:4001:82b::200e", "172.217.16.14"],
        "email": ["jane.roe@mail.posteo.de", "j.doe@example.community", "ops@test.example.co.uk"],
    }
    for kind, values in planted.items():
        for value in values:
            for sentence in (f"Reach it at {value} today.", f"It is {value}.\n", f"{value} is the one"):
                out, counts = redact(sentence)
                assert counts == {kind: 1} and value not in out, (kind, sentence, out)
    # a number written right after a phone (a house number) does not make it a row of numbers
    assert redact("Ross McFluff: 834.345.1254 155 Elm Street")[0] == "Ross McFluff: <PHONE> 155 Elm Street"


def test_pii_recall_on_generated_pii_is_at_least_095():
    from llmlab.data.clean.pii_recall import planted_pii, pii_recall
    from llmlab.data.clean.pipeline import load_recipe

    samples = planted_pii(500, seed=1)
    assert {s.kind for s in samples} == {"email", "phone", "ip_address", "credit_card", "iban"}
    assert any(">>>" in s.text for s in samples)  # prose beside transcripts is planted too
    documentation = next(s for s in load_recipe("documentation").build() if s.name == "pii")
    for step in (None, documentation):
        result = pii_recall(samples, step)
        assert result["recall"] >= 0.95 and min(v for k, v in result.items() if k.startswith("recall_")) >= 0.9, result
