"""All torch.distributed use: process-group setup from the launcher, collectives, RNG states.

Launchers: `torchrun` (and multi-node rendezvous) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; the older `python -m torch.distributed.launch` sets the same variables and also passes
`--local-rank N` (or `--local_rank N`) on the command line; a plain `python train.py` has none of
them and runs as one process. Every helper falls back to single-process values when no process
group is initialised, so models and the engine never call torch.distributed directly.
"""

import datetime
import errno
import os
import random
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import MetaPoseError

# Extra seconds a non-zero rank gives the rendezvous store's answer beyond init_timeout.
_ANSWER_MARGIN_S = 5.0
# The run's rendezvous store (set by init_distributed): keys for work done in turns.
_STORE = None
_TURNS = {"calls": 0}


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: global rank, number of processes, rank on its node, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def _env_int(name, default=None):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise MetaPoseError(f"environment variable {name}={value!r} must be an integer; it is "
                            "set by torchrun or torch.distributed.launch, so launch the script "
                            "with one of them or unset it.") from None


def init_distributed(local_rank_arg=None, device_type=None, init_timeout=300.0, timeout=300.0):
    """Initialises the process group when launched by torchrun / torch.distributed.launch.

    Args:
        local_rank_arg: the `--local-rank` value the legacy launcher passes (None if absent).
        device_type: "cuda" or "cpu"; None picks CUDA when available.
        init_timeout: seconds to wait for all WORLD_SIZE processes at start-up
            (`distributed.init_timeout`).
        timeout: seconds any later collective waits (`distributed.timeout`); a peer that stops
            answering for that long ends every process (utils/peer_watch.py).
    Returns:
        DistributedContext. Backend NCCL on CUDA, gloo on CPU; one process when WORLD_SIZE is
        unset or 1. On CUDA each process uses the GPU `cuda:LOCAL_RANK` (see `choose_device`).
    Raises:
        MetaPoseError for launcher variables that do not fit together (a stale RANK without
        WORLD_SIZE, RANK outside 0..WORLD_SIZE-1), when MASTER_PORT is held by another program,
        or when the other processes do not arrive within `init_timeout`.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world_size = _launcher_rank_and_world_size()
    local_rank = _env_int("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0)
    device = choose_device(device_type, local_rank)
    if world_size > 1 and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise MetaPoseError(
                    f"WORLD_SIZE={world_size} is set but {name} is not: launch multi-process runs "
                    "with `torchrun --nproc_per_node=N train.py ...`.")
        store = _rendezvous(rank, world_size, init_timeout)
        store.set_timeout(datetime.timedelta(seconds=timeout))
        global _STORE
        _STORE = store
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device_type == "cuda" else {}
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout), **kwargs)
        from utils.peer_watch import start_peer_watch
        start_peer_watch(store, rank, world_size, timeout)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              device=device)


def choose_device(device_type, local_rank):
    """The device of this process: the CPU, or on CUDA the GPU `cuda:LOCAL_RANK`; when exactly
    one GPU is visible it is used whatever LOCAL_RANK is (clusters that give each task its own
    GPU through CUDA_VISIBLE_DEVICES number the tasks of a machine 0..N-1 all the same).

    Raises:
        MetaPoseError when no GPU is visible, or several are but fewer than LOCAL_RANK + 1.
    """
    if device_type != "cuda":
        return torch.device("cpu")
    visible = torch.cuda.device_count()
    index = 0 if visible == 1 else local_rank
    if index >= visible:
        raise MetaPoseError(
            f"local rank {local_rank} needs GPU {local_rank}, but only {visible} GPU(s) are "
            "visible. Start at most that many processes per node (--nproc_per_node), or give "
            "each process one GPU of its own (CUDA_VISIBLE_DEVICES).")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


_UNSET_HINT = ("unset RANK, LOCAL_RANK and WORLD_SIZE (left over from another launch?) to run "
               "one process, or launch with `torchrun --nproc_per_node=N train.py ...`")


def _launcher_rank_and_world_size():
    """(RANK, WORLD_SIZE) from the launcher's variables, checked against each other."""
    world_size, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    if world_size is None:
        if rank not in (None, 0):
            raise MetaPoseError(f"environment variable RANK={rank} is set but WORLD_SIZE is not, "
                                f"so this process cannot tell how many processes there are: "
                                f"{_UNSET_HINT}.")
        return 0, 1
    if world_size < 1:
        raise MetaPoseError(f"environment variable WORLD_SIZE={world_size} must be at least 1: "
                            f"{_UNSET_HINT}.")
    rank = 0 if rank is None else rank
    if not 0 <= rank < world_size:
        raise MetaPoseError(f"environment variable RANK={rank} is outside 0..{world_size - 1} "
                            f"(WORLD_SIZE={world_size}): {_UNSET_HINT}.")
    return rank, world_size


