"""`seekmoe generate` and `seekmoe chat`: the LLM API on the command line.

Free of torch at import, like cli/main.py: the parser is built for every command; the model loads inside the command
(through cli/model_flags.py, as for every command that loads one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from seekmoe.cli.model_flags import add_model_arguments, open_llm_from_args
from seekmoe.errors import CLIError

if TYPE_CHECKING:
    from seekmoe.engine.engine import PromptEmbeds
    from seekmoe.engine.sampling import SamplingParams
    from seekmoe.llm import LLM, Completion, Delta

# SamplingParams field -> the flag that sets it; its errors name the field, the user typed the flag
FLAGS = {
    "max_tokens": "--max-tokens", "temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k",
    "min_p": "--min-p", "repetition_penalty": "--repetition-penalty", "presence_penalty": "--presence-penalty",
    "frequency_penalty": "--frequency-penalty", "stop": "--stop", "seed": "--seed", "n": "-n",
    "logprobs": "--logprobs",
}
CHAT_FIELDS = tuple(f for f in FLAGS if f not in ("n", "logprobs"))  # one answer a turn, shown as text

CHAT_HELP = """commands:
  /image PATH  attach a PNG, JPEG or GIF image to your next message (a multimodal model; repeat for several)
  /audio PATH  attach a WAV or FLAC recording to your next message
  /bye         quit (so do Ctrl-D and Ctrl-C at the prompt)
  /clear       forget the conversation and the attachments (the system prompt stays)
  /help        this list
Attachments stay in the conversation: later questions can ask about them too. An answer that names regions of
an image (<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>) is drawn on the last image attached and saved as
seekmoe-annotated-N.png (in --save-images DIR).
Ctrl-C during an answer stops it; that exchange is then not kept."""


# ---- flags ---------------------------------------------------------------------------------------------------

def _add_sampling_arguments(p: argparse.ArgumentParser, several: bool) -> None:
    """Defaults None: the model's generation_config.json, else SamplingParams' own; every value given is checked."""
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="most tokens to write per answer (default 128); the prompt and N must fit the context")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="randomness, in [0, 2]; 0 always picks the likeliest token (default: the model's "
                        "generation_config.json, else 1)")
    p.add_argument("--top-p", type=float, metavar="P",
                   help="sample from the likeliest tokens holding probability P, in (0, 1] (default: the model's, "
                        "else 1: off)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="sample from the K likeliest tokens; 0 or -1: off (default)")
    p.add_argument("--min-p", type=float, metavar="P",
                   help="drop tokens less likely than P times the likeliest, in [0, 1] (default 0: off)")
    p.add_argument("--repetition-penalty", type=float, metavar="R",
                   help="push down tokens already in the prompt or the output, in (0, 2]; above 1 repeats less "
                        "(default 1: off)")
    p.add_argument("--presence-penalty", type=float, metavar="X",
                   help="subtract X from the logit of every token already written, in [-2, 2] (default 0)")
    p.add_argument("--frequency-penalty", type=float, metavar="X",
                   help="subtract X times its count from the logit of every token already written, in [-2, 2] "
                        "(default 0)")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="end the answer where it writes TEXT, which is not printed; repeat for several (up to 16)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of the sampling, for repeatable output (default: a fresh random one)")
    if several:
        p.add_argument("-n", type=int, metavar="N",
                       help="completions of the prompt, in [1, 16] (default 1); more than one are printed when "
                            "complete, not streamed")
        p.add_argument("--logprobs", type=int, metavar="N",
                       help="with --json: each chosen token's log-probability and the N likeliest tokens at that "
                            "step, N in [0, 20]")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("prompt", metavar="PROMPT",
                   help="the text to continue, or - to read it from stdin (its final newline dropped)")
    _add_sampling_arguments(p, several=True)
    p.add_argument("--no-stream", action="store_true", help="print the text once complete, not piece by piece")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object a line per completion: index, text, finish_reason, usage, and "
                        "logprobs with --logprobs (never streamed)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no summary line (tokens, tok/s, finish reason) on stderr")


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", metavar="TEXT", help="system prompt, kept at the start of the conversation")
    _add_sampling_arguments(p, several=False)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="after each answer, a line on stderr: prompt and answer tokens, tok/s, finish reason")
    p.add_argument("--save-images", metavar="DIR", type=Path, default=Path("."),
                   help="where an answer that names regions of an image saves that image with them drawn, as "
                        "seekmoe-annotated-N.png (default: the current directory)")


def sampling_params(args: argparse.Namespace, names: Iterable[str], defaults: dict | None = None) -> SamplingParams:
    """defaults: the model's (LLM.sampling_defaults), under the flags given."""
    from seekmoe.engine.sampling import SamplingError, SamplingParams

    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        return SamplingParams(**{**(defaults or {}), **given})
    except SamplingError as e:  # "top_p must be in (0, 1], got 0.0" -> "--top-p must be ..."
        message = str(e)
        if e.param in FLAGS:
            message = FLAGS[e.param] + message[len(e.param):]
        raise CLIError(message) from None


