"""Stand-in for `google.colab._message`: the error Colab raises when the frontend refuses a
request (a Drive consent dismissed: "credential propagation was unsuccessful")."""


class MessageError(RuntimeError):
    pass
