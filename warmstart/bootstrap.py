"""`bootstrap`: gather the facts (read-only), make the plan (pure), carry it out (the executor).

Everything up to the plan touches nothing, which is all `--dry-run` and `status` do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from packaging.tags import Tag
from packaging.utils import NormalizedName
from packaging.version import Version

from . import assets, drivework, flock, home, installer, livelock, patches, restart, snapshot
from . import target as target_python
from .background import started
from .console import counted
from .disks import UPLOADED_WHEN, explain, kind_of, not_a_folder, stopped_answering, uploads_later
from .download import Downloader
from .errors import BadInput, PreconditionUnmet, redact
from .execute import Executor
from .gpu import judge, probe_gpus
from .images import Image, drift
from .invocation import cd_cell, in_cell, in_notebook, invoked_as
from .lock import (
    Lock,
    LockTarget,
    Pin,
    check_fresh,
    existing_locks,
    lock_path,
    needs,
    parse_lock,
    relock_command,
    select_lock,
)
from .locktext import given_as_file
from .pipconfig import IndexSettings, breaks_system_packages
from .plan import Facts, Plan, drive_serves_all, installing_of, make_plan, require_python
from .profiles import Profile, require_drive, require_mounted, select_profile
from .recipe import Recipe, UnknownRecipe, load_recipe
from .report import Report
from .settings import LOCK_TIMEOUT, Options, Settings, resolve, team_as_given
from .store import Stalled
from .team import borrowable
from .tiered import TieredStore
from .transfer import write_private
from .wheels import best, by_release, ranking

__all__ = ["Options", "bootstrap", "prepare"]


def _no_lock(recipe: Recipe, wanted: LockTarget) -> str:
    have = sorted(f"{t.python_tag} on {t.platform}" + (f" ({t.image})" if t.image else "")
                  for t in existing_locks(recipe).values())
    path = lock_path(recipe, wanted)  # an image's lock in the image's folder beside the .in
    missing = f"{recipe.name} has no lock for {wanted.describe()} ({path.relative_to(recipe.requirements_in.parent)})"
    make = f"make one with `{relock_command(recipe, wanted)}`"
    if not have:  # a recipe of the user's, not locked yet: no other interpreter would do
        return f"{missing}, nor for any other Python; {make}"
    return f"{missing}; locks exist for: {', '.join(have)}; {make}, or pass --python with an interpreter that has one"


def cached_wheels(store: TieredStore, pins: Iterable[Pin], supported: list[Tag]) -> dict[NormalizedName, str]:
    """The Drive cache's wheel (file name) for each pin that has one the target accepts."""
    listing, rank = by_release(store.names("wheels")), ranking(supported)
    return {p.name: chosen for p in pins
            if (chosen := best(((f, f) for f in listing.get((p.name, Version(p.version)), ())), rank))}


def in_team(store: TieredStore, cached: dict[NormalizedName, str]) -> frozenset[str]:
    """Of the cached wheels, those only the team cache holds."""
    return frozenset(cached.values()) & store.team_only("wheels")


def find_recipe(name_or_path: str, root: Path, drive: Path | None, profile: Profile, *,
                bootstrapping: bool = True) -> Recipe:
    """The recipe asked for (load_recipe). One found nowhere while the Drive, where the user's own
    recipes lie, is not there (not mounted, not made yet, a file) is said as the Drive step says it;
    so is a file asked for under Drive's mount point while nothing is mounted there. Not
    `bootstrapping` (lock, assets): the notebook's way to bootstrap it is left out of the hint."""
    try:
        return load_recipe(name_or_path, root, drive)
    except UnknownRecipe as unknown:
        hinted = name_or_path if bootstrapping else None
        if unknown.path is not None:
            require_mounted(unknown.path, profile, recipe=hinted)
        elif drive is not None and not drive.is_dir():
            require_drive(drive, profile, recipe=hinted)
        raise


