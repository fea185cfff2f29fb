"""What the client scripts here share: a call that the server must refuse."""


def refused(error, call, message):
    """The `error` (an exception class of the `openai` client) that `call()` raises; exits
    with `message` when the call succeeds instead."""
    try:
        call()
    except error as err:
        return err
    raise SystemExit(message)
