"""The `seekmoe` command: a small argparse dispatch, one function per subcommand.

Subcommands import what they need inside their function, so `seekmoe inspect` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from seekmoe.cli.parser import Parser, positive_int
from seekmoe.errors import CLIError
from seekmoe.model.config import ConfigError, ModelConfig, bundled_configs, resolve_config


def load_config(source: str) -> ModelConfig:
    """A directory holding config.json, a .json file, or the name of a bundled config."""
    try:
        return resolve_config(source)
    except ConfigError as e:
        raise CLIError(str(e)) from None


def cmd_inspect(args: argparse.Namespace) -> int:
    from seekmoe.model.inspect import format_report, inspect_config

    report = inspect_config(load_config(args.config), ranks=args.ranks, context=args.context)
    if args.json:
        print(json.dumps({"source": args.config, **report.to_dict()}, indent=2))
    else:
        print(f"seekmoe inspect {args.config}\n")
        print(format_report(report))
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from seekmoe.text.tokenizer import SAMPLE_CHINESE, SAMPLE_ENGLISH, TokenizerError, corpus_files, train_tokenizer

    try:
        files = corpus_files(args.files)
        # tokenizers' progress bars also print blank lines to stdout, so only when someone watches
        tok = train_tokenizer(files, args.out, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                              show_progress=sys.stderr.isatty())
    except (TokenizerError, OSError) as e:
        raise CLIError(str(e)) from None
    out = Path(args.out)
    print(f"trained on {len(files)} file(s); wrote {out / 'tokenizer.json'} and {out / 'tokenizer_config.json'}")
    print(f"vocabulary: {tok.vocab_size:,} ids; bos {tok.bos_id}, eos {tok.eos_id}, pad {tok.pad_id}")
    if tok.vocab_size < args.vocab_size:
        print(f"note: the corpus gave only {tok.vocab_size:,} of the {args.vocab_size:,} ids asked for")
    print(f"tokens per character: English {tok.tokens_per_char(SAMPLE_ENGLISH):.2f}, "
          f"Chinese {tok.tokens_per_char(SAMPLE_CHINESE):.2f} (built-in samples)")
    return 0

def cmd_data_prepare(args: argparse.Namespace) -> int:
    from seekmoe.train.data import DataError, prepare

    try:
        m = prepare(args.inputs, args.tokenizer, args.out, val_fraction=args.val_fraction, seed=args.seed,
                    shard_tokens=args.shard_tokens, overwrite=args.overwrite, eos_token=args.eos_token, progress=True)
    except (DataError, OSError) as e:
        raise CLIError(str(e)) from None
    d, splits = m["documents"], m["splits"]
    print(f"{d['unique']:,} documents ({d['duplicates']:,} duplicates and {d['empty']:,} empty dropped) from "
          f"{len(m['sources'])} source(s); {m['dtype']} tokens, vocabulary {m['vocab_size']:,}")
    for name, s in splits.items():
        print(f"{name:>5}: {s['documents']:,} documents, {s['tokens']:,} tokens in {len(s['shards'])} shard(s)")
    print(f"wrote {Path(args.out) / 'manifest.json'}")
    return 0


# pyproject.toml's optional dependencies: import name -> (the extra that installs it, its name on PyPI)
EXTRAS = {
    "chatterbot_corpus": ("data", "chatterbot-corpus"), "yaml": ("data", "pyyaml"),
    "sklearn": ("multimodal", "scikit-learn"), "mlxtend": ("multimodal", "mlxtend"),
}


def pip_command(extra: str) -> str:
    """The command that installs `extra` into this seekmoe: from its folder when run from a source checkout."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():  # an installed wheel has no pyproject.toml beside the package
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install 'seekmoe[{extra}]'"


def missing_extra(module: str, command: str) -> str:
    """What to say when `command` cannot import `module` of an optional extra."""
    extra, package = EXTRAS[module]
    return f"{command} needs {package}, of seekmoe's optional '{extra}' dependencies: {pip_command(extra)}"


def cmd_data_chat(args: argparse.Namespace) -> int:
    """`seekmoe data chat` as seekmoe.train.chat_data runs it, once the 'data' extra is known to be installed."""
    from seekmoe.train.chat_data import run_from_args

    if not args.skip_missing:
        for module, (extra, _) in EXTRAS.items():
            if extra == "data" and importlib.util.find_spec(module) is None:
                raise CLIError(missing_extra(module, "seekmoe data chat")
                               + " (or pass --skip-missing to leave the chatterbot set out)")
    return run_from_args(args)