def prepare(settings: Settings, profile: Profile, root: Path, report: Report, *,
            make_live: bool = False, hold_team: bool = False) -> tuple[Facts, TieredStore]:
    """Every check that changes nothing, ending in the facts the plan is made from, and the Drive
    store they were read from (its listings stay cached for the run). `make_live`: where this VM
    has drifted from the image its lock was made for, in the recipe's own closure, and no lock
    for this runtime is on Drive yet, make one (resolving against the index) and put it there:
    the one thing this step may write. `hold_team`: a team store is not opened while Drive alone
    serves the run (status and --dry-run ask it: they report what it holds)."""
    options, drive = settings.options, settings.drive
    report.platform = profile.name
    with report.step("recipe") as step:
        recipe = find_recipe(options.recipe, root, drive, profile)
        report.recipe = recipe.name
        step.detail = str(recipe.path)
    # NVML answers while this process waits for the target Python's answer (a child process: 50
    # to 100 ms), so the GPU step waits for nothing (NVML took 34 ms on an H200 VM)
    gpus = started(probe_gpus)
    warnings: list[str] = []
    with report.step("python") as step:
        try:
            target = target_python.probe(settings.python)
        except target_python.TooOld as old:  # said as any Python the recipe does not support, where it does not
            require_python(recipe, old.executable, old.version)
            raise
        step.detail = f"{target.executable} (Python {target.version})"
        require_python(recipe, target.executable, target.version)
        chosen_installer = _installer(options.installer, target, warnings)
    with report.step("gpu") as step:
        gpu = report.gpu = gpus.result()
        step.detail = gpu.describe()
        verdict = judge(recipe.gpu, gpu)
        if verdict.problems:
            # Allowed, the step line is the run's one GPU warning (what was found, what to do);
            # refused, the error that follows says it.
            allowed = verdict.allowed(options.allow_no_gpu, options.allow_unfit_gpu)
            step.status = "warning" if allowed else "failed"
            if allowed:
                step.detail = "; and ".join(verdict.problems)
    with report.step("drive") as step:
        require_drive(drive, profile, recipe=options.recipe)
        step.detail = f"{drive} ({profile.name} platform)"
    with report.step("lock") as step:
        wanted, image, lock = _choose_lock(recipe, profile, target, warnings)
        step.detail = f"{lock.path.name}, {counted(len(lock.pins), 'pin')}"
        # how far this VM is from the image the lock was made for: said before anything changes
        drifted = drift(image, target.installed, target.version, {p.name for p in lock.pins}) if image else None
        store = report.store = TieredStore.at(drive, bars=report.bars)
        live_at = None
        if image and (own := livelock.for_runtime(store, recipe, wanted, lock, image, target, make=make_live,
                                                  say=report.say, root=root, warnings=warnings)):
            lock, image, wanted, live_at = own.lock, own.image, own.target, own.at
            step.detail = f"{Path(own.at).name} ({own.how}), {counted(len(lock.pins), 'pin')}"
        broken, whole = target_python.broken_distributions(target, [p.name for p in lock.pins])
        if broken:
            step.detail += f"; half-installed: {', '.join(sorted(broken))}"
    # A snapshot holds what a VM in this state installs; it is looked up by that set.
    found = needs(lock.pins, target.installed)
    installing = installing_of(found, broken)
    located = snapshot.Snapshot.locate(recipe.name, lock, target, installing) if installing else None
    # The recipe's patches against what is installed: a file a patch cannot take stops the run here.
    patched = patches.survey(recipe.patches, target.path, target.prefix, {p.name: p.version for p in lock.pins},
                             {p.name for p in installing})
    with report.step("cache") as step:
        assets_here = {} if options.packages_only else {
            asset: (asset.destination(drive / recipe.workdir), "") for asset in recipe.assets}
        found_here = Facts(recipe=recipe, profile=profile, drive=drive, target=target, gpu=gpu, verdict=verdict,
                           lock=lock, image=image, cached={}, assets=assets_here, broken=broken, needs=found,
                           snapshot=located, snapshot_found=False, installer=chosen_installer,
                           warnings=tuple(warnings), whole_records=whole, patches=tuple(patched), drift=drifted,
                           live_lock=live_at, break_system_packages=breaks_system_packages())
        facts = _look(found_here, store)  # what the store holds: the cached wheels, the assets, the snapshot
        if settings.team and not options.offline:  # offline runs use what Drive holds
            # held back while Drive alone serves the run: opening it would cost more than the run
            store.put_behind(settings.team, read_only=settings.team_read_only, borrow=borrowable(target),
                             hold=hold_team and drive_serves_all(facts))
            if store.team:
                facts = _look(facts, store)
        step.detail = _in_cache(facts, store)
        # a Drive that stopped answering or lists more than a cache holds, or a team cache that
        # cannot be used: the warning is said when the work starts, as for a read that waited
        if facts.drive_down or store.here.unlisted or (store.team and store.warnings):
            step.status = "warning"
    _refuse_what_is_in_the_way(facts, store, packages_only=options.packages_only)
    return facts, store


