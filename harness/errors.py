"""The one error type a user can cause.

Every user mistake (a bad suite key, an unknown backend, an unreachable cluster)
raises `HarnessError` with a one-line message naming the problem and the fix.
The CLI prints it as `error: ...` and exits with status 2, without a traceback.
"""

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class HarnessError(Exception):
    """A user-facing error: the message is one line that names the problem and the fix."""

    def __init__(self, message: str) -> None:
        # One line whatever it quotes: a key or value from a damaged file may hold newlines or control bytes.
        super().__init__(_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), message))
