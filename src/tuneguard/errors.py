"""The one exception type that carries a user-facing, one-line message."""


class TuneguardError(Exception):
    """A problem with the user's input or environment.

    The CLI prints the message as a single line (no traceback), so it must name the problem and, where there is
    one, the fix.
    """