def _installer(option: str, target: target_python.TargetPython, warnings: list[str]) -> str:
    """installer.choose's, but pip where uv cannot ask the target what it is: one that prints on
    stdout as it starts (uv reads its answer as JSON; pip runs in it, and minds nothing)."""
    chosen = installer.choose(option)
    if chosen != "uv" or not target.says_at_start:
        return chosen
    why = (f"{target.executable} prints {target.says_at_start!r} as it starts (a .pth file or a sitecustomize "
           "module), and uv cannot read past that")
    if option == "uv":
        raise PreconditionUnmet(f"--installer uv, but {why}: remove what prints it, or use --installer pip")
    warnings.append(f"installing with pip: {why}; remove what prints it to install with uv")
    return "pip"


def _refuse_what_is_in_the_way(facts: Facts, store: TieredStore, *, packages_only: bool) -> None:
    """A file of the user's where the recipe's workdir or an asset goes, or a link or file where
    a folder of the Drive cache's own goes: bad input, said before anything is installed or
    downloaded. Packages alone need no workdir and no asset; on a Drive that stopped answering
    nothing there is looked at (the run says why itself)."""
    drive, recipe = facts.drive, facts.recipe
    if not facts.drive_down:
        store.here.require_own_folders()
    workdir = drive / recipe.workdir
    if not (packages_only or facts.drive_down) and (blocking := not_a_folder(workdir)):
        where = (f"the recipe's workdir {workdir} is a {kind_of(blocking)}, not a folder" if blocking == workdir else
                 f"{blocking} is a {kind_of(blocking)} where the recipe's workdir {workdir} needs a folder")
        raise BadInput(f"{where}; move it away (or change [drive] workdir in {recipe.path}) and run again")
    assets.refuse_any_in_the_way({asset: dest for asset, (dest, state) in facts.assets.items()
                                  if state != "in place" and not (facts.drive_down and dest.is_relative_to(drive))},
                                 store)


def _choose_lock(recipe: Recipe, profile: Profile, target: target_python.TargetPython,
                 warnings: list[str]) -> tuple[LockTarget, Image | None, Lock]:
    """The recipe's lock for the target, with the image it was made for: that of the platform's
    images for its Python that this VM matches best (several runtimes may share a Python, as
    Colab's 2026.04 and 2026.07 do: the VM's own packages tell), else the bare lock (a warning
    in `warnings`). A lock that is missing or stale is the end of the run."""
    python_minor = f"{target.version.major}.{target.version.minor}"
    published = profile.images()
    candidates = [i for i in published.values() if i.python_minor == python_minor]
    wanted, image, fallback = select_lock(recipe, candidates, python_minor, target_python.platform_tag(),
                                          target.installed)
    if fallback:
        warnings.append(fallback)
    elif not candidates and published:
        listed = ", ".join(f"{i.name} ({i.python_minor})" for i in published.values())
        warnings.append(f"the {profile.name} platform has no published image for Python {python_minor} "
                        f"(it has: {listed}); the bare lock may replace packages this runtime ships")
    path = lock_path(recipe, wanted)
    if not path.exists():
        raise PreconditionUnmet(_no_lock(recipe, wanted))
    lock = parse_lock(path, lambda: relock_command(recipe, wanted))
    check_fresh(lock, recipe, wanted, image)
    return wanted, image, lock