def cmd_train(args: argparse.Namespace) -> int:
    from seekmoe.train.config import TrainError
    from seekmoe.train.loop import run_from_args

    try:
        return run_from_args(args)
    except (TrainError, OSError) as e:
        raise CLIError(str(e)) from None


def cmd_finetune(args: argparse.Namespace) -> int:
    from seekmoe.train.config import TrainError
    from seekmoe.train.finetune import run_from_args

    try:
        return run_from_args(args)
    except (TrainError, OSError) as e:
        raise CLIError(str(e)) from None


def cmd_merge(args: argparse.Namespace) -> int:
    from seekmoe.model.checkpoint import CheckpointError
    from seekmoe.model.lora import AdapterError
    from seekmoe.train.finetune import merge_adapter

    try:
        out = merge_adapter(args.base, args.adapter, args.out)
    except (CheckpointError, AdapterError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}: {args.base} with {args.adapter} merged in")
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="seekmoe", description="DeepSeek-V2/V3 MoE models on your own machines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="parameter counts, layer layout, KV-cache and memory sizes of a config, "
                                       "no weights",
                       description="Parameter counts (total and active per token), layer layout, KV-cache "
                                   "bytes per token, and the memory to train (per rank, under ddp, fsdp and expert "
                                   "parallel) and serve the model, computed from config.json alone.")
    p.add_argument("config", metavar="PATH_OR_CONFIG",
                   help="a directory holding config.json, a .json file, or a bundled config name "
                        f"({', '.join(bundled_configs())})")
    p.add_argument("--ranks", type=positive_int, default=8, metavar="N",
                   help="processes (GPUs) the memory section splits the model over (default 8)")
    p.add_argument("--context", type=positive_int, default=4096, metavar="T",
                   help="tokens of the one sequence whose KV cache the memory section gives (default 4096)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Byte-level BPE tokenizers with DeepSeek-style special tokens.")
    p = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION").add_parser(
        "train", help="train on text, Markdown, reST and JSONL files",
        description="Train a byte-level BPE on the given files, streaming them, and save tokenizer.json and "
                    "tokenizer_config.json into --out, loadable by transformers' AutoTokenizer.")
    p.add_argument("files", nargs="+", metavar="FILE_OR_FOLDER",
                   help="UTF-8 text files, JSONL files (.jsonl, one {\"text\": ...} object a line), or folders "
                        "searched recursively for .txt, .md, .rst and .jsonl files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="ids in the vocabulary, special tokens and the 256 byte tokens included")
    p.add_argument("--min-frequency", type=int, default=2, metavar="N",
                   help="merge a pair only if it occurs at least N times (default 2)")
    p.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="training data: token shards from text, and the chat fine-tuning sets",
                       description="Training data: token shards for pretraining, JSONL sets for fine-tuning.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    from seekmoe.train.chat_data import DESCRIPTION
    from seekmoe.train.chat_data import add_arguments as add_chat_data_arguments

    p = data_sub.add_parser("chat", help="write the chat fine-tuning sets we ship (JSONL) and SOURCES.json",
                            description=DESCRIPTION)
    add_chat_data_arguments(p)
    p.set_defaults(func=cmd_data_chat)
    from seekmoe.multimodal import data as mm_data
    p = data_sub.add_parser("multimodal", help="write the image and speech chat sets (JSONL, PNG, WAV) and "
                                               "SOURCES.json", description=mm_data.DESCRIPTION)
    mm_data.add_arguments(p)
    p.set_defaults(func=mm_data.run_from_args)
    from seekmoe.train import copy_text
    p = data_sub.add_parser("copy", help="write pretraining text that teaches copying from context (JSONL)",
                            description=copy_text.DESCRIPTION)
    copy_text.add_arguments(p)
    p.set_defaults(func=copy_text.run_from_args)
    from seekmoe.train import passkey
    p = data_sub.add_parser("passkey", help="write long-context fine-tuning data: hidden keys and long passages "
                                            "(JSONL)", description=passkey.DESCRIPTION)
    passkey.add_arguments(p)
    p.set_defaults(func=passkey.run_from_args)
    p = data_sub.add_parser(
        "prepare", help="deduplicate, shuffle and tokenise text into train/val token shards",
        description="Tokenise text into shuffled train/val token shards with manifest.json, deduplicating exact "
                    "copies of documents. A document is a paragraph block of a text file (lines between blank "
                    "lines) or one JSONL record. Memory stays flat whatever the corpus size.")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER",
                   help="UTF-8 text files, JSONL files (.jsonl, one {\"text\": ...} object a line), or folders "
                        "searched recursively for .txt, .md, .rst and .jsonl files; a SOURCES.json beside them "
                        "names their sources and licenses in the manifest")
    p.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="a tokenizer folder (tokenizer.json, and tokenizer_config.json naming eos_token) or a "
                        "tokenizer.json file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the shards and manifest.json")
    p.add_argument("--val-fraction", type=float, default=0.01, metavar="F",
                   help="fraction of the documents held out for validation, in (0, 1) (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the train/val split (default 0)")
    p.add_argument("--shard-tokens", type=int, default=50_000_000, metavar="N",
                   help="tokens per shard file, the last one fewer (default 50,000,000)")
    p.add_argument("--eos-token", metavar="TOKEN",
                   help="end-of-sentence token appended to each document (default: tokenizer_config.json's "
                        "eos_token, else a usual one such as <|endoftext|> found in the vocabulary)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the shards and manifest of a non-empty --out folder")
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train", help="pretrain a model on token shards, with expert load balancing",
                       description="Pretrain (or resume) a model: AdamW, warm-up + cosine, balancing, validation, "
                                   "metrics.jsonl, plots and atomic checkpoints in --out.")
    from seekmoe.train.config import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="supervised fine-tuning on chat data: all weights or LoRA adapters",
                       description="Fine-tune a model (default: the bundled one) on JSONL conversations (OpenAI "
                                   "'messages' or Alpaca 'instruction'/'input'/'output'), with loss on the "
                                   "assistant turns only. Same loop as `seekmoe train`: progress, metrics.jsonl, "
                                   "plots, atomic checkpoints and exact resume in --out; the result is --out/model "
                                   "(method full) or --out/adapter (method lora).")
    from seekmoe.train.config import FinetuneConfig

    add_arguments(p, FinetuneConfig)
    p.set_defaults(func=cmd_finetune)

    from seekmoe.cli import eval_multimodal as mm_eval
    from seekmoe.cli import train_multimodal as mm_train
    p = sub.add_parser("train-multimodal", help="teach a chat model to read images and speech (two stages)",
                       description=mm_train.__doc__.split("\n\n")[1].replace("\n", " "))
    mm_train.add_arguments(p)
    p.set_defaults(func=mm_train.run_from_args)
    p = sub.add_parser("eval-multimodal", help="accuracy on the held-out images and speech, and expert load by "
                                               "modality", description=mm_eval.__doc__.split("\n\n")[0].split(
                                                   "`: ", 1)[1].replace("\n", " "))
    mm_eval.add_arguments(p)
    p.set_defaults(func=mm_eval.run_from_args)

    p = sub.add_parser("merge", help="fold a LoRA adapter into its base model",
                       description="Write BASE with the LoRA ADAPTER merged into its weights as a new model folder "
                                   "(with BASE's tokenizer), servable without the adapter.")
    p.add_argument("base", metavar="BASE", help="the base model folder the adapter was trained on")
    p.add_argument("adapter", metavar="ADAPTER", help="an adapter folder (seekmoe finetune --method lora, or peft)")
    p.add_argument("out", metavar="OUT", help="the merged model folder to write (replaced if it exists)")
    p.set_defaults(func=cmd_merge)

    from seekmoe.cli.export import add_arguments as add_export_arguments

    p = sub.add_parser("export", help="export a model for other engines: a Hugging Face folder or a llama.cpp GGUF")
    add_export_arguments(p)

    from seekmoe.cli.quantize import add_arguments as add_quantize_arguments

    p = sub.add_parser("quantize", help="quantize a float checkpoint to int8 or int4, streamed tensor by tensor")
    add_quantize_arguments(p)

    from seekmoe.cli.generate import add_chat_arguments, add_generate_arguments, cmd_chat, cmd_generate

    p = sub.add_parser("generate", help="continue a prompt with a model, streaming the text",
                       description="Continue PROMPT with a model (plain completion, no chat template): the text "
                                   "streams to stdout, a summary line goes to stderr. MODEL may be left out: "
                                   "`seekmoe generate PROMPT` uses the bundled model. Flags may come before, "
                                   "between or after MODEL and PROMPT; a PROMPT starting with - goes after --.")
    add_generate_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk with a model, turn by turn, in the terminal",
                       description="A multi-turn chat through the tokenizer's chat template: one user message a "
                                   "line on stdin, each answer streamed to stdout. /bye (or Ctrl-D) quits, /clear "
                                   "forgets the conversation, /help lists the commands. When the conversation "
                                   "outgrows the context its oldest exchanges are dropped.")
    add_chat_arguments(p)
    p.set_defaults(func=cmd_chat)

    from seekmoe.cli.serve import add_serve_arguments, cmd_serve

    p = sub.add_parser("serve", help="serve a model over HTTP: the native API and OpenAI's",
                       description="Serve MODEL over HTTP: POST /v2/generate, OpenAI-compatible /v1/models, "
                                   "/v1/completions and /v1/chat/completions (streaming as server-sent events), "
                                   "/health (503 while the model loads) and Prometheus /metrics. Every flag also "
                                   "reads from the environment variable in brackets; a flag given wins.")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    from seekmoe.cli import summarize

    p = sub.add_parser("summarize", help="summarize a text of any length (its stated conclusions and central "
                                         "sentences, or map-reduce over the model)",
                       description="Summarize FILE (or standard input) within --max-length tokens: by default the "
                                   "sentences that state its conclusions, its opening and its most central ones, "
                                   "shortened by the model only where every fact survives; --method abstractive "
                                   "has the model summarize chunks, then their summaries; --method extractive "
                                   "picks the most central sentences (TextRank), no generation.")
    summarize.add_arguments(p)
    p.set_defaults(func=summarize.run_from_args)

    from seekmoe.cli import graph

    p = sub.add_parser("graph", help="a knowledge graph from literature: build it, query it, discover hidden links",
                       description=graph.DESCRIPTION)
    graph.add_arguments(p)

    from seekmoe.plugins import DESCRIPTION as PLUGINS_DESCRIPTION
    from seekmoe.plugins import add_arguments as add_plugins_arguments

    p = sub.add_parser("plugins", help="the tools a served model may call (seekmoe serve --tools)",
                       description=PLUGINS_DESCRIPTION)
    add_plugins_arguments(p)
    return parser


