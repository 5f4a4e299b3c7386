"""The Ray executor: the same output as the local executor, shards across files and Parquet row groups."""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_clean_pipeline import ARTICLES, FRENCH, html_page, write_warc

from llmlab.data.clean import clean, read_documents
from llmlab.data.clean.ray_executor import Shard, plan_shards
from llmlab.data.clean.readers import InputProblems
from llmlab.errors import ConfigError, InputError


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": ARTICLES[0], "url": "u"}) + "\n")
    with pytest.raises(ConfigError, match="ray") as e:
        clean([path], tmp_path / "out", "fineweb", executor="ray")
    assert "llmlab[ray]" in e.value.hint
    with pytest.raises(ConfigError, match="executor"):
        clean([path], tmp_path / "out", "fineweb", executor="spark")
    with pytest.raises(ConfigError, match="Ray executor"):
        clean([path], tmp_path / "out", "fineweb", ray_address="ray://head:10001")


def test_parquet_files_are_sharded_by_row_groups(tmp_path):
    rows = [{"text": f"{ARTICLES[i % 3]} Note {i}.", "url": f"u{i}" if i % 4 else None} for i in range(10)]
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)  # groups of 3, 3, 3, 1
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": ARTICLES[0], "url": "b"}) + "\n")
    shards = plan_shards([path, tmp_path / "b.jsonl"], rows=5)
    assert [s.row_groups for s in shards] == [(0, 1), (2, 3), None]
    read = [d for shard in shards for d in shard.read(InputProblems())]
    whole = list(read_documents([path, tmp_path / "b.jsonl"]))
    assert [(d.url, d.text) for d in read] == [(d.url, d.text) for d in whole]  # row-numbered URLs included
    assert [d.url for d in Shard(path, (2, 3), stop=2).read(InputProblems())] == ["u6", "u7"]


# --- with Ray -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    from llmlab.data.clean.ray_executor import ray_session

    with ray_session(None, workers=2) as ray:  # clean() runs in this session instead of starting its own
        yield ray


GARDEN = (
    "The community garden behind the library opened its gates again this week after a long winter. Volunteers "
    "spent the weekend repairing the fences and clearing the paths between the raised beds. Each family that "
    "rents a plot agrees to water the shared herbs once a month and to keep the compost tidy. Newcomers who "
    "want a plot can join the waiting list by calling the garden office on +44 20 7946 0958 in the morning. "
    "The first harvest festival is planned for late summer, when the pumpkins and beans are ready."
)


def sharded_corpus(folder):
    """Two WARC files and a Parquet file of three row groups, with exact and near duplicates across them."""
    near = ARTICLES[0].replace("every spring", "each spring")
    write_warc(folder / "a.warc.gz", [
        ("https://news.example.com/river", "200 OK", "text/html", html_page(ARTICLES[0])),
        ("https://food.example.com/bread", "200 OK", "text/html", html_page(ARTICLES[1])),
        ("https://www.pornhub.com/x", "200 OK", "text/html", html_page(ARTICLES[1])),
    ])
    write_warc(folder / "b.warc.gz", [
        ("https://copy.example.net/river", "200 OK", "text/html", html_page(near)),  # near duplicate of a's first
        ("https://fr.example.com/riviere", "200 OK", "text/html", html_page(FRENCH)),
        ("https://copy.example.net/bread", "200 OK", "text/html", html_page(ARTICLES[1])),  # exact duplicate
        ("https://news.example.com/missing", "404 Not Found", "text/html", "<html>not found</html>"),
    ])
    rows = [
        {"text": ARTICLES[2], "url": "https://pq.example.org/chess"},  # repeats both WARCs' WET record
        {"text": f"{ARTICLES[1]} Call +44 20 7946 0958 for the recipe.", "url": "https://pq.example.org/bread"},
        {"text": near.replace("the old town", "the old city"), "url": "https://pq.example.org/river"},
        {"text": ARTICLES[2].replace("Chess clubs", "Go clubs"), "url": "https://pq.example.org/go"},
        {"text": GARDEN, "url": "https://pq.example.org/garden"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "c.parquet", row_group_size=2)
    return [folder / "a.warc.gz", folder / "b.warc.gz", folder / "c.parquet"]


def removed_rows(out):
    return sorted(
        (r["url"], r["step"], r["reason"], json.loads(r["metadata"]).get("duplicate_of"))
        for r in pq.read_table(out / "removed.parquet").to_pylist()
    )


def strip_seconds(report):
    return [{k: v for k, v in s.items() if k != "seconds"} for s in report["steps"]]


@pytest.mark.slow  # starts Ray (~8 s)
def test_ray_executor_keeps_what_the_local_executor_keeps(ray_cluster, tmp_path, monkeypatch):
    from llmlab.data.clean import ray_executor

    monkeypatch.setattr(ray_executor, "SHARD_ROWS", 2)  # the Parquet file becomes three shards
    inputs = sharded_corpus(tmp_path)
    assert len(plan_shards(inputs, rows=2)) == 5
    for limit in (None, 6):
        local = clean(inputs, tmp_path / "local", "fineweb", workers=2, batch_size=2, limit=limit)
        ray = clean(inputs, tmp_path / "ray", "fineweb", workers=2, batch_size=2, limit=limit, executor="ray")
        kept = pq.read_table(tmp_path / "ray" / "documents.parquet").to_pylist()
        assert kept == pq.read_table(tmp_path / "local" / "documents.parquet").to_pylist()
        assert removed_rows(tmp_path / "ray") == removed_rows(tmp_path / "local")
        assert strip_seconds(ray) == strip_seconds(local) and ray["documents_out"] == local["documents_out"]
    assert [d["url"] for d in kept] == [  # the first 6 inputs: a.warc.gz (3 pages and a WET record), 2 of b's
        "https://news.example.com/river", "https://food.example.com/bread", "https://wet.example.com/page",
    ]
    clean(inputs, tmp_path / "local", "fineweb", workers=2)
    clean(inputs, tmp_path / "ray", "fineweb", workers=2, executor="ray")
    kept = pq.read_table(tmp_path / "ray" / "documents.parquet").to_pylist()
    assert [d["url"] for d in kept] == [
        "https://news.example.com/river", "https://food.example.com/bread", "https://wet.example.com/page",
        "https://pq.example.org/garden",
    ]
    assert "<PHONE>" in kept[-1]["text"]
    removed = removed_rows(tmp_path / "ray")
    assert removed == removed_rows(tmp_path / "local")
    # duplicates across shards name the first document of their group, in input order
    assert ("https://copy.example.net/river", "minhash_dedup", "near_duplicate", "https://news.example.com/river") in removed
    assert ("https://copy.example.net/bread", "exact_dedup", "exact_duplicate", "https://food.example.com/bread") in removed
    assert ("https://pq.example.org/chess", "exact_dedup", "exact_duplicate", "https://wet.example.com/page") in removed


@pytest.mark.slow  # starts Ray (~8 s)
def test_ray_executor_reports_bad_input_as_the_local_one_does(ray_cluster, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": ARTICLES[0], "url": "u"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": ARTICLES[1], "url": "v"}) + "\n{not json\n")
    with pytest.raises(InputError, match="bad.jsonl"):
        clean([good, bad], tmp_path / "out", "fineweb", executor="ray")
    report = clean([good, bad], tmp_path / "out", "fineweb", executor="ray", skip_bad_input=True)
    assert sum(report["input_problems"]["counts"].values()) == 1 and report["documents_in"] == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no documents"):
        clean([empty], tmp_path / "out2", "fineweb", executor="ray")


