"""Readers, recipes and the whole cleaning pipeline end to end (WARC in, Parquet and report out)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmlab.cli import main as cli_main
from llmlab.data.clean import Document, clean, compare_recipes, load_recipe, read_cleaned, read_documents
from llmlab.data.clean.pipeline import run_pipeline
from llmlab.data.clean.readers import InputProblems
from llmlab.errors import ConfigError, InputError

ARTICLES = [
    "The river that runs through the old town floods almost every spring. Engineers have argued for years about "
    "whether a new wall would protect the houses near the bridge or simply push the water further downstream. "
    "Last winter the council finally asked a university team to build a model of the valley. Their results "
    "surprised everyone who had followed the debate, because the model showed that the wall was not needed. "
    "Instead, the team suggested restoring the wetlands upstream, which once held back the melting snow.",
    "Baking bread at home takes patience more than skill. The dough needs time to rise, and a cold kitchen can "
    "double the waiting. Many beginners add too much flour because the dough feels sticky, which makes the loaf "
    "dense and dry. A wetter dough, folded a few times during the first hour, gives a lighter crumb. If you have "
    "questions, write to the baker at anna.baker@posteo.de and she will answer them on Fridays.",
    "Chess clubs have seen a surge of new members since online play became popular. Players who learned on their "
    "phones now want to meet opponents across a real board. Club organisers say that the newcomers are often "
    "strong at fast games but struggle with the long, quiet matches of a tournament. To help them, several clubs "
    "run evening lessons on endgames and on keeping score. The lessons are free and open to anyone who shows up.",
]
FRENCH = (
    "La rivière qui traverse la vieille ville déborde presque chaque printemps. Les ingénieurs se disputent depuis "
    "des années pour savoir si un nouveau mur protégerait les maisons près du pont. L'hiver dernier, la mairie a "
    "demandé à une équipe de l'université de construire un modèle de la vallée. Les résultats ont surpris tout le "
    "monde. Le mur n'était pas nécessaire, selon eux, et il valait mieux restaurer les zones humides en amont."
)


def html_page(text: str, title: str = "Article") -> str:
    paragraphs = "".join(f"<p>{s}.</p>" for s in text.rstrip(".").split(". "))
    return (
        f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> <a href='/about'>About</a></nav>"
        f"<article><h1>{title}</h1>{paragraphs}</article><footer>Copyright 2024</footer></body></html>"
    )


def write_warc(path, pages):
    """pages: (url, status, content type, body) tuples, written as WARC response records by warcio."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, status, ctype, body in pages:
            http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body.encode()), http_headers=http)
            writer.write_record(record)
        record = writer.create_warc_record(
            "https://wet.example.com/page", "conversion", payload=io.BytesIO(ARTICLES[2].encode()),
            warc_headers_dict={"Content-Type": "text/plain"},
        )
        writer.write_record(record)


@pytest.fixture
def crawl(tmp_path):
    mutated = ARTICLES[0].replace("every spring", "each spring")
    pages = [
        ("https://news.example.com/river", "200 OK", "text/html; charset=utf-8", html_page(ARTICLES[0])),
        ("https://food.example.com/bread", "200 OK", "text/html", html_page(ARTICLES[1])),
        ("https://copy.example.net/river", "200 OK", "text/html", html_page(mutated)),  # near duplicate
        ("https://fr.example.com/riviere", "200 OK", "text/html", html_page(FRENCH)),
        ("https://www.pornhub.com/x", "200 OK", "text/html", html_page(ARTICLES[1])),
        ("https://news.example.com/missing", "404 Not Found", "text/html", "<html>not found</html>"),
        ("https://news.example.com/logo.png", "200 OK", "image/png", "PNG..."),
    ]
    path = tmp_path / "pages.warc.gz"
    write_warc(path, pages)
    return path


# --- readers ---------------------------------------------------------------------------------------

def test_warc_reader_reads_responses_and_wet_conversions(crawl):
    docs = list(read_documents([crawl]))
    assert len(docs) == 8
    first = docs[0]
    assert first.url == "https://news.example.com/river" and "<article>" in first.html
    assert first.metadata["http_status"] == 200 and first.metadata["fetch_time"] and first.metadata["source"] == crawl.name
    assert docs[5].metadata["http_status"] == 404 and docs[5].html is None
    assert docs[6].metadata["content_type"] == "image/png" and docs[6].html is None
    assert docs[7].url == "https://wet.example.com/page" and docs[7].text == ARTICLES[2]
    assert [d.url for d in read_documents([crawl], limit=2)] == [d.url for d in docs[:2]]


