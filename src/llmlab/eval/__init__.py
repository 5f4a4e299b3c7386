"""The evaluation stage: perplexity, multiple-choice benchmarks by log-likelihood, generation metrics.

Scores are computed the way EleutherAI's lm-evaluation-harness computes them (see
docs/evaluation.md for the definitions and the agreement check against the harness itself).
"""

from llmlab.eval.evaluate import TaskResult, evaluate_task
from llmlab.eval.text_metrics import bleu, chrf, exact_match, gsm8k_extract, pass_at_k, rouge
from llmlab.eval.loglikelihood import Score, encode_pair, loglikelihood, score_token_pairs
from llmlab.eval.models import LanguageModel, load_language_model
from llmlab.eval.multiple_choice import mean_stderr, score_choices
from llmlab.eval.perplexity import PerplexityResult, perplexity
from llmlab.eval.tasks import TASKS, Doc, Task, get_task, load_docs

__all__ = [
    "TASKS", "Doc", "LanguageModel", "PerplexityResult", "Score", "Task", "TaskResult", "bleu", "chrf",
    "encode_pair", "evaluate_task", "exact_match", "get_task", "gsm8k_extract", "load_docs",
    "load_language_model", "loglikelihood", "mean_stderr", "pass_at_k", "perplexity", "rouge",
    "score_choices", "score_token_pairs",
]
