"""A stand-in for the `google.colab` package, which needs the Colab frontend and cannot run
here. Only `drive.mount` (and the error it may raise, `_message.MessageError`) is
provided; see drive.py."""
