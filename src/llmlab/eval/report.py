"""Evaluation results on disk: `results.json` for machines, `results.md` for people.

`results.json` holds the settings, the machine and, per model, each task's metrics (with standard
errors) and the perplexity figures. `results.md` shows one table per model and, when several models
were evaluated, a comparison table with one column per model and the best value of each row in bold.
When prompting techniques were compared, both files also hold a table with one row per model and
technique and, per task, each metric with its standard error and the number of examples.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from llmlab.errors import InputError
from llmlab.files import write_json, write_text

FORMAT = "llmlab-eval-v1"
# Metrics where lower is better; every other metric is better when higher.
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def machine() -> dict[str, Any]:
    """Where the numbers were measured (timings in the results depend on it)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def new_results(settings: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "settings": settings, "machine": machine(), "models": []}


def load_results(path: str | os.PathLike) -> dict[str, Any] | None:
    """A previous run's results.json (to resume), or None when there is none."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e})", hint="delete it to start the evaluation afresh") from e
    return data if data.get("format") == FORMAT else None


def model_entry(results: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    """The results entry of model `name`, created empty if new."""
    for entry in results["models"]:
        if entry["name"] == name:
            return entry
    entry = {"name": name, "path": path, "tasks": {}, "perplexity": None}
    results["models"].append(entry)
    return entry


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    if metric.startswith(("acc", "exact_match")):
        return f"{100 * value:.1f}"
    return f"{value:.4g}"


def _rows(entry: dict[str, Any]) -> list[tuple[str, str, float | None, float | None, str]]:
    """(task, metric, value, stderr, detail) for every reported number of one model."""
    rows = []
    for name, result in entry["tasks"].items():
        detail = f"{result['examples']} ex, {result['num_fewshot']}-shot"
        for metric, value in result["metrics"].items():
            if not metric.endswith("_stderr"):
                rows.append((name, metric, value, result["metrics"].get(f"{metric}_stderr"), detail))
    if entry.get("perplexity"):
        p = entry["perplexity"]
        detail = f"{p['documents']} docs, {p['tokens']} tok"
        for metric in ("perplexity", "bits_per_byte", "word_perplexity"):
            rows.append((f"text: {Path(p['file']).name}", metric, p[metric], None, detail))
    return rows


def to_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "# Evaluation",
        "",
        f"Tasks: {', '.join(s.get('tasks') or []) or '–'}; limit: {s.get('limit') or 'all'}; "
        f"few-shot: {s.get('num_fewshot', 0)} (seed {s.get('seed')}). "
        f"Accuracies in %, ± one standard error. Machine: {results['machine']['cpu']}, "
        f"torch {results['machine']['torch']}.",
        "",
    ]
    for entry in results["models"]:
        lines += [f"## {entry['name']}", "", f"`{entry['path']}`", "", "| task | metric | value | ± | examples |",
                  "|---|---|---:|---:|---|"]
        for task, metric, value, stderr, detail in _rows(entry):
            lines.append(f"| {task} | {metric} | {_fmt(value, metric)} | {_fmt(stderr, metric)} | {detail} |")
        lines.append("")
    if len(results["models"]) > 1:
        lines += _comparison(results["models"])
    if s.get("prompting"):
        lines += _prompting_markdown(prompting_table(results))
    return "\n".join(lines)


def prompting_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, technique): for each task its shots, examples, and metrics with stderrs."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in results["models"]:
        for key, result in entry["tasks"].items():
            if "prompting" not in result:
                continue
            row = rows.setdefault((entry["name"], result["prompting"]),
                                  {"model": entry["name"], "technique": result["prompting"], "tasks": {}})
            metrics = result["metrics"]
            row["tasks"][key.split("/")[0]] = {
                "definition": result["task"], "num_fewshot": result["num_fewshot"], "examples": result["examples"],
                "metrics": {m: {"value": v, "stderr": metrics.get(f"{m}_stderr")}
                            for m, v in metrics.items() if not m.endswith("_stderr")},
            }
    return list(rows.values())


def _prompting_markdown(table: list[dict[str, Any]]) -> list[str]:
    columns: list[tuple[str, str]] = []
    for row in table:
        for task, cell in row["tasks"].items():
            columns += [(task, m) for m in cell["metrics"] if (task, m) not in columns]
    lines = ["## Prompting techniques", "",
             "| model | technique | " + " | ".join(f"{t} {m}" for t, m in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for row in table:
        cells = []
        for task, metric in columns:
            cell = row["tasks"].get(task)
            if cell is None or metric not in cell["metrics"]:
                cells.append("–")
                continue
            score = cell["metrics"][metric]
            cells.append(f"{_fmt(score['value'], metric)} ± {_fmt(score['stderr'], metric)} "
                         f"(n={cell['examples']}, {cell['num_fewshot']}-shot)")
        lines.append(f"| {row['model']} | {row['technique']} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _comparison(entries: list[dict[str, Any]]) -> list[str]:
    keys: list[tuple[str, str]] = []
    values: dict[tuple[str, str], dict[str, float | None]] = {}
    for entry in entries:
        for task, metric, value, _, _ in _rows(entry):
            if (task, metric) not in values:
                keys.append((task, metric))
                values[(task, metric)] = {}
            values[(task, metric)][entry["name"]] = value
    names = [e["name"] for e in entries]
    lines = ["## Comparison", "", "| task | metric | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    for task, metric in keys:
        row = values[(task, metric)]
        present = [v for v in row.values() if v is not None]
        best = (min if metric in LOWER_IS_BETTER else max)(present) if present else None
        cells = []
        for name in names:
            v = row.get(name)
            text = _fmt(v, metric)
            cells.append(f"**{text}**" if v is not None and v == best and len(present) > 1 else text)
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def write_results(out_dir: str | os.PathLike, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write results.json and results.md into `out_dir` (atomically); return their paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    if results["settings"].get("prompting"):
        results["prompting"] = prompting_table(results)
    write_json(json_path, results)
    write_text(md_path, to_markdown(results))
    return json_path, md_path
