"""Background sampling of CPU and memory (psutil) and GPU (nvidia-ml-py, when present)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import psutil

# PSS and USS need Linux's smaps; elsewhere memory is RSS only (and says so by its absence).
_HAS_PSS = hasattr(psutil.Process().memory_full_info(), "pss")


class ResourceMonitor:
    """Samples the whole process tree (learner, workers, Ray daemons) every `interval_s`, and its
    memory as PSS every `memory_interval_s`.

    RSS counts a page shared by n processes (a library, torch, Ray's object store) n times, so a
    tree's summed RSS over-counts; PSS charges each process 1/n of it, and sums to what the tree
    really holds (Linux: /proc/PID/smaps_rollup, through psutil's `memory_full_info`). Reading
    it walks every mapping of every process (~ms each), so it is read ten times less often.

    Use as a context manager around the measured region; `summary()` afterwards.
    """

    def __init__(self, interval_s: float = 0.5, memory_interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.memory_every = max(1, round(memory_interval_s / interval_s))
        self.peak_pss_mib: dict[int, float] = {}
        """Per process (pid): its largest PSS seen, MiB."""
        self.root = psutil.Process(os.getpid())
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._known: dict[int, psutil.Process] = {}
        self._gpu = _Gpu()

    def __enter__(self) -> ResourceMonitor:
        psutil.cpu_percent(None)  # prime the system-wide counter
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample(memory=True))  # a short run still gets one sample, since start
        self._gpu.close()

    def _tree(self) -> list[psutil.Process]:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []
        # Keep Process objects between samples: cpu_percent() measures since the previous call.
        current = {}
        for proc in procs:
            current[proc.pid] = self._known.get(proc.pid, proc)
        self._known = current
        return list(current.values())

    def _sample(self, memory: bool = False) -> dict[str, float]:
        cpu = rss = pss = uss = 0.0
        procs = self._tree()
        memory = memory and _HAS_PSS
        for proc in procs:
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
                if memory:
                    full = proc.memory_full_info()
                    pss, uss = pss + full.pss, uss + full.uss
                    self.peak_pss_mib[proc.pid] = max(self.peak_pss_mib.get(proc.pid, 0.0), full.pss / 2**20)
            except psutil.Error:
                continue
        sample = {
            "tree_cpu_percent": cpu,
            "tree_rss_mib": rss / 2**20,
            "tree_processes": float(len(procs)),
            **({"tree_pss_mib": pss / 2**20, "tree_uss_mib": uss / 2**20} if memory else {}),
            "system_cpu_percent": psutil.cpu_percent(None),
            "load_1min": os.getloadavg()[0],
        }
        return sample | self._gpu.sample()

    def _run(self) -> None:
        self._tree()
        for proc in self._known.values():
            with contextlib.suppress(psutil.Error):
                proc.cpu_percent(None)
        count = 0
        while not self._stop.wait(self.interval_s):
            count += 1
            self.samples.append(self._sample(memory=count % self.memory_every == 1))

    def summary(self) -> dict[str, Any]:
        """Mean and max of every sampled quantity; GPU recorded as absent when there is none."""
        out: dict[str, Any] = {"interval_s": self.interval_s, "samples": len(self.samples), "gpu_present": self._gpu.present}
        keys = sorted({k for s in self.samples for k in s})
        for key in keys:
            values = [s[key] for s in self.samples if key in s]
            out[key] = {"mean": sum(values) / len(values), "max": max(values)}
        return out


class _Gpu:
    """NVML when a driver and GPU exist; silently absent otherwise (recorded as such)."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no library, no driver, or no device: all mean "no GPU here"
            self.nvml = None

    @property
    def present(self) -> bool:
        return bool(self.handles)

    def sample(self) -> dict[str, float]:
        if not self.handles:
            return {}
        util = mem = 0.0
        for handle in self.handles:
            util += self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            mem += self.nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        return {"gpu_util_percent": util / len(self.handles), "gpu_mem_used_mib": mem}

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