def _in_cache(facts: Facts, store: TieredStore) -> str:
    """The `cache` step's line: what the stores hold of what the run needs."""
    on_drive = len(facts.cached) - len(facts.in_team)
    said = f"{on_drive} of {counted(len(facts.lock.pins), 'wheel')} in {store.root / 'wheels'}"
    if store.team:
        said += f", {len(facts.in_team)} more in the team cache {store.team}"
    elif store.held:
        said += f" (the team cache {redact(store.held.location)} only if Drive falls behind)"
    if facts.recipe.assets:
        in_cache = sum(state != "missing" for _dest, state in facts.assets.values())
        said += f"; {in_cache} of {counted(len(facts.recipe.assets), 'asset')}"
    if facts.snapshot_found:
        said += "; a snapshot"
    return said


def _look(facts: Facts, store: TieredStore) -> Facts:
    """The facts as the store holds them: cached wheels, assets, the snapshot (one stat on Drive),
    and the wheels an earlier run's Drive writes will put there."""
    cached = cached_wheels(store, facts.lock.pins, facts.target.supported_tags())
    down = store.here.down  # then a look at a destination on Drive would wait as long: none is there
    assets_now = {a: (dest, "missing" if down and dest.is_relative_to(facts.drive) else
                      assets.state(store, a, dest)) for a, (dest, _state) in facts.assets.items()}
    return replace(facts, cached=cached, in_team=in_team(store, cached), assets=assets_now,
                   snapshot_found=bool(facts.snapshot and store.has(snapshot.KIND, facts.snapshot.index_name)),
                   drive_down=down, drive_read_only=None if down else store.here.mounted_read_only(),
                   queued=drivework.queued_wheels(facts.target.prefix, facts.drive))


def look_again(facts: Facts, store: TieredStore) -> Facts:
    """The facts after the Drive cache changed under this run (an earlier run's writes finished)."""
    store.relist()
    return _look(facts, store)


def target_lock(python: str | None) -> Path:
    """The lock file of a target environment, keyed by its real prefix (venv/bin/python and
    venv/bin/python3 are one environment). It lies in warmstart's own folder, which only its user
    can write, not at a name anybody could plant in the shared /tmp."""
    path = home.run_lock(target_python.real_prefix(python))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    return path


def bootstrap(options: Options, root: Path, report: Report) -> Plan:
    """The entry points' one way in: the options resolved once, here, then one run per target,
    one run at a time on it."""
    profile = select_profile(root)
    settings = resolve(options, profile)
    if options.dry_run:
        return _bootstrap(settings, profile, root, report)
    path = target_lock(settings.python)

    def waiting() -> None:
        # Said once, as warmstart.sh says it of its tools: a notebook cell showed nothing for as
        # long as it waited (WARMSTART_LOCK_TIMEOUT, 600 s). What the probe begun before the
        # other run ended saw is past.
        report.say(f"another warmstart run is installing into {target_python.target_executable(settings.python)}: "
                   f"waiting for it (up to {settings.lock_timeout:g} s, {LOCK_TIMEOUT.name})")
        target_python.forget_begun()

    with flock.held(path, settings.lock_timeout, waiting=waiting) as taken:
        if not taken:  # exit 3, as warmstart.sh's wait for the tools: the machine is busy, not failing
            raise PreconditionUnmet(
                f"another warmstart run is installing into {target_python.target_executable(settings.python)} and "
                f"held {path} too long; wait for it, or set {LOCK_TIMEOUT.name}")
        return _bootstrap(settings, profile, root, report)


