"""The executor: carries a Plan out on this machine and on Drive, and says what happened in an
Outcome. It is the only part of `bootstrap` that changes anything."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename

from . import assets, checks, faults, headstart, installer, patches, race, restart, snapshot
from . import target as target_python
from .console import counted
from .disks import stopped_answering
from .download import Downloader
from .drivework import DriveWork
from .errors import PreconditionUnmet, WarmstartError
from .invocation import in_cell, in_notebook
from .lock import Pin, needs
from .outcome import Outcome
from .plan import Plan, offline_without_drive
from .recipe import Check
from .report import Report
from .store import Stalled
from .tiered import TieredStore


def _requirements_file(pins: list[Pin] | tuple[Pin, ...], path: Path) -> Path:
    path.write_text("".join(pin.requirement_line() + "\n" for pin in pins))
    return path


class Executor:
    def __init__(self, plan: Plan, store: TieredStore, downloader: Downloader, report: Report,
                 work: DriveWork, *, background: bool = False) -> None:
        self.plan, self.store, self.downloader, self.report = plan, store, downloader, report
        self.work = work  # what Drive gets after the environment is usable
        # The Drive work runs after this command: then uv may fetch what Drive lacks straight from
        # the index while it installs (the environment first), and the Drive work fetches the
        # wheels for the cache again, after. Otherwise the wheels are downloaded once, first.
        self.direct = background and plan.facts.installer == "uv" and not plan.offline
        self.background = background
        # Seconds uv took to install every pin from the index, when it did: the snapshot made of
        # this install records it, and a restore races the index on it (warmstart.race).
        self.index_took: float | None = None
        self.outcome = Outcome()

    def carry_out(self, *, packages_only: bool) -> None:
        """The plan's work, in order: the packages (restored or installed, verified, patched, and
        a snapshot queued of what was installed), the assets, the checks. With nothing to
        install, only the checks not passed here as they are now."""
        plan = self.plan
        if plan.nothing_to_do:
            self.outcome.installed = plan.installed_now()
            if not packages_only:
                self._run_checks_due()
            return
        installed_wheels = (plan.to_install or plan.to_download) and self.install()
        self.verify()
        if plan.facts.patches:  # before the snapshot is packed: it carries the patched files
            self.apply_patches()
        if installed_wheels:
            self.queue_snapshot()
        if plan.assets_to_place:
            self.place_assets()
        if plan.facts.recipe.checks and not packages_only:
            self.run_checks()

    def warn(self, warnings: list[str]) -> None:
        for warning in warnings:
            self.report.say(f"warning: {warning}")
        self.outcome.warnings.extend(warnings)
        warnings.clear()  # each said once

    # -- packages --------------------------------------------------------------------------

    def install(self) -> bool:
        """Restore from the snapshot, or fetch verified wheels from Drive, download the rest and
        install them. True when wheels were installed (so a snapshot is worth making). What was
        downloaded is queued for Drive, not written there now."""
        plan = self.plan
        begun = headstart.received()  # uv from the index, begun by warmstart.sh: its folder is the race's
        if begun and not (plan.to_install and plan.use_snapshot):
            # it was begun for the snapshot the read ahead guessed, which this plan does not restore
            # (the image drifted: another set to install): it would go on beside this run's install
            begun.stop()
        for staging in plan.facts.target.prefix.glob(f"{headstart.FOLDER_PREFIX}*"):
            if not (begun and staging == begun.folder):
                shutil.rmtree(staging, ignore_errors=True)  # what a killed restore left
        with tempfile.TemporaryDirectory(prefix="warmstart-") as tmp:
            stage = Path(tmp)
            from_snapshot = bool(plan.to_install and plan.use_snapshot and self._restore_snapshot(stage))
            need = [] if from_snapshot else list(plan.to_install)
            skipped = f"the snapshot restored all {len(plan.to_install)}" if from_snapshot else "nothing to install"
            to_download = self._fetch_step(need, stage, skipped)
            downloads = self.work.area("wheels")
            self._download_step(to_download, downloads, stage, for_drive_alone=not need)
            self._install_step(need, to_download, [stage, downloads], stage, skipped)
            self._leave_to_earlier_work(downloads)
        return bool(need)

    def _leave_to_earlier_work(self, downloads: Path) -> None:
        """The wheels this run downloaded to install that an earlier run's Drive writes hold
        already (Facts.queued_for_drive): not queued for Drive a second time. A Drive that
        refuses writes (full) keeps their job, and each run that installed added one more with
        the same wheels (344 MiB for hyperlpr)."""
        for path in downloads.glob("*.whl"):
            try:
                name, version, *_ = parse_wheel_filename(path.name)
            except InvalidWheelFilename:
                continue
            if (name, version) in self.plan.facts.queued:
                path.unlink()

    def _fetch_step(self, need: list[Pin], stage: Path, skipped: str) -> list[Pin]:
        """The `fetch` step: the wheels of `need` the caches hold, verified, into `stage`; what is
        left to download (the plan's downloads, and the wheels the caches could not give)."""
        plan = self.plan
        to_download = list(plan.to_download)
        with self.report.step("fetch") as step:
            if not need:
                step.status, step.detail = "skipped", skipped
            for pin in need:
                cached = plan.facts.cached.get(pin.name)
                if cached and (got := self.store.get("wheels", cached, stage / cached, pin.hashes)):
                    if got in self.store.from_team:
                        self.work.add("wheels", got)  # Drive gets it too (installed from there)
                    continue
                if plan.offline and cached and (down := self.store.here.down):
                    raise PreconditionUnmet(offline_without_drive(down, plan.facts.drive))
                if plan.offline:
                    why = ("cannot be used: " + self.store.warnings[-1] if cached and self.store.warnings
                           else "is not in the Drive cache (and the snapshot could not be used)")
                    raise PreconditionUnmet(f"--offline, but the wheel for {pin.name}=={pin.version} {why}; "
                                            "run once without --offline to fetch it again")
                if pin not in to_download:
                    to_download.append(pin)
            self.warn(self.store.warnings)
            if need and not any(pin.name in plan.facts.cached for pin in need):  # the download step fetches them
                where = "the Drive or team cache" if self.store.team else "the Drive cache"
                step.status, step.detail = "skipped", f"none of them in {where} yet"
            elif need:
                step.detail = self.store.describe_reads()
        return to_download

    def _download_step(self, to_download: list[Pin], downloads: Path, stage: Path, *, for_drive_alone: bool) -> None:
        """The `download` step: into the Drive work's wheel folder, or left to uv (`direct`) or,
        when the environment needs none of them (`for_drive_alone`: the snapshot restored it, or
        it had them), to the Drive work. Waited for (--wait), a download for Drive alone that
        fails is a warning, as a Drive that cannot be written is: the environment is whole."""
        with self.report.step("download") as step:
            if to_download and (self.direct or (for_drive_alone and self.background)):
                self._fetch_for_drive_later([pin for pin in to_download if not self.plan.facts.queued_for_drive(pin)])
                self.store.stats.misses += len(to_download)
                step.status, step.detail = "skipped", ("fetched for Drive after this run" if for_drive_alone
                                                       else "uv fetches what Drive lacks while it installs")
            elif to_download:
                try:
                    fetched = self._download(to_download, downloads, stage)
                except WarmstartError as exc:
                    if not for_drive_alone:
                        raise
                    step.status = "warning"
                    self.warn([f"the Drive cache was not filled with {counted(len(to_download), 'wheel')} (the "
                               f"environment has them already): {exc}; the next run fetches them"])
                    return
                step.detail = f"{counted(len(to_download), 'wheel')}, {fetched / 2**20:.1f} MiB"
            else:
                step.status, step.detail = "skipped", "nothing to download"

    def _install_step(self, need: list[Pin], to_download: list[Pin], wheels: list[Path], stage: Path,
                      skipped: str) -> None:
        """The `install` step: `need` from the folders `wheels` (and, `direct`, the index)."""
        with self.report.step("install") as step:
            if not need:
                step.status, step.detail = "skipped", skipped
                return
            self.clear_broken()
            # uv fetches only what is not here; with every wheel here, no index is asked at all
            index = self.direct and bool(to_download)
            began = time.monotonic()
            self._install(need, wheels, stage, index=index)
            if index and {p.name for p in need} <= {p.name for p in to_download}:
                self.index_took = time.monotonic() - began  # all from the index: see race
            step.detail = f"{counted(len(need), 'package')} with {self.plan.facts.installer}"

    def copy_team_wheels(self) -> None:
        """Have the Drive work copy the wheels only the team cache holds (but those this run
        fetched already, or an earlier run's Drive writes hold): the next VM then finds all it
        needs on Drive, and leaves the team store unopened (warmstart.tiered)."""
        facts = self.plan.facts
        if self.plan.offline or not facts.in_team:
            return
        queued = {path.name for path in self.work.area("wheels").iterdir()}
        fetching = {name for name, _version, _hashes in self.work.download or ()}
        self.work.from_team = [[file, sorted(pin.hashes)] for pin in facts.lock.pins
                               if (file := facts.cached.get(pin.name)) in facts.in_team
                               and file not in queued and pin.name not in fetching
                               and not facts.queued_for_drive(pin)] or None

    def _fetch_for_drive_later(self, pins: list[Pin]) -> None:
        """The Drive work fetches these wheels from the index for the cache, after this run."""
        self.work.download = [[p.name, p.version, sorted(p.hashes)] for p in pins] or None
        self.work.tags = [str(tag) for tag in self.plan.facts.target.supported_tags()]

    def _install(self, need: list[Pin], wheels: list[Path], stage: Path, index: bool) -> None:
        plan = self.plan
        requirements = _requirements_file(need, stage / "install.txt")
        try:
            installer.install(plan.facts.installer, plan.facts.target.executable, requirements, wheels,
                              plan.facts.profile.unset_env, self._first_install_seen(), index=index)
        except installer.NotLocked as exc:
            # --upgrade: else `invoke lock` keeps the pins, hashes and all
            if relock := plan.facts.relock("--upgrade"):
                raise installer.NotLocked(f"{exc} If this is the index to install from, lock what it serves: "
                                          f"`{relock}`", detail=exc.detail) from None
            raise
        except WarmstartError:
            if index:  # an index that cannot be reached or refuses is said as such
                self.downloader.project_files(need[0].name)
            raise

    def _download(self, pins: list[Pin], downloads: Path, stage: Path) -> int:
        """Download into the Drive work's wheel folder (installed from there, put on Drive after);
        returns the bytes fetched."""
        plan = self.plan
        jobs, left = self.downloader.wheel_jobs(pins, plan.facts.target.supported_tags(), downloads)
        fetched = self.downloader.fetch(jobs, f"download {counted(len(jobs), 'wheel')}")
        if left:
            self.report.say(f"pip downloads {counted(len(left), 'wheel')} itself: " + "; ".join(
                f"{pin.name}=={pin.version}: {why}" for pin, why in left.items()))
            installer.download(plan.facts.target.executable, _requirements_file(list(left), stage / "download.txt"),
                               downloads, plan.facts.profile.unset_env)
            faults.point("download")
        self.store.stats.misses += len(pins)
        return fetched

    def _restore_snapshot(self, stage: Path) -> bool:
        """Unpack the snapshot (online, racing the index when it reads slowly: warmstart.race);
        False (with the reason in the outcome) when neither could be used."""
        plan = self.plan
        facts = plan.facts
        assert facts.snapshot is not None
        replaced = [name for name in sorted(plan.replaced) if name not in facts.broken]
        digests = self.digests(plan.to_install)

        def make_room() -> None:
            self.clear_broken()
            installer.uninstall(facts.installer, facts.target.executable, replaced, facts.profile.unset_env)

        watch = snapshot.Watch()
        lane = (race.IndexLane(watch, facts.target, digests, facts.recipe.patches,
                               _requirements_file(plan.to_install, stage / "race.txt"), facts.profile.unset_env,
                               headstart.received())
                if facts.installer == "uv" and not plan.offline else None)
        with self.report.step("snapshot") as step:
            restored: snapshot.Staged | None = None
            try:
                restored = snapshot.stage(self.store, facts.snapshot, facts.target, digests, facts.recipe.patches,
                                          for_drive=self.work.area(snapshot.KIND), watch=watch)
            except snapshot.Cancelled:
                pass  # the index finished first: its tree is verified
            except snapshot.SnapshotUnusable as exc:
                if not (lane and lane.wait()):
                    step.status, step.detail = "warning", str(exc)
                    self.outcome.snapshot = {"used": False, "reason": str(exc)}
                    self.report.say(f"warning: {exc}; installing from the wheels instead")
                    return False
                self.warn([f"{exc}; the package index served the packages instead"])
            finally:
                if lane:
                    lane.finish()  # uv stopped, when it still runs
            raced = _race_report(lane, index_won=restored is None)
            index = self.store.where(snapshot.KIND, facts.snapshot.index_name)
            if restored is None:  # the index won
                assert lane is not None and lane.won
                snapshot.place(lane.folder, facts.target, make_room)
                self._fetch_only_team_later()
                step.detail = (f"the package index was faster: {counted(len(plan.to_install), 'package')} with uv, "
                               f"{len(replaced)} replaced")
                self.outcome.snapshot = {"used": False, "reason": "the package index was faster", "index": index,
                                         "race": raced}
                return True
            if lane and lane.won:  # both were verified at once: the snapshot's tree is placed
                shutil.rmtree(lane.folder, ignore_errors=True)
            snapshot.place(restored.folder, facts.target, make_room)
            mib = {label: f"{size / 2**20:.1f} MiB" for label, size in restored.served.items()}
            step.detail = (f"{' + '.join(mib.values())} archive from {' and '.join(mib)}, "
                           f"{len(replaced)} replaced")
            self.outcome.snapshot = {"used": True, "index": index, "read": restored.served,
                                     **({"race": raced} if raced else {})}
            return True

    def _fetch_only_team_later(self) -> None:
        """After the index won the race: uv fetched the wheels for the environment, not for Drive.
        Those only the team cache holds (one that failed midway, say) the Drive work fetches from
        the index, as after a run in which uv fetched them while it installed; those no cache
        holds, the download step fetches."""
        facts = self.plan.facts
        only_team = [p for p in self.plan.to_install if facts.cached.get(p.name) in facts.in_team]
        if only_team:
            self._fetch_for_drive_later(only_team)

    def clear_broken(self) -> None:
        """Remove half-installed distributions; what their RECORD names outside the prefix stays."""
        refused = target_python.remove_broken(list(self.plan.facts.broken.values()), self.plan.facts.target.prefix)
        if refused:
            self.warn([f"left alone {counted(len(refused), 'path')} that half-installed distributions list outside "
                       f"{self.plan.facts.target.prefix}, e.g. {refused[0]}"])

    def _first_install_seen(self) -> Callable[[], bool] | None:
        """For the `install` fault point only: true once the installer has written a dist-info."""
        if not faults.armed("install"):
            return None
        prefix = self.plan.facts.target.prefix
        before = set(prefix.glob("lib/python*/site-packages/*.dist-info"))
        return lambda: bool(set(prefix.glob("lib/python*/site-packages/*.dist-info")) - before)

    def digests(self, pins: tuple[Pin, ...]) -> dict[NormalizedName, str | None]:
        """The lock's digest of the files of each pin's wheel: what a snapshot is checked against."""
        recorded = self.plan.facts.lock.wheels or {}
        return {p.name: recorded[p.name].files if p.name in recorded else None for p in pins}

    def queue_snapshot(self) -> None:
        """Have the Drive work pack what this run installed, for the next VM in the same state."""
        plan = self.plan
        assert plan.facts.snapshot is not None
        self.work.snapshot = {"stem": plan.facts.snapshot.stem, "facts": plan.facts.snapshot.facts,
                              "pins": [[p.name, p.version] for p in plan.to_install],
                              "digests": self.digests(plan.to_install), "python": str(plan.facts.target.executable),
                              "index_seconds": self.index_took}

    def verify(self) -> None:
        plan = self.plan
        with self.report.step("verify") as step:
            after = target_python.installed_now(plan.facts.target)
            self.outcome.installed = {p.name: after.get(p.name, "") for p in plan.facts.lock.pins}
            wrong = [f"{p.name} (wanted {p.version}, found {after.get(p.name) or 'nothing'})"
                     for p in needs(plan.facts.lock.pins, after).install]
            if wrong:
                raise WarmstartError(f"after installing, these do not match {plan.facts.lock.path}: "
                                     + ", ".join(wrong))
            wanted = len(plan.facts.needs.wanted)
            step.detail = f"{counted(wanted, 'package')} {'matches' if wanted == 1 else 'match'} the lock"
            if plan.facts.needs.provided:
                step.detail += f", {len(plan.facts.needs.provided)} by the platform's own build"
            self.warn(self._overwritten(after))

    def _overwritten(self, after: dict[NormalizedName, str]) -> list[str]:
        """A distribution the recipe excludes that the platform had installed (the CPU
        onnxruntime beside onnxruntime-gpu) and that shares files with one this run installed:
        those files are the installed one's now, and removing the excluded one would delete them."""
        plan = self.plan
        excluded = [name for name in plan.facts.recipe.exclude if name in after]
        if not excluded or not plan.to_install:
            return []
        target = plan.facts.target
        shared = target_python.shared_files(target, [p.name for p in plan.to_install], excluded)
        said = []
        for (name, other), files in shared.items():
            example = next((f for f in files if "site-packages" in f.parts), files[0])  # a module's file
            folder = os.path.relpath(example, target.prefix)
            remove = in_cell([*installer.pip_command(target.executable), "uninstall", "--yes", other, name],
                             in_notebook(plan.facts.profile))
            said.append(f"{other} {after[other]}, which the recipe excludes, is installed here too and shares "
                        f"{counted(len(files), 'file')} (e.g. {folder}) with {name} "
                        f"{after[name]}, which this run installed over them: removing {other} would delete them. "
                        f"For {name} alone: `{remove}`, then run this "
                        "bootstrap again")
        return said

    def apply_patches(self) -> None:
        """Make the patched distributions' files what the recipe asks for (apply, update, undo)."""
        plan = self.plan
        with self.report.step("patches") as step:
            before = patches.sync(plan.facts.recipe.patches, plan.facts.target.path, plan.facts.target.prefix,
                                  {p.name for p in plan.facts.lock.pins})
            self.outcome.patches = [
                {**s.as_json(), "state": patches.APPLIED if s.patches else "removed",
                 "changed": s.state != patches.APPLIED} for s in before]
            done = [f"{s.distribution} {'patched' if s.patches else 'restored'}" for s in before
                    if s.state != patches.APPLIED]
            step.detail = ", ".join(done) or "already as the recipe asks"

    # -- assets and checks -----------------------------------------------------------------

    def place_assets(self) -> None:
        plan = self.plan
        with self.report.step("assets") as step, tempfile.TemporaryDirectory(prefix="warmstart-") as tmp:
            if any(plan.facts.assets[a][0].is_relative_to(plan.facts.drive) for a in plan.assets_to_place):
                self._drive_answers()
            came = [assets.ensure(a, plan.facts.assets[a][0], self.store, self.downloader, self.work,
                                  offline=plan.offline, scratch=Path(tmp))
                    for a in plan.assets_to_place]
            step.detail = ", ".join(f"{n} {where}" for where, n in Counter(came).items())
        self.warn(self.store.warnings)

    def _drive_answers(self) -> None:
        """Before the run works in a workdir on Drive again: Drive looked at anew (DriveStore.look).
        One that stopped answering since the workdir step (during the install) ends the run with
        the way out, rather than holding it in a write, or a check's start, for ever."""
        try:
            self.store.here.look([self.plan.workdir])
        except Stalled as exc:
            raise PreconditionUnmet(stopped_answering("the workdir", self.plan.workdir, str(exc))) from None

    def _run_checks_due(self) -> None:
        """A run that installs nothing runs the checks that failed here last time, or were added
        or changed since they passed (checks.due), saying which."""
        recipe, prefix = self.plan.facts.recipe, self.plan.facts.target.prefix
        if not (due := checks.due(prefix, recipe.name, recipe.checks)).checks:
            return
        said = [f"failed here last time ({', '.join(due.again)})"] if due.again else []
        said += [f"not yet passed here as they are ({', '.join(due.new)})"] if due.new else []
        self.report.say(f"checks {', '.join(said)}: running them")
        self.run_checks(due.checks)

    def run_checks(self, only: list[Check] | None = None) -> None:
        """The recipe's checks (`only` these, where given: a run that installs nothing)."""
        plan = self.plan
        recipe = plan.facts.recipe
        with self.report.step("checks") as step:
            if plan.workdir.is_relative_to(plan.facts.drive):  # where they run
                self._drive_answers()
            results = self.outcome.checks = checks.run_checks(tuple(recipe.checks if only is None else only),
                                                              plan.facts.target.executable, plan.workdir)
            for result in results:
                self.report.say(f"check {result.name}: {'passed' if result.ok else 'FAILED'}  {result.summary}")
            failed = [r.name for r in results if not r.ok]
            checks.remember(plan.facts.target.prefix, recipe.name, recipe.checks, results)
            step.detail = f"{len(results) - len(failed)} of {len(results)} passed"
            if failed:
                raise WarmstartError(f"{plan.facts.recipe.path}: checks failed: {', '.join(failed)} "
                                     "(their output is above and in the report)")

    # -- the kernel ------------------------------------------------------------------------

    def report_restart(self, stale: dict[str, tuple[str, str]]) -> None:
        """Say once, at the end, what the running kernel holds old copies of: replaced by this
        run, or by an earlier run since which the kernel has not restarted."""
        self.outcome.replaced = dict(self.plan.replaced)
        needed = {**restart.pending(self.plan.facts.target.prefix), **stale}
        self.outcome.restart_needed = sorted(needed)
        if needed:
            changes = ", ".join(f"{n} {needed[n][0]} -> {needed[n][1]}" for n in sorted(needed))
            self.report.say(f"restart the runtime before using them (Runtime > Restart session): the "
                            f"running kernel imported the old versions of {changes}")


def _race_report(lane: race.IndexLane | None, index_won: bool) -> dict[str, object] | None:
    """The race as the report tells it; None when the index was never asked."""
    if lane is None or lane.started is None:
        return None
    return {"winner": "index" if index_won else "snapshot", "index_started_s": round(lane.started, 2),
            **({"index_begun_by": "warmstart.sh"} if lane.begun else {}),
            "index_expected_s": round(lane.expected, 2),
            "snapshot_held": True,  # a read the index races waits for uv (race.HOLD_FOR)
            **({"index_failed": lane.failed} if lane.failed else {})}
