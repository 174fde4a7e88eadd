"""Grow a trained MoE model folder to twice its routed experts, its function kept (seekmoe/model/upcycle.py).

usage: python scripts/upcycle.py SRC DST [--noise 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

from seekmoe.model.checkpoint import CheckpointError
from seekmoe.model.config import ConfigError
from seekmoe.model.upcycle import upcycle_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a model folder with routed experts (a multimodal one keeps its encoders)")
    p.add_argument("dst", help="the new model folder (must not exist)")
    p.add_argument("--noise", type=float, default=0.1,
                   help="perturb the twins' router rows and experts by this fraction of each weight's standard "
                   "deviation, so that training can tell them apart (default 0.1, which left the bundled chat "
                   "model's loss on its chat val sets as it was; 0: the very same function)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    args = p.parse_args(argv)
    try:
        out = upcycle_folder(args.src, args.dst, args.noise, args.seed)
    except (CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"upcycle: error: {e}", file=sys.stderr)
        return 2
    print(f"upcycle: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
