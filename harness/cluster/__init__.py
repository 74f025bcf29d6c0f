"""A real multi-node Ray cluster on this machine: `python -m harness cluster up|down|status`.

Three jobs, one module each: `state` (the file `up` writes before it starts
anything), `lifecycle` (`ray start`, and stopping a cluster by pid, never with
`ray stop`), `cli` (what the commands print). How a backend finds a cluster's
address and token is `backends.ray_connect`'s, which imports nothing of the harness.
"""

from harness.cluster.cli import UP_HINT, cluster_status, probe_address, run_cluster_command
from harness.cluster.lifecycle import cluster_down, cluster_up, find_processes
from harness.cluster.state import (
    DEFAULT_STATE_FILE,
    STATE_ENV_VAR,
    STATE_VERSION,
    ClusterInfo,
    default_state_file,
    read_state,
    write_state,
)

__all__ = [
    "DEFAULT_STATE_FILE",
    "STATE_ENV_VAR",
    "STATE_VERSION",
    "UP_HINT",
    "ClusterInfo",
    "cluster_down",
    "cluster_status",
    "cluster_up",
    "default_state_file",
    "find_processes",
    "probe_address",
    "read_state",
    "run_cluster_command",
    "write_state",
]
