"""The pretraining evaluation hook: validation loss, perplexity, bits per byte, and sampled continuations.

Bits per byte divides the validation tokens' total negative log-likelihood (in bits) by the UTF-8 bytes
they spell, which makes models with different tokenizers comparable. Tokens that spell no bytes (the
`<|endoftext|>` delimiter and other special tokens) are left out of both sums, as nanochat does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.model import GPT


def validation_metrics(
    model: GPT, batches: list[dict[str, torch.Tensor]], device: torch.device, byte_lengths: np.ndarray | None
) -> dict[str, float]:
    """val_loss (mean nats per token), val_ppl = exp(val_loss), and val_bpb when byte lengths are known."""
    nats = torch.zeros((), dtype=torch.float64)
    text_nats = torch.zeros((), dtype=torch.float64)
    count, n_bytes = 0, 0
    table = torch.from_numpy(byte_lengths) if byte_lengths is not None else None
    for batch in batches:
        x, y = batch["input_ids"].to(device), batch["targets"]
        logits, _ = model(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none").cpu()
        nats += losses.double().sum()
        count += losses.numel()
        if table is not None:
            b = table[y.flatten()]
            text_nats += losses.double()[b > 0].sum()
            n_bytes += int(b.sum())
    val_loss = float(nats / count)
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
    if n_bytes:
        out["val_bpb"] = float(text_nats / (math.log(2) * n_bytes))
    return out


def sample_continuations(
    model: GPT, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, seed: int
) -> list[tuple[str, str]] | None:
    """(prompt, continuation) pairs from the inference engine; None when llmlab.infer is not available."""
    try:
        from llmlab.infer import Engine, SamplingParams
    except ImportError:
        return None
    engine = Engine(model, tokenizer, compile=False)  # a few samples per evaluation: not worth a compile
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i)
              for i in range(len(prompts))]  # one seed per prompt, the same at every evaluation
    return [(p, c.text) for p, c in zip(prompts, engine.generate(list(prompts), params))]


class PretrainEval:
    """The `evaluate` hook of pretraining: metrics on a fixed validation set, then samples (main process)."""

    def __init__(
        self,
        batches: list[dict[str, torch.Tensor]],
        device: torch.device,
        byte_lengths: np.ndarray | None = None,
        tokenizer=None,
        prompts: list[str] | None = None,
        sample_tokens: int = 48,
        temperature: float = 0.8,
        seed: int = 0,
        samples: bool = True,
    ) -> None:
        self.batches, self.device, self.byte_lengths = batches, device, byte_lengths
        self.tokenizer, self.prompts = tokenizer, prompts or []
        self.sample_tokens, self.temperature, self.seed = sample_tokens, temperature, seed
        self.samples = samples and tokenizer is not None and bool(self.prompts) and sample_tokens > 0
        self.note: str | None = None

    def __call__(self, model: GPT, step: int) -> dict[str, Any]:
        metrics: dict[str, Any] = validation_metrics(model, self.batches, self.device, self.byte_lengths)
        if self.samples:
            pairs = sample_continuations(model, self.tokenizer, self.prompts, self.sample_tokens,
                                         self.temperature, self.seed)
            if pairs is None:
                self.samples, self.note = False, "samples skipped: llmlab.infer is not installed"
            else:
                metrics["samples"] = pairs
        return metrics
