"""`llmlab quickstart`: crawl -> clean -> index -> tokenizer -> pretrain -> SFT -> eval -> RAG -> report -> playground.

Each stage writes into the run directory (see README "Run directory") and records itself in
`quickstart.json` when it finishes; a re-run skips the stages whose record and outputs are there, so
Ctrl-C at any point and the same command continues (the crawl and the training runs also resume from
the middle). `--force` starts over.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmlab.errors import ConfigError, InputError
from llmlab.files import RunDir, write_json
from llmlab.quickstart import plan

STATE = "quickstart.json"


@dataclass
class QuickstartConfig:
    out: Path = Path("runs/quickstart")
    minutes: float = 20.0  # wall-clock budget for everything up to the report
    url: str | None = None  # crawl this site instead of the embedded pydoc site
    source: list[str] = field(default_factory=list)  # WARC/JSONL/Parquet/text instead of crawling
    max_pages: int = 400
    recipe: str = "documentation"
    vocab_size: int = 4096
    context_length: int = 256
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.minutes <= 0:
            raise ConfigError(f"--minutes must be positive, got {self.minutes}")
        if self.url and self.source:
            raise ConfigError("give either --url or --source, not both")


class Quickstart:
    """Runs the stages in order, timing each and skipping those already done."""

    def __init__(self, config: QuickstartConfig) -> None:
        self.config = config
        self.run = RunDir(config.out)
        self.state_path = config.out / STATE
        if config.force and self.state_path.exists():
            self.state_path.unlink()
        self.state: dict[str, Any] = self._load_state()
        self.started = time.monotonic()

    # --- bookkeeping ----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"stages": {}, "config": _jsonable(asdict(self.config))}
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{self.state_path} is corrupt ({e})", hint="re-run with --force to start over") from e

    def done(self, stage: str) -> dict[str, Any] | None:
        return self.state["stages"].get(stage)

    def elapsed_before(self) -> float:
        """Seconds the finished stages took, in this and earlier invocations."""
        return sum(s["seconds"] for s in self.state["stages"].values())

    def remaining(self) -> float:
        return self.config.minutes * 60 - self.elapsed_before()

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], force: bool = False) -> dict[str, Any]:
        record = self.done(name)
        if record is not None and not force:
            print(f"[quickstart] {name}: done earlier ({record['seconds']:.0f} s), skipped", flush=True)
            return record["summary"]
        print(f"[quickstart] {name} ...", flush=True)
        t0 = time.monotonic()
        summary = fn()
        seconds = time.monotonic() - t0
        self.state["stages"][name] = {"seconds": round(seconds, 1), "summary": _jsonable(summary)}
        write_json(self.state_path, self.state)
        print(f"[quickstart] {name}: {seconds:.0f} s", flush=True)
        return summary

    # --- the whole run ------------------------------------------------------------------------

    def run_all(self) -> Path:
        from llmlab.quickstart import stages

        c, r = self.config, self.run
        if c.source:
            inputs = [str(p) for p in c.source]
        else:
            if not c.url:
                self.stage("site", lambda: stages.render(r.root / "site", c.max_pages))
            self.stage("crawl", lambda: stages.crawl_site(c, r, self.state))
            inputs = [str(r.crawl / "pages.warc.gz")]
        self.stage("clean", lambda: stages.clean_documents(inputs, r.clean, c.recipe))
        self.stage("index", lambda: stages.index_documents(r))  # before the budget split: its time is counted
        self.stage("tokenizer", lambda: stages.tokenize(r, c.vocab_size, c.seed))
        budget = plan.split_budget(self.remaining())
        self.stage("pretrain", lambda: stages.pretrain(r, c, budget.pretrain))
        self.stage("sft", lambda: stages.sft(r, c, budget.sft))
        self.stage("eval", lambda: stages.evaluate(r, c))
        self.stage("rag", lambda: stages.rag_answers(r, c))
        self.stage("report", lambda: stages.report(r, self.state), force=True)
        return r.report


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
