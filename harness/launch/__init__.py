"""Launch: executors from a cluster profile, the per-task wrapper, the torch distributed env."""