def test_jsonl_reader_reports_the_malformed_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps({"text": "one", "url": "u1", "lang": "en"}) + "\n" + json.dumps({"html": "<p>two</p>", "url": "u2"})
        + "\n\n{broken json\n"
    )
    docs = read_documents([path])
    first, second = next(docs), next(docs)
    assert (first.text, first.url, first.metadata["lang"]) == ("one", "u1", "en")
    assert second.html == "<p>two</p>"
    with pytest.raises(InputError, match=r"docs\.jsonl:4: not valid JSON"):
        next(docs)


def test_jsonl_record_without_text_is_an_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"url": "u1", "body": "x"}) + "\n")
    with pytest.raises(InputError, match="neither a 'text' nor an 'html'"):
        list(read_documents([path]))


def test_parquet_reader(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "url": ["u1", "u2"], "year": [2023, 2024]}), path)
    docs = list(read_documents([path]))
    assert [(d.text, d.url, d.metadata["year"]) for d in docs] == [("a", "u1", 2023), ("b", "u2", 2024)]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["a"]}), bad)
    with pytest.raises(InputError, match="no 'text' or 'html' column"):
        list(read_documents([bad]))


def test_text_reader_walks_directories(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "sub" / "c.html").write_text("<p>gamma</p>")
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = list(read_documents([tmp_path]))
    assert [d.text or d.html for d in docs] == ["alpha", "beta", "<p>gamma</p>"]
    assert docs[0].url.startswith("file://")
    with pytest.raises(InputError, match="does not exist"):
        list(read_documents([tmp_path / "missing.warc.gz"]))


def test_truncated_warc_gz_is_an_error_unless_skipped(tmp_path, capsys):
    pages = [(f"https://example.com/{i}", "200 OK", "text/html", html_page(ARTICLES[i % 3] + f" Page {i}."))
             for i in range(40)]
    whole = tmp_path / "whole.warc.gz"
    write_warc(whole, pages)
    data = whole.read_bytes()
    # cuts across records and headers, and only the last gzip trailer missing
    for cut in [len(data) * k // 9 for k in range(1, 9)] + [len(data) - 3]:
        bad = tmp_path / "bad.warc.gz"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"bad\.warc\.gz: truncated or damaged after \d+ records") as e:
            list(read_documents([bad]))
        assert "--skip-bad-input" in e.value.hint
    bad.write_bytes(data[: len(data) // 2])
    problems = InputProblems(skip=True)
    docs = list(read_documents([bad], problems=problems))
    assert 0 < len(docs) < 40 and problems.counts == {"truncated_warc": 1}
    assert [d.url for d in docs] == [u for u, *_ in pages[: len(docs)]]
    out = tmp_path / "out"
    assert cli_main(["clean", str(bad), "--out", str(out), "--workers", "1"]) == 1
    assert "truncated" in capsys.readouterr().err and not (out / "documents.parquet").exists()
    assert cli_main(["clean", str(bad), "--out", str(out), "--workers", "1", "--skip-bad-input"]) == 0
    assert "skipped damaged input (1 truncated_warc)" in capsys.readouterr().err
    assert json.loads((out / "stats.json").read_text())["input_problems"]["counts"] == {"truncated_warc": 1}


def test_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n{"text": "three"}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:2: not UTF-8 \(byte 0xe9 at column 14\)"):
        list(read_documents([path]))
    problems = InputProblems(skip=True)
    assert [d.text for d in read_documents([path], problems=problems)] == ["one", "three"]
    assert problems.counts == {"not_utf8": 1} and problems.examples[0].endswith("docs.jsonl:2: not UTF-8 (byte 0xe9 at column 14)")


def test_jsonl_escaping_half_a_surrogate_pair_names_the_line(tmp_path, capsys):
    """`\ud800` alone is valid JSON but no text: left in, the run ended in a traceback from the Parquet writer."""
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "rocket \\ud83d\\ude80"}\n{"text": "cut \\ud83d", "url": "u2"}\n{"text": "x", "t": "\\uDE80"}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:2: a \\uXXXX escape of half a UTF-16 pair is no text"):
        list(read_documents([path]))
    problems = InputProblems(skip=True)
    assert [d.text for d in read_documents([path], problems=problems)] == ["rocket 🚀"]
    assert problems.counts == {"lone_surrogate": 2}
    out = tmp_path / "out"
    assert cli_main(["clean", str(path), "--out", str(out), "--workers", "1", "--skip-bad-input"]) == 0
    assert "skipped damaged input (2 lone_surrogate)" in capsys.readouterr().err


def test_empty_inputs_are_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files in"):
        list(read_documents([tmp_path / "empty"]))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="the inputs hold no documents: .*empty.jsonl"):
        list(read_documents([tmp_path / "empty.jsonl"]))
    assert cli_main(["clean", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out")]) == 1
    assert "hold no documents" in capsys.readouterr().err


def test_null_text_in_parquet_is_counted_not_fatal(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [ARTICLES[0], None, ARTICLES[1]], "url": ["u1", "u2", "u3"]}), path)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nstep = "extract"\n')
    stats = clean([path], tmp_path / "out", recipe, workers=1)
    assert stats["documents_in"] == 3 and stats["documents_out"] == 2
    assert stats["steps"][0]["reasons"] == {"empty": 1}
    removed = pq.read_table(tmp_path / "out" / "removed.parquet").to_pylist()
    assert [(r["url"], r["reason"]) for r in removed] == [("u2", "empty")]


