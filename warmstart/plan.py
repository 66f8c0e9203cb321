"""The bootstrap plan: what to install and where each wheel comes from, decided without side
effects from the facts `prepare` gathered (recipe, lock, target Python, GPU, cache listing).

    Options --prepare--> Facts --make_plan--> Plan --Executor--> Outcome --> Report (lines, JSON)
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import NormalizedName
from packaging.version import Version

from . import PROJECT_ROOT
from .console import abridged, counted
from .disks import remount
from .errors import PreconditionUnmet
from .gpu import GpuReport, GpuVerdict
from .images import Drift, Image
from .invocation import in_cell, in_notebook
from .lock import Lock, LockTarget, Needs, Pin, relock_command
from .patches import APPLIED, PatchState
from .profiles import Profile
from .recipe import Asset, Recipe
from .settings import Options
from .snapshot import Snapshot
from .target import Signatures, TargetPython, platform_tag


@dataclass(frozen=True)
class Facts:
    """What `prepare` found on this machine and on Drive, changing nothing."""

    recipe: Recipe
    profile: Profile
    drive: Path
    target: TargetPython
    gpu: GpuReport
    verdict: GpuVerdict  # the GPU against the recipe's [gpu] table
    lock: Lock
    image: Image | None  # the platform image the lock was compiled against
    cached: dict[NormalizedName, str]  # the Drive cache's wheel (file name) per pin, for this target
    assets: dict[Asset, tuple[Path, str]]  # destination, and "in place" / "cached" / "missing"
    broken: dict[NormalizedName, Path]  # half-installed (a killed install): name -> its dist-info folder
    needs: Needs  # the lock against what the target has
    snapshot: Snapshot | None  # where the snapshot of what this VM installs lies (None: nothing to install)
    snapshot_found: bool  # ... and whether Drive has it
    installer: str  # "pip" or "uv"
    warnings: tuple[str, ...] = ()  # said before the plan (a fallback lock)
    whole_records: Signatures = field(default_factory=dict)  # RECORDs found whole: remembered by a real run
    in_team: frozenset[str] = frozenset()  # the cached wheels only the team cache holds
    patches: tuple[PatchState, ...] = ()  # the recipe's patches against the environment
    drift: Drift | None = None  # this VM against the lock's image (None: a bare lock)
    live_lock: str | None = None  # where on Drive the lock made for this runtime lies (livelock.py)
    drive_down: str | None = None  # why Drive stopped answering while it was looked at (store.py)
    drive_read_only: str | None = None  # why nothing can be written there: mounted read-only (store.py)
    # wheels (name, version) an earlier run's Drive writes will put there (drivework.queued_wheels)
    queued: frozenset[tuple[NormalizedName, Version]] = frozenset()
    # PIP_BREAK_SYSTEM_PACKAGES: a target its system's package manager owns may be changed all the same
    break_system_packages: bool = False

    @property
    def installing(self) -> tuple[Pin, ...]:
        return installing_of(self.needs, self.broken)

    def queued_for_drive(self, pin: Pin) -> bool:
        """Whether an earlier run's Drive writes will put this pin's wheel on Drive (`queued`): a
        run leaves it to them, as a Drive that refuses writes keeps their job for a later run."""
        return (pin.name, Version(pin.version)) in self.queued

    def relock(self, *more: str) -> str | None:
        """The `invoke lock` line (with `more` flags) that compiles this run's lock anew; None for
        the lock made on Drive for this runtime (livelock.py), which is no checkout's."""
        if self.live_lock:
            return None
        minor = f"{self.target.version.major}.{self.target.version.minor}"
        target = LockTarget(minor, platform_tag(), self.image.name if self.image else None)
        return relock_command(self.recipe, target, PROJECT_ROOT, *more)


def installing_of(found: Needs, broken: Mapping[NormalizedName, Path]) -> tuple[Pin, ...]:
    """What a VM installs: what the lock needs that the target lacks, and the half-installed."""
    return tuple(p for p in found.wanted if p in found.install or p.name in broken)


