"""`accelerate launch` entry point for FSDP2 on CPU processes (gloo), used by
tests/test_distributed.py: Accelerate 1.x enables FSDP on GPU-type devices only, so here, in
the launched processes alone, its state is told the launch is MULTI_GPU on the CPU device over a
gloo process group made first. Everything after that (Accelerate's FSDP2 prepare, soundflow's
loop and checkpoints) is the code a GPU launch runs.

usage: accelerate launch --config_file FSDP_CONFIG tests/fsdp_cpu.py RECIPE [--resume] [--stop-after N]
"""

import argparse

import accelerate.state as state
import torch
import torch.distributed as dist
from accelerate.utils import DistributedType


def _cpu(self):
    self.device = torch.device("cpu")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("recipe")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, default=None)
    a = p.parse_args()
    dist.init_process_group("gloo")
    state.PartialState._prepare_backend = lambda self, cpu=False, sagemaker_dp=False, backend=None: (
        "gloo", DistributedType.MULTI_GPU)
    state.PartialState.set_device = _cpu
    from soundflow.train import load_recipe, train

    train(load_recipe(a.recipe), resume=a.resume, progress=False, stop_after=a.stop_after)


if __name__ == "__main__":
    main()