def write_wet(path, texts):
    """A Common Crawl WET file: one `conversion` record (extracted text) per page."""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, text in texts:
            record = writer.create_warc_record(url, "conversion", payload=io.BytesIO(text.encode()),
                                               warc_headers_dict={"Content-Type": "text/plain"})
            writer.write_record(record)


def common_crawl_mirror(root):
    """A Common Crawl layout: crawl-data/.../{warc,wet}/ files and the gzipped path lists naming them."""
    segment = root / "crawl-data" / "CC-MAIN-2099-01" / "segments" / "1"
    (segment / "warc").mkdir(parents=True)
    (segment / "wet").mkdir()
    write_warc(segment / "warc" / "a.warc.gz", [("https://news.example.com/river", "200 OK", "text/html", html_page(ARTICLES[0]))])
    write_wet(segment / "wet" / "a.warc.wet.gz", [("https://food.example.com/bread", ARTICLES[1])])
    lists = {}
    for kind, name in (("warc", "a.warc.gz"), ("wet", "a.warc.wet.gz")):
        lists[kind] = root / f"{kind}.paths.gz"
        lists[kind].write_bytes(gzip.compress(f"crawl-data/CC-MAIN-2099-01/segments/1/{kind}/{name}\n".encode()))
    return lists


def test_common_crawl_path_lists_on_local_disk(tmp_path):
    lists = common_crawl_mirror(tmp_path / "cc")
    docs = list(read_documents([lists["warc"], lists["wet"]], paths_base=str(tmp_path / "cc")))
    assert [d.url for d in docs] == ["https://news.example.com/river", "https://wet.example.com/page", "https://food.example.com/bread"]
    assert docs[0].html and docs[2].text == ARTICLES[1] and docs[2].metadata["source"] == "a.warc.wet.gz"
    out = tmp_path / "out"
    assert cli_main(["clean", str(lists["wet"]), "--out", str(out), "--workers", "1", "--paths-base", str(tmp_path / "cc")]) == 0
    assert [d.url for d in read_cleaned(out / "documents.parquet")] == ["https://food.example.com/bread"]


