"""Downloading the lock's wheels from the package index, several at a time.

pip downloads one file after the other; a cold bootstrap fetches hundreds of megabytes, so
warmstart reads each project's PEP 503 page, picks the file whose sha256 the lock names and
whose tags the target prefers, and fetches those in parallel, checking each hash. Whatever it
cannot place this way (an index that hides hashes, say) is left to `pip download`.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from .errors import WarmstartError
from .lock import Pin
from .transfer import CHUNK, require_https

if TYPE_CHECKING:
    import requests

DEFAULT_INDEX = "https://pypi.org/simple"
PARALLEL = 8


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def index_urls() -> list[str]:
    """The index (PIP_INDEX_URL, else PyPI) and the extra ones; plain http is refused."""
    urls = []
    for var, default in (("PIP_INDEX_URL", DEFAULT_INDEX), ("PIP_EXTRA_INDEX_URL", "")):
        for url in (os.environ.get(var) or default).split():
            require_https(url, var)
            urls.append(url)
    return urls


def wheel_candidates(session: requests.Session, pin: Pin) -> list[tuple[str, str, str]]:
    """(filename, url, sha256) of the wheels the index lists for pin whose hash the lock names."""
    found = []
    for index in index_urls():
        page_url = f"{index.rstrip('/')}/{pin.name}/"
        response = session.get(page_url, timeout=(10, 60))
        if response.status_code == 404:
            continue
        response.raise_for_status()
        links = _Links()
        links.feed(response.text)
        for href in links.hrefs:
            url, _, fragment = urljoin(page_url, href).partition("#")
            sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else ""
            filename = Path(urlsplit(url).path).name
            if sha256 in pin.hashes and filename.endswith(".whl"):
                found.append((filename, url, sha256))
    return found


def best_wheel(files: list[tuple[str, str, str]], supported: list[tags.Tag]) -> tuple[str, str, str] | None:
    rank = {tag: n for n, tag in enumerate(supported)}
    scored = []
    for file in files:
        try:
            wheel_tags = parse_wheel_filename(file[0])[3]
        except InvalidWheelFilename:
            continue
        score = min((rank[t] for t in wheel_tags if t in rank), default=None)
        if score is not None:
            scored.append((score, file))
    return min(scored)[1] if scored else None


def _fetch_one(session: requests.Session, pin: Pin, supported: list[tags.Tag], dest: Path) -> Path | None:
    import requests

    try:
        return _download_best(session, pin, supported, dest)
    except requests.RequestException:
        return None  # pip tries next, and reports the error in its own words


def _download_best(session: requests.Session, pin: Pin, supported: list[tags.Tag], dest: Path) -> Path | None:
    choice = best_wheel(wheel_candidates(session, pin), supported)
    if choice is None:
        return None
    filename, url, sha256 = choice
    return download_verified(session, url, sha256, dest / filename, f"{pin.name}=={pin.version}")


def download_verified(session: requests.Session, url: str, sha256: str, target: Path, what: str) -> Path:
    """Stream url into target, hashing as it comes; a file whose sha256 differs is removed."""
    digest = hashlib.sha256()
    with session.get(url, stream=True, timeout=(10, 120)) as response:
        response.raise_for_status()
        with open(target, "wb") as fh:
            for chunk in response.iter_content(CHUNK):
                digest.update(chunk)
                fh.write(chunk)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise WarmstartError(f"{url} served a file whose sha256 is not the one the index and the lock "
                             f"name for {what}; try again, or check the mirror")
    return target


def fetch_wheels(pins: list[Pin], supported: list[tags.Tag], dest: Path) -> list[Pin]:
    """Download the best wheel of each pin into dest; returns the pins left for pip."""
    import requests  # imported on first use: restores and no-op runs never need it

    session = requests.Session()
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(lambda pin: _fetch_one(session, pin, supported, dest), pins))
    return [pin for pin, result in zip(pins, results) if result is None]
