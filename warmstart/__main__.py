"""`python -m warmstart`: the `warmstart` command, where its script is not on PATH."""

if __name__ == "__main__":
    from .launch import console

    console()
