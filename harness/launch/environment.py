"""Map the scheduler's view of a task (submitit's JobEnvironment, i.e. SLURM_* or its local
equivalent) to torch's env:// variables."""

from __future__ import annotations

import random

# Below Linux's default ephemeral range (32768-60999): a port in that range can already be the local
# end of any outgoing connection on the node (EADDRINUSE at rendezvous, seen in CI).
PORT_RANGE = (20000, 32767)


def torch_env(job_id: str, global_rank: int, local_rank: int, num_tasks: int, num_nodes: int,
              hostnames: list[str], master_port: int | None = None) -> dict[str, str]:
    """RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT for one task.

    The port is derived from the job id so every task of a job agrees on it without talking.
    """
    port = master_port or random.Random(f"harness/{job_id}").randint(*PORT_RANGE)
    return {
        "RANK": str(global_rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(num_tasks),
        "LOCAL_WORLD_SIZE": str(num_tasks // max(num_nodes, 1)),
        "MASTER_ADDR": hostnames[0],
        "MASTER_PORT": str(port),
    }
