"""`--target`: the machine a user does not have, described as `cores=64,nodes=4,bandwidth_gbps=10,latency_ms=0.2`."""

from __future__ import annotations

import math

from harness.advise.model import Hardware
from harness.errors import HarnessError

TARGET_KEYS = {
    "cores": "usable cores per node",
    "nodes": "machines, the learner's included",
    "bandwidth_gbps": "network bandwidth between nodes, Gbit/s",
    "latency_ms": "one-way network latency between nodes, ms",
}
EXAMPLE = "cores=64,nodes=4,bandwidth_gbps=10,latency_ms=0.2"


def parse_target(text: str) -> Hardware:
    """The described machine; `HarnessError`, one line, for an unknown key, a repeated one, a value that is not a
    positive finite number, a fractional node count, or no `cores`."""
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise HarnessError(f"--target item {item!r} is not key=value; write e.g. --target {EXAMPLE}")
        if key not in TARGET_KEYS:
            raise HarnessError(f"--target has no key {key!r}; its keys are {', '.join(TARGET_KEYS)} (e.g. {EXAMPLE})")
        if key in values:
            raise HarnessError(f"--target gives {key!r} twice; give it once")
        try:
            number = float(value)
        except ValueError:
            raise HarnessError(f"--target {key}={value.strip()!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise HarnessError(f"--target {key} must be a positive number, got {value.strip()}")
        values[key] = number
    if "cores" not in values:
        raise HarnessError(f"--target needs cores (per node); e.g. --target {EXAMPLE}")
    nodes = values.get("nodes", 1.0)
    if nodes != int(nodes):
        raise HarnessError(f"--target nodes must be a whole number, got {nodes:g}")
    return Hardware(values["cores"], int(nodes), values.get("bandwidth_gbps"), values.get("latency_ms"))
