"""The flags that choose a model (MODEL, --adapter, --dtype, --int8, --kv-cache-dtype) and the one way from them to an
LLM.

`generate`, `chat` and `serve` add the flags with add_model_arguments; every command that loads a model (those three,
`summarize`, `eval-multimodal`) loads it through load_llm. Free of torch at import: the LLM loads inside the call.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from seekmoe.errors import CLIError
from seekmoe.model.config import DTYPES, KV_CACHE_DTYPES

if TYPE_CHECKING:
    from seekmoe.llm import LLM

DEFAULT_DTYPE = "float32"  # LLM's and ServeConfig's default too


def add_model_arguments(p: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """MODEL, --adapter, --dtype, --int8 and --kv-cache-dtype. env (serve): dest -> the environment variable a flag
    left out falls back to; each help then names its variable, and every default is None so that the caller sees
    which were left out."""
    def var(dest: str, value: str = "") -> str:
        return "" if env is None else f" [{env[dest]}{value}]"

    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a checkpoint folder (config.json, safetensors weights, tokenizer.json); default: the "
                        "bundled seekmoe-tiny-chat" + var("model"))
    p.add_argument("--adapter", metavar="DIR",
                   help="a LoRA adapter folder (seekmoe finetune --method lora) merged into MODEL's weights at load"
                        + var("adapter"))
    p.add_argument("--dtype", choices=DTYPES, default=None if env is not None else DEFAULT_DTYPE,
                   help=f"dtype of the weights and the compute (default {DEFAULT_DTYPE})" + var("dtype"))
    p.add_argument("--int8", action="store_true", default=None if env is not None else False,
                   help="quantize the projections to int8 after loading (weight-only, per-channel scales): less "
                        "memory, slightly different output" + var("int8", "=1"))
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default=None if env is not None else "auto",
                   help="what the KV cache holds: auto (the model's dtype, the default), float32, bfloat16, float16, "
                        "or int8: a quarter of float32's bytes and faster decoding at long contexts, the logits off "
                        "by its rounding" + var("kv_cache_dtype"))


def check_model_folders(model: str | None, adapter: str | None = None) -> None:
    """CLIError unless MODEL (None: the bundled one) is a folder and --adapter, when given, an adapter folder."""
    if model is not None and not Path(model).is_dir():
        raise CLIError(f"{model}: no such model folder (expected a checkpoint folder holding config.json, "
                       "safetensors weights and tokenizer.json)")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise CLIError(f"{adapter}: not an adapter folder (expected adapter_config.json and "
                       "adapter_model.safetensors, as seekmoe finetune --method lora writes)")


def load_llm(model: str | None = None, *, dtype: str = DEFAULT_DTYPE, int8: bool = False, adapter: str | None = None,
             **engine) -> LLM:
    """The LLM of these model flags; engine: LLM's engine settings (cache_tokens, max_num_seqs, ...). CLIError for a
    folder that is not there; what LLM raises for one it cannot load (the server reports that as it comes)."""
    check_model_folders(model, adapter)
    from seekmoe.llm import LLM

    return LLM(model, dtype=dtype, quantize="int8" if int8 else None, adapter=adapter, **engine)


def open_llm(model: str | None = None, *, dtype: str = DEFAULT_DTYPE, int8: bool = False,
             adapter: str | None = None, kv_cache_dtype: str = "auto") -> LLM:
    """load_llm for a command in the terminal: a model that does not load is a CLIError saying why."""
    try:
        return load_llm(model, dtype=dtype, int8=int8, adapter=adapter, kv_cache_dtype=kv_cache_dtype)
    except (ValueError, OSError) as e:  # CheckpointError, ConfigError, TokenizerError, AdapterError, a vocab mismatch
        raise CLIError(str(e)) from None


def open_llm_from_args(args: argparse.Namespace) -> LLM:
    """open_llm with the flags add_model_arguments added."""
    return open_llm(args.model, dtype=args.dtype, int8=args.int8, adapter=args.adapter,
                    kv_cache_dtype=args.kv_cache_dtype)
