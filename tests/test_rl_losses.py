"""The RL loss formulas against TRL: GRPO's loss through `trl.GRPOTrainer._compute_loss` itself, and PPO's
pieces against the formula of trl 0.x's `PPOTrainer.train` (trl/trainer/ppo_trainer.py; trl 1.x no longer
ships PPO), transcribed below on its own layout: answer-only tensors, left-aligned."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.train.rl_losses import (AdaptiveKL, gae, group_advantages, grpo_loss, kl_penalised_rewards, ppo_loss,
                                    token_logprobs, whiten)

B, PROMPT, ANSWER = 4, 3, 5
LENGTHS = [5, 3, 4, 1]  # answer tokens per row


def fixed_batch(seed: int = 0):
    """Answer-only tensors (B, ANSWER) with a mask, and the same embedded after a prompt (B, PROMPT + ANSWER)."""
    g = torch.Generator().manual_seed(seed)
    answer_mask = torch.tensor([[1.0] * n + [0.0] * (ANSWER - n) for n in LENGTHS])
    t = {name: -torch.rand(B, ANSWER, generator=g, dtype=torch.float64) * 3 for name in ("logps", "old", "ref")}
    t["logps"] = t["old"] + 0.4 * torch.randn(B, ANSWER, generator=g, dtype=torch.float64)  # ratios beyond the clip
    t["values"] = torch.randn(B, ANSWER, generator=g, dtype=torch.float64)
    t["old_values"] = t["values"] + 0.3 * torch.randn(B, ANSWER, generator=g, dtype=torch.float64)
    t["returns"] = torch.randn(B, ANSWER, generator=g, dtype=torch.float64)
    t["advantages"] = torch.randn(B, ANSWER, generator=g, dtype=torch.float64)
    full = {k: torch.cat([torch.full((B, PROMPT), 7.0, dtype=torch.float64), v], dim=1) for k, v in t.items()}
    full_mask = torch.cat([torch.zeros(B, PROMPT), answer_mask], dim=1).double()
    return t, answer_mask.double(), full, full_mask


class _OneProcess:
    """The two collective calls GRPOTrainer's loss makes, for a single process."""

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trls(beta):
    from trl import GRPOTrainer

    t, mask, full, full_mask = fixed_batch()
    seq_adv = torch.tensor([1.5, -0.7, 0.2, -1.1], dtype=torch.float64)
    logps = t["logps"].clone().requires_grad_(True)
    trl_self = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), loss_type="grpo", epsilon_low=0.2,
        epsilon_high=0.2, use_vllm=False, model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        accelerator=_OneProcess())
    inputs = {"prompt_ids": torch.zeros(B, PROMPT, dtype=torch.long), "prompt_mask": torch.ones(B, PROMPT),
              "completion_ids": torch.zeros(B, ANSWER, dtype=torch.long), "completion_mask": mask,
              "advantages": seq_adv, "old_per_token_logps": t["old"], "ref_per_token_logps": t["ref"]}
    expected = GRPOTrainer._compute_loss(trl_self, None, inputs)
    (expected_grad,) = torch.autograd.grad(expected, logps)

    ours_logps = full["logps"].clone().requires_grad_(True)
    loss, stats = grpo_loss(ours_logps, full["old"], full["ref"], seq_adv, full_mask, clip=0.2, beta=beta)
    (grad,) = torch.autograd.grad(loss, ours_logps)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    torch.testing.assert_close(grad[:, PROMPT:], expected_grad, rtol=1e-12, atol=1e-15)
    assert (grad[:, :PROMPT] == 0).all()
    metrics = trl_self._metrics["train"]
    assert float(stats["clip_frac"]) == pytest.approx(metrics["clip_ratio/region_mean"][0], rel=1e-12)
    assert 0 < float(stats["clip_frac"]) < 1  # the batch exercises both sides of the clip
    if beta:
        assert float(stats["kl_k3"]) == pytest.approx(metrics["kl"][0], rel=1e-12)


def test_group_advantages_follow_trls_formula():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.25, 0.0])
    # GRPOTrainer._generate_and_score_completions with scale_rewards="group": (r - group mean) / (nanstd + 1e-4)
    groups = rewards.view(-1, 4)
    expected = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).reshape(-1)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)
    assert (group_advantages(rewards, 4)[4:8] == 0).all()  # all answers alike: nothing to learn
    with pytest.raises(ConfigError, match="groups of at least 2"):
        group_advantages(rewards, 1)


# --- PPO: trl 0.x's PPOTrainer.train, transcribed ------------------------------------------------------------

def _trl_masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def _trl_masked_whiten(values, mask):
    mean = _trl_masked_mean(values, mask)
    var = _trl_masked_mean((values - mean) ** 2, mask) * (mask.sum() / (mask.sum() - 1))
    return (values - mean) * torch.rsqrt(var + 1e-8)