def _bootstrap(settings: Settings, profile: Profile, root: Path, report: Report) -> Plan:
    options = settings.options
    # Read before anything: a refused index setting is bad input, said before anything changes.
    index = IndexSettings.from_environ()
    facts, store = prepare(settings, profile, root, report, make_live=not options.dry_run and not options.offline,
                           hold_team=not options.dry_run)
    prefix = facts.target.prefix
    # Before the target changes (a snapshot must be of the environment it describes), and before
    # an offline run looks for what an earlier run is still writing to Drive: finish that first.
    settling = not options.dry_run and bool(facts.installing or settings.wait or options.offline)
    if settling and drivework.settle(prefix, store, report.say, offline=options.offline):
        facts = look_again(facts, store)
    plan = report.plan = make_plan(facts, options)
    for warning in plan.warnings:
        if warning not in facts.verdict.problems:  # the gpu step line said those
            report.say(f"warning: {warning}")
    for line in plan.describe():
        report.say(line)
    if options.dry_run:
        return plan
    target_python.remember_whole(prefix, facts.whole_records)
    unwritable = _make_workdir(plan, store, report, packages_only=options.packages_only)
    if not store.here.down:  # else it would only wait on Drive; the next run starts it
        drivework.resume(prefix, report.say, settings.team)  # a killed worker starts again
    work = drivework.start(prefix, plan.facts.drive, plan.facts.target.executable)
    run = Executor(plan, store, Downloader(index, report.bars), report, work, background=not settings.wait)
    report.outcome = run.outcome
    run.outcome.warnings.extend(plan.warnings)
    run.warn(unwritable)
    run.warn(store.warnings)  # the team cache down or refusing: said once, before the work
    run.outcome.changed = not plan.nothing_to_do
    # What the run uses from the stores is known from the plan: Drive's usage record is written
    # now, on a thread, while the work begins (after the restore the write waited on Drive, 25 ms
    # on the stand-in; before it, a race's uv began 40 to 50 ms later). What the run queues for
    # Drive is recorded at its end.
    due = _use_record_due(plan, store.team_spec())
    used, read = store_files_used(plan, store) if due else ([], {})
    recorded = started(lambda: store.record_use(used, team=False))
    stale = stale_imports(plan, options)
    kernel = restart.kernel_process(in_kernel=options.kernel_imported is not None)
    if stale and kernel:  # before anything changes: a run that fails midway still says it
        restart.remember(prefix, stale, kernel)
    try:
        run.carry_out(packages_only=options.packages_only)
    finally:
        # The usage record is waited for, so that no write of it is left half-done on Drive when
        # this process ends; one that failed costs only its protection from pruning (as before).
        recorded.exception()
        run.report_restart(stale)
        run.copy_team_wheels()
        queued = run.work.keys() if due else []
        if (used or queued) and store.held and not settings.wait:
            run.work.team_usage = [*used, *queued]  # the worker records it there: opening the team store costs time
        if read and (team := store.team_spec()) and not team["read_only"] and not options.offline:
            run.work.team_share = read  # what the team lacks of it (set up after Drive was filled): the worker's
        hand_off(run, settings.wait, store, report, status_command(options, plan, settings.team))
        store.record_use(queued, team=False)
        if run.work.team_usage is None:
            store.record_use([*used, *queued], here=False)
    if options.kernel_imported is None and in_notebook(plan.facts.profile):
        report.say(f"a `!` command cannot move the notebook; to work there, run: {cd_cell(plan.workdir)}")
    return plan


