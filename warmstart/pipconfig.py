"""pip's index settings, read once, and the environments warmstart gives pip and uv.

The lock is the whole truth, so nothing in the user's pip configuration may add to it (pip.conf,
PIP_CONSTRAINT, PIP_FIND_LINKS, ...). What only says where the index is and how to reach it is
honoured everywhere alike: by warmstart's own downloader, by pip, by uv (in its own words) and
by warmstart.sh. Standard library only: warmstart.sh runs this before any dependency is there.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import home
from .errors import BadInput, redact
from .settings import ALLOW_HTTP

DEFAULT_INDEX = "https://pypi.org/simple"
# Where the index is and how to reach it; every other PIP_* variable is dropped.
INDEX_SETTINGS = frozenset({
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST",
    "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES", "PIP_KEYRING_PROVIDER",
})
# uv settings that have broken it on Colab (constraint files that are not there), would add to
# the lock, or would leave the environment leaning on uv's cache (UV_LINK_MODE=symlink: its files
# links into warmstart's folder, gone with it, and no snapshot could be made of it); cleared for
# every call.
_UV_CLEARED = ("UV_CONSTRAINT", "UV_BUILD_CONSTRAINT", "UV_OVERRIDE", "UV_REQUIRE_HASHES",
               "UV_NO_BINARY", "UV_FIND_LINKS", "UV_CONFIG_FILE", "UV_SYSTEM_PYTHON", "UV_LINK_MODE")
# PEP 668's way out, in pip's words and in uv's: change a Python its system's package manager owns
# all the same (in a container that is the user's to change). Either is the user's yes for both.
BREAK_SYSTEM_PACKAGES = ("PIP_BREAK_SYSTEM_PACKAGES", "UV_BREAK_SYSTEM_PACKAGES")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The CA bundle the index is verified with, the first of these set, one for every client:
# PIP_CERT, else the one this machine names for requests (warmstart's downloader and pip read it)
# or for OpenSSL (uv reads it). Each client had read only its own: a private CA trusted through
# REQUESTS_CA_BUNDLE failed uv's install from the index, one through SSL_CERT_FILE warmstart's
# download, and PIP_CERT lost to a machine's SSL_CERT_FILE in uv and to its REQUESTS_CA_BUNDLE in pip.
CA_BUNDLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
# Index settings that name a file: given by its full path to the children that read them (pip,
# uv, the Drive worker), which work in / (background.NEUTRAL_CWD), where a relative path names
# nothing (the Drive worker stopped at "PIP_CERT=ca.pem is not a file", and every Drive write
# of its run with it).
_FILE_SETTINGS = ("PIP_CLIENT_CERT", *CA_BUNDLES)


def unreachable(index: str, why: str, needed_for: str = "") -> str:
    """The line for a package index out of reach (`index` with its credentials hidden), said alike
    by a bootstrap, `invoke lock` and warmstart.sh."""
    return (f"cannot reach the package index {index}{needed_for} ({why}); check the network, the proxy "
            "(HTTPS_PROXY, PIP_PROXY), PIP_INDEX_URL and the TLS settings (PIP_CERT, PIP_CLIENT_CERT)"
            + _machine_store(why) + pip_conf_unread())


def _machine_store(why: str, environ: Mapping[str, str] = os.environ) -> str:
    """"" or, where the index's certificate was not trusted and no CA bundle is named, the clause
    that names this machine's certificate store. pip reads it (truststore); warmstart's downloader
    (certifi's roots) and uv (its own) read it only when named: a private CA installed there alone
    served pip and refused them."""
    import ssl  # here, not at the top: every run imports this module, few say this (ssl: 4 ms)

    store = ssl.get_default_verify_paths().openssl_cafile
    if "certificate verify failed" not in why or _ca_bundle(environ) or not os.path.isfile(store):
        return ""
    return ("; a CA that this machine's certificate store holds is trusted once it is named: "
            f"PIP_CERT={os.path.realpath(store)}")


# pip's configuration files' index settings, by the variable that gives each to warmstart. It
# reads none of those files (nor does uv): a mirror or a CA bundle named there alone was never
# asked for, and a run that could not reach PyPI said nothing of it.
_CONF_KEYS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "cert": "PIP_CERT",
              "client-cert": "PIP_CLIENT_CERT", "trusted-host": "PIP_TRUSTED_HOST", "proxy": "PIP_PROXY"}
SYSTEM_PIP_CONF = Path("/etc/pip.conf")  # the machine's own, which pip reads after XDG_CONFIG_DIRS'


def _pip_conf_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files on Linux, as pip finds them: none where PIP_CONFIG_FILE is
    os.devnull, else the system's, the user's, and PIP_CONFIG_FILE's."""
    given = environ.get("PIP_CONFIG_FILE")
    if given == os.devnull:
        return []
    user = Path(environ.get("HOME") or os.path.expanduser("~"))
    config_home = Path(environ.get("XDG_CONFIG_HOME") or user / ".config")
    system = [Path(folder, "pip", "pip.conf") for folder in (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
              if folder]
    return [*system, SYSTEM_PIP_CONF, user / ".pip" / "pip.conf", config_home / "pip" / "pip.conf",
            *([Path(given)] if given else [])]


def pip_conf_unread(environ: Mapping[str, str] = os.environ) -> str:
    """"" or, where pip's configuration files name index settings that the environment does not,
    a clause saying which and where, and the variables that give them to warmstart."""
    unread: dict[str, None] = {}  # the variables, in the order pip's files name them
    files: dict[str, None] = {}  # the files that name them, in pip's order
    for path in _pip_conf_files(environ):
        parser = configparser.RawConfigParser()
        try:
            if not path.is_file():  # not there (most of them), or a FIFO that would hold the run
                continue
            with open(path, encoding="utf-8", errors="replace") as file:
                parser.read_string(file.read(1 << 16), str(path))
        except (OSError, configparser.Error):
            continue  # pip says what is wrong with its file; this is a hint
        for section in ("global", "install", "download"):
            for key, value in parser.items(section) if parser.has_section(section) else ():
                if (var := _CONF_KEYS.get(key.replace("_", "-"))) and value.strip() and not environ.get(var):
                    unread[var] = files[str(path)] = None
    if not unread:
        return ""
    keys = {var: key for key, var in _CONF_KEYS.items()}
    return (f"; pip's configuration ({', '.join(files)}) sets {', '.join(keys[var] for var in unread)}, which "
            f"warmstart does not read: give {'it' if len(unread) == 1 else 'them'} as {', '.join(unread)}")


def anchored(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`environ`, with the files its index settings name by their full paths."""
    return {**environ, **{var: os.path.abspath(environ[var]) for var in _FILE_SETTINGS if environ.get(var)}}


def _number(environ: Mapping[str, str], var: str, default: float) -> float:
    raw = environ.get(var)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise BadInput(f"{var} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class IndexSettings:
    index_urls: tuple[str, ...]  # PIP_INDEX_URL (else PyPI), then PIP_EXTRA_INDEX_URL
    trusted_hosts: frozenset[str] = frozenset()  # plain http and no TLS check, as pip does
    cert: str | None = None  # a CA bundle (a file, or a folder of certificates): CA_BUNDLES' first
    client_cert: str | None = None  # a PEM file with the client's key and certificate
    proxy: str | None = None  # PIP_PROXY, over HTTPS_PROXY and friends (which apply without it)
    timeout: float = 15.0
    retries: int = 5
    keyring: str = "auto"  # pip's --keyring-provider: auto, disabled, import, subprocess

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> IndexSettings:
        """The settings, or BadInput naming the variable: plain http is refused unless the host
        is this machine, is trusted (PIP_TRUSTED_HOST) or WARMSTART_ALLOW_HTTP=1 says so."""
        environ = anchored(environ)
        trusted = frozenset(h.split(":")[0] for h in environ.get("PIP_TRUSTED_HOST", "").split())
        given = {"PIP_INDEX_URL": (environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).split(),
                 "PIP_EXTRA_INDEX_URL": environ.get("PIP_EXTRA_INDEX_URL", "").split()}
        settings = cls(
            index_urls=tuple(url for urls in given.values() for url in urls),
            trusted_hosts=trusted,
            cert=bundle[1] if (bundle := _ca_bundle(environ)) else None,
            client_cert=environ.get("PIP_CLIENT_CERT") or None,
            proxy=environ.get("PIP_PROXY") or None,
            timeout=_number(environ, "PIP_DEFAULT_TIMEOUT", 15.0),
            retries=int(_number(environ, "PIP_RETRIES", 5)),
            keyring=environ.get("PIP_KEYRING_PROVIDER") or "auto",
        )
        for var, urls in given.items():
            for url in urls:
                settings.require_secure(url, var, environ)
        for var in ("PIP_CERT", "PIP_CLIENT_CERT"):
            if (path := environ.get(var)) and not Path(path).is_file():
                raise BadInput(f"{var}={path} is not a file; point it at a PEM file or unset it")
        # the machine's: requests took one that names nothing for a disk's failure ("invalid path ... [errno None]")
        if bundle and not os.path.exists(bundle[1]):
            raise BadInput(f"{bundle[0]}={bundle[1]} names nothing; point it at a CA bundle or unset it "
                           "(PIP_CERT names one for warmstart, pip and uv alike)")
        return settings

    def trusted(self, url: str) -> bool:
        return (urlsplit(url).hostname or "") in self.trusted_hosts

    def require_secure(self, url: str, what: str, environ: Mapping[str, str] = os.environ) -> None:
        if not url.startswith("http://") or ALLOW_HTTP.on(environ):
            return
        host = urlsplit(url).hostname or ""
        if host in _LOOPBACK or host in self.trusted_hosts:
            return
        raise BadInput(f"{what} {redact(url)} is plain http, which anyone on the way can change; "
                       "use https, trust the host with PIP_TRUSTED_HOST, or set WARMSTART_ALLOW_HTTP=1")


def _ca_bundle(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The first of CA_BUNDLES set, and its variable. An SSL_CERT_FILE that names nothing is
    passed over, as OpenSSL and uv pass it over (requests and pip stop at such a bundle)."""
    for var in CA_BUNDLES:
        if (path := environ.get(var)) and (var != "SSL_CERT_FILE" or os.path.exists(path)):
            return var, path
    return None


def breaks_system_packages(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user lets the installers change an externally managed Python (PEP 668): either
    of BREAK_SYSTEM_PACKAGES on, in the words pip takes; any other value is bad input."""
    yes, no = ("1", "true", "yes", "on", "y", "t"), ("", "0", "false", "no", "off", "n", "f")
    words = {var: environ.get(var, "").strip().lower() for var in BREAK_SYSTEM_PACKAGES}
    for var, word in words.items():
        if word not in yes + no:
            raise BadInput(f"{var} must be 1 (on) or 0 (off), got {environ[var]!r}")
    return any(word in yes for word in words.values())


def pip_env(environ: Mapping[str, str] = os.environ, unset: Iterable[str] = ()) -> dict[str, str]:
    """The environment for pip: the caller's, minus every PIP_* setting that could add to the
    lock, minus the platform's known-bad variables (`unset`, from the profile)."""
    settings = IndexSettings.from_environ(environ)  # refuse what the downloader refuses
    drop = set(unset)
    env = {k: v for k, v in anchored(environ).items()
           if (not k.startswith("PIP_") or k in INDEX_SETTINGS) and k not in drop}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONNOUSERSITE="1", PIP_CACHE_DIR=str(home.pip_cache(environ)))  # not ~/.cache/pip
    if settings.cert:  # pip's requests takes REQUESTS_CA_BUNDLE over pip's --cert, which a --proxy leaves alone
        env["PIP_CERT"] = env["REQUESTS_CA_BUNDLE"] = settings.cert
    if breaks_system_packages(environ):
        env["PIP_BREAK_SYSTEM_PACKAGES"] = "1"
    return env


def _uv_credentials_default(environ: Mapping[str, str]) -> Path:
    """Where uv keeps credentials stored with `uv auth login`, unless UV_CREDENTIALS_DIR says."""
    chosen = environ.get("XDG_DATA_HOME", "")
    data = Path(chosen) if os.path.isabs(chosen) else Path(os.path.expanduser("~/.local/share"))
    return data / "uv" / "credentials"


def uv_env(environ: Mapping[str, str] = os.environ, unset: Iterable[str] = ()) -> dict[str, str]:
    """The environment for uv: the same index settings in uv's words, its cache on local disk
    (Drive refuses the links uv makes), no user configuration, and no interpreter downloaded."""
    settings = IndexSettings.from_environ(environ)
    drop = set(_UV_CLEARED) | set(unset)
    env = {k: v for k, v in environ.items() if k not in drop}
    env.update(UV_CACHE_DIR=str(home.uv_cache(environ)), UV_NO_CONFIG="1", UV_NO_PROGRESS="1",
               # Locking for another Python (`--python-version`), uv found no interpreter of it and
               # fetched one from GitHub into ~/.local/share/uv: a host besides the index, a folder
               # besides warmstart's, and, where that host was out of reach, 10 s of retries per
               # resolution. Any interpreter serves a resolution for a version; an install names its own.
               UV_PYTHON_DOWNLOADS="never")
    given = {
        "UV_INDEX_URL": environ.get("PIP_INDEX_URL"),
        "UV_EXTRA_INDEX_URL": environ.get("PIP_EXTRA_INDEX_URL"),
        "SSL_CLIENT_CERT": settings.client_cert,
        "UV_INSECURE_HOST": " ".join(sorted(settings.trusted_hosts)) or None,
        "UV_HTTP_TIMEOUT": environ.get("PIP_DEFAULT_TIMEOUT"),
        "UV_KEYRING_PROVIDER": "subprocess" if settings.keyring in ("import", "subprocess") else None,
    }
    for var, value in given.items():
        if value and var not in environ:  # uv's own setting, when there is one, wins
            env[var] = value
    if settings.proxy:  # PIP_PROXY over the machine's, as pip takes its --proxy
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = settings.proxy
    if settings.cert:  # the index's CA bundle, over a machine's SSL_CERT_FILE (CA_BUNDLES)
        env["SSL_CERT_DIR" if os.path.isdir(settings.cert) else "SSL_CERT_FILE"] = settings.cert
    if "UV_CREDENTIALS_DIR" not in environ and not _uv_credentials_default(environ).is_dir():
        # no credentials stored for uv to read: the lock uv takes on its store when an index asks
        # for them goes in warmstart's folder, not in ~/.local/share/uv
        env["UV_CREDENTIALS_DIR"] = str(home.uv_credentials(environ))
    if breaks_system_packages(environ):
        env["UV_BREAK_SYSTEM_PACKAGES"] = "1"
    return env