def _rendezvous(rank, world_size, timeout_s):
    """The store through which the WORLD_SIZE processes find each other (env://: MASTER_ADDR,
    MASTER_PORT), waiting at most `timeout_s` seconds for all of them (a non-zero rank waits a
    few seconds more for the store's answer, then gives up: whatever listens there may not be
    rank 0's store at all)."""
    address, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT")
    waited = f"waited {timeout_s:g} s (distributed.init_timeout)"
    what = (f"this process is rank {rank} of WORLD_SIZE={world_size} (MASTER_ADDR={address}, "
            f"MASTER_PORT={port})")
    fix = ("Start every process of the run (torchrun --nproc_per_node / --nnodes), with the same "
           f"MASTER_ADDR and MASTER_PORT everywhere, or {_UNSET_HINT}; raise "
           "distributed.init_timeout if the processes start far apart.")
    # Under torchrun the launcher's agent holds MASTER_PORT (its store); else rank 0 opens it.
    own_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
    if rank == 0 and own_store and _port_in_use(address, port):
        raise MetaPoseError(
            f"{what}, which listens at {address}:{port} for the other processes, but another "
            f"program holds that port on this machine. Give every process of the run another "
            "MASTER_PORT (one that is free here), or stop the program that holds it (e.g. "
            f"`ss -ltnp | grep :{port}` names it).")
    started = time.monotonic()
    if rank != 0 and not _wait_for_port(address, port, timeout_s):
        raise MetaPoseError(f"{what} and {waited} for rank 0 to listen at {address}:{port}, in "
                            f"vain. {fix}")
    left = max(timeout_s - (time.monotonic() - started), 1.0)

    def join():
        store, _, _ = next(dist.rendezvous("env://", rank, world_size,
                                           timeout=datetime.timedelta(seconds=left)))
        return store

    try:
        store = _bounded(join, left + _ANSWER_MARGIN_S)
    except TimeoutError:
        raise MetaPoseError(
            f"{what}: something listens at {address}:{port}, but it did not answer as the run's "
            f"rendezvous store within {left + _ANSWER_MARGIN_S:.0f} s (distributed.init_timeout "
            f"and {_ANSWER_MARGIN_S:.0f} s for its answer): another program (or "
            "another run) holds that port. Give every process of the run a free MASTER_PORT, "
            "or stop the program that holds it.") from None
    except (dist.DistError, RuntimeError, ValueError, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MetaPoseError(f"{what} and {waited} for the other processes to join, in vain "
                            f"({first[:160]}). {fix}") from None
    return store


def _port_in_use(address, port):
    """Whether this machine cannot listen at address:port because another socket holds it
    (only for an address of this machine; other addresses: False, the rendezvous will say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _bounded(function, timeout_s):
    """function()'s result, computed in a daemon thread; TimeoutError when it has not returned
    within `timeout_s` (the thread is left behind, blocked: the process is about to stop)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name="rendezvous", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _wait_for_port(address, port, timeout_s):
    """Whether a TCP connection to address:port succeeds within `timeout_s` seconds (polled
    quietly: the store client would print a C++ warning for every failed attempt)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((address, port), timeout=2.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def cleanup():
    """Destroys the process group (if any); call once at the end of a run."""
    from utils.peer_watch import stop_peer_watch
    stop_peer_watch()
    if is_initialized():
        dist.destroy_process_group()


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_initialized() else 0


def world_size():
    return dist.get_world_size() if is_initialized() else 1


def is_main():
    return rank() == 0


def barrier():
    if is_initialized():
        dist.barrier()


def _collective_device():
    """Tensors for collectives live on the current GPU under NCCL, on the CPU under gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor):
    """Sum of `tensor` over all processes: a new tensor on the input's device (input unchanged)."""
    if not is_initialized():
        return tensor.clone()
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def any_flag(*flags):
    """For each bool in `flags`: whether it is set on any process. One collective for all flags."""
    values = torch.tensor([float(bool(flag)) for flag in flags], dtype=torch.float32)
    summed = all_reduce_sum(values)
    return tuple(bool(v > 0) for v in summed.tolist())


