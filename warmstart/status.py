"""`status`: what a bootstrap would find and do on this machine, changing nothing."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import checks, config, drivework, restart
from .bootstrap import prepare, wiped_vm_snapshot
from .cli import run_reported
from .console import abridged, counted, shown, write_line
from .disks import FLUSH_CELL, UPLOADED_WHEN, uploads_later
from .plan import Plan, make_plan, system_managed
from .profiles import select_profile
from .report import Report
from .settings import Options, resolve
from .snapshot import KIND as SNAPSHOTS
from .snapshot import Snapshot, packed_for_others
from .target import shared_files
from .tiered import TieredStore

# Installers and build tools every environment has; not worth listing as "extra".
_BASELINE = {"pip", "setuptools", "wheel", "distribute"}
NAMES_SHOWN = 20  # a human line names at most this many distributions (--json lists them all)


def describe_action(plan: Plan, writes: drivework.Pending | None) -> str:
    """What a bootstrap would do: with an earlier run's Drive writes pending, first finish them
    (their worker gone) or wait for them (before it installs: a snapshot is of what it describes)."""
    action = _own_action(plan)
    if writes is None or (writes.running and action == "no-op"):
        return action
    first = "wait for an earlier run's Drive writes" if writes.running else "finish an earlier run's Drive writes"
    return first if action == "no-op" else f"{first}, then {action}"


def _own_action(plan: Plan) -> str:
    if plan.nothing_to_do:
        return "no-op"
    if not plan.to_install:
        due = [("fill the Drive cache", plan.to_download), ("place assets", plan.assets_to_place),
               ("apply the recipe's patches", plan.patches_pending)]
        return " and ".join(what for what, pending in due if pending)
    missing = [p for p in plan.to_install if p.name not in plan.facts.cached]
    if not missing:
        return "install from cached wheels"
    return f"download {counted(len(missing), 'wheel')}, then install"


def looked(options: Callable[[], Options], recipe: str | None, root: Path, *,
           lines: bool = True) -> tuple[Report, dict[str, Any]]:
    """`status` under the report's guard (what goes wrong becomes its error and exit code), its
    lines on stdout unless `lines` is False: the report, and the facts (none when it failed).
    The task and the in-kernel call (warmstart.colab.status) both look so."""
    facts: dict[str, Any] = {}

    def show(report: Report) -> None:
        facts.update(status(options(), root, report))
        if lines:
            write_line(shown("\n".join(status_lines(facts)), keep_lines=True), sys.stdout)

    with config.reading_ahead(root, recipe):
        report = run_reported(show, recipe or "", as_json=False)
    if facts:  # as every command's JSON says how it ended: 1 until there is nothing to do
        facts.update(error=None, exit_code=0 if facts["complete"] else 1)
    return report, facts


def status(options: Options, root: Path, report: Report) -> dict[str, Any]:
    options = replace(options, dry_run=True, allow_no_gpu=True, allow_unfit_gpu=True)
    profile = select_profile(root)
    facts, store = prepare(resolve(options, profile), profile, root, report)
    # looked past, as the GPU check is below: a bootstrap stops there, and says so (plan.system_managed)
    plan = report.plan = make_plan(replace(facts, break_system_packages=True), options)
    wanted = {p.name: p for p in facts.needs.wanted}
    locked = {p.name: p.version for p in facts.lock.pins}
    have = facts.target.installed
    shipped = facts.image.shipped if facts.image else {}
    extra = sorted(n for n in have if n not in locked and n not in _BASELINE)
    writes = drivework.pending(facts.target.prefix)
    wheel_bytes = sum(store.size("wheels", name) for name in facts.cached.values())
    wiped = wiped_vm_snapshot(facts)
    # the checks a bootstrap that installs nothing runs (none with --packages-only: none are read)
    due = checks.due(facts.target.prefix, facts.recipe.name, () if options.packages_only else facts.recipe.checks)
    found: dict[str, Any] = {
        "platform": facts.profile.name,
        "gpu": facts.gpu.as_json(),
        "gpu_warnings": [w for w in plan.warnings if w in facts.verdict.problems],
        "warnings": [w for w in plan.warnings if w not in facts.verdict.problems],  # a fallback lock, pip for uv
        "python": str(facts.target.executable),
        "python_version": str(facts.target.version),
        "python_externally_managed": facts.target.externally_managed or None,  # its PEP 668 marker
        "lock": facts.live_lock or str(facts.lock.path),
        "lock_made_here": facts.live_lock is not None,  # made on a VM of this runtime (livelock.py)
        "image": facts.image.describe() if facts.image else None,
        "image_drift": facts.drift.as_json() if facts.drift else None,
        "missing": sorted(n for n in wanted if n not in have),
        "different": {n: {"installed": have[n], "locked": pin.version}
                      for n, pin in sorted(wanted.items())
                      if n in have and not pin.satisfied_by(have[n])},
        # met by the platform's own build of the locked version (Colab's torch 2.11.0+cu128)
        "provided": {n: {"installed": v, "locked": locked[n]} for n, v in sorted(facts.needs.provided.items())},
        "left_to_platform": sorted(p.name for p in facts.needs.left),
        "extra": extra,
        # of those, what the image the lock was made for does not ship (what was added here: on
        # Colab the rest are some 600 of the image's own); None without an image
        "extra_not_shipped": [n for n in extra if n not in shipped] if facts.image else None,
        # an excluded distribution the platform ships, whose files a locked one was installed over
        # (not one the image itself ships beside it, as Colab does opencv-python and its headless build)
        "shared": [{"excluded": other, "version": have[other], "with": name, "with_version": have[name],
                    "files": len(files)}
                   for (name, other), files in shared_files(
                       facts.target, [n for n in locked if n in have and shipped.get(n) != have[n]],
                       [n for n in facts.recipe.exclude if n in have]).items()],
        "broken": sorted(facts.broken),  # half-installed by a killed run
        "patches": [p.as_json() for p in facts.patches],
        "cache": {
            "drive": str(facts.drive),
            "wheels": len(facts.cached),
            "wheels_locked": len(locked),
            "wheel_bytes": wheel_bytes,
            "assets": {asset.name: state for asset, (_dest, state) in facts.assets.items()},
            # the team cache behind Drive (--cache): what only it holds, and whether it answered
            "team": {**team, "wheels_only_there": len(set(facts.cached.values()) & store.team_only("wheels"))}
            if (team := store.describe_team()) else None,
            # what a wiped VM of this platform restores from (None: its image ships every pin)
            "snapshot": None if wiped is None else _wiped_vm(wiped, store, facts.recipe.name, writes),
        },
        "action": describe_action(plan, writes),
        # replaced by an earlier run while the notebook's kernel, still running, had them imported
        "restart_needed": sorted(restart.pending(facts.target.prefix)),
        "checks_failed": due.failed,
        # the checks a bootstrap that installs nothing runs: those not passed here as they are now
        "checks_due": [c.name for c in due.checks],
        # what an earlier run still writes to Drive: "cache filling: n of m files on Drive; snapshot pending"
        "drive_writes": writes.describe() if writes else None,
        # on Google Drive's own client, what is on Drive here reaches Drive only once uploaded:
        # the cell that waits for that
        "drive_upload": FLUSH_CELL if uploads_later(facts.drive) else None,
        # why nothing can be written to Drive (mounted read-only), or None
        "drive_read_only": facts.drive_read_only,
    }
    if found["checks_due"] and found["action"] == "no-op":
        found["action"] = ("run the checks not yet passed here" if due.new
                           else "run the checks that failed last time again")
    if refused := system_managed(facts):
        found["action"] = f"stop: {refused}"
    if facts.verdict.problems:  # looked past above; a bootstrap without the flag stops there
        flag = "--allow-no-gpu" if facts.verdict.missing else "--allow-unfit-gpu"
        found["action"] = f"stop at the GPU check (with {flag}: {found['action']})"
    found["matches"] = not (found["missing"] or found["different"] or found["broken"]
                            or plan.assets_to_place or plan.patches_pending or found["checks_due"])
    found["safe_to_shut_down"] = found["drive_writes"] is None  # a wiped VM then finds it all on Drive
    found["complete"] = found["matches"] and found["safe_to_shut_down"]  # the exit code: 0 when both
    report.status = found
    return found


def _extra(extra: list[str], not_shipped: list[str] | None) -> str:
    """Installed, not in the lock: those the lock's image ships only counted."""
    if not_shipped is None or len(not_shipped) == len(extra):
        return abridged(extra, NAMES_SHOWN) or "-"
    return f"{abridged(not_shipped, NAMES_SHOWN) or 'none'} besides the image's {len(extra) - len(not_shipped)}"