def test_inputs_by_url_through_fsspec(tmp_path):
    """https:// from a local HTTP server, and fsspec's in-memory filesystem standing in for s3://."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    fsspec = pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    common_crawl_mirror(tmp_path / "cc")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "cc")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        docs = list(read_documents([base + "warc.paths.gz"], paths_base=base))
        assert [d.url for d in docs] == ["https://news.example.com/river", "https://wet.example.com/page"]
        assert docs[0].metadata["source"] == "a.warc.gz"
    finally:
        server.shutdown()
        server.server_close()
    wet = (tmp_path / "cc" / "crawl-data" / "CC-MAIN-2099-01" / "segments" / "1" / "wet" / "a.warc.wet.gz").read_bytes()
    with fsspec.open("memory://commoncrawl/wet/a.warc.wet.gz", "wb") as f:
        f.write(wet)
    stats = clean(["memory://commoncrawl/wet/a.warc.wet.gz"], tmp_path / "out", "fineweb", workers=1)
    assert stats["documents_in"] == 1 and stats["documents_out"] == 1
    with pytest.raises(InputError, match="does not exist"):
        list(read_documents(["memory://commoncrawl/missing.warc.gz"]))


# --- recipes ---------------------------------------------------------------------------------------

def test_shipped_recipes_load_and_validate(tmp_path):
    fineweb = load_recipe("fineweb")
    assert [name for name, _ in fineweb.steps][:3] == ["url_filter", "extract", "language"]
    assert dict(fineweb.steps)["language"] == {"languages": ["en"], "threshold": 0.65}
    documentation = load_recipe("documentation")
    assert dict(documentation.steps)["extract"]["extractor"] == "resiliparse"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nstep = "gopher_quality"\nmin_wrds = 3\n')
    with pytest.raises(ConfigError, match="no setting min_wrds"):
        load_recipe(bad)
    bad.write_text('[[steps]]\nstep = "polish"\n')
    with pytest.raises(ConfigError, match="unknown cleaning step"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="no recipe"):
        load_recipe("nonexistent")


def test_false_switches_an_optional_rule_off(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[[steps]]\nstep = "gopher_quality"\nmin_words = false\n')
    step = load_recipe(path).build()[0]
    assert step.min_words is None
    assert not isinstance(step.process(Document("u", text="the cat and the dog")), str)


def test_compare_recipes_counts_what_each_would_keep():
    code_page = "\n".join(
        [f"def handler_{i}(request, response={{}}):" for i in range(10)]
        + [ARTICLES[0], "The handler receives the request and returns a response with the status code."] * 1
    )
    docs = [Document("u0", text=ARTICLES[0]), Document("u1", text=ARTICLES[1]), Document("u2", text=code_page)]
    counts = compare_recipes(docs, ["fineweb", "documentation"])
    assert counts == {"fineweb": 2, "documentation": 3}


# --- pipeline --------------------------------------------------------------------------------------

def test_clean_end_to_end(crawl, tmp_path):
    out = tmp_path / "clean"
    stats = clean([crawl], out, "fineweb", workers=1)
    kept = read_cleaned(out / "documents.parquet")
    assert [d.url for d in kept] == ["https://news.example.com/river", "https://food.example.com/bread",
                                     "https://wet.example.com/page"]
    assert all(d.metadata["language"] == "en" and d.metadata["language_score"] >= 0.65 for d in kept)
    assert "<EMAIL>" in kept[1].text and "anna.baker" not in kept[1].text
    assert kept[0].metadata["fetch_time"] and kept[0].metadata["source"] == crawl.name

    removed = pq.read_table(out / "removed.parquet").to_pylist()
    why = {r["url"]: (r["step"], r["reason"]) for r in removed}
    assert why == {
        "https://www.pornhub.com/x": ("url_filter", "domain"),
        "https://news.example.com/missing": ("extract", "http_404"),
        "https://news.example.com/logo.png": ("extract", "not_html"),
        "https://fr.example.com/riviere": ("language", "language_fr"),
        "https://copy.example.net/river": ("minhash_dedup", "near_duplicate"),
    }
    assert json.loads(next(r for r in removed if r["reason"] == "near_duplicate")["metadata"])["duplicate_of"] == (
        "https://news.example.com/river"
    )
    assert stats["documents_in"] == 8 and stats["documents_out"] == 3
    steps = {s["name"]: s for s in stats["steps"]}
    assert steps["url_filter"]["docs_in"] == 8 and steps["url_filter"]["docs_out"] == 7
    assert steps["language"]["reasons"] == {"language_fr": 1}
    assert stats["languages"] == {"en": 3} and stats["pii_redactions"] == {"email": 1}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert "| minhash_dedup |" in (out / "stats.md").read_text()
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    # every input document is either kept or in removed.parquet
    assert len(kept) + len(removed) == stats["documents_in"]


def test_output_does_not_depend_on_workers_and_reruns_overwrite(crawl, tmp_path):
    clean([crawl], tmp_path / "one", "fineweb", workers=1, batch_size=2)
    clean([crawl], tmp_path / "two", "fineweb", workers=2, batch_size=2)
    clean([crawl], tmp_path / "two", "fineweb", workers=2, batch_size=3)
    one = pq.read_table(tmp_path / "one" / "documents.parquet").to_pylist()
    two = pq.read_table(tmp_path / "two" / "documents.parquet").to_pylist()
    assert one == two
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_killed_clean_resumes_without_extracting_again(crawl, tmp_path, monkeypatch):
    """A run stopped mid-way (here by an exception in the 5th extraction, batches of 2, saved after each)
    is picked up by the next run with the same arguments: the saved pages are not extracted again and
    every output equals an uninterrupted run's. Other arguments start afresh."""
    from llmlab.data.clean.extract import Extract

    original = Extract.process
    calls: list[str] = []

    def counting(self, doc):
        if stop_at and len(calls) == stop_at:
            raise KeyboardInterrupt
        calls.append(doc.url)
        return original(self, doc)

    monkeypatch.setattr(Extract, "process", counting)
    stop_at = 0
    reference = clean([crawl], tmp_path / "ref", "fineweb", workers=1, batch_size=2)
    all_calls, calls[:] = list(calls), []

    out = tmp_path / "out"
    stop_at = 4
    with pytest.raises(KeyboardInterrupt):
        clean([crawl], out, "fineweb", workers=1, batch_size=2, checkpoint_every_s=0)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["consumed"] == 4 and not (out / "documents.parquet").exists()
    calls[:], stop_at = [], 0
    resumed = clean([crawl], out, "fineweb", workers=1, batch_size=2, checkpoint_every_s=0)
    saved = len(all_calls) - len(calls)  # the first two batches' pages (one of them URL-filtered)
    assert saved >= 3 and calls == all_calls[saved:]
    for name in ("documents.parquet", "removed.parquet"):
        assert pq.read_table(out / name).to_pylist() == pq.read_table(tmp_path / "ref" / name).to_pylist()
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"} for s in r["steps"]]  # noqa: E731
    assert strip(resumed) == strip(reference) and resumed["documents_out"] == reference["documents_out"]
    assert not (out / "checkpoint").exists()

    stop_at = 4
    with pytest.raises(KeyboardInterrupt):
        clean([crawl], out, "fineweb", workers=1, batch_size=2, checkpoint_every_s=0)
    calls[:], stop_at = [], 0
    clean([crawl], out, "fineweb", workers=1, batch_size=2, limit=7)  # other arguments: nothing reused
    assert calls[0] == all_calls[0] and calls == all_calls[: len(calls)]


