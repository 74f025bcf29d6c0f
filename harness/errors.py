"""The one error type a user can cause.

Every user mistake (a bad suite key, an unknown backend, an unreachable cluster)
raises `HarnessError` with a one-line message naming the problem and the fix.
The CLI prints it as `error: ...` and exits with status 2, without a traceback.
"""


class HarnessError(Exception):
    """A user-facing error: the message is one line that names the problem and the fix."""