def summary(completion: Completion, seconds: float, what: str = "completion") -> str:
    u = completion.usage
    rate = u.completion_tokens / seconds if seconds > 0 else 0.0
    reasons = ", ".join(c.finish_reason or "none" for c in completion.choices)
    return (f"prompt {u.prompt_tokens} tokens, {what} {u.completion_tokens} tokens in {seconds:.2f} s "
            f"({rate:.1f} tok/s); finish: {reasons}")


def echo(deltas: Iterable[Delta], out: TextIO) -> Iterator[Delta]:
    """Pass deltas through, writing their text as it comes."""
    for d in deltas:
        if d.text:
            out.write(d.text)
            out.flush()
        yield d


# ---- generate ------------------------------------------------------------------------------------------------

def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt == "-":
        text = sys.stdin.read()
        text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    else:
        text = args.prompt
        if args.model is None and (Path(text) / "config.json").is_file():
            raise CLIError(f"PROMPT is missing: {text} is a model folder (seekmoe generate MODEL PROMPT)")
    if not text:
        raise CLIError("PROMPT is empty: give the text to continue, or - to read it from stdin")
    return text


def choice_json(completion: Completion, index: int) -> dict:
    c = completion.choices[index]
    obj = {"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
           "usage": {"prompt_tokens": completion.usage.prompt_tokens, "completion_tokens": len(c.token_ids),
                     "total_tokens": completion.usage.prompt_tokens + len(c.token_ids)}}
    if c.logprobs is not None:
        obj["logprobs"] = [asdict(lp) for lp in c.logprobs]
    return obj


def cmd_generate(args: argparse.Namespace) -> int:
    from seekmoe.engine.engine import EngineError

    prompt = read_prompt(args)
    params = sampling_params(args, FLAGS)  # checked before the model loads: a bad flag fails at once
    if params.logprobs is not None and not args.json:
        raise CLIError("--logprobs needs --json (text output has no place for them)")
    try:
        llm = open_llm_from_args(args)
    except KeyboardInterrupt:
        return 130
    params = sampling_params(args, FLAGS, llm.sampling_defaults)
    try:
        stream = not (args.no_stream or args.json or params.n > 1)
        start = time.perf_counter()
        req = llm.submit(llm.encode(prompt), params)
        try:
            completion = req.collect(echo(req, sys.stdout) if stream else req)
        except KeyboardInterrupt:
            req.cancel()
            if stream:
                print()  # end the partial line
            print("seekmoe: interrupted", file=sys.stderr)
            return 130
        seconds = time.perf_counter() - start
        if args.json:
            for i in range(params.n):
                print(json.dumps(choice_json(completion, i)))
        elif stream:
            print()  # the streamed text ends without a newline
        else:
            for c in completion.choices:
                if params.n > 1:
                    print(f"--- completion {c.index + 1} of {params.n} ---")
                print(c.text)
        sys.stdout.flush()
        if not args.quiet:
            print(summary(completion, seconds), file=sys.stderr)
        return 0
    except EngineError as e:
        raise CLIError(str(e)) from None
    finally:
        llm.close()


# ---- chat ----------------------------------------------------------------------------------------------------

