"""`seekmoe quantize MODEL OUT --int8 | --int4`: the flags of model/quantize.py, which streams the conversion."""

from __future__ import annotations

import argparse

from seekmoe.errors import CLIError
from seekmoe.model.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`seekmoe quantize MODEL OUT (--int8 | --int4) [--group-size G] [--shard-size GB] [--force]`."""
    parser.description = (
        "Quantize a float Hugging Face checkpoint folder (bf16/fp16/fp32 safetensors, sharded or not) into OUT, "
        "tensor by tensor: memory holds a slice of one tensor, never the model. OUT loads memory-mapped in seekmoe "
        "(LLM, generate, serve), its config.json saying how it was quantized.")
    parser.add_argument("model", metavar="MODEL", help="the float checkpoint folder (config.json + safetensors)")
    parser.add_argument("out", metavar="OUT", help="the folder to write: must not exist or be empty, unless --force")
    bits = parser.add_mutually_exclusive_group(required=True)
    bits.add_argument("--int8", dest="bits", action="store_const", const=8,
                      help="int8 weights, one float32 scale per output row")
    bits.add_argument("--int4", dest="bits", action="store_const", const=4,
                      help="int4 weights, one float16 scale per group of --group-size inputs")
    # not choices=GROUP_SIZES: model/int4.py brings torch, and the command line is built without it
    parser.add_argument("--group-size", type=int, default=32,
                        help="inputs per int4 scale: 32 (default, as llama.cpp's Q4_0) or 64 (smaller, less exact)")
    parser.add_argument("--shard-size", type=float, default=4.0, metavar="GB",
                        help="largest output file in GiB before a new shard starts (default 4)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    from seekmoe.model.quantize import quantize_checkpoint
    from seekmoe.model.weights import CheckpointError

    if args.group_size != 32 and args.bits != 4:
        raise CLIError("--group-size applies to --int4 only")
    if not args.shard_size > 0:
        raise CLIError(f"--shard-size must be > 0 GiB, got {args.shard_size}")
    try:
        out = quantize_checkpoint(args.model, args.out, args.bits, group_size=args.group_size,
                                  max_shard_bytes=int(args.shard_size * 2**30), force=args.force,
                                  progress=not args.quiet)
    except (CheckpointError, ConfigError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}")
    return 0
