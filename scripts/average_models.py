"""Average fine-tunes of one model into one model folder, a "model soup" (seekmoe/model/average.py).

usage: python scripts/average_models.py DST SRC SRC [SRC ...] [--weights 2,1,1]
"""

from __future__ import annotations

import argparse
import sys

from seekmoe.model.average import average_folders
from seekmoe.model.checkpoint import CheckpointError
from seekmoe.model.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dst", help="the new model folder (must not exist)")
    p.add_argument("srcs", nargs="+", metavar="src",
                   help="model folders fine-tuned from one model (same config, tokenizer and tensors); a "
                   "multimodal one's encoders are averaged too")
    p.add_argument("--weights", default=None,
                   help="each folder's share, comma-separated, in the order given (normalised; default equal)")
    args = p.parse_args(argv)
    try:
        weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
        out = average_folders(args.srcs, args.dst, weights)
    except (CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"average_models: error: {e}", file=sys.stderr)
        return 2
    print(f"average_models: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
