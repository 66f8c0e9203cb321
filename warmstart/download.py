"""Downloading, for wheels and assets alike: parallel, resumable, hashed, retried.

pip fetches one file after another; a cold bootstrap fetches hundreds of megabytes. So warmstart
reads each project's page on the index (PEP 691 JSON where the index speaks it, else PEP 503
HTML), picks the file whose sha256 the lock names and whose tags the target prefers, and fetches
all of them at once under one progress bar. pip's index settings apply (pipconfig): the index
and extra indexes, PIP_CERT, PIP_CLIENT_CERT, PIP_TRUSTED_HOST, PIP_PROXY and the *_PROXY
variables, timeouts and retries, credentials in the URL or from keyring. An index that cannot
be reached or refuses access stops the run with that said; a pin the index page does not list
with the lock's hashes is handed to pip, and the run says which and why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from packaging.tags import Tag

from . import faults, home, wheels
from .console import QUIET, Bar, Bars, counted
from .disks import no_room
from .errors import PreconditionUnmet, WarmstartError, redact
from .lock import Pin
from .pipconfig import IndexSettings, pip_conf_unread, unreachable
from .transfer import WriteFailed, sha256_of, write_to

if TYPE_CHECKING:
    import requests

PARALLEL = 8
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


class DownloadFailed(WarmstartError):
    """A file could not be fetched, or came with the wrong sha256."""


class IndexUnavailable(PreconditionUnmet):
    """The package index cannot be reached, or refuses access (exit 3)."""


@dataclass(frozen=True)
class Job:
    url: str
    sha256: str
    dest: Path
    size: int | None = None  # as the index says: the progress bar's, and the most that is read
    listed_by: str = "the index"  # what states `size`, as a too-large download's error names it


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str
    size: int | None


def partial_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Local (never Drive) folder for partial downloads, so a killed run can resume."""
    return home.downloads(environ)


def _hrefs(html: str) -> list[str]:
    """The links of a PEP 503 (HTML) page. html.parser is imported here, not at the top: every
    run imports this module, and most read no such page (a restore reads none)."""
    from html.parser import HTMLParser

    hrefs: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                hrefs.extend(v for k, v in attrs if k == "href" and v)

    Links().feed(html)
    return hrefs


def parse_project_page(page_url: str, content_type: str, text: str) -> list[IndexFile]:
    """The files a PEP 691 (JSON) or PEP 503 (HTML) project page lists, with their sha256."""
    found = []
    if "json" in content_type:
        for entry in json.loads(text).get("files", []):
            sha256 = (entry.get("hashes") or {}).get("sha256", "")
            found.append(IndexFile(entry["filename"], urljoin(page_url, entry["url"]), sha256, entry.get("size")))
        return found
    for href in _hrefs(text):
        url, _, fragment = urljoin(page_url, href).partition("#")
        sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else ""
        found.append(IndexFile(Path(urlsplit(url).path).name, url, sha256, None))
    return found


