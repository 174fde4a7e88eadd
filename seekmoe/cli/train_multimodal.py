"""`seekmoe train-multimodal`'s flags and entry point; the training is seekmoe/train/multimodal.py, imported only
when the command runs (it brings torch).

Stage 1 trains the new encoders and projectors with the language model frozen (its routing bias too), so the
encoders learn to speak the embedding language the model already reads. Stage 2 fine-tunes everything together
at a lower rate, the loss-free routing bias moving again. Both run train.run, the pretraining loop: the same
progress bar, metrics.jsonl, plots, atomic checkpoints and exact resume, in OUT/stage1 and OUT/stage2; the result
is OUT/model, a model folder (language model, multimodal.safetensors, tokenizer) that `seekmoe serve` serves.
"""

from __future__ import annotations

import argparse
import sys

from seekmoe.cli.parser import positive_int
from seekmoe.multimodal.data import SETS
from seekmoe.train.config import MultimodalSettings as Settings
from seekmoe.train.config import TrainError

INT_FLAGS = ("stage1_steps", "stage2_steps", "batch_size", "max_tokens", "eval_every", "eval_batches", "save_every",
             "seed", "text_every", "text_batch_size", "text_seq_len")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--model", help="the chat model to extend (default: the bundled seekmoe-tiny-chat)")
    p.add_argument("--data", default=d.data, help=f"folder written by `seekmoe data multimodal` (default {d.data})")
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out}); an interrupted run resumes")
    p.add_argument("--sets", default=",".join(d.sets), help="comma list of the sets to train on")
    for name in INT_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), metavar="N",
                       help=f"default {getattr(d, name)}")
    p.add_argument("--text", help="fine-tuning chats (a folder of *.train.jsonl or a file, `seekmoe finetune`'s "
                   "format) mixed into stage 2 so the model keeps its chat skills; --text-every N makes every N-th "
                   "step a batch of --text-batch-size rows of --text-seq-len tokens")
    p.add_argument("--repeat-every", type=int, default=d.repeat_every, metavar="N",
                   help="make every N-th stage 2 step a drill of random token runs, each written twice with the loss "
                   "on the copy (8 rows of 256 tokens), which teaches copying from "
                   f"earlier in the context: recalling a name or a city said turns ago; 1: the drill alone (the "
                   f"media sets still evaluate); default {d.repeat_every}: none")
    p.add_argument("--lookup-weight", type=float, default=d.lookup_weight, metavar="W",
                   help="weigh the text chats' lookups W times in the loss: answer tokens that start a copy of what "
                   "the customer wrote without the word before them matching (\"I'm Kenji\" -> \"Your name is "
                   f"Kenji\"), which a small model tends to guess; default {d.lookup_weight:g}: off")
    p.add_argument("--lr1", type=float, default=d.lr1, help=f"stage 1 peak learning rate (default {d.lr1})")
    p.add_argument("--lr2", type=float, default=d.lr2, help=f"stage 2 peak learning rate (default {d.lr2})")
    p.add_argument("--device", default=d.device, help="where both stages train: auto (the GPU when torch sees one, "
                   f"else the CPU), cpu, cuda or cuda:N; media are decoded on the CPU (default {d.device})")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on that device")
    p.add_argument("--max-image-size", type=positive_int, metavar="PIXELS",
                   help="teach the image encoder a second, larger square (a multiple of its patch size, 112 for "
                   "the grounding sets' canvases): images larger than its small square are drawn onto it")


def run_from_args(args: argparse.Namespace) -> int:
    sets = tuple(x.strip() for x in args.sets.split(",") if x.strip())
    unknown = sorted(set(sets) - set(SETS))
    if unknown or not sets:
        print(f"seekmoe: error: --sets: unknown set {unknown[0] if unknown else '(none)'}; known: "
              f"{', '.join(SETS)}", file=sys.stderr)
        return 2
    if (name := Settings.bad_count(vars(args))) is not None:  # what Settings would refuse, named as its flag
        print(f"seekmoe: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
        return 2
    encoder = {} if args.max_image_size is None else {"max_image_size": args.max_image_size}
    s = Settings(model=args.model, data=args.data, out=args.out, sets=sets, lr1=args.lr1, lr2=args.lr2, text=args.text,
                 repeat_every=args.repeat_every, lookup_weight=args.lookup_weight, encoder=encoder,
                 device=args.device, bf16=args.bf16,
                 **{k: getattr(args, k) for k in INT_FLAGS})
    from seekmoe.train.multimodal import train

    try:
        train(s, log=lambda m: print(m, file=sys.stderr))
    except (TrainError, ValueError, OSError) as e:
        print(f"seekmoe: error: {e}", file=sys.stderr)
        return 2
    return 0
