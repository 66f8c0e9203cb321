"""The store a run uses: Drive, with the team cache behind it when one is configured.

Reads go through: Drive first, then the team store for what Drive lacks (or holds damaged), and
what came from the team is noted, so Drive gets it too. Writes go to both, the team store first
(a full Drive must not keep a file from the team). Each tier keeps its own stats, and a team
store that fails once is not asked again in the run (ObjectStore.down). This is the one module
that knows a team store exists; everything else sees one store.

An object store can be held back while Drive alone holds what a run needs: importing its backend
costs 0.6 s of CPU, more than a whole restore from a fast Drive. It is opened only when Drive
falls behind in a restore (`later_holder`), a copy on Drive fails, or something is to be written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from .console import QUIET, Bars, counted
from .disks import explain
from .errors import PreconditionUnmet, redact
from .store import CacheStats, DriveStore, Store
from .team import ObjectStore, backend_found, open_team
from .transfer import AtomicFile

TEAM = "the team cache"  # the team tier, as the report names it


@dataclass(frozen=True)
class Held:
    """A team store put behind Drive but not opened yet."""

    location: str  # its URL, as the opened store names itself
    read_only: bool
    open: Callable[[], Store | None]


@dataclass
class TieredStore:
    here: DriveStore  # Drive (or its local stand-in)
    team: Store | None = None  # the team store, once opened
    from_team: set[Path] = field(default_factory=set)  # what `get` copied from the team store
    held: Held | None = None  # the team store, held back (see put_behind)
    borrow: tuple[str, ...] = ()  # where the team store's backend is looked for besides warmstart's own

    @classmethod
    def at(cls, drive: Path, *, team: str | None = None, team_read_only: bool = False,
           bars: Bars = QUIET, borrow: tuple[str, ...] = ()) -> TieredStore:
        """Drive's store, with the team store `team` (a URL or a folder) behind it."""
        store = cls(DriveStore(drive, CacheStats(), bars))
        if team:
            store.put_behind(team, read_only=team_read_only, borrow=borrow)
        return store

    def __str__(self) -> str:
        return str(self.here)

    def put_behind(self, team: str, *, read_only: bool = False, borrow: tuple[str, ...] = (),
                   hold: bool = False) -> None:
        """Put the team store `team` (a URL or a folder) behind Drive. `hold`: an object store is
        not opened until `ask_team` (a folder is: its opening is one look, a child's stat, 5 ms);
        that its backend is installed is checked now, as opening it would."""
        self.borrow = borrow

        def opening() -> Store | None:
            return open_team(team, drive=self.drive, read_only=read_only, bars=self.bars, warnings=self.warnings,
                             borrow=borrow)
        if hold and backend_found(team, borrow):
            self.held = Held(team, read_only, opening)
        else:
            self.team = opening()

    def ask_team(self) -> Store | None:
        """The team store, a held one opened now (a backend that fails to import is a warning:
        the run goes on from Drive and the index); None once it stopped answering (one warning
        said so): anything asked of it would wait its timeout again, a write to a folder on a
        mount that hangs for ever."""
        if self.held is not None:
            opening, self.held = self.held.open, None
            try:
                self.team = opening()
            except PreconditionUnmet as exc:
                self.warnings.append(f"{exc}; going on with Drive and the package index")
        return None if self.team is None or self.team.down else self.team

    def later_holder(self, kind: str, name: str) -> Callable[[], tuple[str, Store] | None] | None:
        """For a team store held back: a call that opens it, and gives it as holders() does when it
        holds `name`. None when there is none held."""
        if self.held is None:
            return None

        def ask() -> tuple[str, Store] | None:
            team = self.ask_team()
            return (TEAM, team) if team and not team.down and team.has(kind, name) else None
        return ask

    # -- Drive's own: its layout, its statistics, what went wrong --------------------------

    @property
    def drive(self) -> Path:
        return self.here.drive

    @property
    def root(self) -> Path:
        return self.here.root

    @property
    def placed_ledger(self) -> Path:
        return self.here.placed_ledger

    @property
    def stats(self) -> CacheStats:
        return self.here.stats

    @property
    def bars(self) -> Bars:
        return self.here.bars

    @property
    def warnings(self) -> list[str]:
        return self.here.warnings  # the team store's land in the same list

    def path(self, kind: str, name: str) -> Path:
        return self.here.path(kind, name)

    def writer(self, kind: str, stem: str) -> AtomicFile:
        return self.here.writer(kind, stem)

    def on_drive(self, kind: str, name: str) -> bool:
        return self.here.on_drive(kind, name)

    def set_aside(self, path: PurePath) -> Path:
        return self.here.set_aside(path)

    def relist(self) -> None:
        self.here.relist()

    def clean_stale_parts(self) -> list[Path]:
        return self.here.clean_stale_parts()

    # -- listing ---------------------------------------------------------------------------

    def _tier(self, kind: str, name: str) -> Store:
        """The tier that holds a file: Drive when it does, else the team store (when there is one)."""
        return self.team if self.team and not self.here.on_drive(kind, name) else self.here

    def where(self, kind: str, name: str) -> str:
        return self._tier(kind, name).where(kind, name)

    def names(self, kind: str) -> list[str]:
        """Drive's whole files with the team store's; each listed once."""
        here = self.here.names(kind)
        return sorted(set(here).union(self.team.names(kind))) if self.team else here

    def team_only(self, kind: str) -> frozenset[str]:
        """What the team store holds and Drive does not."""
        return frozenset(self.team.names(kind)) - set(self.here.names(kind)) if self.team else frozenset()

    def holders(self, kind: str, name: str) -> list[tuple[str, Store]]:
        """Every tier that holds a copy, named as the report names it, Drive first."""
        here = not self.here.down and self.here.on_drive(kind, name)
        tiers: list[tuple[str, Store]] = [("Drive", self.here)] if here else []
        if self.team and not self.team.down and self.team.has(kind, name):
            tiers.append((TEAM, self.team))
        return tiers

    def has(self, kind: str, name: str) -> bool:
        return self.here.on_drive(kind, name) or bool(self.team and self.team.has(kind, name))

    def size(self, kind: str, name: str) -> int:
        return self._tier(kind, name).size(kind, name)

    # -- reading ---------------------------------------------------------------------------

    def get(self, kind: str, name: str, dest: Path, sha256s: Collection[str]) -> Path | None:
        """Drive's copy when it is whole; else the team store's, noted in `from_team`."""
        got = self.here.get(kind, name, dest, sha256s)
        if got is None and (team := self.ask_team()) and team.get(kind, name, dest, sha256s):
            self.from_team.add(dest)
            return dest
        return got

    def read_json(self, kind: str, name: str, limit: int = 1 << 20) -> Any:
        return self._tier(kind, name).read_json(kind, name, limit)

    def describe_reads(self) -> str:
        stats = self.here.stats
        said = f"{counted(stats.hits, 'file')}, {stats.bytes_read / 2**20:.1f} MiB from Drive"
        if self.team and (team := self.team.stats).hits:
            said += f"; {counted(team.hits, 'file')}, {team.bytes_read / 2**20:.1f} MiB from the team cache"
        return said

    # -- writing ---------------------------------------------------------------------------

    def put(self, kind: str, name: str, src: Path, bar: Any = None) -> bool:
        self.share(kind, src, name)
        return self.here.put(kind, name, src, bar)

    def share(self, kind: str, src: Path, name: str | None = None) -> None:
        """The team store's copy of a file (one already on Drive, say)."""
        if team := self.ask_team():
            team.put(kind, name or src.name, src)

    def put_text(self, kind: str, name: str, text: str) -> None:
        if team := self.ask_team():
            try:
                team.put_text(kind, name, text)
            except OSError as exc:  # a team folder that fails: Drive's copy is what this run needs
                self.warnings.append(f"{kind[:-1]} {name} not written to the team cache: {explain(exc)}")
        self.here.put_text(kind, name, text)

    def set_aside_named(self, kind: str, name: str) -> None:
        """Set a damaged file aside in the tier that holds it."""
        if self.here.on_drive(kind, name):
            self.here.set_aside_named(kind, name)
        elif self.team and self.team.has(kind, name):
            self.team.set_aside_named(kind, name)

    def record_use(self, keys: Iterable[str], now: float | None = None, *, here: bool = True,
                   team: bool = True) -> None:
        """Drive's usage record unless not `here`, and the team store's unless not `team` (a run
        that held it back leaves that to its Drive worker: see warmstart.drivework)."""
        keys = list(keys)
        if keys and team and (store := self.ask_team()):
            store.record_use(keys, now)
        if here:
            self.here.record_use(keys, now)

    # -- the team tier, as the report, status and the Drive worker see it -------------------

    def team_url(self) -> str | None:
        """The team store's location as the run opened it (a URL may hold user:password@)."""
        if self.held is not None:
            return self.held.location
        if self.team is None:
            return None
        return self.team.url if isinstance(self.team, ObjectStore) else str(self.team)

    def team_spec(self) -> dict[str, Any] | None:
        """What the Drive worker needs to open the same team store: its location without
        credentials (the run hands the URL over in the worker's environment), its mode, and
        where its backend was looked for (the notebook's gcsfs, on Colab)."""
        if self.held is not None:
            return {"location": redact(self.held.location), "read_only": self.held.read_only,
                    "borrow": list(self.borrow)}
        if self.team is None:
            return None
        return {"location": redact(self.team_url() or ""), "read_only": self.team.read_only,
                "borrow": list(self.borrow)}

    def describe_team(self) -> dict[str, Any] | None:
        """The team cache's part in the run, for the report (its URL without credentials);
        `asked`: false when it was held back all along."""
        if self.held is not None:
            return {"cache": redact(self.held.location), "read_only": self.held.read_only, "hits": 0,
                    "bytes_read": 0, "bytes_written": 0, "problem": None, "asked": False}
        if self.team is None:
            return None
        team = self.team
        problem = team.down or ("writes refused" if team.refused else None)
        return {"cache": redact(str(team)), "read_only": team.read_only, "hits": team.stats.hits,
                "bytes_read": team.stats.bytes_read, "bytes_written": team.stats.bytes_written, "problem": problem,
                "asked": True}
