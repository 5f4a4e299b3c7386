"""DPO: the loss equals a direct computation, sequence log-probs ignore padding, pairs are checked,
training widens the held-out reward margin, and runs resume exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmlab.errors import ConfigError, InputError
from llmlab.model import load_checkpoint
from llmlab.tokenizer.chat import render_chat
from llmlab.train import checkable_tasks as tasks
from llmlab.train.dpo import DPOLoss, DPOOptions, add_reference_logprobs, dpo, prepare_dpo, sequence_logprobs
from llmlab.train.preferences import collate_pairs, encode_pair, read_preferences
from llmlab.train.lora import LoRAConfig
from test_sft import make_base, tiny, write_lines


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("dpo-base") / "ckpt")


pytestmark = pytest.mark.usefixtures("one_thread", "no_progress")


def direct_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """log p(answer tokens and the closing <|end|> | prompt), one token at a time, from an unpadded forward."""
    ids = render_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenizer).ids
    n_answer = len(tokenizer.encode_ordinary(answer)) + 1
    logits, _ = model(torch.tensor([ids[:-1]]))
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    first = len(ids) - n_answer  # index of the first answer token in ids
    return sum(float(logp[i - 1, ids[i]].detach()) for i in range(first, len(ids)))


def test_dpo_loss_equals_a_direct_computation(base):
    directory, tok = base
    policy = load_checkpoint(directory)
    with torch.no_grad():  # a policy that differs from the reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    reference = load_checkpoint(directory)
    pairs = [{"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
             {"prompt": "Sort in ascending order: 3, 1, 2", "chosen": "1, 2, 3", "rejected": "2, 1, 3, 3, 3"},
             {"prompt": "Reply with the word tiger inside square brackets.", "chosen": "[tiger]", "rejected": "(tiger)"}]
    encoded = [encode_pair(p, tok, 65) for p in pairs]
    add_reference_logprobs(reference, encoded, tok.eos_id, torch.device("cpu"))
    beta = 0.3
    loss, stats = DPOLoss(beta)(policy, collate_pairs(encoded, tok.eos_id))

    expected, margins, nll = [], [], []
    for p in pairs:
        pi_c, pi_r = (direct_logprob(policy, tok, p["prompt"], p[s]) for s in ("chosen", "rejected"))
        ref_c, ref_r = (direct_logprob(reference, tok, p["prompt"], p[s]) for s in ("chosen", "rejected"))
        z = beta * ((pi_c - pi_r) - (ref_c - ref_r))
        expected.append(-math.log(1 / (1 + math.exp(-z))))  # -log sigmoid(z)
        margins.append(z)
        nll.append(-pi_c / (len(tok.encode_ordinary(p["chosen"])) + 1))  # per token of the answer and its <|end|>
    assert loss.detach().item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    with_nll, stats_nll = DPOLoss(beta, nll_weight=0.5)(policy, collate_pairs(encoded, tok.eos_id))
    mean_nll = sum(nll) / len(nll)
    assert with_nll.detach().item() == pytest.approx(sum(expected) / len(expected) + 0.5 * mean_nll, rel=1e-5)
    assert stats_nll["chosen_nll"] == pytest.approx(mean_nll, rel=1e-5)
    assert stats["reward_margin"] == pytest.approx(sum(margins) / len(margins), rel=1e-4, abs=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    for p, e in zip(pairs, encoded):
        assert e["ref_chosen"] == pytest.approx(direct_logprob(reference, tok, p["prompt"], p["chosen"]), rel=1e-5)


def test_sequence_logprobs_ignore_padding_and_prompt(base):
    directory, tok = base
    model = load_checkpoint(directory)
    a = encode_pair({"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3"}, tok, 65)
    b = encode_pair({"prompt": "Reverse the order of these words: apple river stone", "chosen": "stone river apple",
                     "rejected": "apple river stone"}, tok, 65)
    batch = collate_pairs([a, b], tok.eos_id)
    together = sequence_logprobs(model, batch["input_ids"], batch["targets"])
    alone = collate_pairs([a], tok.eos_id)
    separate = sequence_logprobs(model, alone["input_ids"], alone["targets"])
    torch.testing.assert_close(together[[0, 2]], separate, rtol=1e-5, atol=1e-5)
    assert (together < 0).all()


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "a"}', r"p.jsonl:2: .*'rejected' missing"),
    ('{"prompt": "p", "chosen": "a", "rejected": "a"}', r"p.jsonl:2: the chosen and rejected answers are the same"),
    ('{"prompt": 1, "chosen": "a", "rejected": "b"}', r"p.jsonl:2: .*'prompt' missing or not a string"),
    ('{"prompt": " ", "chosen": "a", "rejected": "b"}', r"p.jsonl:2: the prompt is empty"),
    ("oops", r"p.jsonl:2 is not valid JSON"),
])
def test_bad_preference_lines_are_named(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "p", "chosen": "a", "rejected": "b"}', line])
    with pytest.raises(InputError, match=message):
        read_preferences(path)


def test_beta_must_be_positive():
    with pytest.raises(ConfigError, match="beta must be positive"):
        DPOLoss(0.0)


def test_a_system_message_option_is_refused_where_preference_pairs_would_ignore_it(base, tmp_path):
    directory, _ = base
    with pytest.raises(ConfigError, match="SFT and RL only"):
        prepare_dpo(tiny(directory, tmp_path), DPOOptions(data="tasks", system=""))


def test_dpo_widens_the_held_out_reward_margin(base, tmp_path):
    directory, _ = base
    cfg = tiny(directory, tmp_path, max_steps=24, eval_every=24, checkpoint_every=24, lr=3e-3)
    run = prepare_dpo(cfg, DPOOptions(data="tasks", epochs=None, tasks_train=64, tasks_eval=32, beta=0.5,
                                      exact_match=False))
    before = run.trainer.evaluate_fn(run.trainer.gpt.eval(), 0)
    run.trainer.gpt.train()
    result = run.trainer.fit()
    after = result.last_eval
    assert abs(before["val_reward_margin"]) < 1e-3 and before["val_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert after["val_reward_margin"] > 0.1 and after["val_loss"] < math.log(2)
    assert after["val_preference_accuracy"] > before["val_preference_accuracy"]
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"reward_margin", "reward_accuracy", "preference_accuracy"} <= set(records[0])


@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=2, alpha=4)], ids=["full", "lora"])
def test_dpo_resumes_exactly_like_an_uninterrupted_run(base, tmp_path, lora):
    directory, _ = base
    options = DPOOptions(data="tasks", epochs=None, tasks_train=32, tasks_eval=8, exact_match=False, lora=lora)
    full = dpo(tiny(directory, tmp_path / "full", max_steps=6, eval_every=3, checkpoint_every=3), options)
    first = dpo(tiny(directory, tmp_path / "cut", max_steps=6, eval_every=3, checkpoint_every=3), options, until_step=3)
    rest = dpo(tiny(directory, tmp_path / "cut", max_steps=6, eval_every=3, checkpoint_every=3), options, resume=True)
    assert first.losses + rest.losses == full.losses
    assert rest.last_eval == full.last_eval
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest").state_dict()
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "latest").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "reward_margin" in (tmp_path / "cut" / "report.md").read_text()


def test_cli_runs_dpo_from_jsonl(base, tmp_path, capsys):
    from llmlab.cli import main

    directory, _ = base
    pairs = write_lines(tmp_path / "pairs.jsonl", tasks.preference_records(tasks.generate(20, "train")))
    code = main(["dpo", "--init-from", str(directory), "--data", str(pairs), "--out", str(tmp_path / "out"),
                 "--steps", "2", "--micro-batch", "4", "--beta", "0.2", "--set", "peak_flops=1e11",
                 "--set", "val_fraction=0.2"])
    assert code == 0 and "checkpoint:" in capsys.readouterr().out
    report = (tmp_path / "out" / "report.md").read_text()
    assert "val_reward_accuracy" in report and "validation_examples | 4" in report
