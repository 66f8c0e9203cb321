"""A stand-in for the `google.colab` package, which needs the Colab frontend and cannot run
here. Only `drive.mount` is provided; see drive.py."""
