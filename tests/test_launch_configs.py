"""Issue 21, item 1: the shipped accelerate configs (configs/accelerate/) load as accelerate reads
them and hold what each kind of launch needs, and the Slurm script starts one `accelerate launch`
per node with that node's rank and the first node as the main address (run against stand-ins for
srun, scontrol and accelerate). Running them: tests/test_distributed.py (cpu_ddp.yaml and
multi_node.yaml on this host)."""
from __future__ import annotations

import os
import subprocess

from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from torch import nn

from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_the_configs_are_the_ones_documented():
    assert [p.stem for p in CONFIGS] == ["cpu_ddp", "fsdp", "multi_gpu", "multi_node", "single_gpu"]
    docs = (ROOT / "docs" / "distributed.md").read_text()
    assert all(f"configs/accelerate/{p.name}" in docs for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_config_loads_with_what_its_launch_needs(path):
    text = path.read_text()
    assert text.startswith("# ") and f"--config_file configs/accelerate/{path.name}" in text  # its header: when and how
    cfg = load_config_from_file(str(path))
    assert cfg.compute_environment.value == "LOCAL_MACHINE" and cfg.mixed_precision == "no"
    assert cfg.num_processes >= cfg.num_machines >= 1 and cfg.num_processes % cfg.num_machines == 0
    if cfg.num_processes == 1:
        assert cfg.distributed_type == DistributedType.NO
    elif path.stem == "fsdp":  # FSDP2, its groups named by the trainer (vader.loop.sharding.name_blocks)
        assert cfg.distributed_type == DistributedType.FSDP
        assert cfg.fsdp_config["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in cfg.fsdp_config
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    else:
        assert cfg.distributed_type == DistributedType.MULTI_GPU
    if cfg.num_machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port and cfg.machine_rank == 0


def test_the_slurm_script_starts_one_launch_per_node(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stubs = {
        "scontrol": 'printf "gpu-a\\ngpu-b\\ngpu-c\\n"',
        # srun runs its command once per node, as Slurm would, each with its node id.
        "srun": 'shift; for id in 0 1 2; do SLURM_NODEID=$id "$@"; done',
        "accelerate": 'printf "<%s>" "$@"; echo',  # each argument as it arrived
    }
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_NNODES": "3"}
    proc = subprocess.run(["bash", str(ROOT / "configs" / "slurm" / "train.sbatch"), "reward_fn=aesthetic",
                           "prompt_fn.nouns=[a cat, a dog]"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for rank, line in enumerate(lines):
        assert line == ("<launch><--config_file><configs/accelerate/multi_node.yaml><--num_machines><3>"
                        f"<--num_processes><24><--machine_rank><{rank}><--main_process_ip><gpu-a>"
                        "<--main_process_port><29500><train.py><reward_fn=aesthetic><prompt_fn.nouns=[a cat, a dog]>")


def test_engines_the_loop_cannot_checkpoint_are_refused_at_the_start():
    from vader.loop.settings import check_engine

    for ok in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        check_engine(ok)
    check_engine(DistributedType.FSDP, SimpleNamespace(fsdp_version=2))
    with pytest.raises(ValueError, match="FSDP version 1.*fsdp_version: 2"):
        check_engine(DistributedType.FSDP, SimpleNamespace(fsdp_version=1))
    for engine in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        with pytest.raises(ValueError, match=f"launched this run with {engine.value}.*configs/accelerate/fsdp.yaml"):
            check_engine(engine)


@pytest.mark.parametrize("backbone", ["modelscope", "animatediff", "svd", "wan", "cogvideox_5b"])
def test_fsdp_shards_every_denoiser_block_by_block(backbone):
    """The shard groups the trainer names for FSDP (vader.loop.sharding.block_classes), on each
    denoiser built at its published size on the meta device: each a module with its own forward
    (fully_shard refuses a ModuleList), and together they hold nearly all the weights, so a
    forward pass gathers one block at a time."""
    from backbones.sizes import denoiser, real_size_parts
    from vader.loop.sharding import block_classes

    model = denoiser(real_size_parts(backbone))
    names = block_classes(model)
    groups = [m for m in model.modules() if type(m).__name__ in names]
    assert groups and not any(isinstance(m, nn.ModuleList) for m in groups)
    inside = {id(p) for m in groups for p in m.parameters()}
    total = list(model.parameters())
    assert sum(p.numel() for p in total if id(p) in inside) > 0.9 * sum(p.numel() for p in total)
    largest = max(sum(p.numel() for p in m.parameters()) for m in groups)
    assert largest < 0.5 * sum(p.numel() for p in total)  # no group is most of the model
