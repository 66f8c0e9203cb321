"""`python -m warmstart`: the `warmstart` command, where its script is not on PATH."""

if __name__ == "__main__":
    import sys

    # `-m` put the working folder first on sys.path (unless -P, 3.11), where a script's own
    # folder would be: a project's json.py there is none of warmstart's to import (this package is in)
    if not getattr(sys.flags, "safe_path", False):
        del sys.path[0]

    from .launch import console

    console()
