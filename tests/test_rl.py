"""The RL stage: rollouts hold the sampled answers with their log-probabilities, GRPO raises the reward it is
given, GRPO and PPO (full and LoRA) resume exactly mid-rollout, PPO trains against a reward model, the CLI
leaves a report with curves, and bad input is refused."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from llmlab.cli import main
from llmlab.errors import ConfigError, InputError
from llmlab.model import load_checkpoint, save_checkpoint
from llmlab.tokenizer import train_bpe
from llmlab.train.config import TrainConfig
from llmlab.train.examples import IGNORE
from llmlab.train.lora import LoRAConfig
from llmlab.train.rl import GRPOLoss, RLOptions, prepare_rl, rl
from llmlab.train.rl_losses import group_advantages, token_logprobs
from test_sft import make_base, tiny, write_lines
from test_train import _free_port

pytestmark = pytest.mark.usefixtures("one_thread", "no_progress")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("rl-base") / "ckpt")


def options(**kw) -> RLOptions:
    values = dict(data="tasks", epochs=None, tasks_train=32, tasks_eval=4, prompts_per_round=4, max_new_tokens=6)
    values.update(kw)
    return RLOptions(**values)


def test_rollout_rows_hold_the_sampled_answers_and_their_log_probabilities(base, tmp_path):
    directory, tok = base
    run = prepare_rl(tiny(directory, tmp_path, max_steps=2, micro_batch=16), options(rollout_epochs=2))
    batches = run.trainer.batches
    batch = batches.next_batch()
    assert batch["input_ids"].shape[0] == 16 and batches.steps_per_round == 2 and not batches.on_policy
    mask = batch["targets"] != IGNORE
    model = load_checkpoint(directory)
    logits, _ = model(batch["input_ids"])
    direct = token_logprobs(logits, batch["targets"])
    torch.testing.assert_close(batch["old_logps"], direct.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch["ref_logps"], batch["old_logps"])  # before any step, policy = reference
    for row, targets in zip(batch["input_ids"], batch["targets"]):
        answer = targets[targets != IGNORE]
        first = int((targets != IGNORE).nonzero()[0])
        assert 1 <= len(answer) <= 6 and (row[first + 1 : first + len(answer)] == answer[:-1]).all()
    # Advantages are the scores standardised within each prompt's group of 4 (the rows are shuffled).
    order = torch.from_numpy(batches.order[:16])
    torch.testing.assert_close(batch["advantages"], group_advantages(batches.buffer["scores"], 4)[order])
    assert mask.any(dim=1).all()


def test_an_on_policy_grpo_rollout_takes_pi_old_from_the_training_step_itself(base, tmp_path, monkeypatch):
    """One optimizer step per rollout: the rollout skips pi_old's forward, and the loss, its gradient and
    the logged KL equal those computed with pi_old's log-probs taken at sampling time."""
    directory, _ = base
    monkeypatch.setattr("llmlab.train.rl.verifier_reward", digit_share)  # rewards that differ within groups
    run = prepare_rl(tiny(directory, tmp_path, max_steps=1, micro_batch=16), options())
    batches, model = run.trainer.batches, run.trainer.gpt
    batch = batches.next_batch()
    assert batches.on_policy and "old_logps" not in batch
    with torch.no_grad():
        old = token_logprobs(model.eval()(batch["input_ids"])[0], batch["targets"])
    model.train()
    loss_fn, params = GRPOLoss(clip=0.2, beta=0.04, temperature=1.0), [p for p in model.parameters() if p.requires_grad]
    results = []
    for rows in (batch, {**batch, "old_logps": old}):
        loss, stats = loss_fn(model, rows)
        results.append((loss, torch.autograd.grad(loss, params), stats["kl"]))
    (loss_a, grads_a, kl_a), (loss_b, grads_b, kl_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(kl_a, kl_b)
    assert any(g.abs().sum() > 0 for g in grads_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def test_a_system_message_option_reaches_the_rollouts_and_the_scored_prompts(base, tmp_path, monkeypatch):
    directory, tok = base
    asked = []
    monkeypatch.setattr("llmlab.train.rl.chat_answers", lambda model, tok, prompts, n, system: asked.append(system)
                        or ["0"] * len(prompts))
    run = prepare_rl(tiny(directory, tmp_path, max_steps=1, micro_batch=16), options(system=""))
    batch = run.trainer.batches.next_batch()
    system, end = tok.special_tokens["<|system|>"], tok.special_tokens["<|end|>"]
    assert (batch["input_ids"][:, 1] == system).all() and (batch["input_ids"][:, 2] == end).all()
    run.trainer.evaluate_fn(run.trainer.gpt, 0)
    assert asked == [""]


def test_rollouts_decode_together_in_the_continuous_batcher_with_one_at_a_time_tokens(base, tmp_path, monkeypatch):
    """A rollout's answers come from the engine's continuous batcher, all of a round's rows decoding side by
    side, and are the very tokens each answer gets when decoded alone at the same seed."""
    from llmlab.infer import batching
    from llmlab.infer.engine import Engine

    directory, tok = base
    widest, calls = [], []
    real_step, real_generate = batching.Batcher.step, Engine.generate

    def step(self):
        widest.append(len(self.rows))
        return real_step(self)

    def generate(self, prompts, params):
        calls.append((prompts, params))
        return real_generate(self, prompts, params)

    monkeypatch.setattr(batching.Batcher, "step", step)
    monkeypatch.setattr(Engine, "generate", generate)
    run = prepare_rl(tiny(directory, tmp_path, max_steps=1, micro_batch=16), options(temperature=1.0))
    batches = run.trainer.batches
    buffer = batches._sample(0)
    assert len(calls) == 1 and max(widest) == 16  # 4 prompts x 4 answers in one batch
    prompts, params = calls[0]
    alone = Engine(batches.policy, tok, max_batch_size=1).generate(prompts, params)
    for row, c in zip(range(16), alone):
        targets = buffer["targets"][row]
        assert targets[targets != IGNORE].tolist() == c.token_ids


def digit_share(examples, answers) -> list[float]:
    """A reward a random model finds by sampling: the share of the answer's characters that are digits."""
    return [sum(c.isdigit() for c in a) / max(1, len(a)) for a in answers]


def test_grpo_raises_the_reward_it_is_given(base, tmp_path, monkeypatch):
    directory, _ = base
    monkeypatch.setattr("llmlab.train.rl.verifier_reward", digit_share)
    run = prepare_rl(tiny(directory, tmp_path, max_steps=30, micro_batch=16, lr=1e-2, warmup_steps=1,
                          eval_every=1000, checkpoint_every=1000, log_every=1), options(beta=0.0))
    run.trainer.fit()
    rewards = [json.loads(l)["reward"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if '"reward"' in l]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, (first, last)


@pytest.mark.parametrize("algo, lora", [("grpo", None), ("grpo", LoRAConfig(rank=2, alpha=4)), ("ppo", None),
                                        ("ppo", LoRAConfig(rank=2, alpha=4))], ids=["grpo", "grpo-lora", "ppo", "ppo-lora"])
def test_rl_resumes_exactly_mid_rollout(base, tmp_path, algo, lora, monkeypatch):
    directory, _ = base
    monkeypatch.setattr("llmlab.train.rl.verifier_reward", digit_share)  # a reward that varies, so steps move
    opts = options(algo=algo, lora=lora, target_kl=1.0 if algo == "ppo" else None)
    cfg = lambda out: tiny(directory, out, max_steps=6, eval_every=3, checkpoint_every=3)  # noqa: E731
    full = rl(cfg(tmp_path / "full"), opts)
    rl(cfg(tmp_path / "cut"), opts, until_step=3)  # rounds of 2 steps: step 3 is inside the second rollout
    state = json.loads((tmp_path / "cut" / "checkpoints" / "latest" / "trainer.json").read_text())
    assert "buffer" in state["data"] and state["data"]["position"] == 8
    rest = rl(cfg(tmp_path / "cut"), opts, resume=True)
    assert rest.losses == full.losses[3:] and any(loss != 0 for _, loss in full.losses)
    assert rest.last_eval == full.last_eval
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest").state_dict()
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "latest").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if algo == "ppo":
        assert "value_head.weight" in a
        metrics = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
        assert {"reward", "kl", "entropy", "clip_frac", "value_loss"} <= set(metrics[0])


def test_ppo_trains_against_a_reward_model_and_reports_a_judges_mean_reward(base, tmp_path):
    directory, tok = base
    model = load_checkpoint(directory)
    model.add_value_head()
    save_checkpoint(tmp_path / "rm", model, tokenizer_file=directory / "tokenizer.json")
    prompts = write_lines(tmp_path / "pairs.jsonl", [{"prompt": f"Say a number above {i}.", "chosen": "a",
                                                      "rejected": "b"} for i in range(8)])
    opts = options(algo="ppo", data=str(prompts), eval_data=str(prompts), reward_model=str(tmp_path / "rm"),
                   eval_reward_model=str(tmp_path / "rm"))
    result = rl(tiny(directory, tmp_path / "ppo", max_steps=2, eval_every=2, checkpoint_every=2), opts)
    assert "val_reward" in result.last_eval and "exact_match" not in result.last_eval
    report = (tmp_path / "ppo" / "report.md").read_text()
    assert "curves.png" in report and (tmp_path / "ppo" / "curves.png").stat().st_size > 0
    # A reward model that reads other token ids is refused before anything trains.
    other = train_bpe(["entirely different words " * 30], vocab_size=300)
    other.save(tmp_path / "other.json")
    save_checkpoint(tmp_path / "rm-other", model, tokenizer_file=tmp_path / "other.json")
    with pytest.raises(ConfigError, match="another tokenizer"):
        prepare_rl(tiny(directory, tmp_path / "bad"), options(algo="ppo", data=str(prompts),
                                                              reward_model=str(tmp_path / "rm-other")))


def test_ppos_value_loss_trains_the_value_head_and_leaves_the_trunk_alone(base, tmp_path):
    """The critic shares the policy's trunk but its loss stops at the value head: with every advantage 0
    (no policy gradient) a PPO step's gradient reaches the value head and nothing else."""
    from llmlab.train.rl import PPOLoss

    directory, _ = base
    run = prepare_rl(tiny(directory, tmp_path, max_steps=1, micro_batch=16), options(algo="ppo", group_size=4))
    batch = run.trainer.batches.next_batch()
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    batch["returns"] = batch["values"] + 1.0  # the values are off by one: the value loss has a gradient
    model = run.trainer.gpt
    model.zero_grad()
    loss, _ = PPOLoss(0.2, 10.0, 0.1, 1.0)(model, batch)
    loss.backward()
    assert model.value_head.weight.grad.abs().sum() > 0
    trunk = [p.grad for n, p in model.named_parameters() if not n.startswith("value_head")]
    assert all(g is None or not g.any() for g in trunk)


def test_bad_input_is_refused(base, tmp_path):
    directory, _ = base
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        options(group_size=1)
    with pytest.raises(ConfigError, match="target_kl"):
        options(target_kl=1.0)
    with pytest.raises(ConfigError, match="unknown RL algorithm"):
        options(algo="a2c")
    with pytest.raises(ConfigError, match="task_families picks from the built-in tasks"):
        options(task_families=("algebra",))
    unanswered = write_lines(tmp_path / "q.jsonl", [{"prompt": "Hello?"}])
    with pytest.raises(ConfigError, match="nothing gives these prompts a reward"):
        prepare_rl(tiny(directory, tmp_path / "a"), options(data=str(unanswered)))
    empty = write_lines(tmp_path / "e.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": " "}])
    with pytest.raises(InputError, match="e.jsonl:2: the prompt is empty"):
        prepare_rl(tiny(directory, tmp_path / "b"), options(data=str(empty)))
    with pytest.raises(ConfigError, match="not a whole number of optimizer steps"):
        prepare_rl(tiny(directory, tmp_path / "c", micro_batch=5), options())


