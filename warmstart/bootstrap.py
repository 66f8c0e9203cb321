"""`bootstrap`: gather facts (read-only), make the plan, then carry it out.

Everything up to the plan touches nothing, which is all `--dry-run` does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from . import assets, checks, faults, fetch, installer, restart, snapshot, target as target_python
from .assets import AssetStore
from .cache import CACHE_DIR, WheelCache, record_use
from .errors import BadInput, PreconditionUnmet, WarmstartError
from .gpu import GpuVerdict, judge, probe_gpus
from .lock import (LockTarget, Pin, check_fresh, existing_locks, lock_path, needs, parse_lock,
                   select_lock)
from .plan import Plan, make_plan, pins_to_install
from .profiles import require_drive, resolve_drive, select_profile
from .recipe import load_recipe
from .report import Report
from .transfer import explain, remove_stale_parts


@dataclass(frozen=True)
class Options:
    recipe: str
    drive: str | None = None
    python: str | None = None
    offline: bool = False
    allow_no_gpu: bool = False
    allow_unfit_gpu: bool = False
    dry_run: bool = False
    installer: str = "auto"
    packages_only: bool = False  # leave the recipe's assets and checks alone
    # Set by the in-kernel API: distributions whose modules the running kernel has imported.
    # A `!invoke` subprocess cannot know them and uses the platform's preloaded list instead.
    kernel_imported: frozenset[str] | None = None


def _requirements_file(pins: list[Pin] | tuple[Pin, ...], path: Path) -> Path:
    path.write_text("".join(pin.requirement_line() + "\n" for pin in pins))
    return path


def _no_lock(recipe, wanted: LockTarget) -> str:
    have = sorted(f"{t.python_tag} on {t.platform}" + (f" ({t.flavour})" if t.flavour else "")
                  for t in existing_locks(recipe).values())
    flavour = f" --platform-profile {wanted.flavour}" if wanted.flavour else ""
    return (f"{recipe.name} has no lock for {wanted.describe()} "
            f"({lock_path(recipe, wanted).name}); locks exist for: "
            f"{', '.join(have) or 'none'}; make one with `invoke lock --recipe {recipe.name}{flavour} "
            f"--python-version {wanted.python_version}`, or pass --python with an interpreter that has one")


def prepare(options: Options, root: Path, report: Report) -> tuple[Plan, WheelCache]:
    """Every check that changes nothing, ending in the plan."""
    profile = select_profile(root)
    drive = resolve_drive(options.drive, profile, os.environ)
    report.extra["platform"] = profile.name
    with report.step("recipe") as step:
        recipe = load_recipe(options.recipe, root, drive)
        report.recipe = recipe.name
        step.detail = str(recipe.path)
    with report.step("python") as step:
        target = target_python.probe(options.python)
        step.detail = f"{target.executable} (Python {target.version})"
    with report.step("gpu") as step:
        gpu = probe_gpus()
        report.extra["gpu"] = gpu.as_json()
        step.detail = gpu.describe()
        if judge(recipe.gpu, gpu) != GpuVerdict():
            step.status = "warning"
    with report.step("drive") as step:
        require_drive(drive, profile, create=not options.dry_run)
        step.detail = f"{drive} ({profile.name} platform)"
    with report.step("lock") as step:
        python_minor = f"{target.version.major}.{target.version.minor}"
        image = profile.image_for(python_minor)
        wanted, fallback = select_lock(recipe, image, python_minor, target_python.platform_tag())
        if fallback:
            report.say(f"warning: {fallback}")
        image = image if wanted.flavour else None
        path = lock_path(recipe, wanted)
        if not path.exists():
            raise PreconditionUnmet(_no_lock(recipe, wanted))
        lock = parse_lock(path)
        check_fresh(lock, recipe, wanted, image)
        if not options.offline:
            fetch.index_urls()  # a refused index is bad input: say so before anything changes
        step.detail = f"{lock.path.name}, {len(lock.pins)} pins"
        broken = target_python.broken_distributions(target, [p.name for p in lock.pins])
        if broken:
            step.detail += f"; half-installed: {', '.join(sorted(broken))}"
    with report.step("cache") as step:
        cache = WheelCache(drive)
        report.cache = cache.stats
        supported = target.supported_tags()
        cached = {p.name: path for p in lock.pins if (path := cache.lookup(p, supported))}
        store = AssetStore(drive, cache.stats)
        workdir = drive / recipe.workdir
        asset_states = {}
        for asset in () if options.packages_only else recipe.assets:
            dest = asset.destination(workdir)
            asset_states[asset] = (dest, store.state(asset, dest))
        step.detail = f"{len(cached)} of {len(lock.pins)} wheels in {cache.wheels}"
        if recipe.assets:
            in_cache = sum(state != "missing" for _dest, state in asset_states.values())
            step.detail += f"; {in_cache} of {len(recipe.assets)} assets"
        # A snapshot holds what a VM in this state installs; it is looked up by that set.
        installing = pins_to_install(lock, target, broken)
        found = snapshot.Snapshot.locate(drive, recipe.name, lock, target, installing)
        found = found if installing and found.exists() else None  # one stat on Drive
        if found:
            step.detail += "; a snapshot"
    plan = make_plan(recipe, profile, target, lock, drive, gpu, cached, asset_states,
                     found, installer.choose(options.installer),
                     broken, image,
                     offline=options.offline, allow_no_gpu=options.allow_no_gpu,
                     allow_unfit_gpu=options.allow_unfit_gpu)
    for warning in plan.warnings:
        report.say(f"warning: {warning}")
    report.extra.update(drive=str(drive), workdir=str(plan.workdir), lock=str(lock.path),
                        image=image.name if image else None,
                        provided=dict(sorted(plan.needs.provided.items())),
                        python=str(target.executable), installer=plan.installer,
                        dry_run=options.dry_run)
    return plan, cache


def _restore_snapshot(plan: Plan, report: Report) -> bool:
    """Unpack the snapshot; False (with the reason in the report) when it cannot be used."""
    assert plan.snapshot is not None
    replaced = [name for name in sorted(plan.replaced) if name not in plan.broken]

    def make_room() -> None:
        clear_broken(plan, report)
        installer.uninstall(plan.installer, plan.target.executable, replaced, plan.profile.unset_env)

    with report.step("snapshot") as step:
        try:
            size = snapshot.restore(plan.snapshot, plan.target, report.cache, make_room)
        except snapshot.SnapshotUnusable as exc:
            step.status, step.detail = "warning", str(exc)
            report.extra["snapshot"] = {"used": False, "reason": str(exc)}
            report.say(f"warning: {exc}; installing from the wheels instead")
            return False
        step.detail = f"{size / 2**20:.1f} MiB archive, {len(replaced)} replaced"
        report.extra["snapshot"] = {"used": True, "index": str(plan.snapshot.index)}
        return True


def clear_broken(plan: Plan, report: Report) -> None:
    """Remove half-installed distributions; what their RECORD names outside the prefix stays."""
    refused = target_python.remove_broken(list(plan.broken.values()), plan.target.prefix)
    if refused:
        warn(report, [f"left alone {len(refused)} paths that half-installed distributions list outside "
                      f"{plan.target.prefix}, e.g. {refused[0]}"])


def _first_install_seen(plan: Plan):
    """For the `install` fault point only: true once the installer has written a dist-info."""
    if not faults.armed("install"):
        return None
    before = set(plan.target.prefix.glob("lib/python*/site-packages/*.dist-info"))
    return lambda: bool(set(plan.target.prefix.glob("lib/python*/site-packages/*.dist-info")) - before)


def _clean_leftovers(plan: Plan) -> None:
    """Remove what killed runs left: old temporary files on Drive, staging folders in the target."""
    for folder in ("wheels", "assets", "snapshots"):
        try:
            remove_stale_parts(plan.drive / CACHE_DIR / folder)
        except OSError:
            pass  # cleaning is a courtesy; a failing Drive is reported where it matters
    for staging in plan.target.prefix.glob(".warmstart-restore-*"):
        shutil.rmtree(staging, ignore_errors=True)


def execute(plan: Plan, cache: WheelCache, report: Report) -> bool:
    """Restore from the snapshot, or fetch and verify wheels from Drive, download the rest and
    install them. True when wheels were installed (so a snapshot is worth making)."""
    _clean_leftovers(plan)
    with tempfile.TemporaryDirectory(prefix="warmstart-") as tmp:
        stage = Path(tmp)
        from_snapshot = bool(plan.to_install and plan.snapshot and _restore_snapshot(plan, report))
        need = [] if from_snapshot else list(plan.to_install)
        to_download = list(plan.to_download)
        with report.step("fetch") as step:
            for pin in need:
                if pin.name in plan.cached and cache.fetch(plan.cached[pin.name], pin, stage):
                    continue
                if plan.offline:
                    why = ("does not match the lock's sha256" if pin.name in plan.cached
                           else "is not in the Drive cache (and the snapshot could not be used)")
                    raise PreconditionUnmet(f"--offline, but the wheel for {pin.name}=={pin.version} {why}; "
                                            "run once without --offline to fetch it again")
                if pin not in to_download:
                    to_download.append(pin)
            step.detail = f"{cache.stats.hits} files, {cache.stats.bytes_read / 2**20:.1f} MiB from Drive"
        with report.step("download") as step:
            if to_download:
                downloads = stage / "downloads"
                downloads.mkdir()
                left = fetch.fetch_wheels(to_download, plan.target.supported_tags(), downloads)
                if left:  # what the index page could not place: pip finds it its own way
                    installer.download(plan.target.executable,
                                       _requirements_file(left, stage / "download.txt"), downloads,
                                       plan.profile.unset_env)
                faults.point("download")
                for wheel in sorted(downloads.iterdir()):
                    cache.store(wheel)
                    os.replace(wheel, stage / wheel.name)
                warn(report, cache.warnings)
                cache.stats.misses += len(to_download)
                step.detail = (f"{len(to_download)} wheels, "
                               f"{cache.stats.bytes_written / 2**20:.1f} MiB written to Drive")
            else:
                step.status = "skipped"
        with report.step("install") as step:
            if need:
                clear_broken(plan, report)
                installer.install_offline(plan.installer, plan.target.executable,
                                          _requirements_file(need, stage / "install.txt"), stage,
                                          plan.profile.unset_env, _first_install_seen(plan))
                step.detail = f"{len(need)} packages with {plan.installer}"
            else:
                step.status = "skipped"
    return bool(need)


def pack_snapshot(plan: Plan, report: Report) -> None:
    """Snapshot what this run installed, for the next VM in the same state; a failure here
    costs only speed."""
    target = snapshot.Snapshot.locate(plan.drive, plan.recipe.name, plan.lock, plan.target, plan.to_install)
    with report.step("pack") as step:
        try:
            # plan.target's sys.path still finds every RECORD: the install changed files, not paths.
            archive = snapshot.pack(target, plan.target, plan.to_install, report.cache)
        except snapshot.SnapshotUnusable as exc:
            step.status, step.detail = "warning", str(exc)
            warn(report, [f"no snapshot written: {exc}"])
            return
        except OSError as exc:
            step.status, step.detail = "warning", explain(exc)
            warn(report, [f"no snapshot written: {explain(exc)}"])
            return
        step.detail = f"{archive.stat().st_size / 2**20:.1f} MiB to {archive.name}"


def restore_assets(plan: Plan, report: Report) -> None:
    store = AssetStore(plan.drive, report.cache)
    with report.step("assets") as step, tempfile.TemporaryDirectory(prefix="warmstart-") as tmp:
        came = [assets.ensure(a, plan.assets[a][0], store, offline=plan.offline, scratch=Path(tmp))
                for a in plan.assets_to_place]
        step.detail = ", ".join(f"{n} {where}" for where, n in Counter(came).items())
    warn(report, store.warnings)


def warn(report: Report, warnings: list[str]) -> None:
    for warning in warnings:
        report.say(f"warning: {warning}")
    report.extra.setdefault("warnings", []).extend(warnings)


def run_checks(plan: Plan, report: Report) -> None:
    with report.step("checks") as step:
        results = [checks.run_check(check, plan.target.executable, plan.workdir)
                   for check in plan.recipe.checks]
        report.extra["checks"] = [r.as_json() for r in results]
        for result in results:
            last = result.output.splitlines()[-1] if result.output else ""
            report.say(f"check {result.name}: {'passed' if result.ok else 'FAILED'}  {last}")
        failed = [r.name for r in results if not r.ok]
        checks.remember(plan.target.prefix, plan.recipe.name, failed)
        step.detail = f"{len(results) - len(failed)} of {len(results)} passed"
        if failed:
            raise WarmstartError(f"{plan.recipe.path}: checks failed: {', '.join(failed)} "
                                 "(their output is above and in the report)")


def verify(plan: Plan, report: Report) -> None:
    with report.step("verify") as step:
        after = target_python.probe(plan.target.executable)
        report.installed = {p.name: after.installed.get(p.name, "") for p in plan.lock.pins}
        wrong = [f"{p.name} (wanted {p.version}, found {after.installed.get(p.name) or 'nothing'})"
                 for p in needs(plan.lock.pins, after.installed).install]
        if wrong:
            raise WarmstartError(f"after installing, these do not match {plan.lock.path}: "
                                 + ", ".join(wrong))
        step.detail = f"{len(plan.needs.wanted)} packages match the lock"
        if plan.needs.provided:
            step.detail += f", {len(plan.needs.provided)} by the platform's own build"


def target_lock(python: str | None) -> FileLock:
    """One run at a time per target environment, keyed by its real prefix (venv/bin/python and
    venv/bin/python3 are one environment). The lock file lies in warmstart's own folder, which
    only its user can write, not at a name anybody could plant in the shared /tmp; flock dies
    with its process."""
    prefix = target_python.real_prefix(python)
    folder = target_python.state_file("locks", prefix).parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return FileLock(folder / f"{hashlib.sha256(str(prefix).encode()).hexdigest()[:16]}.lock")


def bootstrap(options: Options, root: Path, report: Report) -> Plan:
    if options.dry_run:
        return _bootstrap(options, root, report)
    raw = os.environ.get("WARMSTART_LOCK_TIMEOUT", "600")
    try:
        timeout = float(raw)
    except ValueError:
        raise BadInput(f"WARMSTART_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from None
    lock = target_lock(options.python)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise WarmstartError(
            f"another warmstart run is installing into {target_python.target_executable(options.python)} and held "
            f"{lock.lock_file} too long; wait for it, or set WARMSTART_LOCK_TIMEOUT"
        ) from None
    try:
        return _bootstrap(options, root, report)
    finally:
        lock.release()


def _bootstrap(options: Options, root: Path, report: Report) -> Plan:
    plan, cache = prepare(options, root, report)
    for line in plan.describe():
        report.say(line)
    if options.dry_run:
        report.installed = {p.name: plan.target.installed.get(p.name, "") for p in plan.lock.pins}
        return plan
    with report.step("workdir") as step:
        plan.workdir.mkdir(parents=True, exist_ok=True)
        step.detail = str(plan.workdir)
    report.extra["changed"] = not plan.nothing_to_do
    stale = stale_imports(plan, options)
    kernel = restart.kernel_process(in_kernel=options.kernel_imported is not None)
    if stale and kernel:  # before anything changes: a run that fails midway still says it
        restart.remember(plan.target.prefix, stale, kernel)
    try:
        if plan.nothing_to_do:
            report.installed = {p.name: plan.target.installed.get(p.name, "") for p in plan.lock.pins}
            failed = checks.failed_before(plan.target.prefix, plan.recipe.name)
            if failed and plan.recipe.checks and not options.packages_only:
                report.say(f"checks failed here last time ({', '.join(failed)}): running them again")
                run_checks(plan, report)
        else:
            installed_wheels = (plan.to_install or plan.to_download) and execute(plan, cache, report)
            verify(plan, report)
            if installed_wheels:
                pack_snapshot(plan, report)
            if plan.assets_to_place:
                restore_assets(plan, report)
            if plan.recipe.checks and not options.packages_only:
                run_checks(plan, report)
    finally:
        report_restart(plan, stale, report)
        if _use_record_due(plan):
            record_use(plan.drive, cache_files_used(plan, cache))
    if plan.profile.notebook and options.kernel_imported is None:
        report.say(f"a `!` command cannot move the notebook; to work there, run: %cd {plan.workdir}")
    return plan


def _use_record_due(plan: Plan, every: float = 86400) -> bool:
    """Each run that changes something records what it used; one that changes nothing refreshes
    the record once a day, not each time: a Drive write per no-op run would cost more than the
    run. A marker on local disk, per target, tells when the last record was written."""
    marker = target_python.state_file("used", plan.target.prefix)
    try:
        recent = time.time() - marker.stat().st_mtime < every
    except OSError:
        recent = False
    if recent and plan.nothing_to_do:
        return False
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass  # without the marker the next no-op run records again: only slower
    return True


def cache_files_used(plan: Plan, cache: WheelCache) -> list[str]:
    """The Drive cache files this run's lock and recipe use (for `invoke cache --prune`)."""
    supported = plan.target.supported_tags()
    wheels = [f"wheels/{path.name}" for p in plan.needs.wanted if (path := cache.lookup(p, supported))]
    assets = [f"assets/{a.sha256}" for a in plan.recipe.assets]
    # The snapshot a wiped VM of this platform restores, and the one this run used or packed.
    fresh = needs(plan.lock.pins, plan.image.shipped if plan.image else {}).install
    snapshots = {snapshot.Snapshot.locate(plan.drive, plan.recipe.name, plan.lock, plan.target, pins).index.name
                 for pins in (fresh, plan.to_install) if pins}
    return wheels + assets + [f"snapshots/{name}" for name in sorted(snapshots)]


def stale_imports(plan: Plan, options: Options) -> dict[str, tuple[str, str]]:
    """What this run replaces that the kernel has imported (in the kernel: what it has in
    sys.modules; from a `!` command: what the platform's kernel imports at start)."""
    imported = (options.kernel_imported if options.kernel_imported is not None
                else frozenset(plan.profile.preloaded))
    return {name: versions for name, versions in sorted(plan.replaced.items()) if name in imported}


def report_restart(plan: Plan, stale: dict[str, tuple[str, str]], report: Report) -> None:
    """Say once, at the end, what the running kernel holds old copies of: replaced by this run,
    or by an earlier run since which the kernel has not restarted."""
    report.extra["replaced"] = {name: list(versions) for name, versions in plan.replaced.items()}
    needed = {**restart.pending(plan.target.prefix), **stale}
    report.extra["restart_needed"] = sorted(needed)
    if needed:
        changes = ", ".join(f"{n} {needed[n][0]} -> {needed[n][1]}" for n in sorted(needed))
        report.say(f"restart the runtime before using them (Runtime > Restart session): the "
                   f"running kernel imported the old versions of {changes}")