def _make_workdir(plan: Plan, store: TieredStore, report: Report, *, packages_only: bool) -> list[str]:
    """The `workdir` step: the recipe's folder made. Assets and checks need it, packages alone do
    not: with `packages_only`, a workdir Drive cannot have is a warning (returned), not the end."""
    with report.step("workdir") as step:
        on_drive = plan.workdir.is_relative_to(plan.facts.drive)
        if on_drive:  # looked at anew: the last run's Drive writes may have been waited for since
            with suppress(Stalled):  # said below
                store.here.look([plan.workdir])
        if (down := store.here.down) and on_drive:
            if not packages_only:  # assets and checks need it, and a look at it would wait as long
                raise PreconditionUnmet(stopped_answering("the workdir", plan.workdir, down)
                                        + " (with --packages-only the packages install without it)")
            step.status = "warning"
            return [f"no workdir {plan.workdir}: {down}"]
        try:
            plan.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not packages_only:
                raise
            # a read-only Drive still gets the environment
            step.status = "warning"
            blocking = not_a_folder(plan.workdir)
            why = f"{blocking} is a {kind_of(blocking)}" if blocking else explain(exc, plan.facts.drive)
            return [f"no workdir {plan.workdir}: {why}"]
        step.detail = str(plan.workdir)
        return []


def status_command(options: Options, plan: Plan, team: str | None) -> str:
    """The `invoke status` line that asks about this run's environment and Drive, as it was
    asked for (its --drive, --python, --cache, --packages-only; `team`: the team cache it was
    given), ready to paste where it is printed. In the notebook's kernel, the in-kernel call's:
    warmstart.sh's `invoke` may never have been written (with a recipe file by its full path: the
    call moves the notebook into the workdir)."""
    cache = team_as_given(team) if options.cache else None
    if options.kernel_imported is not None:
        recipe = str(plan.facts.recipe.path) if given_as_file(options.recipe) else options.recipe
        given = [repr(recipe), *([f"drive={str(plan.facts.drive)!r}"] if options.drive else []),
                 *([f"cache={cache!r}"] if cache else []),
                 *(["packages_only=True"] if options.packages_only else [])]
        # with its import: a notebook that used only `%warmstart` has no name `warmstart` of its own
        return f"import warmstart.colab; warmstart.colab.status({', '.join(given)})"
    words = [*invoked_as(), "status", "--recipe", options.recipe]
    if options.drive:
        words += ["--drive", str(plan.facts.drive)]
    if options.python:
        words += ["--python", str(plan.facts.target.executable)]
    if cache:
        words += ["--cache", cache]
    if options.packages_only:
        words.append("--packages-only")
    return in_cell(words, in_notebook(plan.facts.profile))


def hand_off(run: Executor, wait: bool, store: TieredStore, report: Report, status: str) -> None:
    """What Drive gets from this run: written now (--wait), else by a worker in the background.
    With nothing of its own, what an earlier run's worker still writes (this run left it alone)."""
    if run.work.empty:
        run.work.discard()
        if not wait and (earlier := drivework.pending(run.plan.facts.target.prefix)):
            report.say(f"Drive writes of an earlier run: {earlier.describe()}: `{status}` shows how far")
        return
    with report.step("drive") as step:
        if read_only := run.plan.facts.drive_read_only:  # a job for it would fail, each run's anew
            run.work.drop_drive_writes()
            step.status, step.detail = "warning", "mounted read-only: nothing written"
            run.warn([f"the Drive cache was not filled: {read_only}"])
            if run.work.empty:
                run.work.discard()
                return
        writing = run.work.writes()
        if down := store.here.down:  # nothing more waits on it in this run: the next run writes
            run.work.keep(store, down)
            step.status = "warning"
            run.warn([f"the Drive cache was not filled: {down}; the next run writes it"])
            return
        try:
            run.outcome.drive_writes = run.work.hand_off(wait=wait, store=store)
            run.warn(store.warnings)
        except OSError as exc:  # Drive full or gone: this costs the next VM a download, not this run
            step.status = "warning"
            run.warn([f"the Drive cache was not filled: {explain(exc, store.here.drive)}; the next run tries again"])
            return
        step.detail = run.outcome.drive_writes
    if not wait:
        report.say(f"{writing} being written in the background: `{status}` shows how far"
                   + ("; keep this VM up until it says \"safe to shut down\" (or run bootstrap with --wait)"
                      if run.plan.facts.profile.notebook else ""))
    elif run.outcome.drive_writes == "written to Drive" and uploads_later(store.here.drive):
        report.say(f"{writing} written: safe to shut down {UPLOADED_WHEN}")