class Downloader:
    def __init__(self, settings: IndexSettings, bars: Bars = QUIET, parallel: int = PARALLEL,
                 offline_way_out: bool = True) -> None:
        self.settings, self.bars, self.parallel = settings, bars, parallel
        # Whether an index out of reach is said with `--offline` as the way on: a bootstrap has
        # that flag; `invoke lock`, which needs the index, has not.
        self.offline_way_out = offline_way_out

    @cached_property
    def session(self) -> requests.Session:
        import requests  # imported on first use: restores and no-op runs never need it

        session = requests.Session()
        session.cert = self.settings.client_cert
        return session

    def _get(self, url: str, **kwargs: Any) -> requests.Response:
        """One GET with pip's TLS and proxy settings; on 401, once more with keyring's credentials.
        PIP_PROXY is given with each request: requests takes HTTPS_PROXY over a session's proxies."""
        verify: bool | str = False if self.settings.trusted(url) else (self.settings.cert or True)
        proxy = self.settings.proxy
        kwargs |= {"timeout": (self.settings.timeout, 120), "verify": verify,
                   **({"proxies": {"http": proxy, "https": proxy}} if proxy else {})}
        response = self.session.get(url, **kwargs)
        if response.status_code == 401 and (auth := self._keyring(url)):
            response.close()
            response = self.session.get(url, auth=auth, **kwargs)
        return response

    def _keyring(self, url: str) -> tuple[str, str] | None:
        """Credentials for url from keyring, as pip's import provider finds them."""
        if self.settings.keyring == "disabled":
            return None
        try:
            import keyring  # type: ignore[import-not-found, unused-ignore]

            found = keyring.get_credential(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}", None)
        except Exception:  # no keyring, or no backend: as if it had nothing
            return None
        return (found.username, found.password) if found else None

    def _retrying(self, attempt_once: Any) -> Any:
        """Call attempt_once() until it returns; connection errors and 5xx are retried with
        back-off (PIP_RETRIES times), anything else is the caller's."""
        import requests

        last = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
            try:
                return attempt_once()
            except _Retry as exc:
                last = str(exc)
            except requests.exceptions.SSLError as exc:  # asking again changes nothing
                raise _GaveUp(f"TLS: {_tls_reason(exc)}") from None
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                last = type(exc).__name__
        raise _GaveUp(f"{last}, {counted(self.settings.retries + 1, 'attempt')}")

    # -- the index -------------------------------------------------------------------------

    def project_files(self, project: str) -> list[IndexFile]:
        """Every file the indexes list for a project; IndexUnavailable when one cannot be read."""
        found = []
        for index in self.settings.index_urls:
            page = f"{index.rstrip('/')}/{project}/"

            def read_page(page: str = page) -> requests.Response | None:
                response = self._get(page, headers={"Accept": _ACCEPT})
                if response.status_code >= 500:
                    raise _Retry(f"HTTP {response.status_code}")
                return response

            try:
                response = self._retrying(read_page)
            except _GaveUp as exc:
                raise IndexUnavailable(unreachable(redact(index), str(exc)) + (
                    ", or run with --offline to install from the Drive cache alone" if self.offline_way_out else "")
                ) from None
            if response.status_code in (401, 403):
                raise IndexUnavailable(f"the package index {redact(index)} refused access (HTTP "
                                       f"{response.status_code}); put its credentials in PIP_INDEX_URL "
                                       "(https://USER:TOKEN@host/...) or in keyring" + pip_conf_unread())
            if response.status_code == 404:
                continue  # not on this index; maybe on an extra one
            if not response.ok:
                raise IndexUnavailable(f"the package index {redact(index)} answered HTTP "
                                       f"{response.status_code} for {project}; check PIP_INDEX_URL")
            try:
                found += parse_project_page(response.url, response.headers.get("Content-Type", ""), response.text)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise IndexUnavailable(f"the package index {redact(index)} sent a page for {project} that "
                                       "is neither PEP 691 JSON nor PEP 503 HTML; check PIP_INDEX_URL") from None
        return found

    def wheel_jobs(self, pins: Sequence[Pin], supported: Sequence[Tag], into: Path) -> tuple[list[Job], dict[Pin, str]]:
        """The best wheel of each pin, as download jobs; and the pins left over, with why."""
        rank = wheels.ranking(supported)

        def choose(pin: Pin) -> Job | str:
            files = [f for f in self.project_files(pin.name) if f.sha256 in pin.hashes]
            chosen = wheels.best(((f.filename, f) for f in files), rank)
            if chosen is not None:
                return Job(chosen.url, chosen.sha256, into / chosen.filename, chosen.size)
            if not files:
                return "the index lists no file with a sha256 the lock names"
            return "none of the files the lock names is a wheel for this Python and platform"

        with ThreadPoolExecutor(self.parallel) as pool:
            chosen = list(pool.map(choose, pins))
        jobs = [c for c in chosen if isinstance(c, Job)]
        return jobs, {pin: c for pin, c in zip(pins, chosen, strict=True) if isinstance(c, str)}

    # -- files -----------------------------------------------------------------------------

    def fetch(self, jobs: Sequence[Job], desc: str = "download") -> int:
        """Fetch every job at once under one progress bar; returns the bytes fetched."""
        if not jobs:
            return 0
        _room_for(jobs, desc)
        total = sum(j.size for j in jobs if j.size) if all(j.size for j in jobs) else None
        with self.bars.bar(total, desc) as bar, ThreadPoolExecutor(self.parallel) as pool:
            sizes = list(pool.map(lambda job: self.fetch_one(job, bar), jobs))
        faults.point("download")
        return sum(sizes)

    def fetch_one(self, job: Job, bar: Bar) -> int:
        """Fetch into `<dest>.part` (resuming what an earlier attempt or a killed run left there),
        check the sha256, rename it to job.dest. Connection errors and 5xx are retried."""
        self.settings.require_secure(job.url, "download URL")
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        part = _part(job)

        def attempt() -> None:
            import requests

            have = part.stat().st_size if part.exists() else 0
            with self._get(job.url, stream=True, headers={"Range": f"bytes={have}-"} if have else {}) as response:
                if response.status_code == 416:
                    return  # nothing left to fetch: the part is whole
                if response.status_code >= 500:
                    raise _Retry(f"HTTP {response.status_code}")
                try:
                    response.raise_for_status()
                except requests.HTTPError as exc:
                    raise DownloadFailed(f"cannot download {redact(job.url)}: {redact(str(exc))}") from None
                resumed = response.status_code == 206
                bar.update(have if resumed else 0)
                expected = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
                if job.size is not None and expected > job.size:
                    raise _TooLarge(f"{expected} bytes")
                with open(part, "ab" if resumed else "wb") as fh:
                    # Small reads: what arrived before a dropped connection is kept for resuming.
                    for chunk in response.iter_content(64 * 1024):
                        write_to(fh, chunk)  # a full disk names the file (the network's errors are OSErrors too)
                        bar.update(len(chunk))
                        if job.size is not None and fh.tell() > job.size:  # the disk is not filled for it
                            raise _TooLarge(f"more than {job.size} bytes")
                    write_to(fh, b"")
            if expected and part.stat().st_size < expected:
                raise _Retry(f"connection closed after {part.stat().st_size} of {expected} bytes")

        import requests

        try:
            self._retrying(attempt)
        except WriteFailed:  # the local disk is full: what the part holds would keep it so
            part.unlink(missing_ok=True)
            raise
        except _TooLarge as exc:
            part.unlink(missing_ok=True)
            raise DownloadFailed(f"{redact(job.url)} served {exc}, where {job.listed_by} lists {job.size} bytes "
                                 f"for it; check {job.listed_by} or the mirror") from None
        except _GaveUp as exc:
            raise DownloadFailed(f"cannot download {redact(job.url)} ({exc})") from None
        except requests.RequestException as exc:  # a redirect loop, an address it cannot read
            raise DownloadFailed(f"cannot download {redact(job.url)}: {type(exc).__name__}; check the URL") from None
        sha256 = sha256_of(part)
        if sha256 != job.sha256:
            part.unlink()
            raise DownloadFailed(f"{redact(job.url)} served a file with sha256 {sha256}, not the {job.sha256} "
                                 "that the lock or recipe names; fix the lock or recipe, or check the mirror")
        os.replace(part, job.dest)
        return job.dest.stat().st_size


