"""Perplexity and bits per byte of a model on a set of texts.

Each text is preceded by the model's prefix token (end-of-text for llmlab tokenizers, as documents
are in token shards) so its first token is scored too. A text longer than the context window is
scored with a sliding window: windows of `window` input tokens start every `stride` tokens, and each
window scores only the tokens that no earlier window scored. So every token is scored exactly once,
with at least window - stride tokens of context once the text is long enough (stride = window gives
disjoint windows, the cheapest and least context; smaller strides cost more and approach the
perplexity the model would have with unlimited look-back inside its window).

From the total negative log-likelihood NLL (nats) over T tokens, B UTF-8 bytes and W words:
perplexity = exp(NLL / T), bits per byte = NLL / (B ln 2), byte perplexity = 2^(bits per byte),
word perplexity = exp(NLL / W). Per-byte and per-word figures do not depend on the tokenizer, so they
compare models with different vocabularies; per-token perplexity does not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from llmlab.eval.models import LanguageModel
from llmlab.progress import Progress


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # total, in nats
    tokens: int
    bytes: int
    words: int
    documents: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))

    @property
    def byte_perplexity(self) -> float:
        return 2.0 ** self.bits_per_byte

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    def to_dict(self) -> dict:
        return {
            **asdict(self), "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
            "byte_perplexity": self.byte_perplexity, "word_perplexity": self.word_perplexity,
        }


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score a sequence of `n_tokens` ids, as (begin, end, first) triples.

    A window feeds ids[begin:end] (at most `window` ids) to the model; the logits at input position p
    predict id p + 1, so the window could score ids begin + 1 .. end. It scores ids first .. end, those
    no earlier window scored. Id 0 (the prefix token) is context only; every other id is scored once.
    """
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    triples = []
    scored_up_to = 1  # target positions below this are done; position 0 is the prefix token
    begin = 0
    while scored_up_to < n_tokens:
        end = min(begin + window, n_tokens - 1)  # inputs begin..end-1 predict targets begin+1..end
        triples.append((begin, end, scored_up_to))
        scored_up_to = end + 1
        begin += stride
    return triples


def token_logprobs(
    model: torch.nn.Module,
    sequences: Sequence[list[int]],
    window: int,
    stride: int,
    batch_tokens: int = 4096,
    progress: Progress | None = None,
) -> list[torch.Tensor]:
    """For each id sequence, the log-probability of every id after the first, by sliding window."""
    jobs = []  # (sequence index, begin, end, first_scored)
    for s, ids in enumerate(sequences):
        jobs += [(s, *w) for w in sliding_windows(len(ids), window, stride)]
    out = [torch.empty(max(len(ids) - 1, 0)) for ids in sequences]
    jobs.sort(key=lambda j: -(j[2] - j[1]))
    device = next(model.parameters()).device
    start = 0
    while start < len(jobs):
        longest = jobs[start][2] - jobs[start][1]
        batch = jobs[start : start + max(1, batch_tokens // longest)]
        start += len(batch)
        x = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, (s, begin, end, _) in enumerate(batch):
            x[row, : end - begin] = torch.tensor(sequences[s][begin:end])
        with torch.inference_mode():
            logits = model(x.to(device))[0]
        for row, (s, begin, end, first) in enumerate(batch):
            # Logit row j (input position begin + j) predicts target position begin + j + 1.
            rows = logits[row, first - 1 - begin : end - begin].float()
            targets = torch.tensor(sequences[s][first : end + 1], device=device)
            lp = F.log_softmax(rows, dim=-1).gather(-1, targets[:, None])[:, 0]
            out[s][first - 1 : end] = lp.cpu()
        if progress is not None:
            progress.update(sum(end + 1 - first for _, _, end, first in batch))
    return out


def perplexity(
    lm: LanguageModel,
    texts: Sequence[str],
    stride: int | None = None,
    window: int | None = None,
    batch_tokens: int = 4096,
    show_progress: bool = True,
) -> PerplexityResult:
    """Perplexity, bits per byte and word perplexity of `lm` over `texts` (see module docstring)."""
    window = window or lm.max_length
    stride = stride or window
    sequences = [[lm.prefix_token_id] + lm.encode(text) for text in texts]
    total = sum(len(s) - 1 for s in sequences)
    if total == 0:
        raise ValueError("no tokens to score: the texts are empty")
    with Progress(total=total, desc="perplexity", unit="tok", disable=None if show_progress else True) as p:
        logprobs = token_logprobs(lm.model, sequences, window, stride, batch_tokens, p)
    return PerplexityResult(
        nll=-float(sum(lp.double().sum() for lp in logprobs)),
        tokens=total,
        bytes=sum(len(t.encode("utf-8")) for t in texts),
        words=sum(len(t.split()) for t in texts),
        documents=len(texts),
    )