def _use_record_due(plan: Plan, team: dict[str, Any] | None, every: float = 86400) -> bool:
    """Each run that changes something records what it used; one that changes nothing refreshes
    the record once a day, not each time: a Drive write per no-op run would cost more than the
    run. A marker on local disk, per target, tells when the last record was written, and for
    which team cache (`team`, as TieredStore.team_spec gives it): a team cache new to this target
    is due at once (it gets what it lacks of Drive's copies with the record: drivework)."""
    marker = home.state_file("used", plan.facts.target.prefix)
    named = json.dumps(team, sort_keys=True)
    try:
        recent = time.time() - marker.stat().st_mtime < every and marker.read_text() == named
    except (OSError, UnicodeDecodeError):
        recent = False
    if recent and plan.nothing_to_do:
        return False
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_private(marker, named)
    except OSError:
        pass  # without the marker the next no-op run records again: only slower
    return True


def wiped_vm_installs(facts: Facts) -> tuple[Pin, ...]:
    """What a wiped VM of this platform installs: what its image lacks of the lock (every pin on a
    bare VM)."""
    return needs(facts.lock.pins, facts.image.shipped if facts.image else {}).install


def wiped_vm_snapshot(facts: Facts, fresh: tuple[Pin, ...] | None = None) -> snapshot.Snapshot | None:
    """The snapshot a wiped VM of this platform restores, of what it installs (`fresh`, when the
    caller has it: wiped_vm_installs); None when that is nothing."""
    fresh = wiped_vm_installs(facts) if fresh is None else fresh
    return snapshot.Snapshot.locate(facts.recipe.name, facts.lock, facts.target, fresh) if fresh else None


def store_files_used(plan: Plan, store: TieredStore) -> tuple[list[str], dict[str, list[str]]]:
    """The store files this run's lock and recipe use, as usage records name them (the wheels as
    the cache holds them now); and of those, what a wiped VM of this platform reads from a cache
    (the wheels of what its image lacks, the assets, the snapshot), each with the sha256s it may
    have: the lock's for a wheel, the recipe's for an asset, none for a snapshot index (it
    states its archive's)."""
    facts = plan.facts
    cached = cached_wheels(store, facts.needs.wanted, facts.target.supported_tags())
    fresh = wiped_vm_installs(facts)
    # The snapshot a wiped VM of this platform restores, and the one this run used or packed.
    located = {found.index_name for found in (wiped_vm_snapshot(facts, fresh), facts.snapshot) if found}
    read = {f"wheels/{cached[pin.name]}": sorted(pin.hashes) for pin in fresh if pin.name in cached}
    read |= {f"{assets.KIND}/{a.sha256}": [a.sha256] for a in facts.recipe.assets}
    read |= {f"{snapshot.KIND}/{name}": [] for name in sorted(located)}
    return sorted({*(f"wheels/{file}" for file in cached.values()), *read}), read


def stale_imports(plan: Plan, options: Options) -> dict[str, tuple[str, str]]:
    """What this run replaces that the kernel has imported (in the kernel: what it has in
    sys.modules; from a `!` command: what the platform's kernel imports at start)."""
    imported = (options.kernel_imported if options.kernel_imported is not None
                else frozenset(plan.facts.profile.preloaded))
    return {name: versions for name, versions in sorted(plan.replaced.items()) if name in imported}
