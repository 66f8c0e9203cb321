"""The run report: timed steps as they happen (human lines on stderr) and the final JSON."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .cache import CacheStats
from .transfer import redact


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
    steps: list[Step] = field(default_factory=list)
    installed: dict[str, str] = field(default_factory=dict)
    cache: CacheStats = field(default_factory=CacheStats)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int = 0
    started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        print(f"warmstart: {redact(message)}", file=self.stream, flush=True)

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
        return _redacted({
            "ok": self.error is None,
            "recipe": self.recipe,
            "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds, "detail": s.detail}
                      for s in self.steps],
            "installed": self.installed,
            "cache": asdict(self.cache),
            "total_seconds": round(time.perf_counter() - self.started, 3),
            **self.extra,
            **({"error": self.error, "exit_code": self.exit_code} if self.error else {}),
        })


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value
