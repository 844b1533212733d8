"""The CPU thread rule (utils/cpu_threads.py): compute threads + DataLoader workers never exceed
the cores of a process's share of the machine, unless the threads asked for alone do."""

import pytest
import torch

from utils.config import load_config
from utils.cpu_threads import configure_cpu_threads, local_processes, plan_cpu_threads
from utils.distributed import DistributedContext
from utils.errors import MetaPoseError


@pytest.mark.parametrize("cores, processes, workers, requested, expected", [
    # automatic: workers keep one core free for compute, threads take the rest
    (2, 1, 0, None, (2, 0)),
    (2, 1, 1, None, (1, 1)),
    (2, 1, 8, None, (1, 1)),
    (16, 1, 8, None, (8, 8)),
    (16, 1, 16, None, (1, 15)),
    (16, 2, 4, None, (4, 4)),
    (2, 2, 1, None, (1, 0)),     # torchrun, 2 processes on 2 cores
    (3, 2, 0, None, (1, 0)),
    (1, 4, 2, None, (1, 0)),     # more processes than cores: one thread each, no workers
    # threads asked for: workers fill what is left
    (2, 1, 2, 1, (1, 1)),
    (2, 1, 2, 2, (2, 0)),
    (16, 2, 8, 3, (3, 5)),
    (2, 1, 4, 6, (6, 0)),        # asked for more than the cores: honoured, no workers
])
def test_plan_never_oversubscribes(cores, processes, workers, requested, expected):
    plan = plan_cpu_threads(cores, processes, workers, requested, source="test")
    assert (plan.threads, plan.workers) == expected
    assert plan.threads >= 1 and 0 <= plan.workers <= workers
    share = max(1, cores // processes)
    if requested is None or requested <= share:
        assert plan.threads + plan.workers <= share
    assert plan.source == ("automatic" if requested is None else "test")


def test_plan_describes_a_capped_worker_count():
    text = plan_cpu_threads(2, 1, 8).describe()
    assert "1 compute thread(s) and 1 DataLoader worker(s)" in text
    assert "data.num_workers=8 capped" in text and "automatic" in text


CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_config_key_wins_over_omp_num_threads(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("utils.cpu_threads.usable_cores", lambda: 4)
    plan = configure_cpu_threads(load_config(None, ["speed.cpu_threads=2",
                                                    "data.num_workers=8"]), CPU)
    assert (plan.threads, plan.workers, plan.source) == (2, 2, "speed.cpu_threads")
    assert torch.get_num_threads() == 2
    plan = configure_cpu_threads(load_config(None, ["data.num_workers=8"]), CPU)
    assert (plan.threads, plan.workers, plan.source) == (1, 3, "OMP_NUM_THREADS")
    assert torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    plan = configure_cpu_threads(load_config(None, ["data.num_workers=8"]), CPU)
    assert (plan.threads, plan.workers, plan.source) == (1, 3, "automatic")


def test_nothing_changes_on_cuda(restore_threads):
    cuda = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    before = torch.get_num_threads()
    assert configure_cpu_threads(load_config(None, ["speed.cpu_threads=3"]), cuda) is None
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_bad_omp_num_threads_is_named(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(MetaPoseError, match=f"OMP_NUM_THREADS='{value}' must be a positive"):
        configure_cpu_threads(load_config(None), CPU)


def test_local_processes_from_the_launcher(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_processes(8) == 2   # 8 processes over 4 machines: 2 here
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert local_processes(3) == 3   # launched by hand: assume all on this machine
    assert local_processes(1) == 1


def test_cpu_threads_key_is_checked():
    with pytest.raises(MetaPoseError, match="'speed.cpu_threads'.*>= 1"):
        load_config(None, ["speed.cpu_threads=0"])


# The import hook records OMP_WAIT_POLICY at the moment torch is first imported.
_PROBE = """
import importlib.abc, os, sys
seen = []
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Probe())
import train
print(seen[0])
"""


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_train_sets_a_passive_openmp_wait_policy_before_torch(preset, expected):
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: train.py must set it first (and
    keep a value the user chose)."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == expected