def media_count(messages: list[dict]) -> int:
    return sum(part["type"] != "text" for m in messages if isinstance(m["content"], list) for part in m["content"])


def fit(llm: LLM, messages: list[dict], params: SamplingParams) -> tuple[list[int] | None, PromptEmbeds | None, int]:
    """The conversation's prompt ids and media rows, after dropping its oldest exchanges, media and all (the system
    prompt stays), until the prompt and max_tokens fit the context and its media the model's max_items; (None, None,
    0), history untouched, when not even the last message fits. MediaError for media the model cannot read."""
    room, most = llm.engine.max_model_len - params.max_tokens, llm.media_limits.max_items
    if media_count(messages) <= most:
        ids, _, embeds = llm.chat_prompt(messages)
        if len(ids) <= room:
            return ids, embeds, 0
    head = 1 if messages[0]["role"] == "system" else 0
    if len(messages) == head + 1 or len(llm.chat_prompt(messages[:head] + messages[-1:])[0]) > room:
        return None, None, 0
    dropped = 0
    while True:  # ends: the last message alone fits
        del messages[head:head + 2]  # the oldest user message and its answer
        dropped += 1
        if media_count(messages) <= most:
            ids, _, embeds = llm.chat_prompt(messages)
            if len(ids) <= room:
                return ids, embeds, dropped


def answer(llm: LLM, messages: list[dict], params: SamplingParams, verbose: bool, out: TextIO,
           err: TextIO) -> str | None:
    """Stream the answer to the conversation's last (user) message; None when there is none to keep."""
    from seekmoe.multimodal.media import MediaError

    most = llm.media_limits.max_items
    too_many = media_count(messages) > most
    try:
        ids, embeds, dropped = fit(llm, messages, params)
    except MediaError as e:
        print(f"(not sent: {e})", file=err)
        return None
    limit = llm.engine.max_model_len
    if ids is None:
        print(f"(that message does not fit: with the system prompt and --max-tokens {params.max_tokens} it needs "
              f"more than the {limit}-token context; send a shorter one)", file=err)
        return None
    if dropped:
        print(f"(dropped the {dropped} oldest exchange{'s' if dropped > 1 else ''} to fit the {limit}-token "
              f"context{f' and the {most} media a prompt may hold' if too_many else ''})", file=err)
    start, req = time.perf_counter(), None
    try:
        req = llm.submit(ids, params, embeds=embeds)
        completion = req.collect(echo(req, out))
    except KeyboardInterrupt:
        if req is not None:
            req.cancel()
        print(file=out, flush=True)
        print("(stopped; this exchange is not kept)", file=err)
        return None
    print(file=out, flush=True)
    if verbose:
        print(summary(completion, time.perf_counter() - start, "answer"), file=err)
    return completion.text


def size(n: int) -> str:
    return f"{max(1, round(n / 1024))} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def attach(llm: LLM, kind: str, arg: str, pending: list[dict], err: TextIO) -> None:
    """Read the file of `/image PATH` or `/audio PATH`, check the model can take it, and add its part to
    `pending` (the bytes, not the path: the conversation keeps what was attached); else say why not."""
    from seekmoe.multimodal.media import MediaError, load_audio, load_image

    arg = arg.strip().strip("'\"")  # a terminal's drag and drop may quote the path
    if not arg:
        print(f"usage: /{kind} PATH", file=err)
        return
    path = Path(arg).expanduser()
    if llm.encoders is None:
        print(f"this model reads text only: it has no {kind} encoder, so /{kind} attaches nothing", file=err)
        return
    limits = llm.media_limits
    if len(pending) >= limits.max_items:
        print(f"cannot attach {path}: at most {limits.max_items} images and recordings in one message", file=err)
        return
    most = limits.max_image_bytes if kind == "image" else limits.max_audio_bytes
    try:
        with open(path, "rb") as f:
            data = f.read(most + 1)  # never more: a huge file is refused unread
        if len(data) > most:
            raise MediaError(f"it is over the {most:,}-byte limit")
        (load_image if kind == "image" else load_audio)(data, limits)  # the type, pixels, duration: checked now
    except OSError as e:
        print(f"cannot attach {path}: {e.strerror or e}", file=err)
        return
    except MediaError as e:
        print(f"cannot attach {path}: {e}", file=err)
        return
    pending.append({"type": kind, "data": data})
    print(f"attached {kind} {path.name} ({size(len(data))})", file=err)