@dataclass(frozen=True)
class Plan:
    """What to do, decided from the facts (which it points at) and the options."""

    facts: Facts
    offline: bool
    to_install: tuple[Pin, ...]  # locked pins not installed at their locked version
    to_download: tuple[Pin, ...]  # pins the cache lacks: fetched from the index, then cached
    use_snapshot: bool  # Drive has the snapshot of to_install: restore it rather than install wheel by wheel
    warnings: tuple[str, ...] = ()

    @property
    def patches_pending(self) -> bool:
        return any(p.state != APPLIED for p in self.facts.patches)

    @property
    def assets_to_place(self) -> list[Asset]:
        return [a for a, (_dest, state) in self.facts.assets.items() if state != "in place"]

    @property
    def replaced(self) -> dict[NormalizedName, tuple[str, str]]:
        """Distributions the install changes from one version to another: (old, new)."""
        installed = self.facts.target.installed
        return {p.name: (installed[p.name], p.version) for p in self.to_install
                if p.name in installed and not p.satisfied_by(installed[p.name])}

    def installed_now(self) -> dict[str, str]:
        """Each locked name: its version in the target before the run ("" when absent)."""
        return {p.name: self.facts.target.installed.get(p.name, "") for p in self.facts.lock.pins}

    @property
    def workdir(self) -> Path:
        return self.facts.drive / self.facts.recipe.workdir

    @property
    def nothing_to_do(self) -> bool:
        return not self.to_install and not self.to_download and not self.assets_to_place and not self.patches_pending

    def describe(self) -> list[str]:
        facts = self.facts
        from_cache = [p for p in self.to_install if p.name in facts.cached]
        from_team = [p for p in from_cache if facts.cached[p.name] in facts.in_team]
        from_drive = [p for p in from_cache if p not in from_team]
        lines = [
            f"recipe {facts.recipe.name} ({facts.recipe.path})",
            f"target {facts.target.executable} (Python {facts.target.version})",
            f"lock {facts.live_lock or facts.lock.path} ({counted(len(facts.lock.pins), 'pin')}"
            + (", made on this runtime)" if facts.live_lock else ")"),
            *([f"image {facts.drift.describe()}"] if facts.drift else []),
            f"drive {facts.drive}, workdir {self.workdir}",
        ]
        if self.nothing_to_do:
            lines.append("the environment already matches the lock: nothing to do")
            return lines
        restoring = bool(self.to_install and self.use_snapshot and facts.snapshot)
        how = (f"from the snapshot {facts.snapshot.index_name} (with {facts.installer} from the wheels "
               "below, should it be unusable)" if restoring and facts.snapshot else f"with {facts.installer}")
        lines.append(f"install {len(self.to_install)} {how}: {_names(self.to_install, 6)}")
        # Said before anything changes: what the environment had, and loses.
        for name, (old, new) in sorted(self.replaced.items()):
            restart = ("; the notebook's kernel imports it at start: restart the runtime afterwards"
                       if name in facts.profile.preloaded else "")
            lines.append(f"  replaces {name} {old} with {new}{restart}")
        if facts.needs.provided:
            lines.append("  provided by the platform: " + ", ".join(
                f"{name} {have}" for name, have in sorted(facts.needs.provided.items())))
        lines.append(f"  from the Drive cache {len(from_drive)}: {_names(from_drive, 6)}")
        if from_team:
            lines.append(f"  from the team cache {len(from_team)}: {_names(from_team, 6)}")
        lines.append(f"download into the cache {len(self.to_download)}: {_names(self.to_download, 6)}")
        for asset, (dest, state) in facts.assets.items():
            lines.append(f"asset {asset.name} -> {dest}: {state}")
        installing = {p.name for p in self.to_install}
        lines += [f"patch {p.describe()}" + (", unless the snapshot carries it applied"
                                             if restoring and p.state != APPLIED and p.distribution in installing
                                             else "")
                  for p in facts.patches]
        return lines


def _names(pins: list[Pin] | tuple[Pin, ...], limit: int | None = None) -> str:
    return abridged([f"{p.name}=={p.version}" for p in pins], limit) or "-"


def require_python(recipe: Recipe, executable: Path, version: Version) -> None:
    """The target's Python is one the recipe supports (said before any lock is looked for: no
    lock is the answer to the wrong Python)."""
    if not recipe.supports(version):
        raise PreconditionUnmet(f"{recipe.path}: the recipe needs Python {recipe.python}, but {executable} is "
                                f"{version}; pass --python with a matching interpreter")


def cache_lacks(facts: Facts) -> tuple[Pin, ...]:
    """What an online run downloads into the cache: all the lock needs, not just what this VM
    lacks (the next VM may not have what this one had), less what is cached, what an earlier
    run's Drive writes will put there, and what every VM of the platform's image ships."""
    found, cached = facts.needs, facts.cached
    shipped = facts.image.shipped if facts.image else {}
    return tuple(p for p in found.wanted if p.name not in cached and not facts.queued_for_drive(p)
                 and p.name not in found.provided and not p.satisfied_by(shipped.get(p.name)))


