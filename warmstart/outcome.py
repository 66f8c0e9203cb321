"""What a run did: filled by the executor as it goes (a run that fails midway still reports it),
rendered by the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.utils import NormalizedName

from .checks import CheckResult


@dataclass
class Outcome:
    """What the executor did, filled as it goes: a run that fails midway still reports it."""

    changed: bool = False
    installed: dict[str, str] = field(default_factory=dict)  # each locked name: its version after the run
    snapshot: dict[str, Any] | None = None  # {"used": bool, "index" | "reason": str}, when one was tried
    warnings: list[str] = field(default_factory=list)
    checks: list[CheckResult] | None = None  # None: not run
    replaced: dict[NormalizedName, tuple[str, str]] = field(default_factory=dict)  # name -> (old, new)
    restart_needed: list[str] = field(default_factory=list)  # imported by the kernel, since replaced
    drive_writes: str = ""  # "being written to Drive in the background", "written to Drive", or ""
    patches: list[dict[str, Any]] | None = None  # each patched distribution after the run (None: not run)

    def as_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            **({"snapshot": self.snapshot} if self.snapshot is not None else {}),
            "warnings": self.warnings,
            **({"checks": [c.as_json() for c in self.checks]} if self.checks is not None else {}),
            "replaced": {name: list(versions) for name, versions in self.replaced.items()},
            "restart_needed": self.restart_needed,
            "drive_writes": self.drive_writes,
            **({"patches": self.patches} if self.patches is not None else {}),
        }
