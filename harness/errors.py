"""The one error type users see: a single line naming the problem and where it came from."""

import sys


class HarnessError(Exception):
    """Bad input or a refused action. The CLI prints it as one line and exits 2."""

    exit_code = 2


# A trainer that saved a checkpoint on request exits with this (EX_TEMPFAIL: "try again later");
# the host side requeues it. Defined here so the light host-side modules need not import torch.
CHECKPOINTED_EXIT = 75


def one_line(exc: BaseException) -> str:
    """A failure as one line: a HarnessError's own words, anything else with its type."""
    text = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type where it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def run_job(work, error_file: str | None, label: str) -> int:
    """Run a job's work in a task; on failure print the reason, leave it in `error_file` for the
    host-side task (which records it per rank), and re-raise."""
    try:
        work()
    except Exception as exc:
        reason = one_line(exc)
        print(f"{label} failed: {reason}", file=sys.stderr, flush=True)
        if error_file:
            with open(error_file, "w") as f:
                f.write(reason + "\n")
        raise
    return 0
