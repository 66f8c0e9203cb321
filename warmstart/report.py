"""The run report: timed steps as they happen (human lines on stderr), and the final JSON rendered
from what the pipeline produced (its facts, plan and outcome), each set once by its producer."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .console import Bars, shown, silence, write_line
from .errors import redact
from .gpu import GpuReport
from .outcome import Outcome
from .plan import Plan
from .store import CacheStats
from .tiered import TieredStore

# The JSON report's format; raised when a field changes meaning or goes away (adding one does not).
REPORT_VERSION = 1


@dataclass
class Step:
    name: str
    status: str = "ok"  # ok, warning, skipped, failed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Report:
    recipe: str
    stream: TextIO = sys.stderr
    bars: Bars = field(default_factory=Bars)
    steps: list[Step] = field(default_factory=list)
    platform: str | None = None  # the profile, known first
    gpu: GpuReport | None = None
    plan: Plan | None = None  # set by bootstrap once the plan is made
    outcome: Outcome | None = None  # set by bootstrap when the executor starts (None: a dry run)
    status: dict[str, Any] | None = None  # set by `status`
    store: TieredStore | None = None  # the store the run uses (its team tier's part is reported)
    error: str | None = None
    exit_code: int = 0
    error_detail: tuple[str, ...] = ()  # what a tool said of the error, a line each
    started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        """A line on stderr. Once its reader has left (`2>&1 | head`), the lines go nowhere and the
        run goes on: its work does not hang on who reads about it."""
        try:
            write_line(f"warmstart: {shown(message)}", self.stream, flush=True)
        except BrokenPipeError:
            silence(self.stream)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        start = time.perf_counter()
        try:
            yield step
        except BaseException:
            step.status = "failed"
            raise
        finally:
            step.seconds = round(time.perf_counter() - start, 3)
            self.steps.append(step)
            detail = f"  {step.detail}" if step.detail else ""
            self.say(f"{name:<9} {step.status:<8} {step.seconds:6.2f}s{detail}")

    def as_json(self) -> dict[str, Any]:
        """The report; no credential of any URL in any of its strings."""
        out: dict[str, Any] = {
            "version": REPORT_VERSION,
            "ok": self.error is None,
            "recipe": self.recipe,
            "steps": [asdict(s) for s in self.steps],
            # each locked name's version after the run (a dry run: as found)
            "installed": self.outcome.installed if self.outcome else self.plan.installed_now() if self.plan else {},
            "cache": asdict(self.store.stats if self.store else CacheStats()),
            "total_seconds": round(time.perf_counter() - self.started, 3),
        }
        if self.platform:
            out["platform"] = self.platform
        if self.gpu:
            out["gpu"] = self.gpu.as_json()
        if plan := self.plan:
            facts = plan.facts
            out.update(drive=str(facts.drive), workdir=str(plan.workdir), lock=facts.live_lock or str(facts.lock.path),
                       image=facts.image.name if facts.image else None,
                       provided=dict(sorted(facts.needs.provided.items())),
                       python=str(facts.target.executable), installer=facts.installer,
                       dry_run=self.outcome is None, patches=[p.as_json() for p in facts.patches],
                       image_drift=facts.drift.as_json() if facts.drift else None)
        if self.store and (team := self.store.describe_team()):
            out["team_cache"] = team
        if self.outcome:
            out.update(self.outcome.as_json())
        if self.status is not None:
            out["status"] = self.status
        # whatever the run ends in, as every command's --json says it (error null: none)
        out.update(error=self.error, exit_code=self.exit_code)
        if self.error_detail:
            out["error_detail"] = list(self.error_detail)
        return redacted(out)


def redacted(value: Any) -> Any:
    """A JSON value with no credential of any URL in any of its strings."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value
