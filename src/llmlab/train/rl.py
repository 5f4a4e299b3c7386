"""Reinforcement learning from rewards: GRPO and PPO, inside the one training loop.

    prompts -> the policy samples answers (the inference `Engine`) -> rewards (a task's verifier or a
    reward model) -> advantages -> several passes of clipped policy-gradient steps -> new samples ...

The loop is the pretraining `Trainer`. What RL changes is where batches come from: `RolloutBatches` is
a batch source that, whenever its rollout is used up, samples a new one from the policy as it is now,
scores it and computes the advantages; the trainer then takes optimizer steps on minibatches of it with
the loss hook of the chosen algorithm (`GRPOLoss`, `PPOLoss`; the formulas live in `rl_losses`).

- GRPO: k answers per prompt, advantage = reward standardised within the prompt's group, no critic; a
  k3 KL term to the frozen reference in the loss (beta).
- PPO: one answer per prompt by default, a value head on the policy (a critic sharing its trunk), a
  per-token KL penalty in the reward (fixed beta, or adapted toward `target_kl`), GAE, clipped policy
  and value losses.

The reference is the starting model, frozen: a copy of it, or with LoRA the policy with its adapter
switched off. A checkpoint keeps the rollout being trained on (and PPO's adapted beta), so a resumed
run continues exactly; a new rollout depends only on the weights and (seed, round).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.infer.answers import chat_answers
from llmlab.infer.engine import Engine
from llmlab.infer.sampling import SamplingParams
from llmlab.tokenizer.chat import render_chat, with_system
from llmlab.train import checkable_tasks, hardware
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import DistInfo, setup_process
from llmlab.train.examples import IGNORE, pad_id, read_jsonl
from llmlab.train.loop import TrainResult
from llmlab.train.lora import adapters_off
from llmlab.train.posttrain import PostTraining, PostTrainOptions, build_trainer, load_start, write_posttrain_report
from llmlab.train.reward_scores import load_reward_model, score_answers
from llmlab.train.rl_losses import (AdaptiveKL, gae, group_advantages, grpo_loss, kl_penalised_rewards, masked_mean,
                                    ppo_loss, token_entropy, token_logprobs, whiten)

ALGOS = ("grpo", "ppo")
CURVES = ("reward", "kl", "entropy", "clip_frac")  # plotted in the report beside the loss


@dataclass
class RLOptions(PostTrainOptions):
    """What RL adds to post-training; `data` is "tasks" or a JSONL of {"prompt", "answer"?} lines (a
    preference file's prompts serve too), `epochs` are passes over its prompts."""

    algo: str = "grpo"
    reward_model: str | None = None  # score answers with this reward model instead of the tasks' verifier
    eval_reward_model: str | None = None  # a separately trained reward model for the held-out mean reward
    prompts_per_round: int = 8  # prompts sampled per rollout (per process)
    group_size: int | None = None  # answers per prompt: GRPO's k (default 4); PPO default 1
    rollout_epochs: int | None = None  # passes over each rollout (default GRPO 1, PPO 4)
    clip: float = 0.2  # the ratio pi / pi_old is clipped to [1 - clip, 1 + clip]
    beta: float | None = None  # KL coefficient (default GRPO 0.04 in the loss, PPO 0.05 in the reward)
    target_kl: float | None = None  # PPO: adapt beta toward this KL per answer (nats); None keeps beta fixed
    kl_horizon: int = 10_000  # PPO: answers over which the adaptive beta may change by 20%
    gamma: float = 1.0  # PPO: discount
    lam: float = 0.95  # PPO: GAE's lambda
    clip_value: float = 0.2  # PPO: how far a value prediction may move from the rollout's
    vf_coef: float = 0.1  # PPO: weight of the value loss
    temperature: float = 1.0  # sampling temperature of the rollouts
    task_families: tuple[str, ...] | None = None  # with data="tasks": train and score on these families only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown RL algorithm {self.algo!r}", hint=f"choose one of {', '.join(ALGOS)}")
        grpo = self.algo == "grpo"
        self.group_size = self.group_size or (4 if grpo else 1)
        self.rollout_epochs = self.rollout_epochs or (1 if grpo else 4)
        self.beta = (0.04 if grpo else 0.05) if self.beta is None else self.beta
        if grpo and self.group_size < 2:
            raise ConfigError(f"GRPO compares answers within a group: group_size must be >= 2, got {self.group_size}")
        if self.task_families is not None:
            self.task_families = tuple(self.task_families)
            unknown = [t for t in self.task_families if t not in checkable_tasks.TASKS]
            if unknown or not self.task_families or self.data != "tasks":
                raise ConfigError(f"task_families picks from the built-in tasks (data=\"tasks\"); got "
                                  f"{list(self.task_families)} with data={self.data!r}",
                                  hint=f"families: {', '.join(checkable_tasks.TASKS)}")
        if grpo and self.target_kl is not None:
            raise ConfigError("target_kl (an adaptive beta) is PPO's; GRPO keeps beta fixed")
        if self.prompts_per_round < 1 or self.max_new_tokens < 1 or not 0 < self.clip < 1 or self.beta < 0 \
                or self.temperature <= 0:
            raise ConfigError("prompts_per_round >= 1, max_new_tokens >= 1, 0 < clip < 1, beta >= 0 and "
                              "temperature > 0 are required")


# --- prompts and rewards ---------------------------------------------------------------------------------

def read_prompts(path: str) -> list[checkable_tasks.Example]:
    """{"prompt", "answer"?} per line (any other fields, e.g. a preference pair's answers, are ignored)."""
    out = []
    for where, record in read_jsonl(path):
        prompt, answer = record.get("prompt"), record.get("answer", "")
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise InputError(f'{where}: expected a string "prompt" (and optionally a string "answer")',
                             hint=f"keys found: {', '.join(record) or 'none'}")
        if not prompt.strip():
            raise InputError(f"{where}: the prompt is empty, so there is nothing to answer")
        out.append(checkable_tasks.Example(str(record.get("task", "data")), prompt, answer, ""))
    if not out:
        raise InputError(f"{path} holds no prompts")
    return out


RewardFn = Callable[[Sequence[checkable_tasks.Example], Sequence[str]], list[float]]


def verifier_reward(examples: Sequence[checkable_tasks.Example], answers: Sequence[str]) -> list[float]:
    """1 for an exactly matching answer, 0 otherwise: the checkable tasks' verifier."""
    return [float(checkable_tasks.exact_match(a, e.answer)) for e, a in zip(examples, answers)]


def model_reward(model: torch.nn.Module, tokenizer) -> RewardFn:
    return lambda examples, answers: score_answers(model, tokenizer, [e.prompt for e in examples], answers)


# --- rollouts ----------------------------------------------------------------------------------------------

def answer_outputs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, temperature: float,
                   values: bool, detach_values: bool = False):
    """(per-token log-probs (B, T), the logits at the answer positions (N, V), per-token values or None).

    The head runs at the answer positions only: an answer is a few tokens after a longer prompt, and a
    large vocabulary makes the head a large share of a small model's forward."""
    mask = targets != IGNORE
    out = model(input_ids, return_values=values, detach_values=detach_values, logits_at=mask)
    picked = token_logprobs(out[0], targets[mask], temperature)
    logps = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
    logps[mask] = picked
    return logps, out[0], (out[2].float() if values else None)