INFERENCE_COMMANDS = ("generate", "chat", "serve", "summarize")


def quiet_openmp(command: str) -> None:
    """Commands that decode: PyTorch's OpenMP workers, left spinning after each parallel region (a prompt chunk),
    take cycles from the kernels' own thread pool while it decodes, so these ask OpenMP to wait passively (unless
    the user set OMP_WAIT_POLICY). Measured on `small` int4, 2 threads: decode +10 to 17%, prefill unchanged; a
    training step, whose parallel regions come back to back, was 11-13% slower with it, so training keeps the
    default. Only before torch is loaded: OpenMP reads the setting once."""
    if command in INFERENCE_COMMANDS and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): argparse has printed the message already
        return e.code if isinstance(e.code, int) else 2
    quiet_openmp(args.command)  # the subcommand is required: parse_args stopped above without one
    try:
        return args.func(args)
    except CLIError as e:
        print(f"seekmoe: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional dependency a command imports without checking first
        module = (e.name or "").split(".")[0]
        if module not in EXTRAS:
            raise
        print(f"seekmoe: error: {missing_extra(module, parser.chosen(args).prog)}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    try:
        code = run(argv)
        sys.stdout.flush()  # a reader gone early shows here, not in Python's last flush at exit
        return code
    except BrokenPipeError:
        # `seekmoe inspect --json | head`: stop quietly with 141, the status coreutils end with there (killed by
        # SIGPIPE, 128 + 13), which `set -o pipefail` reports; stdout goes to /dev/null so that Python's final
        # flush of the text left in its buffer raises nothing
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout is no file (an embedding program replaced it)
            pass
        return 141
