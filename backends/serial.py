"""`serial`: one process, one policy call per env step (the report's single-process PPO)."""

from __future__ import annotations

from backends.vecenv import VecEnvBackend


class SerialBackend(VecEnvBackend):
    """Like `vecenv`, but inference is not batched across envs (its registry entry says so): the baseline."""