@pytest.mark.slow  # starts Ray (~8 s)
def test_killed_ray_run_resumes_from_its_finished_shards(ray_cluster, tmp_path, monkeypatch):
    from llmlab.data.clean import ray_executor
    from llmlab.data.clean.resume_log import ShardLog

    inputs = sharded_corpus(tmp_path)
    reference = clean(inputs, tmp_path / "ref", "fineweb", workers=2, executor="ray")
    collect = ray_executor._collect

    def interrupted(*args):
        raise KeyboardInterrupt  # killed after every shard's first segment finished

    monkeypatch.setattr(ray_executor, "_collect", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        clean(inputs, out, "fineweb", workers=2, executor="ray")
    assert len(list((out / "checkpoint-ray").glob("shard-*.json"))) == 3 and not (out / "documents.parquet").exists()
    monkeypatch.setattr(ray_executor, "_collect", collect)
    loaded = []
    load = ShardLog.load
    monkeypatch.setattr(ShardLog, "load", lambda self, i: loaded.append(i) or load(self, i))
    resumed = clean(inputs, out, "fineweb", workers=2, executor="ray")
    assert loaded == [0, 1, 2]  # no shard read or extracted again
    assert pq.read_table(out / "documents.parquet").to_pylist() == pq.read_table(tmp_path / "ref" / "documents.parquet").to_pylist()
    assert removed_rows(out) == removed_rows(tmp_path / "ref") and strip_seconds(resumed) == strip_seconds(reference)
    assert not (out / "checkpoint-ray").exists()
    with pytest.raises(KeyboardInterrupt):  # other arguments: the saved shards are not used
        monkeypatch.setattr(ray_executor, "_collect", interrupted)
        clean(inputs, out, "fineweb", workers=2, executor="ray", limit=5)
    monkeypatch.setattr(ray_executor, "_collect", collect)
    loaded.clear()
    clean(inputs, out, "fineweb", workers=2, executor="ray")
    assert loaded == []


@pytest.mark.slow  # starts a Ray head node (~10 s) and `llmlab clean` in another process
def test_clean_on_a_separately_started_cluster_keeps_what_the_local_executor_keeps(tmp_path):
    pytest.importorskip("ray")
    import socket
    import subprocess

    from llmlab.data.clean.ray_executor import worker_pythonpath
    from llmlab.data.clean.ray_head import ray_head_node

    inputs = sharded_corpus(tmp_path)
    clean(inputs, tmp_path / "local", "fineweb", workers=2)
    command = [sys.executable, "-m", "llmlab", "clean", *map(str, inputs), "--out", str(tmp_path / "ray"),
               "--executor", "ray"]
    with ray_head_node(num_cpus=2) as address:
        result = subprocess.run(
            command + ["--ray-address", address], capture_output=True, text=True, timeout=300,
            env=os.environ | {"PYTHONPATH": worker_pythonpath(), "LLMLAB_PROGRESS": "0"},
        )
    assert result.returncode == 0, result.stderr[-3000:]
    kept = pq.read_table(tmp_path / "ray" / "documents.parquet").to_pylist()
    assert kept == pq.read_table(tmp_path / "local" / "documents.parquet").to_pylist() and len(kept) == 4
    assert removed_rows(tmp_path / "ray") == removed_rows(tmp_path / "local")
    host, port = address.rsplit(":", 1)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # the cluster is stopped
