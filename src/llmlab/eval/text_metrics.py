"""Metrics of generated text: exact match, BLEU, chrF, ROUGE and pass@k, plus greedy generation for tasks.

- Exact match compares a prediction and a reference after normalisation (case, and regular
  expressions whose matches are deleted, as lm-evaluation-harness's `exact_match` does). For GSM8K the
  answer is first extracted from the generated reasoning: "strict" takes the first match of the
  task's answer pattern (the number after "#### ", the data set's own format; for chain-of-thought the
  number after "The answer is", the regex of lm-eval's gsm8k-cot task, whose trailing "." needs one
  more character after the number), "flexible" takes the last number in the text.
- BLEU (Papineni et al., 2002) and chrF (Popovic, 2015) are corpus-level scores from `sacrebleu`, whose
  tokenisation makes them comparable with published figures; ROUGE-1/2/L F-measures (Lin, 2004) come
  from Google's `rouge-score` package with Porter stemming, averaged over examples.
- pass@k (Chen et al., 2021): from n samples of which c pass the tests, the unbiased estimate of the
  chance that at least one of k samples passes is 1 - C(n - c, k) / C(n, k).
"""

from __future__ import annotations

import re
from typing import Sequence

from llmlab.eval.models import LanguageModel
from llmlab.progress import Progress

# lm-evaluation-harness's GSM8K answer extraction and normalisation (tasks/gsm8k/gsm8k.yaml and
# gsm8k-cot.yaml: the "strict-match" and "flexible-extract" filters, then exact_match's regexes_to_ignore).
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
GSM8K_COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def normalize_answer(text: str, ignore_case: bool = True, regexes_to_ignore: Sequence[str] = ()) -> str:
    """Delete every match of each regex (in order), optionally lower-case, and strip surrounding space."""
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    return text.strip()


def exact_match(
    prediction: str, reference: str, ignore_case: bool = True, regexes_to_ignore: Sequence[str] = ()
) -> float:
    """1.0 when prediction and reference are equal after `normalize_answer`, else 0.0."""
    same = normalize_answer(prediction, ignore_case, regexes_to_ignore) == normalize_answer(
        reference, ignore_case, regexes_to_ignore
    )
    return float(same)


def gsm8k_extract(generation: str, strict: bool = True, pattern: str = GSM8K_STRICT) -> str:
    """The final answer in a GSM8K solution: the first match of `pattern` (strict) or the last number (flexible).

    Returns "[invalid]" when there is none, as the harness does, so it never matches a reference.
    """
    if strict:
        match = re.search(pattern, generation)
        return match.group(1).strip() if match else "[invalid]"
    found = GSM8K_FLEXIBLE.findall(generation)
    if not found:
        return "[invalid]"
    last = found[-1]
    return next(group for group in last if group).strip()


def gsm8k_scores(generation: str, reference: str, pattern: str = GSM8K_STRICT) -> dict[str, float]:
    """exact_match (strict extraction with `pattern`) and exact_match_flexible of one GSM8K answer."""
    return {
        "exact_match": exact_match(gsm8k_extract(generation, True, pattern), reference,
                                   regexes_to_ignore=GSM8K_IGNORE),
        "exact_match_flexible": exact_match(gsm8k_extract(generation, False), reference, regexes_to_ignore=GSM8K_IGNORE),
    }


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's standard 13a tokenisation, one reference per prediction."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character n-gram F-score, robust to morphology and tokenisation."""
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1), with stemming."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: total / max(len(predictions), 1) for kind, total in totals.items()}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def generate_greedy(
    lm: LanguageModel,
    prompts: Sequence[str | list[int]],
    stop: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions of `prompts` (text, or token ids such as a rendered chat), each cut at the first
    `stop` string, with a progress bar.

    A prompt longer than the window minus `max_new_tokens` loses its oldest tokens, as in the harness,
    so that the answer has room.
    """
    from llmlab.infer import Engine, SamplingParams

    engine = Engine(lm.model, lm.tokenizer, max_batch_size=batch_size)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop))
    outputs: list[str] = []
    with Progress(total=len(prompts), desc=desc, unit="ex") as progress:
        for start in range(0, len(prompts), batch_size):
            keep = max(1, lm.max_length - max_new_tokens)
            chunk = [(lm.encode(p) if isinstance(p, str) else p)[-keep:] for p in prompts[start : start + batch_size]]
            outputs += [c.text for c in engine.generate(chunk, params)]
            progress.update(len(chunk))
    return outputs
