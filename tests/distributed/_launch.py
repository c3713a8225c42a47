"""Runs a function on 2 CPU processes over gloo (localhost only) and returns what each
rank returned. Used by the distributed tests; each run is bounded in time."""
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=60))
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_two_ranks(fn, *args):
    """fn(rank, world, *args) must be importable (a module-level function)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(2, _free_port(), fn, args, out_dir), nprocs=2, join=True,
                           start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(2)]