def test_task_families_restrict_the_training_and_held_out_prompts(base, tmp_path):
    directory, _ = base
    run = prepare_rl(tiny(directory, tmp_path / "a"), options(task_families=("arithmetic", "counting")))
    trained = {e.task for e in run.trainer.batches.prompts}
    scored = {e.task for e in run.trainer.evaluate_fn.examples}
    assert trained == scored == {"arithmetic", "counting"}


def test_cli_runs_grpo_and_writes_the_report(base, tmp_path):
    directory, _ = base
    out = tmp_path / "grpo"
    assert main(["rl", "--algo", "grpo", "--init-from", str(directory), "--data", "tasks", "--out", str(out),
                 "--steps", "2", "--micro-batch", "16", "--prompts-per-round", "4", "--tasks-train", "16",
                 "--tasks-eval", "4", "--max-new-tokens", "4", "--device", "cpu", "--set", "eval_every=2",
                 "--task-families", "arithmetic,sorting"]) == 0
    report = (out / "report.md").read_text()
    assert "RL (GRPO)" in report and "exact_match" in report and (out / "curves.png").exists()
    assert "exact_match/arithmetic" in report and "exact_match/counting" not in report


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, opts: dict, out_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LLMLAB_PROGRESS="0",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from llmlab.train.distributed import shutdown

    try:
        result = rl(TrainConfig(**cfg_dict), RLOptions(**opts))
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump({"losses": result.losses, "exact_match": result.last_eval["exact_match"]}, f)
    finally:
        shutdown()