def drive_serves_all(facts: Facts) -> bool:
    """Drive alone holds what an online run needs: every wheel it would download or install
    (should the snapshot fail), every asset, and the snapshot of what it installs. Its team store
    is then held back (warmstart.tiered)."""
    return (not cache_lacks(facts)
            and all(p.name in facts.cached for p in facts.installing)
            and all(state != "missing" for _dest, state in facts.assets.values())
            and (facts.snapshot_found or not facts.installing))


def make_plan(facts: Facts, options: Options) -> Plan:
    """Decide the work, or raise PreconditionUnmet when this machine cannot do it."""
    recipe, target, drive = facts.recipe, facts.target, facts.drive
    require_python(recipe, target.executable, target.version)

    warnings = list(facts.warnings)
    verdict = facts.verdict
    if verdict.missing:
        if not options.allow_no_gpu:
            raise PreconditionUnmet(f"{verdict.missing} (or pass --allow-no-gpu to go on without one)")
        warnings.append(verdict.missing)
    if verdict.unfit:
        if not options.allow_unfit_gpu:
            raise PreconditionUnmet(
                "; and ".join(verdict.unfit) + " (or pass --allow-unfit-gpu to go on anyway)"
            )
        warnings.extend(verdict.unfit)

    to_install, cached = facts.installing, facts.cached
    if refused := system_managed(facts):
        raise PreconditionUnmet(refused)
    use_snapshot = bool(to_install) and facts.snapshot_found
    if options.offline:
        if facts.drive_down and (to_install or any(state == "missing" for _dest, state in facts.assets.values())):
            raise PreconditionUnmet(offline_without_drive(facts.drive_down, facts.drive))
        missing = [p for p in to_install if p.name not in cached]
        if missing and not use_snapshot:
            raise PreconditionUnmet(
                f"--offline, but the Drive cache {drive} lacks wheels for {_names(missing)}; "
                "run once without --offline to fill it"
            )
        absent = [f"{a.name} ({dest})" for a, (dest, state) in facts.assets.items() if state == "missing"]
        if absent:
            raise PreconditionUnmet(
                f"--offline, but the Drive cache {drive} lacks the assets {', '.join(absent)}; "
                "run once without --offline to fill it"
            )
        to_download: tuple[Pin, ...] = ()
    else:  # nothing for a Drive mounted read-only: it cannot keep them
        to_download = () if facts.drive_read_only else cache_lacks(facts)

    plan = Plan(facts, options.offline, to_install, to_download, use_snapshot, tuple(warnings))
    if options.keep_runtime and plan.replaced:
        changes = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in sorted(plan.replaced.items()))
        raise PreconditionUnmet(
            f"--keep-runtime, but {facts.lock.path} would replace {len(plan.replaced)} of what {target.executable} "
            f"has: {changes}; " + ("run once without --offline (warmstart then makes a lock for this runtime and "
                                   "keeps it on Drive), or " if options.offline and facts.image else "run ")
            + "without --keep-runtime")
    return plan


def system_managed(facts: Facts) -> str | None:
    """Why a run that installs into the target does not, when its system's package manager owns it
    (PEP 668; pip and uv refuse it too) and PIP_BREAK_SYSTEM_PACKAGES does not say yes, and what to
    do instead: a virtualenv that sees the system's packages. None when nothing stands in the way."""
    target = facts.target
    if not (facts.installing and target.externally_managed and not facts.break_system_packages):
        return None
    venv = Path.home() / "venvs" / facts.recipe.name
    make = in_cell([str(target.executable), "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   in_notebook())
    return (f"{target.executable} is the system's Python, whose packages its package manager owns "
            f"({target.externally_managed}): pip and uv refuse to change them. Make a virtualenv that sees them, "
            f"`{make}`, and pass --python {shlex.quote(str(venv / 'bin' / 'python'))}; or, in a container that is "
            "yours to change, set PIP_BREAK_SYSTEM_PACKAGES=1")


def offline_without_drive(down: str, drive: Path) -> str:
    """An offline run that needs Drive (at `drive`), which stopped answering: what to do."""
    return (f"--offline, but {down}: on Colab, {remount(drive)} and run again "
            "(without --offline the package index serves what Drive cannot)")
