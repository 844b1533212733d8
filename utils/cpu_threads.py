"""CPU thread counts that cannot oversubscribe the machine.

On a CPU every process runs `threads` OpenMP compute threads and `workers` DataLoader workers
(PyTorch runs each worker with one compute thread, OpenCV decodes with one: datasets/images.py).
When their sum exceeds the cores, the OpenMP threads spin against each other and against the
workers, and a step becomes many times slower (the synthetic demo fell from 107 to 2-19
samples/s on a shared 2-core machine). The rule, per process:

    cores per process = max(1, usable cores // processes on this machine)
    automatic:         workers = min(data.num_workers, cores per process - 1)
                       threads = cores per process - workers
    threads requested: threads as requested (speed.cpu_threads, else OMP_NUM_THREADS)
                       workers = min(data.num_workers, max(0, cores per process - threads))

so threads + workers <= cores per process unless the requested threads alone exceed it. The
thread count is part of what a CPU run computes (float reductions split by thread), so a CPU
run is reproducible for a fixed seed *and* thread count; the worker count changes nothing
(the data order and flips do not depend on it). On CUDA nothing here applies.
"""

import math
import os
from dataclasses import dataclass

import torch

from utils.errors import MetaPoseError


@dataclass(frozen=True)
class ThreadPlan:
    """What one process runs with on a CPU."""

    threads: int          # compute threads of the process (torch.set_num_threads)
    workers: int          # DataLoader workers of the process (one thread each)
    cores: int            # usable cores of the machine
    processes: int        # processes of the run on this machine
    source: str           # "automatic", "speed.cpu_threads" or "OMP_NUM_THREADS"
    requested_workers: int  # data.num_workers

    def describe(self):
        """One log line: the choice and why."""
        capped = (f" (data.num_workers={self.requested_workers} capped to fit the cores)"
                  if self.workers < self.requested_workers else "")
        return (f"CPU threads: {self.threads} compute thread(s) and {self.workers} DataLoader "
                f"worker(s){capped} per process; {self.cores} usable core(s), "
                f"{self.processes} process(es) on this machine; threads from {self.source}"
                + ("" if self.source != "automatic" else
                   " (set speed.cpu_threads or OMP_NUM_THREADS to choose)"))


def plan_cpu_threads(cores, processes, num_workers, requested_threads=None, source="automatic"):
    """The thread plan of one process (the rule of the module docstring; a pure function).

    Args:
        cores: usable cores of the machine (>= 1).
        processes: processes of the run on this machine (>= 1).
        num_workers: DataLoader workers the config asks for (data.num_workers, >= 0).
        requested_threads: compute threads asked for explicitly, or None for the automatic
            choice.
        source: where `requested_threads` came from (for the log line).
    Returns:
        ThreadPlan.
    """
    per_process = max(1, int(cores) // max(1, int(processes)))
    if requested_threads is None:
        workers = min(int(num_workers), per_process - 1)
        threads, source = per_process - workers, "automatic"
    else:
        threads = int(requested_threads)
        workers = min(int(num_workers), max(0, per_process - threads))
    return ThreadPlan(threads=threads, workers=workers, cores=int(cores),
                      processes=max(1, int(processes)), source=source,
                      requested_workers=int(num_workers))


def usable_cores():
    """Cores this process may run on: its CPU affinity (taskset, cpusets), further limited by a
    cgroup v2 CPU quota (e.g. `docker --cpus 2`) when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _env_threads():
    """OMP_NUM_THREADS as an integer, or None when unset or empty."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise MetaPoseError(f"environment variable OMP_NUM_THREADS={value!r} must be a positive "
                            "integer (the compute threads of each process); unset it to let "
                            "MetaPose choose, or set speed.cpu_threads instead.")
    return threads


def local_processes(world_size):
    """Processes of the run on this machine: torchrun's LOCAL_WORLD_SIZE, else (launched by
    hand) all `world_size` of them, the safe assumption."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else max(1, int(world_size))


def configure_cpu_threads(config, context):
    """Applies the thread plan of this process on a CPU (torch.set_num_threads) and returns it;
    on CUDA returns None and changes nothing. speed.cpu_threads wins over OMP_NUM_THREADS, which
    wins over the automatic choice (note that torchrun sets OMP_NUM_THREADS=1 for every process
    of a multi-process run unless it is already set)."""
    if context.device.type != "cpu":
        return None
    requested, source = config.speed.cpu_threads, "speed.cpu_threads"
    if requested is None:
        requested, source = _env_threads(), "OMP_NUM_THREADS"
    plan = plan_cpu_threads(usable_cores(), local_processes(context.world_size),
                            config.data.num_workers, requested, source)
    torch.set_num_threads(plan.threads)
    return plan
