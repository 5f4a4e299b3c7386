"""Reward model: the Bradley–Terry loss equals a direct computation, padding changes no reward, training
raises held-out pairwise accuracy, checkpoints are ordinary ones, bad input and mismatched tokenizers
are refused, and runs resume exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmlab.cli import main
from llmlab.errors import ConfigError
from llmlab.model import load_checkpoint, save_checkpoint
from llmlab.tokenizer import train_bpe
from llmlab.tokenizer.chat import render_chat
from llmlab.train import checkable_tasks as tasks
from llmlab.train.reward import RewardOptions, collate_scored_pairs, prepare_reward, reward_loss, train_reward_model
from llmlab.train.reward_scores import encode_answer, load_reward_model, score_answers
from test_sft import make_base, tiny, write_lines

pytestmark = pytest.mark.usefixtures("one_thread", "no_progress")

PAIRS = [{"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
         {"prompt": "Sort in ascending order: 3, 1, 2", "chosen": "1, 2, 3", "rejected": "2, 1, 3, 3, 3"},
         {"prompt": "Reply with the word tiger inside square brackets.", "chosen": "[tiger]", "rejected": "(tiger)"}]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("reward-base") / "ckpt")


def scorer(directory):
    model = load_checkpoint(directory)
    torch.manual_seed(1)
    model.add_value_head()
    return model


def direct_reward(model, tok, prompt, answer) -> float:
    """The value head at the last token of an unpadded forward of the whole conversation."""
    ids = render_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tok).ids
    _, _, values = model(torch.tensor([ids]), return_values=True)
    return float(values[0, -1].detach())


def test_bradley_terry_loss_equals_a_direct_computation(base):
    directory, tok = base
    model = scorer(directory)
    encoded = [{s: encode_answer(p["prompt"], p[s], tok, 64) for s in ("chosen", "rejected")} for p in PAIRS]
    loss, stats = reward_loss(model, collate_scored_pairs(encoded, tok.eos_id))
    margins = [direct_reward(model, tok, p["prompt"], p["chosen"]) - direct_reward(model, tok, p["prompt"], p["rejected"])
               for p in PAIRS]
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / len(margins)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(stats["margin"]) == pytest.approx(sum(margins) / 3, rel=1e-4, abs=1e-6)
    assert float(stats["accuracy"]) == pytest.approx(sum(m > 0 for m in margins) / 3)


def test_padding_changes_no_reward(base):
    directory, tok = base
    model = scorer(directory)
    together = score_answers(model, tok, [p["prompt"] for p in PAIRS], [p["rejected"] for p in PAIRS])
    alone = [score_answers(model, tok, [p["prompt"]], [p["rejected"]])[0] for p in PAIRS]
    assert together == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert len(set(round(r, 6) for r in together)) == 3


def test_training_raises_held_out_pairwise_accuracy(base, tmp_path):
    directory, _ = base
    # A preference a tiny random model can learn and carry to unseen words: square brackets over parentheses.
    lines = [{"prompt": f"Reply with the word {w} inside square brackets.", "chosen": f"[{w}]", "rejected": f"({w})"}
             for w in tasks.WORDS]
    train, held = write_lines(tmp_path / "train.jsonl", lines[::2]), write_lines(tmp_path / "held.jsonl", lines[1::2])
    cfg = tiny(directory, tmp_path, max_steps=30, eval_every=30, checkpoint_every=30, lr=3e-3)
    run = prepare_reward(cfg, RewardOptions(data=str(train), eval_data=str(held), epochs=None))
    before = run.trainer.evaluate_fn(run.trainer.gpt.eval(), 0)
    run.trainer.gpt.train()
    result = run.trainer.fit()
    after = result.last_eval
    assert after["val_loss"] < before["val_loss"] - 0.05
    assert after["val_accuracy"] >= 0.7 and after["val_accuracy"] > before["val_accuracy"]
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"accuracy", "margin"} <= set(records[0])
    # An ordinary checkpoint, with the value head in its config, that scores answers.
    latest = tmp_path / "checkpoints" / "latest"
    assert json.loads((latest / "config.json").read_text())["model"]["value_head"] is True
    model, tok = load_reward_model(latest)
    assert score_answers(model, tok, ["What is 2 + 3?"], ["5"])[0] == pytest.approx(
        direct_reward(model, tok, "What is 2 + 3?", "5"), rel=1e-5)


def test_reward_resumes_exactly_like_an_uninterrupted_run(base, tmp_path):
    directory, _ = base
    options = RewardOptions(data="tasks", epochs=None, tasks_train=32, tasks_eval=8)
    full = train_reward_model(tiny(directory, tmp_path / "full", max_steps=6, eval_every=3, checkpoint_every=3), options)
    train_reward_model(tiny(directory, tmp_path / "cut", max_steps=6, eval_every=3, checkpoint_every=3), options,
                       until_step=3)
    rest = train_reward_model(tiny(directory, tmp_path / "cut", max_steps=6, eval_every=3, checkpoint_every=3), options,
                              resume=True)
    assert rest.losses == full.losses[3:]
    assert rest.last_eval == full.last_eval


def test_a_model_without_a_value_head_or_with_another_tokenizer_is_refused(base, tmp_path):
    directory, tok = base
    with pytest.raises(ConfigError, match="not a reward model"):
        load_reward_model(directory)
    model = load_checkpoint(directory)
    model.add_value_head()
    different = train_bpe(["completely different text " * 20], vocab_size=300)
    different.save(tmp_path / "tok.json")
    save_checkpoint(tmp_path / "rm", model, tokenizer_file=tmp_path / "tok.json")
    with pytest.raises(ConfigError, match="another tokenizer"):
        load_reward_model(tmp_path / "rm", policy_tokenizer=tok)
    save_checkpoint(tmp_path / "rm-same", model, tokenizer_file=directory / "tokenizer.json")
    load_reward_model(tmp_path / "rm-same", policy_tokenizer=tok)


def test_cli_scores_answers_and_pairs(base, tmp_path, capsys):
    directory, tok = base
    save_checkpoint(tmp_path / "rm", scorer(directory), tokenizer_file=directory / "tokenizer.json")
    pairs = write_lines(tmp_path / "pairs.jsonl", PAIRS)
    assert main(["reward", "score", "--model", str(tmp_path / "rm"), "--data", str(pairs)]) == 0
    out = capsys.readouterr()
    scored = [json.loads(l) for l in out.out.splitlines()]
    assert "pairwise accuracy" in out.err and {"chosen_reward", "rejected_reward"} <= set(scored[0])
    answers = write_lines(tmp_path / "answers.jsonl", [{"prompt": "What is 2 + 3?", "response": "5"}])
    assert main(["reward", "score", "--model", str(tmp_path / "rm"), "--data", str(answers),
                 "--out", str(tmp_path / "scored.jsonl")]) == 0
    assert "reward" in json.loads((tmp_path / "scored.jsonl").read_text())
    empty = write_lines(tmp_path / "empty.jsonl", [{"prompt": "", "response": "5"}])
    assert main(["reward", "score", "--model", str(tmp_path / "rm"), "--data", str(empty)]) == 1
    assert "prompt is empty" in capsys.readouterr().err


def test_cli_trains_a_reward_model(base, tmp_path):
    directory, _ = base
    out = tmp_path / "reward"
    assert main(["reward", "train", "--init-from", str(directory), "--data", "tasks", "--tasks-train", "16",
                 "--tasks-eval", "8", "--steps", "2", "--micro-batch", "8", "--out", str(out), "--device", "cpu"]) == 0
    assert "val_accuracy" in (out / "report.md").read_text()
    load_reward_model(out / "checkpoints" / "latest")  # an ordinary checkpoint with a value head
