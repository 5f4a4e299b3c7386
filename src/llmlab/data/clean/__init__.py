"""Cleaning: turn raw pages into training documents with a recipe of small, pure steps.

    from llmlab.data.clean import clean, load_recipe, compare_recipes
    stats = clean(["crawl/pages.warc.gz"], "clean", recipe="fineweb")
"""

from llmlab.data.clean.documents import Document, Removed, StepResult
from llmlab.data.clean.pipeline import (
    STEPS,
    Recipe,
    clean,
    compare_recipes,
    load_recipe,
    run_pipeline,
    run_steps,
    stream_pipeline,
)
from llmlab.data.clean.outputs import read_cleaned
from llmlab.data.clean.readers import read_documents

__all__ = [
    "Document", "Removed", "StepResult", "STEPS", "Recipe", "clean", "compare_recipes", "load_recipe",
    "read_cleaned", "read_documents", "run_pipeline", "run_steps", "stream_pipeline",
]