def last_image(messages: list[dict]) -> bytes | None:
    """The bytes of the conversation's last image (what /image attached), None when it holds none."""
    parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
    return next((p["data"] for p in reversed(parts) if p["type"] == "image"), None)


def save_annotated(llm: LLM, reply: str, messages: list[dict], folder: Path, err: TextIO) -> Path | None:
    """When the reply names regions and the conversation (as sent) holds an image, that last image with the regions
    drawn (as the server draws them), saved as seekmoe-annotated-N.png in `folder`, N the first number free."""
    from seekmoe.multimodal.grounding import DET, annotated_png
    from seekmoe.multimodal.media import load_image

    data = last_image(messages)
    png = annotated_png(reply, load_image(data, llm.media_limits)) if data is not None and DET in reply else None
    if png is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            path = folder / f"seekmoe-annotated-{n}.png"
            try:
                with open(path, "xb") as f:  # never over an earlier one, this session's or another's
                    f.write(png)
                break
            except FileExistsError:
                n += 1
    except OSError as e:
        print(f"(cannot save the annotated image in {folder}: {e.strerror or e})", file=err)
        return None
    print(f"(annotated image: {path})", file=err)
    return path


def chat(llm: LLM, params: SamplingParams, system: str | None, verbose: bool, stdin: TextIO, out: TextIO,
         err: TextIO, save_images: Path = Path(".")) -> int:
    """Read user lines until /bye, EOF or Ctrl-C at the prompt, answering each in the conversation so far; an
    answer that names regions of an image gets that image annotated in save_images."""
    start = [{"role": "system", "content": system}] if system else []
    messages, pending = list(start), []  # pending: the media parts /image and /audio attach to the next message
    tty = stdin.isatty()
    if tty:
        print(f"seekmoe chat: {llm.path.name}; /help for commands, /bye to quit", file=err)
    while True:
        if tty:
            print(">>> ", end="", file=err, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            print(file=err)
            return 0
        if not line:  # EOF, Ctrl-D
            if tty:
                print(file=err)
            return 0
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if text.startswith("/"):
            command, *rest = text.split(maxsplit=1)
            if command == "/bye":
                return 0
            if command == "/clear":
                messages, pending = list(start), []
                print("(conversation cleared)", file=err)
            elif command in ("/image", "/audio"):
                attach(llm, command[1:], rest[0] if rest else "", pending, err)
            elif command == "/help":
                print(CHAT_HELP, file=err)
            else:
                print(f"unknown command {command}; /help lists them", file=err)
            continue
        content = [*pending, {"type": "text", "text": text}] if pending else text
        pending = []  # they go with this message, kept or not
        messages.append({"role": "user", "content": content})
        reply = answer(llm, messages, params, verbose, out, err)
        if reply is None:
            messages.pop()
        else:
            save_annotated(llm, reply, messages, save_images, err)
            messages.append({"role": "assistant", "content": reply})


def cmd_chat(args: argparse.Namespace) -> int:
    from seekmoe.engine.engine import EngineError
    from seekmoe.text.chat import ChatError

    sampling_params(args, CHAT_FIELDS)  # checked before the model loads: a bad flag fails at once
    if args.system == "":
        raise CLIError("--system is empty: give the system prompt's text, or leave the flag out")
    try:
        llm = open_llm_from_args(args)
    except KeyboardInterrupt:
        return 130
    params = sampling_params(args, CHAT_FIELDS, llm.sampling_defaults)
    try:
        context = llm.engine.max_model_len  # the engine's default KV cache holds several such sequences
        if params.max_tokens >= context:
            raise CLIError(f"--max-tokens {params.max_tokens} leaves no room for the conversation in the "
                           f"{context}-token context")
        return chat(llm, params, args.system, args.verbose, sys.stdin, sys.stdout, sys.stderr, args.save_images)
    except (ChatError, EngineError) as e:
        raise CLIError(str(e)) from None
    finally:
        llm.close()
