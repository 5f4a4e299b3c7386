"""The inference stage: one engine and one sampler for the CLI, the server, training samples and eval."""

from llmlab.infer.engine import Completion, Engine, TokenLogprob
from llmlab.infer.sampling import SamplingParams
from llmlab.infer.sequence import StreamEvent
from llmlab.model.loading import load_model

__all__ = ["Completion", "Engine", "SamplingParams", "StreamEvent", "TokenLogprob", "load_model"]