@torch.no_grad()
def policy_outputs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, temperature: float,
                   values: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token log-probs, per-token values or None) of a batch, in eval mode."""
    logps, _, value = answer_outputs(model, input_ids, targets, temperature, values)
    return logps, value


class RolloutBatches:
    """A `BatchSource` of rollouts: sample, score and prepare a round, then serve it in shuffled
    minibatches for `rollout_epochs` passes, then sample the next round with the updated policy.

    Round r's prompts, sampling seeds and minibatch order depend on (seed, r) only; the round being
    served is part of the state, so a checkpoint taken mid-round resumes on the same samples.
    """

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module | None, tokenizer,
                 prompts: Sequence[checkable_tasks.Example], reward_fn: RewardFn, options: RLOptions,
                 micro_batch: int, grad_accum: int, seed: int, device: torch.device,
                 amp_dtype: torch.dtype | None, rank: int = 0, world: int = 1) -> None:
        if not prompts:
            raise InputError("no prompts to sample answers for")
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.prompts, self.reward_fn, self.options = list(prompts), reward_fn, options
        self.micro_batch, self.grad_accum, self.seed = micro_batch, grad_accum, seed
        self.device, self.amp_dtype, self.rank, self.world = device, amp_dtype, rank, world
        self.rows = options.prompts_per_round * options.group_size
        served = self.rows * options.rollout_epochs
        if served % (micro_batch * grad_accum):
            raise ConfigError(
                f"a rollout of {options.prompts_per_round} prompts x {options.group_size} answers x "
                f"{options.rollout_epochs} passes = {served} rows is not a whole number of optimizer steps of "
                f"micro_batch x grad_accum = {micro_batch} x {grad_accum} rows",
                hint="make prompts_per_round x group_size x rollout_epochs a multiple of micro_batch x grad_accum")
        self.steps_per_round = served // (micro_batch * grad_accum)
        # GRPO with one optimizer step per rollout trains the very weights that sampled it: pi_old is the
        # policy's own log-probs, detached (TRL's shortcut with one iteration), and the rollout saves a forward.
        self.on_policy = options.algo == "grpo" and self.steps_per_round == 1
        self.kl = AdaptiveKL(options.beta, options.target_kl, options.kl_horizon)
        self.round = 0  # rounds sampled so far
        self.position = 0  # rows of the current round's order served
        self.buffer: dict[str, torch.Tensor] | None = None
        self.order: np.ndarray = np.zeros(0, dtype=np.int64)
        self._shuffle: tuple[int, np.ndarray] = (-1, self.order)

    def steps_for(self, epochs: float) -> int:
        """Optimizer steps that sample every prompt `epochs` times."""
        rounds = math.ceil(epochs * len(self.prompts) / (self.options.prompts_per_round * self.world))
        return max(1, rounds) * self.steps_per_round

    def _round_prompts(self, r: int) -> list[checkable_tasks.Example]:
        per = self.options.prompts_per_round
        first = (r * self.world + self.rank) * per
        out = []
        for g in range(first, first + per):  # a fresh shuffle of the prompts for every pass over them
            epoch, pos = divmod(g, len(self.prompts))
            if self._shuffle[0] != epoch:
                self._shuffle = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts)))
            out.append(self.prompts[self._shuffle[1][pos]])
        return out

    def _order(self, r: int) -> np.ndarray:
        return np.concatenate([np.random.default_rng([self.seed, r, e, 11]).permutation(self.rows)
                               for e in range(self.options.rollout_epochs)])

    def _reference_logps(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        temperature = self.options.temperature
        if self.reference is not None:
            return policy_outputs(self.reference, input_ids, targets, temperature, False)[0]
        with adapters_off(self.policy):
            return policy_outputs(self.policy, input_ids, targets, temperature, False)[0]

    def _sample(self, r: int) -> dict[str, torch.Tensor]:
        """Round r: answers from the current policy, their rewards, log-probs, values and advantages."""
        o, tok = self.options, self.tokenizer
        examples = self._round_prompts(r)
        limit = self.policy.config.context_length - o.max_new_tokens
        if limit < 2:
            raise ConfigError(f"max_new_tokens={o.max_new_tokens} leaves no room for a prompt in the "
                              f"{self.policy.config.context_length}-token context window")
        prompts = [render_chat(with_system([{"role": "user", "content": e.prompt}], o.system), tok,
                               add_generation_prompt=True, max_tokens=limit).ids for e in examples]
        # A prompt's k answers use seeds s, s + 1, ..., s + k - 1, s drawn from (seed, round, the prompt's place
        # in the round over all processes): the same samples however many processes share the round.
        first = self.rank * len(prompts)
        params = [SamplingParams(max_new_tokens=o.max_new_tokens, temperature=o.temperature, n=o.group_size,
                                 seed=int(np.random.SeedSequence([self.seed, r, first + i]).generate_state(1)[0]))
                  for i in range(len(prompts))]
        was_training = self.policy.training
        self.policy.eval()
        try:
            with hardware.autocast(self.device, self.amp_dtype):
                # A new engine each rollout, under autocast, with weights that change between rollouts:
                # the eager step, not a compiled one recompiled or re-recorded every step on CUDA.
                completions = Engine(self.policy, tok, compile=False).generate(prompts, params)
            answers = [c.text.strip() for c in completions]
            per_answer = [e for e in examples for _ in range(o.group_size)]
            scores = torch.tensor(self.reward_fn(per_answer, answers), dtype=torch.float32)
            rows = [prompts[i // o.group_size] + c.token_ids for i, c in enumerate(completions)]
            width = max(len(row) for row in rows) - 1
            input_ids = torch.full((len(rows), width), pad_id(tok), dtype=torch.long)
            targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            for i, (row, c) in enumerate(zip(rows, completions)):
                input_ids[i, : len(row) - 1] = torch.tensor(row[:-1])
                start = len(row) - 1 - len(c.token_ids)  # the answer's first token is the target here
                targets[i, start : len(row) - 1] = torch.tensor(c.token_ids)
            ids, tgt = input_ids.to(self.device), targets.to(self.device)
            with hardware.autocast(self.device, self.amp_dtype):
                old_logps, values = (None, None) if self.on_policy else \
                    policy_outputs(self.policy, ids, tgt, o.temperature, o.algo == "ppo")
                ref_logps = self._reference_logps(ids, tgt)
        finally:
            self.policy.train(was_training)
        mask = (tgt != IGNORE).float()
        batch = {"input_ids": input_ids, "targets": targets, "scores": scores,
                 "ref_logps": ref_logps.cpu()}
        if old_logps is not None:
            batch["old_logps"] = old_logps.cpu()
        if o.algo == "grpo":
            batch["advantages"] = group_advantages(scores, o.group_size)
        else:
            mask = mask.cpu()
            rewards = kl_penalised_rewards(scores, batch["old_logps"], batch["ref_logps"], mask, self.kl.beta)
            advantages, returns = gae(rewards, values.cpu(), mask, o.gamma, o.lam)
            batch.update(advantages=whiten(advantages, mask), returns=returns, values=values.cpu() * mask)
            kl_per_answer = float(((batch["old_logps"] - batch["ref_logps"]) * mask).sum() / len(rows))
            self.kl.update(kl_per_answer, len(rows))
        return batch

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.buffer is None or self.position >= len(self.order):
            self.buffer, self.order, self.position = self._sample(self.round), self._order(self.round), 0
            self.round += 1
        picked = torch.from_numpy(self.order[self.position : self.position + self.micro_batch])
        self.position += self.micro_batch
        batch = {k: v[picked] for k, v in self.buffer.items()}
        # Trim the padding columns no row of this minibatch needs.
        width = int((batch["targets"] != IGNORE).float().cumsum(-1).argmax(-1).max()) + 1
        return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"round": self.round, "position": self.position, "beta": self.kl.beta,
                                 "seed": self.seed, "prompts": len(self.prompts), "rows": self.rows}
        if self.buffer is not None and self.position < len(self.order):
            state["buffer"] = {k: {"dtype": str(v.dtype).removeprefix("torch."), "values": v.tolist()}
                               for k, v in self.buffer.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("prompts", len(self.prompts)), ("rows", self.rows)):
            if state.get(key, mine) != mine:
                raise CheckpointError(f"the checkpoint was trained with {key}={state[key]}, this run has {mine}",
                                      hint="resume with the same data, seed and rollout options as the interrupted run")
        self.round, self.position, self.kl.beta = int(state["round"]), int(state["position"]), float(state["beta"])
        self.buffer = None
        if "buffer" in state:
            self.buffer = {k: torch.tensor(v["values"], dtype=getattr(torch, v["dtype"]))
                           for k, v in state["buffer"].items()}
            self.order = self._order(self.round - 1)


# --- the loss hooks ----------------------------------------------------------------------------------------

def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float, values: bool):
    # PPO's value loss stops at the value head: through the shared trunk it pulled the policy off its
    # tasks (the benchmark's held-out sorting fell from 88% to 16% with it, to 46% without it).
    logps, answer_logits, value = answer_outputs(model, batch["input_ids"], batch["targets"], temperature, values,
                                                 detach_values=True)
    mask = (batch["targets"] != IGNORE).float()
    old_logps = batch["old_logps"] if "old_logps" in batch else logps.detach()  # an on-policy rollout: pi_old = pi
    with torch.no_grad():
        stats = {"entropy": token_entropy(answer_logits, temperature).mean(),
                 "kl": masked_mean(old_logps - batch["ref_logps"], mask),  # nats per answer token
                 "reward": batch["scores"].mean()}
    return logps, old_logps, value, mask, stats


class GRPOLoss:
    """GRPO's loss on a minibatch of a rollout; reports reward, KL, entropy and clip fraction."""

    def __init__(self, clip: float, beta: float, temperature: float) -> None:
        self.clip, self.beta, self.temperature = clip, beta, temperature

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        logps, old_logps, _, mask, stats = _forward(model, batch, self.temperature, values=False)
        loss, more = grpo_loss(logps, old_logps, batch["ref_logps"], batch["advantages"], mask,
                               self.clip, self.beta)
        return loss, {**stats, **more}


