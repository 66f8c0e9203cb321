"""pip's index settings, honoured by warmstart's own downloader as pip honours them.

A real HTTPS index on 127.0.0.1 with a private CA (made here with openssl), one that also asks
for a client certificate, one that refuses (401), and a port nobody listens on; each through the
real command line with a bare virtualenv as the target.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import certifi
import pytest
from conftest import (
    LOCKED,
    Index,
    _QuietFiles,
    bootstrap,
    cli_env,
    dead_url,
    installed,
    make_venv,
    run_cli,
    serve_folder,
)

from warmstart.pipconfig import CA_BUNDLES

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (key and cert in one PEM,
    as PIP_CLIENT_CERT wants it), all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    # The extensions a CA's certificates carry, as Python 3.13's strict checks ask (its default
    # context: "CA cert does not include key usage extension" else).
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    # X.509 v3 both (extensions make it so): uv's TLS stack refuses v1 certificates.
    issued = "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    (d / "server.cnf").write_text(f"subjectAltName=IP:127.0.0.1\n{issued}")
    (d / "client.cnf").write_text(f"extendedKeyUsage=clientAuth\n{issued}")
    for who in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key",
                "-out", f"{who}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{who}.crt", "-extfile", f"{who}.cnf", cwd=d)
    (d / "client.pem").write_text((d / "client.key").read_text() + (d / "client.crt").read_text())
    return d


def serve_tls(folder: Path, pki: Path, *, client_cert: bool,
              handler: type[http.server.BaseHTTPRequestHandler] = _QuietFiles) -> tuple[str, http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    if client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki / "ca.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{server.server_address[1]}/simple", server


@pytest.fixture(params=[False, True], ids=["server-cert", "client-cert-required"])
def tls_index(request, index: Index, pki: Path):
    url, server = serve_tls(index.files.parent, pki, client_cert=request.param)
    yield url, request.param
    server.shutdown()


def test_an_index_signed_by_a_private_ca_is_trusted_through_pip_cert(demo, drive, tmp_path, tls_index, pki):
    url, needs_client_cert = tls_index
    settings = {"PIP_CERT": str(pki / "ca.pem")}
    if needs_client_cert:
        settings["PIP_CLIENT_CERT"] = str(pki / "client.pem")
    python = make_venv(tmp_path / "venv")

    result = bootstrap(demo, drive, python, env=cli_env(url, **settings))

    assert result.code == 0, result.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED


def test_without_the_ca_the_index_is_named_as_untrusted_not_as_a_missing_package(demo, drive, tmp_path, tls_index):
    url, _ = tls_index

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=cli_env(url, PIP_RETRIES="0"))

    assert result.code == 3, result.stderr
    assert "cannot reach the package index https://127.0.0.1" in result.report["error"]
    assert "No matching distribution" not in result.stderr


def test_an_untrusted_index_with_no_ca_bundle_named_names_the_machines_certificate_store(
        demo, drive, tmp_path, tls_index, pki):
    """A private CA installed in this machine's store alone: pip trusts it (truststore), warmstart's
    downloader and uv do not until it is named, and the line said nothing of the store. With a CA
    bundle named, the line does not say it."""
    url, _ = tls_index
    store = Path(ssl.get_default_verify_paths().openssl_cafile).resolve()
    env = {k: v for k, v in cli_env(url, PIP_RETRIES="0").items() if k not in (*CA_BUNDLES, "SSL_CERT_DIR")}

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 3, result.stderr
    assert "certificate verify failed" in result.report["error"]
    assert (f"; a CA that this machine's certificate store holds is trusted once it is named: PIP_CERT={store}"
            in result.report["error"]), result.report["error"]
    named = bootstrap(demo, drive, make_venv(tmp_path / "venv2"), env=env | {"REQUESTS_CA_BUNDLE": certifi.where()})
    assert named.code == 3 and "certificate verify failed" in named.report["error"], named.stderr
    assert "certificate store" not in named.report["error"]


def test_without_the_client_certificate_the_index_refuses_and_says_so(demo, drive, tmp_path, index, pki):
    url, server = serve_tls(index.files.parent, pki, client_cert=True)
    try:
        result = bootstrap(demo, drive, make_venv(tmp_path / "venv"),
                           env=cli_env(url, PIP_CERT=str(pki / "ca.pem"), PIP_RETRIES="0"))
    finally:
        server.shutdown()
    assert result.code == 3 and "cannot reach the package index" in result.report["error"], result.stderr


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_index_that_refuses_is_reported_as_refusing_with_the_way_in(demo, drive, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://user:s3cret@127.0.0.1:{server.server_address[1]}/simple"
    try:
        result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=cli_env(url))
    finally:
        server.shutdown()
    assert result.code == 3, result.stderr
    assert "refused access (HTTP 401)" in result.report["error"] and "PIP_INDEX_URL" in result.report["error"]
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize("drive_writes", ["background", "waited for"])
@pytest.mark.parametrize("var", CA_BUNDLES[:2] + CA_BUNDLES[3:])
def test_the_ca_bundle_one_variable_names_is_every_client_s(demo, drive, tmp_path, index, pki, var, drive_writes):
    """The private CA named in PIP_CERT, REQUESTS_CA_BUNDLE or SSL_CERT_FILE; a bundle without it
    (certifi's, a machine-wide one) in those after it. A cold run fetches with uv from the index
    when it writes Drive in the background (the default), with warmstart's own downloader when it
    waits. Each client had read only its own variable: uv took the machine's SSL_CERT_FILE over
    PIP_CERT and knew nothing of REQUESTS_CA_BUNDLE; the downloader nothing of SSL_CERT_FILE."""
    env = {k: v for k, v in cli_env(PIP_RETRIES="0", XDG_CACHE_HOME=str(tmp_path / "cache")).items()
           if k not in CA_BUNDLES}  # a warmstart folder of its own: nothing in uv's cache
    env |= {later: certifi.where() for later in CA_BUNDLES[CA_BUNDLES.index(var) + 1:]} | {var: str(pki / "ca.pem")}
    if drive_writes == "background":
        del env["WARMSTART_WAIT"]
    url, server = serve_tls(index.files.parent, pki, client_cert=False)
    python = make_venv(tmp_path / "venv")
    try:
        result = bootstrap(demo, drive, python, env=env | {"PIP_INDEX_URL": url})
    finally:
        server.shutdown()

    assert result.code == 0, result.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """A plain-http forward proxy: fetches the absolute URL asked for; `asked` keeps them."""

    asked: ClassVar[list[str]] = []

    def do_GET(self):
        self.asked.append(self.path)
        try:
            with urllib.request.urlopen(self.path) as answer:
                status, body, kind = answer.status, answer.read(), answer.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            status, body, kind = exc.code, b"", "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("drive_writes", ["background", "waited for"])
def test_pip_proxy_is_every_client_s_over_the_machine_s(demo, drive, tmp_path, index, drive_writes):
    """PIP_PROXY names the way to the index; HTTP(S)_PROXY, the machine's, one that is down here.
    requests takes the environment's over a session's proxies, so warmstart's downloader went to
    the machine's proxy (as did uv, given PIP_PROXY only where the machine set none), where pip
    takes its --proxy over them."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    _ForwardProxy.asked.clear()
    # a warmstart folder of its own: uv's cache, shared by the tests, may hold the index's answers
    env = cli_env(index.url, PIP_PROXY=f"http://127.0.0.1:{proxy.server_address[1]}", PIP_RETRIES="0",
                  HTTP_PROXY=dead_url(), HTTPS_PROXY=dead_url(), XDG_CACHE_HOME=str(tmp_path / "cache"))
    if drive_writes == "background":
        del env["WARMSTART_WAIT"]
    python = make_venv(tmp_path / "venv")
    try:
        result = bootstrap(demo, drive, python, env=env)
    finally:
        proxy.shutdown()

    assert result.code == 0, result.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
    assert any(url.startswith(index.url) for url in _ForwardProxy.asked), _ForwardProxy.asked


def test_a_ca_bundle_variable_naming_nothing_is_said_before_any_step(demo, drive, tmp_path):
    """REQUESTS_CA_BUNDLE (requests' and so pip's default) left naming a file that is gone: the
    download stopped with "Could not find a suitable TLS CA certificate bundle ... [errno None];
    check that the folder is there, writable and not full"."""
    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"),
                       env=cli_env("https://127.0.0.1:9/simple", REQUESTS_CA_BUNDLE=str(tmp_path / "gone.pem")))

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: REQUESTS_CA_BUNDLE={tmp_path / 'gone.pem'} names nothing; point it at a CA bundle or "
        "unset it (PIP_CERT names one for warmstart, pip and uv alike)")
    (tmp_path / "ca.pem").touch()  # PIP_CERT given: that one is verified with, this one not read
    assert bootstrap(demo, drive, make_venv(tmp_path / "venv"), "--dry-run",
                     env=cli_env("https://127.0.0.1:9/simple", PIP_CERT=str(tmp_path / "ca.pem"),
                                 REQUESTS_CA_BUNDLE=str(tmp_path / "gone.pem"))).code == 0