@pytest.mark.slow  # two processes start and import torch: ~20 s
def test_two_process_grpo_matches_one_process_sampling_the_same_prompts(base, tmp_path):
    """Two processes share each rollout's prompts (groups stay whole, seeds follow the prompt's place in
    the round), so with one optimizer step per rollout they train what one process does."""
    directory, _ = base
    model = load_checkpoint(directory)
    model.add_value_head()  # an untrained reward model: rewards that differ within every group
    save_checkpoint(tmp_path / "rm", model, tokenizer_file=directory / "tokenizer.json")
    opts = dict(data="tasks", epochs=None, tasks_train=32, tasks_eval=4, max_new_tokens=6, beta=0.04,
                reward_model=str(tmp_path / "rm"))
    single = rl(tiny(directory, tmp_path / "one", max_steps=3, micro_batch=16, eval_every=3),
                RLOptions(**opts, prompts_per_round=4))
    cfg = tiny(directory, tmp_path / "two", max_steps=3, micro_batch=8, eval_every=3).to_dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, {**opts, "prompts_per_round": 2}, str(tmp_path / "ddp.json")),
             nprocs=2, join=True)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert [s for s, _ in ddp["losses"]] == [s for s, _ in single.losses]
    assert all(l != 0 for _, l in single.losses)
    assert [l for _, l in ddp["losses"]] == pytest.approx([l for _, l in single.losses], rel=1e-4, abs=1e-6)
    assert ddp["exact_match"] == single.last_eval["exact_match"]