class PPOLoss:
    """PPO's policy + value loss on a minibatch of a rollout, through the policy's value head."""

    def __init__(self, clip: float, clip_value: float, vf_coef: float, temperature: float) -> None:
        self.clip, self.clip_value, self.vf_coef, self.temperature = clip, clip_value, vf_coef, temperature

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        logps, old_logps, values, mask, stats = _forward(model, batch, self.temperature, values=True)
        loss, more = ppo_loss(logps, old_logps, batch["advantages"], values, batch["values"],
                              batch["returns"], mask, self.clip, self.clip_value, self.vf_coef)
        return loss, {**stats, **more}


# --- evaluation --------------------------------------------------------------------------------------------

class RLEval:
    """Greedy answers to held-out prompts: exact match where they have answers, the mean reward of a
    separately trained reward model when there is one."""

    def __init__(self, tokenizer, examples: Sequence[checkable_tasks.Example], max_new_tokens: int,
                 scorer: RewardFn | None = None, samples: int = 3, system: str | None = None) -> None:
        self.tokenizer, self.examples, self.max_new_tokens = tokenizer, list(examples), max_new_tokens
        self.scorer, self.samples, self.system = scorer, samples, system

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        if not self.examples:
            return {}
        prompts = [e.prompt for e in self.examples]
        answers = chat_answers(model, self.tokenizer, prompts, self.max_new_tokens, self.system)
        metrics: dict[str, Any] = {}
        if all(e.answer for e in self.examples):
            metrics.update(checkable_tasks.score(self.examples, answers))
        if self.scorer is not None:
            rewards = self.scorer(self.examples, answers)
            metrics["val_reward"] = sum(rewards) / len(rewards)
        metrics["samples"] = list(zip(prompts[: self.samples], answers[: self.samples]))
        return metrics


