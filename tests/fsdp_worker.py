"""Run by tests/test_fsdp.py under `accelerate launch --config_file configs/accelerate/fsdp.yaml
-m tests.fsdp_worker OUT overrides...`: trains as tests.ddp_worker does, under FSDP2.

accelerate turns FSDP on only for accelerator devices: on a CPU its state stays MULTI_CPU (plain
DDP) whatever the config file says. This worker lifts that one gate, in its own process only, so
accelerate's own FSDP2 code (the plugin it builds from fsdp.yaml, `fully_shard`, its gradient
clipping and no_sync) runs on gloo CPU processes. Nothing else is changed."""
from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from tests import ddp_worker

_init = AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    ddp_worker.main(*sys.argv[1:])
