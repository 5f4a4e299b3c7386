"""The formulas of policy-gradient fine-tuning, on tensors of per-token log-probabilities.

Every tensor is (B, T) over a batch of sampled answers, aligned with the next-token targets, and `mask`
is 1 on the answer's tokens (0 on the prompt and padding). A sampled answer's tokens are the actions;
`old_logps` are their log-probabilities under the policy that sampled them, `ref_logps` under the frozen
reference (the model before RL), `logps` under the policy being trained.

GRPO (Shao et al., 2024, DeepSeekMath) samples k answers per prompt and needs no critic: an answer's
advantage is its reward standardised within its group. PPO (Schulman et al., 2017) as RLHF uses it
(Ziegler et al., 2019; Ouyang et al., 2022) learns a value per token, pays a KL penalty per token and
spreads the final reward back with GAE. Both clip the probability ratio pi / pi_old so one batch of
samples cannot move the policy far. The numbers match TRL's: GRPO's loss its `GRPOTrainer` (tested
against the package), PPO's the `PPOTrainer` of trl 0.x (`trl/trainer/ppo_trainer.py`, tested against
that written formula, since trl 1.x no longer ships PPO).
"""

from __future__ import annotations

import torch

from llmlab.errors import ConfigError


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (all of them together)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(target_t | tokens before t) per position, fp32; 0 where the target is -100 (not an action)."""
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (targets >= 0)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The policy's entropy at each position, in nats: how undecided it still is."""
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logps.exp() * logps).sum(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(r) - r - 1 with r = log ref - log pi (Schulman's "k3"):
    unbiased on samples from pi, and never negative."""
    r = ref_logps - logps
    return torch.exp(r) - r - 1


# --- GRPO ------------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps) for rewards laid out group after group.

    A group whose answers all earned the same reward gets advantage 0: nothing to learn from it."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ConfigError(f"GRPO needs groups of at least 2 answers per prompt; got {rewards.numel()} rewards in "
                          f"groups of {group_size}")
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)  # Bessel-corrected, like TRL's nanstd
    return ((groups - mean) / (std + eps)).reshape(-1)


def clipped_ratio_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(rho A, clip(rho, 1 - clip, 1 + clip) A) with rho = pi / pi_old, and where clipping
    took the gradient away (rho outside the range in the direction A pushes it)."""
    ratio = torch.exp(logps - old_logps)
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    clipped = ((ratio < 1 - clip) & (advantages < 0)) | ((ratio > 1 + clip) & (advantages > 0))
    return loss, clipped


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2, beta: float = 0.04) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's loss: the clipped surrogate of each answer's (sequence) advantage plus beta x k3 KL per token,
    averaged over each answer's tokens, then over answers."""
    per_token, clipped = clipped_ratio_loss(logps, old_logps, advantages.unsqueeze(-1), clip)
    kl = k3_kl(logps, ref_logps)
    if beta:
        per_token = per_token + beta * kl
    loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    stats = {"kl_k3": masked_mean(kl, mask), "clip_frac": masked_mean(clipped.float(), mask)}
    return loss, {k: v.detach() for k, v in stats.items()}


# --- PPO -------------------------------------------------------------------------------------------------

def kl_penalised_rewards(scores: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: -beta (log pi_old - log ref) at every answer token, plus the answer's score at
    its last token."""
    rewards = -beta * (old_logps - ref_logps) * mask
    last = mask.size(1) - 1 - mask.flip(-1).argmax(-1)  # index of each row's last answer token
    rewards[torch.arange(mask.size(0), device=mask.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation (Schulman et al., 2016), right to left:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; V is 0 after the answer ends."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (Bessel-corrected variance, as TRL's masked_whiten)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2,
             clip_value: float = 0.2, vf_coef: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's policy loss (clipped surrogate, mean over answer tokens) plus vf_coef x its value loss
    0.5 max((V - R)^2, (clip(V, V_old +- clip_value) - R)^2), also a mean over answer tokens."""
    policy_per_token, clipped = clipped_ratio_loss(logps, old_logps, advantages, clip)
    policy = masked_mean(policy_per_token, mask)
    values_clipped = torch.clamp(values, old_values - clip_value, old_values + clip_value)
    plain, capped = (values - returns) ** 2, (values_clipped - returns) ** 2
    value = 0.5 * masked_mean(torch.max(plain, capped), mask)
    stats = {"policy_loss": policy, "value_loss": value, "clip_frac": masked_mean(clipped.float(), mask),
             "value_clip_frac": masked_mean((capped > plain).float(), mask)}
    return policy + vf_coef * value, {k: v.detach() for k, v in stats.items()}


class AdaptiveKL:
    """PPO's KL coefficient beta, steered toward a target KL per answer (Ziegler et al., 2019):
    beta *= 1 + clip(KL / target - 1, -0.2, 0.2) x n / horizon after each batch of n answers."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10_000) -> None:
        if beta < 0 or (target is not None and target <= 0) or horizon <= 0:
            raise ConfigError("the KL coefficient must be >= 0, its target and horizon > 0")
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        """Adapt beta to the KL the last batch reached (a fixed beta, without a target, stays)."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n / self.horizon
