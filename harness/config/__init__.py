"""Configuration: typed schema, Hydra composition over jobs/, run identity."""

from harness.config.compose import ComposedRun, compose_runs, list_experiments, load_run_config, to_dict
from harness.config.identity import run_id_of
from harness.config.schema import RunConfig

__all__ = ["ComposedRun", "RunConfig", "compose_runs", "list_experiments", "load_run_config", "run_id_of", "to_dict"]
