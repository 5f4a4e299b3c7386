"""SFT: JSONL forms and their errors, loss masks on assistant tokens only, batching, learning, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.model import GPT, GPTConfig, load_checkpoint, save_checkpoint
from llmlab.tokenizer.chat import render_chat
from llmlab.train import checkable_tasks as tasks
from llmlab.train.lora import LoRAConfig
from llmlab.train.examples import (IGNORE, ExampleBatches, encode_conversation, pad_batch, read_conversations,
                                   split_validation)
from llmlab.train.posttrain import PostTrainOptions, posttrain_config
from llmlab.train.sft import prepare_sft, sft


def make_base(directory, family: str = "gpt2", seed: int = 0):
    """A tiny random-weight model with a BPE tokenizer trained on task text: a stand-in for a pretrained base."""
    from llmlab.tokenizer import train_bpe

    examples = tasks.generate(300, "train", seed=99)
    tok = train_bpe([f"{e.prompt} {e.answer}" for e in examples], vocab_size=320)
    torch.manual_seed(seed)
    llama = dict(positions="rope", activation="swiglu", norm="rmsnorm", bias=False, n_kv_heads=1) if family == "llama" else {}
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, n_layers=2, n_heads=2, d_model=32, **llama))
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(directory / "tokenizer.json")
    save_checkpoint(directory, model, tokenizer_file=directory / "tokenizer.json")
    return directory, tok


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base") / "ckpt")


pytestmark = pytest.mark.usefixtures("one_thread", "no_progress")


def tiny(base_dir, out, **kw):
    values = dict(init_from=str(base_dir), out_dir=str(out), micro_batch=8, lr=3e-3, warmup_steps=2,
                  eval_every=4, checkpoint_every=4, log_every=1, peak_flops=1e11, device="cpu")
    values.update(kw)
    return posttrain_config(overrides=values)


def write_lines(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


# --- reading -----------------------------------------------------------------------------------------------

def test_both_jsonl_forms_become_conversations(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"instruction": "Add", "input": "2 and 3", "response": "5"},
        "",
        {"instruction": "Hi", "response": "Hello"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hey"}]},
    ])
    convs = read_conversations(path)
    assert convs[0] == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert convs[1][0]["content"] == "Hi"
    assert [m["role"] for m in convs[2]] == ["system", "user", "assistant"]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"d.jsonl:2 is not valid JSON"),
    ('{"instruction": "x"}', r"d.jsonl:2: .*'response' missing"),
    ('["a list"]', r"d.jsonl:2 holds a list"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', r"d.jsonl:2: message 0 must be"),
    ('{"messages": [{"role": "user", "content": "x"}]}', r"d.jsonl:2: .*no assistant message"),
    ('{"instruction": "x", "input": 3, "response": "y"}', r"d.jsonl:2: 'input' must be a string"),
])
def test_bad_lines_are_named_in_the_error(tmp_path, line, message):
    path = write_lines(tmp_path / "d.jsonl", ['{"instruction": "ok", "response": "fine"}', line])
    with pytest.raises(InputError, match=message):
        read_conversations(path)


def test_missing_or_empty_data_file(tmp_path):
    with pytest.raises(InputError, match="no data file"):
        read_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="holds no conversations"):
        read_conversations(write_lines(tmp_path / "e.jsonl", [""]))


# --- loss masks and batches -----------------------------------------------------------------------------------

def test_loss_mask_covers_exactly_the_assistant_tokens(base):
    _, tok = base
    messages = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"},
                {"role": "assistant", "content": "8, of course"}]
    example = encode_conversation(messages, tok, max_tokens=200)
    ids = render_chat(messages, tok).ids
    assert example["input_ids"] == ids[:-1]
    end = tok.special_tokens["<|end|>"]
    # Independently: the trained targets are each assistant message's tokens and the <|end|> closing it.
    expected = [t for m in messages if m["role"] == "assistant" for t in (*tok.encode_ordinary(m["content"]), end)]
    trained = [(i, t) for i, t in enumerate(example["targets"]) if t != IGNORE]
    assert [t for _, t in trained] == expected
    assert all(ids[i + 1] == t for i, t in trained)  # targets are the next token, shifted by one
    # ...and every position whose next token belongs to a user/system turn is masked.
    assistant = tok.special_tokens["<|assistant|>"]
    starts = [i for i, t in enumerate(ids) if t == assistant]
    spans = {p for s in starts for p in range(s, ids.index(end, s + 1))}
    assert {i for i, _ in trained} == spans


def test_truncation_that_leaves_no_answer_skips_the_example(base):
    _, tok = base
    messages = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]
    assert encode_conversation(messages, tok, max_tokens=10) is None


def test_right_padding_does_not_change_the_real_positions(base):
    directory, tok = base
    model = load_checkpoint(directory)
    rows = [encode_conversation([{"role": "user", "content": p}, {"role": "assistant", "content": a}], tok, 65)
            for p, a in [("What is 1 + 1?", "2"), ("Sort in ascending order: 3, 1, 2, 9, 8", "1, 2, 3, 8, 9")]]
    batch = pad_batch(rows, pad_id=tok.eos_id)
    assert batch["input_ids"].shape == (2, max(len(r["input_ids"]) for r in rows))
    short = len(rows[0]["input_ids"])
    assert (batch["targets"][0, short:] == IGNORE).all() and (batch["input_ids"][0, short:] == tok.eos_id).all()
    alone, _ = model(torch.tensor([rows[0]["input_ids"]]))
    padded, _ = model(batch["input_ids"])
    torch.testing.assert_close(padded[0, :short], alone[0], rtol=1e-5, atol=1e-5)


def test_batches_cover_every_example_once_per_epoch_and_split_like_one_big_batch():
    items = list(range(10))
    collate = lambda rows: {"input_ids": torch.tensor(rows)}  # noqa: E731
    one = ExampleBatches(items, collate, micro_batch=5, seed=3)
    epoch = torch.cat([one.next_batch()["input_ids"] for _ in range(2)]).tolist()
    assert sorted(epoch) == items and epoch != items  # shuffled, complete
    assert torch.cat([one.next_batch()["input_ids"] for _ in range(2)]).tolist() != epoch  # reshuffled next epoch
    # Accumulation and processes split the same global batch: 5 micro-batches of 1, or 5 processes with 1 each.
    accumulated = ExampleBatches(items, collate, micro_batch=1, grad_accum=5, seed=3)
    assert [accumulated.next_batch()["input_ids"].item() for _ in range(5)] == epoch[:5]
    split = [ExampleBatches(items, collate, micro_batch=1, grad_accum=1, seed=3, rank=r, world=5) for r in range(5)]
    assert [s.next_batch()["input_ids"].item() for s in split] == epoch[:5]
    assert one.steps_for(2.5) == 5
    restored = ExampleBatches(items, collate, micro_batch=5, seed=3)
    restored.load_state_dict(one.state_dict())
    assert torch.equal(restored.next_batch()["input_ids"], one.next_batch()["input_ids"])
    with pytest.raises(CheckpointError, match="examples=10, this run has 9"):
        ExampleBatches(items[:9], collate, micro_batch=5, seed=3).load_state_dict(one.state_dict())


def test_validation_split_is_seeded_disjoint_and_nonempty():
    train, val = split_validation(list(range(100)), 0.05, seed=1)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert split_validation(list(range(100)), 0.05, seed=1) == (train, val)
    assert len(split_validation([1, 2], 0.01, 0)[1]) == 1
    with pytest.raises(InputError, match="at least 2"):
        split_validation([1], 0.1, 0)


# --- training -----------------------------------------------------------------------------------------------

def test_sft_learns_the_data_and_leaves_a_usable_checkpoint_and_report(base, tmp_path):
    directory, _ = base
    cfg = tiny(directory, tmp_path / "sft", max_steps=30, eval_every=30, checkpoint_every=30)
    result = sft(cfg, PostTrainOptions(data="tasks", epochs=None, tasks_train=64, tasks_eval=10))
    losses = [l for _, l in result.losses]
    assert np.mean(losses[-5:]) < losses[0] - 1.0, (losses[0], losses[-5:])
    ev = result.last_eval
    assert ev["val_loss"] < losses[0] and 0.0 <= ev["exact_match"] <= 1.0 and "exact_match/sorting" in ev
    assert len(ev["samples"]) == 3
    model = load_checkpoint(tmp_path / "sft" / "checkpoints" / "latest")  # a plain llmlab checkpoint
    assert (tmp_path / "sft" / "checkpoints" / "latest" / "tokenizer.json").is_file()
    assert model.config == load_checkpoint(directory).config
    report = (tmp_path / "sft" / "report.md").read_text()
    assert "exact_match" in report and "trainable_parameters" in report and (tmp_path / "sft" / "loss.png").is_file()


def test_epochs_set_the_number_of_steps(base, tmp_path):
    directory, _ = base
    run = prepare_sft(tiny(directory, tmp_path), PostTrainOptions(data="tasks", epochs=2, tasks_train=40, tasks_eval=0))
    assert run.examples + run.validation == 40
    assert run.trainer.config.max_steps == int(np.ceil(2 * run.examples / 8))


def test_a_system_message_option_reaches_every_training_example_and_the_scored_prompts(base, tmp_path, monkeypatch):
    directory, tok = base
    asked = []
    monkeypatch.setattr("llmlab.train.posttrain.chat_answers", lambda model, tok, prompts, n, system: asked.append(system)
                        or ["0"] * len(prompts))
    run = prepare_sft(tiny(directory, tmp_path), PostTrainOptions(data="tasks", tasks_train=16, tasks_eval=2, system=""))
    ids = run.trainer.batches.next_batch()["input_ids"]
    assert (ids[:, 1] == tok.special_tokens["<|system|>"]).all() and (ids[:, 2] == tok.special_tokens["<|end|>"]).all()
    run.trainer.evaluate_fn(run.trainer.gpt, 0)
    assert asked == [""]


@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=4, alpha=8, dropout=0.1), LoRAConfig(rank=4, quantize="nf4")],
                         ids=["full", "lora", "qlora"])
def test_sft_resumes_exactly_like_an_uninterrupted_run(base, tmp_path, lora):
    directory, _ = base
    options = PostTrainOptions(data="tasks", epochs=None, tasks_train=48, tasks_eval=0, lora=lora)
    kw = dict(max_steps=8)
    full = sft(tiny(directory, tmp_path / "full", **kw), options)
    first = sft(tiny(directory, tmp_path / "cut", **kw), options, until_step=4)
    rest = sft(tiny(directory, tmp_path / "cut", **kw), options, resume=True)
    assert [s for s, _ in rest.losses] == [5, 6, 7, 8]
    assert first.losses + rest.losses == full.losses  # bitwise-equal floats
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest").state_dict()
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "latest").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if lora is not None:
        from safetensors.torch import load_file

        x = load_file(tmp_path / "full" / "checkpoints" / "latest" / "adapter" / "adapter.safetensors")
        y = load_file(tmp_path / "cut" / "checkpoints" / "latest" / "adapter" / "adapter.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_lora_sft_trains_only_the_adapter(base, tmp_path):
    directory, _ = base
    lora = LoRAConfig(rank=2, alpha=4, targets=["qkv"])
    run = prepare_sft(tiny(directory, tmp_path, max_steps=3), PostTrainOptions(data="tasks", epochs=None, tasks_train=24,
                                                                               tasks_eval=0, lora=lora))
    before = load_checkpoint(directory).state_dict()
    trainable = {n for n, p in run.trainer.gpt.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.qkv.adapters.default.lora_{ab}" for i in range(2) for ab in "AB"}
    run.trainer.fit()
    after = load_checkpoint(tmp_path / "checkpoints" / "latest").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"blocks.{i}.attn.qkv.weight" for i in range(2)}  # the merged LoRA update, nothing else
    assert (tmp_path / "checkpoints" / "latest" / "adapter" / "adapter.json").is_file()


def test_resuming_lora_on_a_different_base_is_refused(base, tmp_path):
    directory, _ = base
    options = PostTrainOptions(data="tasks", epochs=None, tasks_train=24, tasks_eval=0, lora=LoRAConfig(rank=2))
    sft(tiny(directory, tmp_path / "run", max_steps=4), options)
    other, _ = make_base(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match="not this base model plus its active LoRA adapter"):
        prepare_sft(tiny(other, tmp_path / "run", max_steps=8), options, resume=True)


@pytest.mark.parametrize("values, message", [
    ({}, "pass init_from"),
    ({"model": {"dropout": 0.1}}, "model.* overrides cannot change"),
    ({"tokens_per_step": 4096}, "tokens_per_step does not apply"),
])
def test_unusable_options_are_config_errors(base, tmp_path, values, message):
    directory, _ = base
    init = {"init_from": str(directory)} if values else {}
    config = posttrain_config(overrides={"out_dir": str(tmp_path), **init, **values})
    with pytest.raises(ConfigError, match=message):
        prepare_sft(config, PostTrainOptions(data="tasks"))


def test_cli_fine_tunes_from_jsonl_and_resumes(base, tmp_path, capsys):
    from llmlab.cli import main

    directory, _ = base
    data = write_lines(tmp_path / "train.jsonl", tasks.sft_records(tasks.generate(20, "train")))
    held = write_lines(tmp_path / "held.jsonl", tasks.sft_records(tasks.generate(5, "held_out")))
    args = ["sft", "--init-from", str(directory), "--data", str(data), "--eval-data", str(held),
            "--out", str(tmp_path / "out"), "--micro-batch", "4", "--set", "eval_every=4", "--set", "log_every=1", "--set", "peak_flops=1e11", "--lora-rank", "2"]
    assert main(args + ["--steps", "4"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert main(args + ["--steps", "6", "--resume"]) == 0  # extends the run: steps 5 and 6 only
    records = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("exact_match" in r for r in records)
    assert main(["sft", "--export-tasks", str(tmp_path / "t"), "--tasks-train", "10", "--tasks-eval", "5"]) == 0
    assert len(read_conversations(tmp_path / "t" / "sft_train.jsonl")) == 10


def test_a_lora_run_killed_while_saving_its_adapter_still_resumes(base, tmp_path, monkeypatch):
    """`latest` moves only after the checkpoint, adapter included, is complete."""
    from llmlab.train import posttrain

    directory, _ = base
    options = PostTrainOptions(data="tasks", epochs=None, tasks_train=48, tasks_eval=0, lora=LoRAConfig(rank=2))
    sft(tiny(directory, tmp_path, max_steps=4), options)
    real_save = posttrain.save_adapter

    def killed(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        raise KeyboardInterrupt  # the process dies after the adapter's files, before anything else

    monkeypatch.setattr(posttrain, "save_adapter", killed)
    with pytest.raises(KeyboardInterrupt):
        sft(tiny(directory, tmp_path, max_steps=8), options, resume=True)
    monkeypatch.setattr(posttrain, "save_adapter", real_save)
    assert (tmp_path / "checkpoints" / "latest").resolve().name == "step_000004"
    result = sft(tiny(directory, tmp_path, max_steps=8), options, resume=True)
    assert [s for s, _ in result.losses] == [5, 6, 7, 8]


@pytest.mark.parametrize("command, extra, message", [
    ("sft", ["--epochs", "0"], "epochs must be positive"),
    ("sft", ["--lr=-1e-3"], "lr=-0.001 must be a positive number"),
    ("dpo", ["--lr", "0"], "lr=0.0 must be a positive number"),
])
def test_bad_post_training_options_are_one_line_errors(base, tmp_path, capsys, command, extra, message):
    from llmlab.cli import main

    directory, _ = base
    args = [command, "--init-from", str(directory), "--data", "tasks", "--out", str(tmp_path / "out"), *extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