def broadcast_object(obj, src=0):
    """`obj` of process `src` on every process (picklable objects)."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=_collective_device())
    return holder[0]


def main_first(function):
    """Runs `function()` on rank 0, then on the other ranks (e.g. folder setup).

    A MetaPoseError on rank 0 is sent to every rank and raised there too, so that all processes
    stop with the same message instead of waiting for rank 0 forever.
    """
    return in_turns(function, 0 if is_main() else 1)


def in_turns(function, turn):
    """Runs `function()` on every process, in the order of `turn` (an int per process): all
    processes of one turn together, after every process of the earlier turns has finished.

    The waits go through the rendezvous store, not a collective, so a long turn (rank 0
    generating a data set) is not cut short by `distributed.timeout`; a process that stops
    answering meanwhile ends the run (utils/peer_watch.py). The first error of an earlier turn
    (a MetaPoseError's message, or the name of any other exception) is raised on every process
    that waited for it.
    """
    if not is_initialized() or _STORE is None:
        return function()
    turns = all_gather_object(int(turn))
    _TURNS["calls"] += 1
    call = _TURNS["calls"]
    result = None
    for current in sorted(set(turns)):
        ranks = [r for r, t in enumerate(turns) if t == current]
        key = "metapose/turns/{}/{}".format
        if current == turn:
            message = ""
            try:
                result = function()
            except MetaPoseError as error:
                message = str(error)
                raise
            except BaseException as error:
                message = (f"rank {rank()} stopped with {type(error).__name__}: {error}; its "
                           "output says more")
                raise
            finally:
                _STORE.set(key(call, rank()), "error " + message if message else "ok")
        elif current < turn:
            _wait_for_keys([key(call, r) for r in ranks])
            for r in ranks:
                outcome = _STORE.get(key(call, r)).decode("utf-8", "replace")
                if outcome.startswith("error "):
                    raise MetaPoseError(outcome[len("error "):])
    return result


def _wait_for_keys(keys, poll_s=0.2):
    """Waits until every key is in the store (bounded by the peer watch: a process that stops
    answering ends this one)."""
    while not _STORE.check(keys):
        time.sleep(poll_s)


# How gloo and NCCL word the failure of a collective whose other side has gone away.
_PEER_LOST_PHRASES = ("connection closed by peer", "connection reset by peer", "broken pipe",
                      "remote worker crash", "remote process exited", "communicator was aborted",
                      "timed out waiting", "watchdog caught collective operation timeout")


def lost_peer(error):
    """Whether `error`, raised in a multi-process run, says that another process of the group
    stopped (it crashed or exited on an error of its own) or did not answer within
    distributed.timeout: the collective could not complete."""
    if not is_initialized() or world_size() < 2:
        return False
    if isinstance(error, (dist.DistNetworkError, dist.DistStoreError)):
        return True
    text = str(error).lower()
    return any(phrase in text for phrase in _PEER_LOST_PHRASES)


def all_gather_object(obj):
    """List of every process's `obj`, indexed by rank."""
    if not is_initialized():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


# ----------------------------------------------------------------------------------------------
# Random number generators: seeding and state capture (checkpoints hold every rank's state).


def seed_everything(seed):
    """Seeds python `random`, numpy and torch (CPU and all GPUs) with one integer."""
    seed = int(seed) % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed, rank_, epoch):
    """A seed derived from (base seed, rank, epoch), distinct for every combination."""
    mixed = np.random.SeedSequence([int(seed) % (2 ** 32), int(rank_), int(epoch)])
    return int(mixed.generate_state(1)[0])


def get_rng_state():
    """This process's RNG states as tensors, lists and numbers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    """Restores a state captured by `get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def gather_rng_states():
    """Every rank's `get_rng_state()`, as a list indexed by rank (complete on every process)."""
    return all_gather_object(get_rng_state())
