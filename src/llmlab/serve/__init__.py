"""The playground stage: a web UI and an OpenAI-compatible API over the models in process."""

from llmlab.serve.app import BackgroundServer, create_app, run_server
from llmlab.serve.limits import Limits
from llmlab.serve.registry import ModelRegistry

__all__ = ["BackgroundServer", "Limits", "ModelRegistry", "create_app", "run_server"]