def _wiped_vm(wiped: Snapshot, store: TieredStore, recipe: str, writes: drivework.Pending | None) -> dict[str, Any]:
    """Where the snapshot a wiped VM restores lies: "drive", "team" or None (it installs from the
    wheels, then packs one); whether the Drive writes of an earlier run pack it (drive_writes);
    and, where it lies nowhere, the recipe's snapshots Drive holds for other targets, each with
    what it was packed for (a prefix, a Python, a lock): why none of them is restored."""
    found = ("drive" if store.here.on_drive(SNAPSHOTS, wiped.index_name)
             else "team" if store.team and store.team.has(SNAPSHOTS, wiped.index_name) else None)
    queued = bool(writes and wiped.stem in writes.snapshots)
    return {"index": wiped.index_name, "found": found, "queued": queued,
            "elsewhere": [] if found or queued else packed_for_others(store, recipe, wiped)}


def _snapshot(wiped: dict[str, Any] | None, drive: str, read_only: bool) -> str:
    """What a wiped VM of this platform restores from."""
    if wiped is None:
        return "none needed: a wiped VM of this image installs nothing"
    where = {"drive": f"in {drive}", "team": "in the team cache"}.get(wiped["found"])
    if where:
        return f"{wiped['index'].removesuffix('.json')} {where}: a wiped VM restores from it"
    if wiped["queued"]:
        return f"none for a wiped VM in {drive} yet: the Drive writes below pack it"
    if elsewhere := wiped["elsewhere"]:
        held = "the one there is for another target" if len(elsewhere) == 1 else "those there are for other targets"
        elsewhere_said = f" ({held}: {'; '.join(other['for'] for other in elsewhere)})"
    else:
        elsewhere_said = ""
    if read_only:
        return f"none for a wiped VM in {drive}{elsewhere_said}, and none is packed while it is mounted read-only"
    return f"none for a wiped VM in {drive} yet{elsewhere_said}: it installs from the wheels, then packs one"


