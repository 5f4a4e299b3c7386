"""Choosing the next token: the one sampling implementation the CLI, server, training and eval share.

A decoding step turns the model's logits for the last position into one token id:

    logits -> allowed-token mask (structured output) -> logit bias -> penalties (repetition, frequency, presence) -> / temperature
           -> keep top-k -> keep top-p (nucleus) -> keep min-p -> softmax -> draw with the request's RNG

`sample_rows` does the same for many rows of a batch at once, each still drawing with its own RNG.

Temperature 0 means greedy (argmax). The allowed-token mask (from `infer/constrained.py`, for JSON output)
comes first, so every later filter and the softmax see only the tokens the grammar allows. Each filter masks logits with -inf, so what is left renormalises
in the softmax. The filters are separate functions so that tests can check exactly which tokens each keeps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Sequence, get_type_hints

import torch

from llmlab.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """What the CLI and the API need to know about one SamplingParams field: its help, its valid range,
    its API name and flags. Kept in the field's metadata, so that adding a field adds a flag and a request
    field, and each range is written once.
    """

    help: str
    low: float | None = None  # the smallest valid value
    high: float | None = None  # the largest valid value
    above_low: bool = False  # `low` itself is out of range (top_p > 0)
    note: str = ""  # how to read special values, quoted in errors ("0 is greedy")
    api_high: float | None = None  # OpenAI's tighter upper bound, applied to API requests (temperature <= 2)
    api_name: str | None = None  # the request field, where OpenAI's name differs from the field's
    flags: tuple[str, ...] = ()  # the CLI flags, where they are more than --field-name
    exposed: bool = True  # a CLI flag of `generate` and a field of every completion request
    # Taken from the field itself by `sampling_settings()`:
    name: str = ""
    kind: Any = None  # the field's type: int, float, bool, int | None, list[str]
    default: Any = None

    @property
    def api(self) -> str:
        return self.api_name or self.name

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    def problem(self, value: Any, api: bool = False) -> str | None:
        """Why `value` is out of range, named as the API (`api=True`) or the engine names it; None if it fits."""
        high = self.api_high if api and self.api_high is not None else self.high
        if value is None or (self.low is None and high is None):
            return None
        above = self.low is None or value > self.low or (value == self.low and not self.above_low)
        if (not isinstance(value, float) or math.isfinite(value)) and above and (high is None or value <= high):
            return None
        low = None if self.low is None else _number(self.low)
        if low is not None and high is not None:
            valid = f"in {'(' if self.above_low else '['}{low}, {_number(high)}]"
        elif low is not None:
            valid = f"{'>' if self.above_low else '>='} {low}"
        else:
            valid = f"<= {_number(high)}"
        note = f" ({self.note})" if self.note else ""
        return f"{self.api if api else self.name} must be {valid}{note}, got {value}"


def _number(x: float) -> str:
    """A range bound as written: integers in full (a seed's 2**63 - 1), floats short."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _setting(default: Any, help: str, **rules: Any) -> Any:
    """A SamplingParams field whose metadata holds its Setting."""
    metadata = {"setting": Setting(help, **rules)}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SamplingParams:
    """How to decode one request. Defaults follow docs/design.md; temperature=0 is greedy.

    Penalties follow common practice (vLLM / OpenAI): `repetition_penalty` (CTRL, Keskar et al. 2019)
    divides positive and multiplies negative logits of every token already in the prompt or output;
    `frequency_penalty` subtracts penalty * count and `presence_penalty` subtracts penalty once, for
    tokens already generated. `stop` strings end the completion and are not part of its text;
    `stop_token_ids` are extra end tokens besides the tokenizer's end-of-text / end-of-turn tokens.
    `n` samples per prompt use seeds seed, seed+1, ... so they differ but stay reproducible.

    This class is the one definition of the sampling settings: the CLI flags and the server's request
    fields are made from each field's `Setting` (see `sampling_settings()`).
    """

    max_new_tokens: int = _setting(64, "most tokens to generate", low=0, api_name="max_tokens",
                                   flags=("--max-new-tokens", "-n"))
    temperature: float = _setting(0.8, "0 = greedy; higher = more random", low=0, note="0 is greedy", api_high=2,
                                  flags=("--temperature", "-t"))
    top_k: int | None = _setting(None, "sample only from the k most likely tokens", low=0, note="0 or None keeps all")
    top_p: float = _setting(1.0, "nucleus: the smallest set of tokens with this total probability", low=0, high=1,
                            above_low=True)
    min_p: float = _setting(0.0, "drop tokens below min-p x the top token's probability", low=0, high=1)
    repetition_penalty: float = _setting(1.0, "> 1 discourages tokens already seen (CTRL)", low=0, above_low=True,
                                         note="1 is off")
    frequency_penalty: float = _setting(0.0, "subtract this x count of each generated token", low=-2, high=2)
    presence_penalty: float = _setting(0.0, "subtract this once for each generated token", low=-2, high=2)
    stop: list[str] = _setting([], "stop at this string; it is not part of the output")
    seed: int | None = _setting(None, "random seed, for reproducible sampling", low=-(2**63), high=2**63 - 1,
                                note="a 64-bit integer")
    # The CLI and OpenAI's two endpoints each spell log-probabilities their own way (one count in
    # `--logprobs K` and in /v1/completions; a flag and a count in /v1/chat/completions), so each maps them.
    logprobs: bool = _setting(False, "return each token's log-probability", exposed=False)
    top_logprobs: int = _setting(0, "with each token, its this many most likely alternatives", low=0, exposed=False)
    stop_token_ids: list[int] = _setting([], "extra token ids that end the completion", exposed=False)
    ignore_eos: bool = _setting(False, "keep generating past end-of-text / end-of-turn tokens (for benchmarks)")
    n: int = _setting(1, "samples per prompt (seeds seed, seed+1, ...)", low=1, flags=("--num-samples",))
    logit_bias: dict[int, float] = _setting({}, "add this to the logit of each token id (-100 bans, 100 forces)",
                                            exposed=False)
    json_schema: dict[str, Any] | None = _setting(None, "constrain the output to JSON matching this schema "
                                                  '({"type": "object"}: any JSON object)', exposed=False)
    grammar: str | None = _setting(None, "constrain the output to this grammar (llguidance's Lark dialect; "
                                   "`infer/constrained.py` builds the tool-call ones)", exposed=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first value outside its field's range."""
        for s in sampling_settings():
            problem = s.problem(getattr(self, s.name))
            if problem:
                raise ConfigError(problem, hint="see `llmlab generate --help` for each option's range")
        problem = logit_bias_problem(self.logit_bias)
        if problem:
            raise ConfigError(problem)
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise ConfigError(f"json_schema must be a JSON object (a dict), got {type(self.json_schema).__name__}")
        if self.json_schema is not None and self.grammar is not None:
            raise ConfigError("give json_schema or grammar, not both: the output follows one grammar")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    def replace(self, **changes) -> "SamplingParams":
        return replace(self, **changes)


@functools.cache
def sampling_settings() -> tuple[Setting, ...]:
    """Every SamplingParams field's Setting, in field order, with its name, type and default filled in."""
    types = get_type_hints(SamplingParams)
    return tuple(
        replace(f.metadata["setting"], name=f.name, kind=types[f.name],
                default=f.default_factory() if f.default_factory is not MISSING else f.default)
        for f in fields(SamplingParams)
    )


def apply_penalties(
    logits: torch.Tensor, context: torch.Tensor, generated: torch.Tensor, params: SamplingParams
) -> torch.Tensor:
    """Penalise tokens already seen. logits: (V,); context: all token ids so far; generated: the output's ids."""
    if params.repetition_penalty != 1.0 and context.numel():
        seen = torch.unique(context)
        values = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and generated.numel():
        counts = torch.bincount(generated, minlength=logits.numel()).to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def logit_bias_problem(bias: dict[int, float]) -> str | None:
    """Why a logit_bias mapping is invalid (OpenAI's rule: token ids to values in [-100, 100]); None if it is fine."""
    for token, value in bias.items():
        if token < 0 or not -100 <= value <= 100:
            return f"logit_bias maps token ids >= 0 to values in [-100, 100], got {token}: {value}"
    return None


def apply_logit_bias(logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """OpenAI's logit_bias: add a fixed amount to chosen tokens' logits (-100 all but bans a token)."""
    if not bias:
        return logits
    ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(-1, ids, values.expand(*logits.shape[:-1], -1))  # one row (V,) or a batch (B, V)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits (exactly k: ties at the boundary go by index order); k None/0 keeps all."""
    if not k or k >= logits.size(-1):
        return logits
    keep = torch.topk(logits, k, dim=-1).indices
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, keep, logits.gather(-1, keep))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al., 2020): keep the fewest most-likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens before it already reach p; the first token always stays.
    before = probs.cumsum(dim=-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p (Nguyen et al., 2024): keep tokens whose probability is >= min_p x the top token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def processed_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    context: torch.Tensor | None = None,
    generated: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits the sampler draws from: the allowed-token mask, logit bias, penalties, temperature, then the
    top-k / top-p / min-p filters. `allowed` (bool, the shape of `logits`) sends every other token to -inf.

    For greedy decoding only the mask, bias and penalties apply (temperature and filters do not change the argmax).
    """
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    logits = apply_logit_bias(logits, params.logit_bias)
    if context is not None and generated is not None:
        logits = apply_penalties(logits, context, generated, params)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Draw one token id from already-processed logits (V,): argmax when greedy, else from softmax."""
    if params.greedy:
        return int(torch.argmax(logits))
    return int(draw(logits.softmax(dim=-1)[None], [generator])[0])


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token id per row of `probs` (B, V), row i drawn with generators[i].

    The exponential race: with q_i ~ Exp(1), argmax(p_i / q_i) is token i with probability p_i (the
    Gumbel-max trick, exponentiated). It is what `torch.multinomial` computes for one sample, draw for
    draw (a test checks they agree), without the validity checks that cost more than the draw itself,
    and the division and argmax run once for a whole batch.
    """
    q = torch.empty_like(probs)
    for row, generator in zip(q, generators):
        row.exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams],
                generators: Sequence[torch.Generator | None], allowed: torch.Tensor | None = None) -> list[int]:
    """One token per row of `logits` (B, V) for rows without penalties: row i gets what
    `sample(processed_logits(logits[i], params[i], allowed=allowed[i]), params[i], generators[i])` gives, while
    rows with the same settings share each filter's operations. `allowed` (B, V) bool is optional."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        key = (p.temperature, p.top_k, p.top_p, p.min_p, tuple(sorted(p.logit_bias.items())))
        groups.setdefault(key, []).append(i)
    tokens = [0] * len(params)
    for rows in groups.values():
        p = params[rows[0]]
        index = None if len(rows) == len(params) else torch.tensor(rows, device=logits.device)
        part = logits if index is None else logits[index]
        mask = allowed if allowed is None or index is None else allowed[index]
        scores = processed_logits(part, p, allowed=mask)
        picked = scores.argmax(dim=-1) if p.greedy else draw(scores.softmax(dim=-1), [generators[i] for i in rows])
        for i, token in zip(rows, picked.tolist()):
            tokens[i] = token
    return tokens


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG per request, so its samples do not depend on what else runs in the batch.

    Without a seed the request draws one from torch's global RNG, so `torch.manual_seed` still
    makes a whole run reproducible.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