def test_an_unreachable_index_is_reported_as_unreachable(demo, drive, tmp_path):
    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"),
                       env=cli_env("http://127.0.0.1:9/simple", PIP_RETRIES="1"))

    assert result.code == 3, result.stderr
    error = result.report["error"]
    assert "cannot reach the package index http://127.0.0.1:9/simple" in error and "--offline" in error
    assert "2 attempts" in error


def test_an_index_out_of_reach_names_the_index_settings_pip_conf_alone_gives(demo, drive, tmp_path):
    """A corporate CA bundle named in pip.conf alone: warmstart reads no pip.conf, and the line
    said nothing of it. (This machine's own pip.conf files may be named beside it.)"""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\ncert = /etc/corp/ca.pem\n")
    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"),
                       env=cli_env("http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_CONFIG_FILE=str(conf)))

    assert result.code == 3, result.stderr
    assert re.search(rf"cannot reach the package index .*; pip's configuration \([^()]*{re.escape(str(conf))}\) "
                     r"sets [a-z, -]*\bcert\b.*, which warmstart does not read: give (it|them) as [A-Z_, ]*\bPIP_CERT\b",
                     result.report["error"]), result.report["error"]


@pytest.mark.parametrize("resolver", ["pip-tools", "uv"])
@pytest.mark.parametrize("fault", ["unreachable", "refusing"])
def test_lock_says_an_index_it_cannot_use_as_the_bootstrap_does_without_offline(demo, fault, resolver, tmp_path):
    """`invoke lock` ended in the resolver's page of retries and "No matching distribution found"
    (pip-tools), exit 1. Now exit 3 and one line, as a bootstrap says it, but for `--offline`: a
    flag `invoke lock` does not have. uv resolves for a Python other than this one. HOME is new, and
    uv, refused, no longer makes a credential store in its ~/.local/share/uv to lock."""
    server = None
    if fault == "unreachable":
        url = "http://127.0.0.1:9/simple"
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.13"
    versions = ["--python-version", other] if resolver == "uv" else []
    try:
        (tmp_path / "home").mkdir()
        result = run_cli("lock", "--recipe", str(demo), *versions,
                         env=cli_env(url, PIP_RETRIES="1", HOME=str(tmp_path / "home")))
    finally:
        if server:
            server.shutdown()

    assert result.code == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    said = (f"cannot reach the package index {url} (ConnectionError, 1 attempt); check the network"
            if fault == "unreachable" else f"the package index {url} refused access (HTTP 401)")
    assert last.startswith(f"warmstart: error: {said}"), result.stderr
    assert "--offline" not in last
    assert not (tmp_path / "home" / ".local").exists()  # (pip's user agent has rustup write ~/.rustup)


def hiding_hashes(index: Index, root: Path) -> Path:
    """A copy of `index` whose page for beta lists its files without their sha256."""
    shutil.copytree(index.files.parent, root)
    page = root / "simple" / "beta" / "index.html"
    page.write_text(re.sub(r"#sha256=[0-9a-f]+", "", page.read_text()))
    return root


class _CachedFiles(_QuietFiles):
    """Files with PyPI's caching headers, which pip's HTTP cache keeps (over HTTPS only)."""

    def end_headers(self):
        self.send_header("Cache-Control", "max-age=365000000, immutable, public")
        super().end_headers()


def test_pip_caches_in_warmstarts_folder_not_the_users(demo, drive, tmp_path, index, pki):
    """pip downloads what the index lists without hashes; its HTTP cache went to ~/.cache/pip."""
    url, server = serve_tls(hiding_hashes(index, tmp_path / "index"), pki, client_cert=False, handler=_CachedFiles)
    caches = tmp_path / "cache"
    try:
        result = bootstrap(demo, drive, make_venv(tmp_path / "venv"),
                           env=cli_env(url, PIP_CERT=str(pki / "ca.pem"), XDG_CACHE_HOME=str(caches)))
    finally:
        server.shutdown()

    assert result.code == 0 and "pip downloads 1 wheel itself: beta==2.0" in result.stderr, result.stderr
    assert [p.name for p in caches.iterdir()] == ["warmstart"]
    assert list((caches / "warmstart" / "pip").rglob("*")), "pip's cache is kept, in warmstart's folder"


def test_a_pin_the_index_lists_without_hashes_is_handed_to_pip_and_the_run_says_why(demo, drive, tmp_path, index):
    root = hiding_hashes(index, tmp_path / "index")
    url, server = serve_folder(root)
    python = make_venv(tmp_path / "venv")
    try:
        result = bootstrap(demo, drive, python, env=cli_env(f"{url}/simple"))
    finally:
        server.shutdown()
    assert result.code == 0, result.stderr
    assert ("pip downloads 1 wheel itself: beta==2.0: the index lists no file with a sha256 the lock names"
            in result.stderr)
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
