"""`llmlab eval` end to end on tiny checkpoints: results files, comparison table, resuming, generation."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.eval import evaluate as evaluate_module
from llmlab.eval.evaluate import evaluate_models, evaluate_task
from llmlab.eval.models import load_language_model
from llmlab.eval.tasks import TASKS
from llmlab.model import GPT, preset, save_checkpoint
from llmlab.tokenizer import train_bpe

ARC = [{"question": f"What is {i} plus one?", "answerKey": "B",
        "choices": {"text": [str(i), str(i + 1), "blue"], "label": ["A", "B", "C"]}} for i in range(6)]
WINOGRANDE = [{"sentence": "The cup fell off the table because _ was unstable.", "option1": "the cup",
               "option2": "the table", "answer": "2"}] * 3
LAMBADA = [{"text": "the cat sat on the mat and the dog sat on the mat"}] * 2
GSM8K = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(3)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    texts = [r["question"] + " " + " ".join(r["choices"]["text"]) for r in ARC] + [WINOGRANDE[0]["sentence"]] * 3
    tokenizer = train_bpe(texts * 5, vocab_size=300)
    tokenizer.save(root / "tokenizer.json")
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        model = GPT(preset("tiny", vocab_size=tokenizer.vocab_size, context_length=64))
        save_checkpoint(root / name, model, tokenizer_file=root / "tokenizer.json")
    data = {}
    for task, rows in (("arc_easy", ARC), ("winogrande", WINOGRANDE), ("lambada", LAMBADA), ("gsm8k", GSM8K)):
        data[task] = root / f"{task}.jsonl"
        data[task].write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "text.txt").write_text("the cat sat on the mat. " * 20)  # longer than the 64-token window
    return root, data


def test_cli_writes_results_with_a_comparison_and_resumes(workspace, monkeypatch):
    root, data = workspace
    out = root / "out"
    argv = ["eval", str(root / "a"), str(root / "b"), "--tasks", "arc_easy,winogrande,lambada", "--limit", "4",
            "--num-fewshot", "1", "--perplexity", str(root / "text.txt"), "--stride", "32", "--out", str(out),
            "--samples"] + [f"--data={t}={p}" for t, p in data.items()]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == [f"{root.name}/a", f"{root.name}/b"]
    for entry in results["models"]:
        arc = entry["tasks"]["arc_easy"]
        assert arc["examples"] == 4 and arc["num_fewshot"] == 1
        assert 0 <= arc["metrics"]["acc"] <= 1 and arc["metrics"]["acc_stderr"] is not None
        assert set(entry["tasks"]["winogrande"]["metrics"]) == {"acc", "acc_stderr"}
        assert entry["tasks"]["lambada"]["metrics"]["perplexity"] > 1
        assert entry["perplexity"]["tokens"] > 64 and entry["perplexity"]["bits_per_byte"] > 0
    markdown = (out / "results.md").read_text()
    assert "## Comparison" in markdown and "| arc_easy | acc_norm |" in markdown
    samples = (out / "samples" / f"{root.name}_a" / "arc_easy.jsonl").read_text().splitlines()
    assert len(samples) == 4 and "loglikelihoods" in json.loads(samples[0])

    # The same command again finds everything done and loads no model.
    def no_loading(*args, **kwargs):
        raise AssertionError("a finished evaluation was recomputed")

    monkeypatch.setattr(evaluate_module, "load_language_model", no_loading)
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["models"] == results["models"]


def test_unknown_task_and_bad_data_option_are_clear_errors(workspace, capsys):
    root, _ = workspace
    assert main(["eval", str(root / "a"), "--tasks", "nope", "--out", str(root / "x")]) == 1
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["eval", str(root / "a"), "--data", "arc_easy", "--out", str(root / "x")]) == 1
    assert "TASK=PATH" in capsys.readouterr().err


def test_gsm8k_generates_and_scores_each_answer(workspace):
    root, data = workspace
    lm = load_language_model(root / "a")
    shots = root / "gsm8k_train.jsonl"
    shots.write_text(json.dumps({"question": "What is 5 + 5?", "answer": "5 + 5 = 10\n#### 10"}) + "\n")
    result = evaluate_task(lm, TASKS["gsm8k"], data_path=data["gsm8k"], num_fewshot=1, max_new_tokens=4,
                           fewshot_path=shots)
    assert result.examples == 3 and len(result.samples) == 3
    assert result.samples[0]["reference"].endswith("#### 0")
    assert result.metrics["exact_match"] == 0.0  # a random tiny model does not write "#### 0"


def test_resume_ignores_results_from_other_settings(workspace):
    root, data = workspace
    out = root / "other"
    first = evaluate_models([str(root / "a")], ["arc_easy"], out, limit=2, data_paths={"arc_easy": str(data["arc_easy"])})
    second = evaluate_models([str(root / "a")], ["arc_easy"], out, limit=3, data_paths={"arc_easy": str(data["arc_easy"])})
    assert first["models"][0]["tasks"]["arc_easy"]["examples"] == 2
    assert second["models"][0]["tasks"]["arc_easy"]["examples"] == 3
