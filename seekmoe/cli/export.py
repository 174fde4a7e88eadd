"""`seekmoe export {hf,gguf} MODEL OUT`: the flags of seekmoe/export.py, which holds the export itself."""

from __future__ import annotations

import argparse

from seekmoe.errors import CLIError
from seekmoe.export import QUANTS, ExportError, export_gguf, export_hf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`seekmoe export {hf,gguf} MODEL OUT [--quant f32|f16|q8_0|q4_0]`, under the `export` parser."""
    if parser.description is None:
        parser.description = ("Export a model folder for other engines: a Hugging Face folder (transformers, "
                              "vLLM, SGLang) or a GGUF file for llama.cpp.")
    actions = parser.add_subparsers(dest="export_format", required=True, metavar="FORMAT")

    def add_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", metavar="MODEL", help="the model folder to export (config.json, safetensors, "
                                                      "tokenizer.json)")

    p = actions.add_parser("hf", help="a folder transformers, vLLM and SGLang load as DeepseekV2/V3ForCausalLM",
                           description="Write config.json, safetensors, the tokenizer with its chat template and "
                                       "generation_config.json into OUT, a new folder, all at once.")
    add_model(p)
    p.add_argument("out", metavar="OUT",
                   help="the folder to write; must not exist, or be empty (missing parent folders are created)")
    p.set_defaults(func=run_from_args)
    p = actions.add_parser("gguf", help="one GGUF file for llama.cpp (architecture deepseek2)",
                           description="Write MODEL as a GGUF file of llama.cpp's deepseek2 architecture, with its "
                                       "tokenizer and chat template; the file is replaced only once fully written.")
    add_model(p)
    p.add_argument("out", metavar="OUT",
                   help="the .gguf file to write (replaced if it exists; missing parent folders are created)")
    p.add_argument("--quant", choices=QUANTS, default="f32",
                   help="type of the weight matrices: f32, f16, q8_0 or q4_0 (norms and router stay f32; default f32)")
    p.set_defaults(func=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    try:
        if args.export_format == "hf":
            out = export_hf(args.model, args.out)
        else:
            out = export_gguf(args.model, args.out, quant=args.quant)
    except ExportError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}")
    return 0