# --- the run -----------------------------------------------------------------------------------------------

def _prompts(options: RLOptions, seed: int) -> tuple[list[checkable_tasks.Example], list[checkable_tasks.Example]]:
    if options.data == "tasks":
        families = options.task_families
        return (checkable_tasks.generate(options.tasks_train, "train", seed, families),
                checkable_tasks.generate(options.tasks_eval, "held_out", seed + 1, families))
    return read_prompts(options.data), read_prompts(options.eval_data) if options.eval_data else []


def prepare_rl(config: TrainConfig, options: RLOptions, resume: bool = False, info: DistInfo | None = None) -> PostTraining:
    """Load the policy (and its frozen reference, and any reward models), read the prompts, build the trainer."""
    device, info = setup_process(config, info)
    config.prefetch = False  # a rollout runs the policy: never on a background thread during a step
    train, held = _prompts(options, config.seed)
    if options.reward_model is None and not all(e.answer for e in train):
        raise ConfigError("nothing gives these prompts a reward: they have no \"answer\" to check",
                          hint="pass --reward-model RUN/reward, or prompts with answers (or --data tasks)")
    start = load_start(config, options, resume)
    notes = list(start.notes)
    # The reference: the starting weights, frozen (a LoRA run switches its adapter off instead).
    reference = None
    if options.lora is None:
        reference = copy.deepcopy(start.model).eval().requires_grad_(False).to(device)
    if options.algo == "ppo":
        start.model.add_value_head()
        start.model.value_head.requires_grad_(True)
        notes.append("PPO's critic is a value head on the policy's own trunk, trained with it")
    reward_fn: RewardFn = verifier_reward
    if options.reward_model is not None:
        reward_model, _ = load_reward_model(options.reward_model, device, policy_tokenizer=start.tokenizer)
        reward_fn = model_reward(reward_model.requires_grad_(False), start.tokenizer)
        notes.append(f"rewards from the reward model {options.reward_model}")
    else:
        notes.append("rewards from the tasks' verifier: 1 for an exact match, 0 otherwise")
    scorer = None
    if options.eval_reward_model is not None:
        judge, _ = load_reward_model(options.eval_reward_model, device, policy_tokenizer=start.tokenizer)
        scorer = model_reward(judge.requires_grad_(False), start.tokenizer)
    amp = hardware.autocast_dtype(device, config.dtype)
    batches = RolloutBatches(start.model.to(device), reference, start.tokenizer, train, reward_fn, options,
                             config.micro_batch, config.grad_accum or 1, config.seed, device, amp, info.rank, info.world)
    if options.algo == "grpo":
        loss_fn: Any = GRPOLoss(options.clip, options.beta, options.temperature)
    else:
        loss_fn = PPOLoss(options.clip, options.clip_value, options.vf_coef, options.temperature)
    evaluate = RLEval(start.tokenizer, held, options.max_new_tokens, scorer, system=options.system)
    notes.append(f"{options.algo.upper()}: {options.prompts_per_round} prompts x {options.group_size} answers per "
                 f"rollout, {options.rollout_epochs} pass(es) = {batches.steps_per_round} optimizer step(s) each; "
                 "tokens/s counts the trained tokens over the whole step, sampling included")
    trainer = build_trainer(config, options, start, batches, loss_fn, evaluate if info.is_main else None,
                            options.algo, resume, info, device)
    return PostTraining(trainer, start.tokenizer, len(train), len(held), notes)


def rl(config: TrainConfig, options: RLOptions, resume: bool = False, until_step: int | None = None) -> TrainResult:
    """Optimise `config.init_from` with GRPO or PPO; writes checkpoints, metrics, curves and report.md."""
    run = prepare_rl(config, options, resume)
    result = run.trainer.fit(until_step)
    if run.trainer.info.is_main:
        write_posttrain_report(run, result, options, f"RL ({options.algo.upper()})", curves=CURVES)
    return result