@pytest.mark.slow  # ~15 s: two CLI processes extracting 400 pages
def test_sigkilled_clean_resumes_to_the_same_output(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for i in range(400):
        words = " ".join(f"w{(i * 7 + k) % 997}" for k in range(12))
        text = f"{ARTICLES[i % 3]} Page {i} of the series adds a note about {words}."
        (pages / f"{i:03d}.html").write_text(html_page(text, title=f"Article {i}"))
    clean([pages], tmp_path / "ref", "fineweb", workers=1, batch_size=4)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "llmlab", "clean", str(pages), "--out", str(out), "--workers", "1",
               "--batch-size", "4", "--checkpoint-every", "0"]
    env = {**os.environ, "LLMLAB_PROGRESS": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state, consumed, deadline = out / "checkpoint" / "state.json", 0, time.monotonic() + 60
    while consumed < 40 and time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            consumed = json.loads(state.read_text())["consumed"]
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert 40 <= consumed < 400 and not (out / "documents.parquet").exists()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
    for name in ("documents.parquet", "removed.parquet"):
        assert pq.read_table(out / name).to_pylist() == pq.read_table(tmp_path / "ref" / name).to_pylist()
    assert not (out / "checkpoint").exists()


def test_pipeline_streams_its_input_and_writes_row_groups(tmp_path, monkeypatch):
    """Bounded memory: documents are pulled a few batches ahead of the output, and written in row groups."""
    from llmlab.data.clean import outputs, stream_pipeline
    from llmlab.data.clean.stats import StepStats

    pulled = 0

    def reader():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield Document(f"u{i}", text=f"{ARTICLES[i % 3]} Note {i}.")

    steps = [s for s in load_recipe("fineweb").build() if s.name == "gopher_repetition"]
    totals = [StepStats(s.name, s.kind) for s in steps]
    for workers in (1, 2):
        pulled = 0
        first = next(stream_pipeline(reader(), steps, totals, lambda removed: None, workers=workers, batch_size=16))
        assert first and pulled <= 16 * (2 * workers + 1)  # the batches in flight, not the corpus
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 2)
    path = tmp_path / "docs.jsonl"
    notes = "alpha beta gamma delta epsilon zeta eta theta iota".split()  # digits would normalise alike
    path.write_text("".join(json.dumps({"text": f"{ARTICLES[i % 3]} Note {n}.", "url": f"u{i}"}) + "\n" for i, n in enumerate(notes)))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nstep = "exact_dedup"\n')
    clean([path], tmp_path / "out", recipe, workers=1)
    table = pq.ParquetFile(tmp_path / "out" / "documents.parquet")
    assert table.metadata.num_rows == 9 and table.metadata.num_row_groups == 5


