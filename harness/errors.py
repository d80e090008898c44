"""The one error type users see: a single line naming the problem and where it came from."""


class HarnessError(Exception):
    """Bad input or a refused action. The CLI prints it as one line and exits 2."""

    exit_code = 2


# A trainer that saved a checkpoint on request exits with this (EX_TEMPFAIL: "try again later");
# the host side requeues it. Defined here so the light host-side modules need not import torch.
CHECKPOINTED_EXIT = 75
