"""The one error type users see: a single line naming the problem and where it came from."""


class HarnessError(Exception):
    """Bad input or a refused action. The CLI prints it as one line and exits 2."""

    exit_code = 2
