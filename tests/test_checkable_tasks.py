"""The built-in tasks: answers checked by independent computation, disjoint splits, exact-match scoring."""

from __future__ import annotations

import json
import re

import pytest

from llmlab.errors import ConfigError
from llmlab.train import checkable_tasks as tasks
from llmlab.train.preferences import read_preferences
from llmlab.train.examples import read_conversations


def solve(prompt: str) -> str:
    """Answer a task prompt from its text alone, without the generator's code."""
    if m := re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", prompt):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str(a + b if op == "+" else a - b)
    if m := re.fullmatch(r"Sort in ascending order: (.*)", prompt):
        return ", ".join(str(n) for n in sorted(int(x) for x in m[1].split(", ")))
    if m := re.fullmatch(r"Reverse the order of these words: (.*)", prompt):
        return " ".join(m[1].split()[::-1])
    if m := re.fullmatch(r'How many times does the letter "(\w)" appear in "(\w+)"\?', prompt):
        return str(sum(c == m[1] for c in m[2]))
    if m := re.fullmatch(r'Reply with only a JSON object with the key "(\w+)" holding the word: (\w+)', prompt):
        return json.dumps({m[1]: m[2]})
    if m := re.fullmatch(r"Reply with the word (\w+) inside square brackets\.", prompt):
        return f"[{m[1]}]"
    if m := re.fullmatch(r"Reply with the word (\w+) in double quotes\.", prompt):
        return f'"{m[1]}"'
    if m := re.fullmatch(r"Write the word (\w+) three times, separated by commas\.", prompt):
        return ", ".join([m[1]] * 3)
    raise AssertionError(f"unknown prompt {prompt!r}")


def test_every_answer_is_correct_and_every_wrong_answer_is_wrong():
    examples = tasks.generate(1000, "train", seed=5) + tasks.generate(200, "held_out", seed=6)
    for e in examples:
        assert e.answer == solve(e.prompt), e
        assert not tasks.exact_match(e.wrong, e.answer), e
    assert {e.task for e in examples} == set(tasks.TASKS)


def test_generation_is_deterministic_distinct_and_balanced():
    a = tasks.generate(100, seed=3)
    assert a == tasks.generate(100, seed=3) and a != tasks.generate(100, seed=4)
    assert len({e.prompt for e in a}) == 100
    assert all(sum(e.task == t for e in a) == 20 for t in tasks.TASKS)
    only = tasks.generate(10, tasks=["sorting"])
    assert {e.task for e in only} == {"sorting"}


def test_held_out_prompts_never_appear_in_training_data_whatever_the_seed():
    held = {e.prompt for e in tasks.generate(200, "held_out", seed=0)}
    for seed in range(3):
        assert not held & {e.prompt for e in tasks.generate(1500, "train", seed=seed)}
    assert all(tasks.split_of(p) == "held_out" for p in held)


def test_impossible_requests_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task 'poetry'"):
        tasks.generate(5, tasks=["poetry"])
    with pytest.raises(ConfigError, match="unknown split"):
        tasks.generate(5, split="test")
    with pytest.raises(ConfigError, match="arithmetic task ran out of distinct held_out prompts"):
        tasks.generate(500, "held_out", tasks=["arithmetic"])


def test_exact_match_scoring():
    examples = [tasks.Example("arithmetic", "What is 2 + 2?", "4", "5"),
                tasks.Example("arithmetic", "What is 3 + 3?", "6", "7"),
                tasks.Example("sorting", "Sort in ascending order: 2, 1, 3", "1, 2, 3", "2, 1, 3")]
    scores = tasks.score(examples, [" 4\n", "six", "1,  2, 3"])
    assert scores == {"exact_match": pytest.approx(2 / 3), "exact_match/arithmetic": 0.5, "exact_match/sorting": 1.0}
    assert not tasks.exact_match("1, 2, 3.", "1, 2, 3") and not tasks.exact_match("4 ", "44")
    with pytest.raises(ConfigError):
        tasks.score(examples, ["4"])


def test_export_writes_files_that_sft_and_dpo_read(tmp_path):
    paths = tasks.export(tmp_path, n_train=30, n_held_out=10)
    assert [p.name for p in paths] == ["sft_train.jsonl", "sft_held_out.jsonl", "dpo_train.jsonl",
                                       "dpo_held_out.jsonl", "held_out_examples.jsonl"]
    conversations = read_conversations(tmp_path / "sft_train.jsonl")
    assert len(conversations) == 30 and conversations[0][1]["role"] == "assistant"
    pairs = read_preferences(tmp_path / "dpo_held_out.jsonl")
    assert len(pairs) == 10 and all(p["chosen"] != p["rejected"] for p in pairs)
