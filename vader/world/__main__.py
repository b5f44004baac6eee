"""`python -m vader.world <command>`: the shapes world from the command line.

    python -m vader.world render --out data/shapes --num-videos 2000   # a dataset (manifest.csv + videos)
    python -m vader.world pretrain --out backbones/weights/world       # the shipped world model (~30 min CPU)
    python -m vader.world evaluate [--weights folder]                  # its held-out accuracy, per attribute
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vader.world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write a captioned dataset in the manifest format")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--num-videos", type=int, default=2000)
    r.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--num-frames", type=int, default=8)
    r.add_argument("--height", type=int, default=32)
    r.add_argument("--width", type=int, default=32)
    p = sub.add_parser("pretrain", help="pretrain the world model (every part) from random weights")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--init", type=Path, default=None,
                   help="continue training this world model folder (with --vae-steps 0)")
    from vader.world.pretrain import Settings
    for field in dataclasses.fields(Settings):
        if field.type in ("int", "float"):
            p.add_argument(f"--{field.name.replace('_', '-')}", type=int if field.type == "int" else float,
                           default=field.default)
    e = sub.add_parser("evaluate", help="held-out alignment accuracy of a world model")
    e.add_argument("--weights", default=None, help="a world model folder (default: the shipped one)")
    e.add_argument("--seeds", type=int, default=4, help="evaluation seeds per held-out prompt")
    e.add_argument("--guidance-scale", type=float, default=None)
    e.add_argument("--write", action="store_true", help="record the result in the folder's config.json")
    args = parser.parse_args(argv)

    if args.command == "render":
        from vader.world.dataset import write_dataset
        path = write_dataset(args.out, args.num_videos, args.split, args.seed, args.num_frames,
                             args.height, args.width)
        print(f"wrote {args.num_videos} videos and {path}")
    elif args.command == "pretrain":
        from vader.world.pretrain import pretrain
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                  if hasattr(args, f.name)}
        config = pretrain(args.out, Settings(**values), init=args.init)
        print(json.dumps(config["made"], indent=2))
    else:
        from vader.world.accuracy import evaluate_model
        result = evaluate_model(args.weights, args.seeds, args.guidance_scale, write=args.write)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