def _drive(facts: dict[str, Any]) -> str:
    """What is left to write to Drive, and when it is safe to shut down."""
    if facts["drive_writes"]:
        return facts["drive_writes"]
    if facts["drive_read_only"]:
        return f"{facts['drive_read_only']}: warmstart writes nothing there"
    return "nothing left to write to Drive: safe to shut down" + (f" {UPLOADED_WHEN}" if facts["drive_upload"] else "")


def status_lines(facts: dict[str, Any]) -> list[str]:
    gpu = facts["gpu"]
    gpus = ", ".join(d["name"] for d in gpu["devices"]) or f"none ({gpu['error']})"
    cache = facts["cache"]
    lines = [
        f"platform  {facts['platform']}",
        f"gpu       {gpus}" + "".join(f"\n          ! {w}" for w in facts["gpu_warnings"]),
        f"python    {facts['python']} ({facts['python_version']})" + (
            f", externally managed ({managed})" if (managed := facts["python_externally_managed"]) else ""),
        f"lock      {facts['lock']}" + (" (made on this runtime)" if facts["lock_made_here"] else "")
        + (f"\n          compiled against {facts['image']}" if facts["image"] else ""),
        *([f"image     {facts['image_drift']['summary']}"] if facts["image_drift"] else []),
        *(f"warning   {w}" for w in facts["warnings"]),
        f"missing   {', '.join(facts['missing']) or '-'}",
        "different " + (", ".join(f"{n} {d['installed']} (locked {d['locked']})"
                                  for n, d in facts["different"].items()) or "-"),
        "provided  " + (", ".join(f"{n} {d['installed']} (locked {d['locked']})"
                                  for n, d in facts["provided"].items()) or "-")
        + (f"; with {counted(len(left), 'pin')} only they need" if (left := facts["left_to_platform"]) else ""),
        f"extra     {_extra(facts['extra'], facts.get('extra_not_shipped'))}",
        *(f"shared    {s['excluded']} {s['version']}, which the recipe excludes, shares {counted(s['files'], 'file')} "
          f"with {s['with']} {s['with_version']}: removing it would delete them"
          for s in facts["shared"]),
        f"broken    {', '.join(facts['broken']) or '-'}",
        *(f"patch     {p['distribution']} {p['version']}: {', '.join(p['patches']) or '(no longer in the recipe)'}: "
          f"{p['state']}" for p in facts["patches"]),
        f"cache     {cache['wheels']} of {cache['wheels_locked']} wheels "
        f"({cache['wheel_bytes'] / 2**20:.1f} MiB) in {cache['drive']}",
        f"snapshot  {_snapshot(cache['snapshot'], cache['drive'], bool(facts['drive_read_only']))}",
    ]
    if team := cache["team"]:
        lines.append(f"team      {team['cache']}" + (" (read-only)" if team["read_only"] else "")
                     + f": {team['wheels_only_there']} of those wheels only there"
                     + (f"; cannot be used: {team['problem']}" if team["problem"] else ""))
    lines += [f"asset     {name}: {state}" for name, state in cache["assets"].items()]
    if facts["checks_failed"]:
        lines.append(f"checks    failed last time: {', '.join(facts['checks_failed'])} (bootstrap runs them again)")
    if new := [name for name in facts["checks_due"] if name not in facts["checks_failed"]]:
        lines.append(f"checks    not yet passed here as they are: {', '.join(new)} (bootstrap runs them)")
    lines.append(f"drive     {_drive(facts)}")
    if facts["restart_needed"]:
        lines.append(f"restart   the runtime: the running kernel imported old versions of "
                     f"{', '.join(facts['restart_needed'])}")
    lines.append(f"bootstrap would: {facts['action']}")
    return lines
