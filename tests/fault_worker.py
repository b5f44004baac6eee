"""Run by test_reliability.py in a subprocess: trains the tiny backbone into `run_dir`, and with
a kill spec `<save number>:<phase>` sends itself SIGKILL at that moment of that checkpoint save:
`lora` (LoRA file written, state not yet), `state` (both written, folder not yet renamed),
`renamed` (folder in place, `latest` not yet moved), `latest` (just after). `-` kills nothing
(the parent may still kill it at a random moment). A test-only harness: the library has no hook
for this; the worker wraps the library's own file operations."""
from __future__ import annotations

import os
import signal
import sys

import accelerate.utils

from tests.conftest import compose_cfg
from vader.loop import checkpoint
from vader.build import build_trainer


def inject(spec: str) -> None:
    save_number, phase = spec.split(":")
    count = {"saves": 0}

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name: str, when: str, before: bool = False):
        real = getattr(checkpoint, name)

        def wrapper(*args, **kwargs):
            if name == "save_file":
                count["saves"] += 1
            armed = count["saves"] == int(save_number) and phase == when
            if armed and before:
                die()
            out = real(*args, **kwargs)
            if armed:
                die()
            return out
        setattr(checkpoint, name, wrapper)

    wrap("save_file", "lora")
    real_fsync = checkpoint._fsync

    def fsync(path):  # the fsync of the temporary folder: both files are written
        real_fsync(path)
        if (count["saves"] == int(save_number) and phase == "state" and path.name.endswith(".tmp")
                and path.is_dir()):
            die()
    checkpoint._fsync = fsync
    wrap("atomic_write_text", "renamed", before=True)
    if phase == "latest":
        wrap("atomic_write_text", "latest")


def main(run_dir: str, spec: str, *overrides: str) -> None:
    if spec != "-":
        inject(spec)
    cfg = compose_cfg(*overrides)
    accelerate.utils.set_seed(cfg.seed)
    trainer = build_trainer(cfg, run_dir)
    trainer.setup()
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
