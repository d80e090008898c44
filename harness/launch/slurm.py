"""Ask Slurm about jobs, from the submit host: squeue first (always there), then sacct (which
needs accounting and may be disabled). Every query degrades to "unknown", never to "dead"."""

from __future__ import annotations

import shutil
import subprocess

QUERY_TIMEOUT_S = 20


def _run(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, nodes)} of the given jobs still known to squeue; None if squeue failed."""
    if not job_ids:
        return {}
    out = _run("squeue", "-h", "-r", "-o", "%i|%T|%N", "-j", ",".join(sorted(set(job_ids))))
    if out is None:
        return None
    states = {}
    for line in out.splitlines():
        job_id, state, nodes = (line.split("|") + ["", ""])[:3]
        states[job_id.strip()] = (state.strip(), nodes.strip())
    return states


def sacct_state(job_id: str) -> tuple[str, str] | None:
    """(state, nodes) of a finished job from accounting; None when sacct is unavailable."""
    out = _run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,NodeList")
    if not out:
        return None
    for line in out.splitlines():
        fields = line.split("|")
        if fields[0] == job_id and len(fields) >= 3:
            return fields[1].split()[0], fields[2]
    return None


def job_active(job_id: str) -> bool:
    """Pending or running. Where squeue cannot answer, assume active (never resubmit blindly)."""
    states = squeue_states([job_id])
    return True if states is None else job_id in states


def scancel(job_ids: list[str]) -> str | None:
    """Cancel jobs; returns scancel's error text, or None on success."""
    if shutil.which("scancel") is None:
        return "scancel not found"
    try:
        proc = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"scancel did not answer within {QUERY_TIMEOUT_S}s"
    return (proc.stderr.strip() or f"exit code {proc.returncode}") if proc.returncode else None


def _control(*command: str) -> str | None:
    """Run a scontrol-like command that changes something; its error text, or None on success."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} not found"
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{command[0]} did not answer within {QUERY_TIMEOUT_S}s"
    return (" ".join(proc.stderr.split()) or f"exit code {proc.returncode}") if proc.returncode else None


def requeue(job_id: str) -> str | None:
    """Put a job (array task) back in the queue; its next start resumes the run."""
    return _control("scontrol", "requeue", job_id)


def exclude_nodes(job_id: str, nodes: list[str]) -> str | None:
    """Keep a pending (requeued) job off these nodes."""
    return _control("scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(nodes)}")


# sinfo's node states a job can still be given (a trailing * or ~ marks a node not responding or
# powered down: not usable now).
USABLE_STATES = {"idle", "mixed", "mix", "allocated", "alloc", "completing", "comp", "planned", "plnd"}


def usable_nodes(partition: str | None) -> list[str] | None:
    """Nodes of the partition (the default one if None) that can take jobs; None if sinfo failed."""
    out = _run("sinfo", "-h", "-N", "-o", "%N|%T", *(["-p", partition] if partition else []))
    if out is None:
        return None
    nodes = set()
    for line in out.splitlines():
        name, _, state = line.partition("|")
        if state.strip().lower() in USABLE_STATES:
            nodes.add(name.strip())
    return sorted(nodes)


def excluded_nodes(job_id: str) -> list[str] | None:
    """The nodes a job is kept off now (its ExcNodeList, expanded); None if scontrol failed."""
    out = _run("scontrol", "show", "job", "-o", job_id)
    if out is None:
        return None
    listed = next((f.split("=", 1)[1] for f in out.split() if f.startswith("ExcNodeList=")), "(null)")
    if listed in ("(null)", ""):
        return []
    names = _run("scontrol", "show", "hostnames", listed)
    return None if names is None else sorted(names.split())
