"""Locks made on the VM itself, for a runtime no committed lock was compiled for.

Colab drifts weekly: a VM may differ from every published image in the recipe's own closure
(numpy a minor newer than the list says). The committed lock would replace what the runtime
ships there. Instead, while the package index answers, the recipe's `.in` is resolved on the
spot against what this VM has (its versions preferred wherever the recipe allows them), hashed
and CUDA-checked like every lock (`compiling.compile_lock`), and kept in the Drive store as
`locks/<recipe>-<pyXY>-<key>.txt`, the key naming the VM's versions of what its nearest image
ships, the recipe's inputs and the Python: the next wiped VM of the same runtime finds it and
restores offline. A committed lock is never changed by it; `invoke lock` stays the maintainer's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import extras, home
from .disks import explain
from .errors import BadInput, WarmstartError
from .images import LIVE, Image, live_image
from .lock import Lock, LockTarget, check_fresh, needs, parse_lock
from .recipe import Recipe
from .store import Stalled
from .target import TargetPython
from .tiered import TieredStore
from .transfer import atomic_write_bytes

KIND = "locks"
MAX_BYTES = 4 * 2**20  # a lock of hundreds of pins is tens of KiB: more is not a lock


@dataclass(frozen=True)
class OwnLock:
    lock: Lock
    image: Image  # this VM, as the image the lock was made against
    target: LockTarget
    at: str  # where it lies on Drive
    how: str  # "made on this runtime now" / "..., from Drive"


def for_runtime(store: TieredStore, recipe: Recipe, wanted: LockTarget, committed: Lock, image: Image,
                vm: TargetPython, *, make: bool, say: Callable[[str], None], root: Path,
                warnings: list[str]) -> OwnLock | None:
    """The lock this runtime gets instead of the committed one, which would change what the VM
    has: from Drive, else (`make`: a real run, online) made now; None: the committed one serves."""
    have = vm.installed
    if not any(p.name in have for p in needs(committed.pins, have).install):
        return None  # the committed lock only adds to what the VM has
    live = live_image(image, have, vm.version)
    target = LockTarget(wanted.python_version, wanted.platform, live.name)
    lock, how = find(store, recipe, target, live, committed), "made on this runtime, from Drive"
    if lock is None and make:
        try:
            lock = _make(store, recipe, target, live, say, root)
            how = f"made on this runtime now (the nearest image, {image.name}, differs in its closure)"
        except WarmstartError as exc:
            warnings.append(f"no lock could be made for this runtime ({exc}); the committed one replaces "
                            "what the plan lists")
    if lock is None:
        return None
    return OwnLock(lock, live, target, str(store.path(KIND, stored_name(recipe, target))), how)


def stored_name(recipe: Recipe, target: LockTarget) -> str:
    assert target.image, "a live lock's target names its image"
    return f"{recipe.name}-{target.python_tag}-{target.image.removeprefix(LIVE)}.txt"


_STORED = re.compile(r"^(.+)-py\d+-[0-9a-f]{16}\.txt$")


def recipe_of(stored: str) -> str | None:
    """The recipe a stored lock's name (stored_name) was made for; None: not such a name."""
    return match.group(1) if (match := _STORED.match(stored)) else None


def _local(recipe: Recipe, target: LockTarget) -> Path:
    folder = home.live_locks()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / stored_name(recipe, target)


def find(store: TieredStore, recipe: Recipe, target: LockTarget, live: Image, committed: Lock) -> Lock | None:
    """The lock an earlier VM of this runtime made, from Drive (never from a team store), checked
    before use: a lock as `invoke lock` writes it (its own digest), for this recipe's inputs and
    this VM's versions, with the committed lock's hashes for every release both name."""
    name = stored_name(recipe, target)
    src = store.path(KIND, name)
    if not store.on_drive(KIND, name):
        return None
    local = _local(recipe, target)
    try:
        data = store.here.read_small(KIND, name, MAX_BYTES)  # bounded: Drive may hang
    except OSError as exc:  # Drive slow or gone: not the file's fault, so it stays where it is
        if not isinstance(exc, Stalled):  # that one warned once for the run
            store.warnings.append(f"the lock for this runtime on Drive ({src}) cannot be read: "
                                  f"{explain(exc, src.parent)}")
        return None
    try:
        if len(data) > MAX_BYTES:
            raise BadInput(f"larger than {MAX_BYTES // 2**20} MiB")
        atomic_write_bytes(local, data)  # a full local disk names its file, and ends the run (exit 3)
        lock = parse_lock(local)
        check_fresh(lock, recipe, target, live)
        known = {(p.name, p.version): p.hashes for p in committed.pins}
        for pin in lock.pins:
            if (pin.name, pin.version) in known and not pin.hashes <= known[(pin.name, pin.version)]:
                raise BadInput(f"its hashes for {pin.name}=={pin.version} are not the committed lock's")
    except BadInput as exc:
        store.warnings.append(f"the lock for this runtime on Drive ({src}) cannot be used: {exc}; set aside")
        local.unlink(missing_ok=True)
        try:
            store.set_aside_named(KIND, name)  # kept for inspection; the next one made takes its place
        except OSError:
            pass
        return None
    return lock


def _make(store: TieredStore, recipe: Recipe, target: LockTarget, live: Image, say: Callable[[str], None],
         root: Path) -> Lock:
    """Resolve it here (the package index, and the `lock` extra to read the wheels' CUDA
    libraries), put it on Drive for the next VM, and return it."""
    extras.require("lock", "elftools", "a lock for this runtime")
    local = _local(recipe, target)
    local.unlink(missing_ok=True)  # resolved from the VM's versions alone, not seeded by an earlier copy
    from .compiling import compile_lock  # lock-time machinery: loaded only when a lock is made (0.15 s)

    compile_lock(recipe, target, say=say, root=root, image=live, path=local)
    store.put(KIND, local.name, local)  # a refusal is a warning of the store's: this run goes on
    return parse_lock(local)