def _part(job: Job) -> Path:
    return job.dest.with_name(job.dest.name + ".part")


def _room_for(jobs: Sequence[Job], desc: str) -> None:
    """PreconditionUnmet when what is left of the files whose size is listed does not fit in their
    folder: said before a byte is fetched, not once a download has filled the disk."""
    left: dict[Path, int] = {}
    for job in jobs:
        if job.size:
            job.dest.parent.mkdir(parents=True, exist_ok=True)
            have = part.stat().st_size if (part := _part(job)).exists() else 0
            left[job.dest.parent] = left.get(job.dest.parent, 0) + max(job.size - have, 0)
    for folder, size in left.items():
        if short := no_room(size, folder, then="free disk space there, then run again"):
            raise PreconditionUnmet(f"{desc}: {'the file is' if len(jobs) == 1 else 'the files are'} {short}")


class _Retry(Exception):
    """An answer worth asking again for (5xx, a cut connection)."""


class _TooLarge(Exception):
    """A file larger than the index lists it: not the file listed (its sha256 would fail at its
    end, after it filled the disk)."""


class _GaveUp(Exception):
    """Every attempt failed; the message says how."""


def _tls_reason(exc: Exception) -> str:
    """The last words of an SSL error (`certificate verify failed: ...`), not its whole chain."""
    text = str(exc)
    for marker in ("certificate verify failed", "tlsv", "sslv3", "handshake"):
        if marker in text.lower():
            start = text.lower().index(marker)
            return text[start:].split("(_ssl.c")[0].split("')")[0].strip(" :")[:160]
    return type(exc).__name__