def trl_ppo_advantages(scores, logprobs, ref_logprobs, values, padding_mask, kl_coef, gamma, lam):
    """Rewards, GAE and whitening as PPOTrainer.train computes them (no EOS trick: every answer ends at its
    last unmasked token, where the score is added)."""
    values = torch.masked_fill(values, padding_mask, 0)
    kl = logprobs - ref_logprobs
    rewards = (-kl_coef * kl).masked_fill(padding_mask, 0)
    sequence_lengths = (~padding_mask).sum(1) - 1
    rewards[torch.arange(rewards.size(0)), sequence_lengths] += scores
    lastgaelam, reversed_ = 0, []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        reversed_.append(lastgaelam)
    advantages = torch.stack(reversed_[::-1], axis=1)
    returns = advantages + values
    advantages = torch.masked_fill(_trl_masked_whiten(advantages, ~padding_mask), padding_mask, 0)
    return rewards, advantages, returns


def trl_ppo_loss(new_logprobs, mb_logprobs, mb_advantage, vpred, mb_values, mb_return, padding_mask, cliprange,
                 cliprange_value, vf_coef):
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss = 0.5 * _trl_masked_mean(torch.max(vf_losses1, vf_losses2), ~padding_mask)
    ratio = torch.exp(new_logprobs - mb_logprobs)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = _trl_masked_mean(torch.max(pg_losses, pg_losses2), ~padding_mask)
    pg_clipfrac = _trl_masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
    vf_clipfrac = _trl_masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask)
    return pg_loss + vf_coef * vf_loss, pg_loss, vf_loss, pg_clipfrac, vf_clipfrac


def test_ppo_rewards_gae_and_whitening_equal_trls():
    t, mask, full, full_mask = fixed_batch(1)
    scores = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    padding = mask == 0
    rewards_trl, adv_trl, returns_trl = trl_ppo_advantages(scores, t["old"], t["ref"], t["values"], padding,
                                                           kl_coef=0.05, gamma=0.99, lam=0.95)
    rewards = kl_penalised_rewards(scores, full["old"], full["ref"], full_mask, beta=0.05)
    advantages, returns = gae(rewards, full["values"], full_mask, gamma=0.99, lam=0.95)
    advantages = whiten(advantages, full_mask)
    torch.testing.assert_close(rewards[:, PROMPT:], rewards_trl)
    torch.testing.assert_close(advantages[:, PROMPT:], adv_trl)
    torch.testing.assert_close(returns[:, PROMPT:], returns_trl.masked_fill(padding, 0))
    assert (advantages[:, :PROMPT] == 0).all() and (returns[:, :PROMPT] == 0).all()


def test_ppo_loss_equals_trls():
    t, mask, full, full_mask = fixed_batch(2)
    padding = mask == 0
    logps = full["logps"].clone().requires_grad_(True)
    values = full["values"].clone().requires_grad_(True)
    loss, stats = ppo_loss(logps, full["old"], full["advantages"], values, full["old_values"], full["returns"],
                           full_mask, clip=0.2, clip_value=0.2, vf_coef=0.1)
    trl_logps = t["logps"].clone().requires_grad_(True)
    trl_values = t["values"].clone().requires_grad_(True)
    expected, pg, vf, pg_clip, vf_clip = trl_ppo_loss(trl_logps, t["old"], t["advantages"], trl_values, t["old_values"],
                                                      t["returns"], padding, 0.2, 0.2, 0.1)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert float(stats["policy_loss"]) == pytest.approx(float(pg.detach()), rel=1e-12)
    assert float(stats["value_loss"]) == pytest.approx(float(vf.detach()), rel=1e-12)
    assert float(stats["value_clip_frac"]) == pytest.approx(float(vf_clip), rel=1e-6)  # TRL counts in fp32
    assert float(stats["clip_frac"]) == pytest.approx(float(pg_clip), rel=1e-6)
    assert 0 < float(stats["clip_frac"]) < 1 and 0 < float(vf_clip) < 1
    grads = torch.autograd.grad(loss, [logps, values])
    expected_grads = torch.autograd.grad(expected, [trl_logps, trl_values])
    for ours, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(ours[:, PROMPT:], theirs)
        assert (ours[:, :PROMPT] == 0).all()


def test_token_logprobs_pick_the_targets_and_skip_ignored_positions():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, -100, 4], [-100, 0, 2]])
    got = token_logprobs(logits, targets, temperature=2.0)
    full = torch.log_softmax(logits / 2.0, dim=-1)
    assert got[0, 0] == pytest.approx(float(full[0, 0, 1])) and got[1, 2] == pytest.approx(float(full[1, 2, 2]))
    assert got[0, 1] == 0 and got[1, 0] == 0


def test_adaptive_kl_moves_beta_toward_the_target_and_fixed_beta_stays():
    adaptive = AdaptiveKL(0.1, target=1.0, horizon=100)
    adaptive.update(kl=5.0, n=10)  # far above target: +20% x 10/100
    assert adaptive.beta == pytest.approx(0.1 * 1.02)
    adaptive.update(kl=0.9, n=10)  # 10% under: -10% x 10/100
    assert adaptive.beta == pytest.approx(0.1 * 1.02 * 0.99)
    fixed = AdaptiveKL(0.1)
    fixed.update(kl=5.0, n=10)
    assert fixed.beta == 0.1
