"""Stand-in for `google.colab.drive` (the Colab frontend and Drive cannot exist here).

`mount()` behaves like Colab's where warmstart can tell: it refuses a mount point that already
holds files, then makes the mount point a real mount (the test runs it in its own mount
namespace) holding `MyDrive`: a tmpfs, or with $FAKE_DRIVE_BACKING a bind mount of that folder,
a Drive that already holds files (the warmstart checkout). Every call is appended to
$FAKE_COLAB_LOG. With $FAKE_DRIVE_REFUSED, it fails as Colab's does when the user dismisses the
consent dialog (google.colab._message.MessageError, that text).
"""

import json
import os
import subprocess


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    with open(os.environ["FAKE_COLAB_LOG"], "a") as log:
        log.write(json.dumps({"mount": mountpoint}) + "\n")
    if os.environ.get("FAKE_DRIVE_REFUSED"):
        from google.colab._message import MessageError

        raise MessageError(os.environ["FAKE_DRIVE_REFUSED"])
    os.makedirs(mountpoint, exist_ok=True)
    if os.listdir(mountpoint):
        raise ValueError("Mountpoint must not already contain files")
    backing = os.environ.get("FAKE_DRIVE_BACKING")
    if backing:
        subprocess.run(["mount", "--bind", backing, mountpoint], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mountpoint], check=True)
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
