"""Fixtures of the benchmarks: the real Ray cluster, the learner's thread count, Ray shut down, the rate helper.

Setup (worker processes, Ray) happens in fixtures, outside the timed region, and
every fixture closes what it started. With `--benchmark-disable` each benchmark
runs its function once, unmeasured: a quick correctness check.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
import torch

# The `ray_cluster_address` fixture (a real two-node cluster) comes from the repository's conftest.py.

TORCH_THREADS = 1  # the harness's learner default (MeasureConfig.torch_threads): see its docstring


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """Time the learner side with the harness's thread count, and put the old count back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _ray_shut_down() -> Iterator[None]:
    """A safety net: Ray is never left running when the benchmarks end (backends shut it down themselves)."""
    yield
    ray = sys.modules.get("ray")  # never import Ray just to check it
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def record_rate(benchmark) -> Callable[..., float | None]:
    """Call after the benchmark ran: stores `env_steps_per_s`, env steps over the median seconds per call.

    `per` names what the steps count in `extra_info` (`steps_per_call` by default).
    Returns the rate, or None under `--benchmark-disable`, where nothing is timed.
    """

    def record(steps: int, per: str = "call") -> float | None:
        benchmark.extra_info[f"steps_per_{per}"] = steps
        benchmark.extra_info["torch_threads"] = torch.get_num_threads()
        if benchmark.stats is None:
            return None
        rate = steps / benchmark.stats.stats.median
        benchmark.extra_info["env_steps_per_s"] = rate
        return rate

    return record


_REPORT_LINES: list[str] = []


@pytest.fixture
def report_line() -> Callable[[str], None]:
    """A line for the end of the terminal output, under pytest-benchmark's tables (a figure worth reading at once,
    such as the update's compute floor). Lines printed in an xdist worker are not shown; run the benchmark alone."""
    return _REPORT_LINES.append


@pytest.hookimpl(trylast=True)  # under pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter) -> None:
    for line in _REPORT_LINES:
        terminalreporter.write_line(line)