ODD_DOCUMENTS = [
    Document("https://a.example.com/", text="", html="<p>not extracted yet</p>", metadata={"status": 200}),
    Document("u-ünïcødé", text="naïve café 東京 🚀 مرحبا\u00a0x\u200b\x00 e\u0301", metadata={"ключ": "значение"}),
    Document("u-big", text="big page. " * 100_000, metadata={"language_score": 0.1 + 0.2, "tags": ["a", None], "n": {"x": 1}}),
    Document("u-none", text=None, metadata={"flag": True, "missing": None, "score": float("inf")}),  # type: ignore[arg-type]
    Document("u-plain", text="naïve café 東京 🚀 مرحبا\u00a0x\u200b\x00 e\u0301"),  # an exact duplicate of u-ünïcødé
]


def test_spill_round_trips_documents_with_odd_fields(tmp_path):
    from llmlab.data.clean.spill import Spill

    with Spill(tmp_path) as spill:
        spill.write(ODD_DOCUMENTS[:2])
        spill.write(ODD_DOCUMENTS[2:3])
        spill.write(ODD_DOCUMENTS[3:])
        assert [batch for batch in spill.batches()] == [ODD_DOCUMENTS[:2], ODD_DOCUMENTS[2:3], ODD_DOCUMENTS[3:]]
    with Spill(tmp_path) as spill:
        assert list(spill.batches()) == []
    assert not list(tmp_path.iterdir())  # the spill file is gone


def test_dedup_through_the_spill_equals_dedup_in_memory(tmp_path):
    """The streaming runner (documents spilled to disk around the dedup step, batches of 2) gives the
    documents, removals and order that the steps give on the whole list in memory."""
    from llmlab.data.clean import stream_pipeline
    from llmlab.data.clean.segments import run_steps
    from llmlab.data.clean.stats import StepStats

    docs = [d.replace(text=d.text or "") for d in ODD_DOCUMENTS]  # readers give null text as "" (removed as empty)
    docs += [Document("u-mail", text="Write to jane.roe@posteo.de today."), Document("u-dup", text=docs[2].text)]
    steps = [s for s in load_recipe("fineweb").build() if s.name in ("exact_dedup", "pii")]
    expected_kept, expected_removed, _ = run_steps(steps, docs)
    totals = [StepStats(s.name, s.kind) for s in steps]
    removed = []
    kept = [d for batch in stream_pipeline(iter(docs), steps, totals, removed.extend, batch_size=2, spill_dir=tmp_path)
            for d in batch]
    assert kept == expected_kept and removed == expected_removed
    assert [r.document.url for r in removed] == ["u-none", "u-plain", "u-dup"] and "<EMAIL>" in kept[-1].text


def test_run_pipeline_segments_around_corpus_wide_steps():
    recipe = load_recipe("fineweb")
    steps = [s for s in recipe.build() if s.name in ("exact_dedup", "pii")]
    docs = [Document(f"u{i}", text=t) for i, t in enumerate(["Call 555-123-4567 now.", "call 555 123 4567 now", "Other."])]
    result = run_pipeline(docs, steps, workers=1)
    assert [d.text for d in result.kept] == ["Call <PHONE> now.", "Other."]
    assert [(r.step, r.reason) for r in result.removed] == [("exact_dedup", "exact_duplicate")]


def test_cli_clean(crawl, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["clean", str(crawl), "--out", str(out), "--workers", "1", "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "kept 2 of 3 documents" in printed and str(out / "documents.parquet") in printed
    assert cli_main(["clean", str(tmp_path / "nope.warc.gz"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
