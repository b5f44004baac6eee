"""Run by test_distributed.py, once as one process and once under
`accelerate launch --multi_gpu --num_processes 2 -m tests.ddp_worker`. Trains the tiny backbone
through the library and writes each rank's final LoRA weights (a test-only output: the library
itself writes from the main process only)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import accelerate.utils
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from tests.conftest import compose_cfg
from vader.build import build_trainer
from vader.loop import sharding


def main(out: str, *overrides: str) -> None:
    cfg = compose_cfg(*overrides)
    accelerate.utils.set_seed(cfg.seed)
    trainer = build_trainer(cfg, str(Path(out) / "run"))
    trainer.setup()
    trainer.train()
    rank = trainer.accelerator.process_index
    sharded = any(isinstance(p, DTensor) for p in trainer.params)  # FSDP2 keeps shards here
    (Path(out) / f"engine_rank{rank}.json").write_text(json.dumps(
        {"distributed_type": str(trainer.accelerator.distributed_type.value), "sharded": sharded}))
    if not sharding.lockstep(trainer.accelerator):  # FSDP's shards: its checkpoint holds them whole
        save_file(trainer.backbone.lora_state_dict(), Path(out) / f"lora_rank{rank}.safetensors")
    advantages = getattr(trainer.algorithm, "all_advantages", None)  # GRPO's, of its last step
    if advantages is not None:
        save_file({"advantages": advantages.cpu()}, Path(out) / f"advantages_rank{rank}.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:])
