"""`seekmoe train-multimodal`: teach a chat model to see and hear, in two stages.

Stage 1 trains the new encoders and projectors with the language model frozen (its routing bias too), so the
encoders learn to speak the embedding language the model already reads. Stage 2 fine-tunes everything together
at a lower rate, the loss-free routing bias moving again. Both run train.run, the pretraining loop: the same
progress bar, metrics.jsonl, plots, atomic checkpoints and exact resume, in OUT/stage1 and OUT/stage2; the result
is OUT/model, a model folder (language model, multimodal.safetensors, tokenizer) that `seekmoe serve` serves.

Examples are the chat records `seekmoe data multimodal` writes: the loss is on the assistant's answer only. With
`--text FOLDER` (fine-tuning chats, `seekmoe finetune`'s format) every `--text-every`-th stage 2 step is a packed
batch of those instead, so the language model keeps the chat skills it had while it learns to see and hear. With
`--repeat-every N` every N-th stage 2 step is a repeat drill (seekmoe/train/repeat_drill.py); with N = 1 stage 2 is
the drill alone (the media sets still give the evaluation). A model that has encoders already goes on from them:
stage 2 only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from seekmoe.files import atomic_write
from seekmoe.model.checkpoint import load_model
from seekmoe.multimodal.data import GROUND_SETS
from seekmoe.multimodal.media import MediaError, MediaLimits
from seekmoe.multimodal.model import (
    AUDIO_TOKEN,
    IMAGE_TOKEN,
    Media,
    MultimodalBatch,
    MultimodalConfig,
    MultimodalLM,
    attach,
    load_encoder_weights,
    load_encoders,
    repeats,
    save_into,
    save_multimodal,
    with_large_images,
)
from seekmoe.multimodal.parts import split_media
from seekmoe.multimodal.scenes import SIDE
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train.checkpoints import RUN_IDENTITY, latest_checkpoint, refuse_another_run
from seekmoe.train.config import BalanceConfig, TrainConfig, TrainError, lookup_weight_error
from seekmoe.train.config import MultimodalSettings as Settings
from seekmoe.train.loop import resolve_device, run
from seekmoe.train.repeat_drill import RepeatDrill
from seekmoe.train.sft import IGNORE, EpochOrder, SFTData, data_files, tokenize_conversation
from seekmoe.train.trainee import Trainee

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


@dataclass
class Example:
    ids: np.ndarray  # (T,) int64, placeholders expanded
    mask: np.ndarray  # (T,) bool: carries loss
    media: list[Media]


def load_examples(folder: Path, split: str, tok: Tokenizer, cfg: MultimodalConfig, sets: tuple[str, ...],
                  max_tokens: int, progress: bool = True, log=print) -> list[Example]:
    """Every record of the sets' split, tokenised and its media decoded; longer than max_tokens ones are dropped."""
    records = []
    for name in sets:
        file = folder / f"{name}.{split}.jsonl"
        if not file.is_file():
            raise TrainError(f"{file}: missing: write the data with `seekmoe data multimodal --out {folder}` "
                             "(--overwrite rebuilds a folder made before the set existed), or leave the set out "
                             "with --sets")
        with open(file, encoding="utf-8") as f:
            records += [(name, json.loads(line)) for line in f if line.strip()]
    out, limits, dropped = [], MediaLimits(), {}
    for name, rec in tqdm(records, desc=f"reading {split}", disable=not progress, unit="ex"):
        try:
            messages, media = split_media(rec["messages"], cfg, limits, base=folder)
        except MediaError as e:
            raise TrainError(f"{folder}: {e}") from None
        ids, mask = tokenize_conversation(tok, messages)
        reps = repeats(ids, media, cfg)
        if sum(reps) <= max_tokens:
            out.append(Example(np.repeat(np.array(ids, np.int64), reps), np.repeat(np.array(mask), reps), media))
        else:
            dropped[name] = dropped.get(name, 0) + 1
    if dropped:
        log(f"seekmoe: {split}: left out {', '.join(f'{n:,} of {k}' for k, n in dropped.items())}: longer than "
            f"max_tokens ({max_tokens})")
    return out


class MultimodalData:
    """batch(i) is a pure function of i (exact resume): rows reshuffled each epoch, padded to the batch's longest."""

    def __init__(self, examples: list[Example], vocab_size: int, pad_id: int, shuffle: bool = True, seed: int = 0):
        if not examples:
            raise TrainError("no multimodal example to train on")
        self.examples, self.vocab_size, self.pad_id = examples, vocab_size, pad_id
        self.shuffle = shuffle
        self._row = EpochOrder(len(examples), shuffle, seed)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, step: int, batch_size: int, seq_len: int):
        first = step * batch_size
        if not self.shuffle and first < len(self) < first + batch_size:
            batch_size = len(self) - first  # the last evaluation batch: every example once
        rows = [self.examples[self._row(first + j)] for j in range(batch_size)]
        t = max(len(r.ids) for r in rows)
        tokens = np.full((len(rows), t), self.pad_id, np.int64)
        mask = np.zeros((len(rows), t), bool)
        for j, r in enumerate(rows):
            tokens[j, :len(r.ids)], mask[j, :len(r.ids)] = r.ids, r.mask
        target = np.where(mask[:, 1:], tokens[:, 1:], IGNORE)
        # a placeholder is never the last token of an example, so dropping the last column keeps every medium
        batch = MultimodalBatch(torch.from_numpy(tokens[:, :-1].copy()), [m for r in rows for m in r.media])
        return batch, torch.from_numpy(target)

    def eval_steps(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def every_nth(step: int, every: int) -> tuple[bool, int]:
    """Whether step is an every-th one (steps every-1, 2*every-1, ...), and its index among those or among the rest."""
    k, r = divmod(step, every)
    return (True, k) if r == every - 1 else (False, step - (step + 1) // every)


class MixedData:
    """Stage 2 with text chats, the repeat drill or both mixed in, each batch a pure function of the step (exact
    resume). With the drill, every drill_every-th step is a drill batch; of the other steps, every every-th is a text
    batch and the rest are media batches, in order, none skipped. Text and drill batches have their own shapes."""

    def __init__(self, media: MultimodalData, text: SFTData | None, every: int, batch_size: int,
                 drill: RepeatDrill | None = None, drill_every: int = 0):
        self.media, self.text, self.every, self.text_batch_size = media, text, every, batch_size
        self.drill, self.drill_every = drill, drill_every
        self.vocab_size = max(x.vocab_size for x in (media, text, drill) if x is not None)

    def batch(self, step: int, batch_size: int, seq_len: int):
        if self.drill is not None:
            drill, step = every_nth(step, self.drill_every)
            if drill:
                ids, target = self.drill.batch(step)
                return MultimodalBatch(ids, []), target
        if self.text is not None:
            text, step = every_nth(step, self.every)
            if text:
                ids, target = self.text.batch(step, self.text_batch_size, self.text.seq_len)
                return MultimodalBatch(ids, []), target
        return self.media.batch(step, batch_size, seq_len)


def trainee(model: MultimodalLM, stage: int) -> Trainee:
    """Stage 1: the encoders only; stage 2: everything. Checkpoints are whole model folders either way."""
    model.lm.requires_grad_(stage == 2)
    params = [p for p in model.parameters() if p.requires_grad]
    return Trainee(model, params, lambda path: save_into(model, path), lambda path: load_encoder_weights(model, path))


def stage_config(s: Settings, stage: int) -> TrainConfig:
    steps = s.stage1_steps if stage == 1 else s.stage2_steps
    return TrainConfig(
        model=s.model or "", data=s.data, out=str(Path(s.out) / f"stage{stage}"), steps=steps,
        batch_size=s.batch_size, seq_len=s.max_tokens, lr=s.lr1 if stage == 1 else s.lr2,
        min_lr=(s.lr1 if stage == 1 else s.lr2) / 10, warmup_steps=min(20, steps // 10), weight_decay=0.0,
        log_every=10, eval_every=s.eval_every, eval_batches=s.eval_batches, save_every=s.save_every,
        keep_checkpoints=2, seed=s.seed,
        device=s.device, bf16=s.bf16,
        # stage 1 leaves the language model exactly as it was, routing bias included
        balance=BalanceConfig(mode="none" if stage == 1 else "auto"))


def train(s: Settings, progress: bool = True, log=print) -> Path:
    from seekmoe.model.checkpoint import DEFAULT_MODEL

    # a GPU asked for where there is none fails now, not after minutes of reading the sets
    resolve_device(stage_config(s, 2))
    if s.text and s.text_every < 2:
        raise TrainError("text_every must be >= 2: every text_every-th stage 2 step is a text batch")
    if (bad := lookup_weight_error(s.lookup_weight)) is not None:
        raise TrainError(bad)
    if s.repeat_every < 0:
        raise TrainError(f"repeat_every must be 0 (no drill), 1 (the drill alone) or more: every repeat_every-th "
                         f"stage 2 step is a drill, got {s.repeat_every}")
    if s.text and s.repeat_every == 1:
        raise TrainError("with repeat_every 1 every stage 2 step is a drill and the text chats would never be read: "
                         "leave out text, or drill every second step or less often")
    out = Path(s.out)
    # what the batch of a step is depends on all of these: resuming under others would change the data mid-run (the
    # text batches' shape and spacing only where there is text to read)
    text_keys = ("text_every", "text_batch_size", "text_seq_len") if s.text else ()
    refuse_another_run(out / "settings.json", s.to_dict(), [out / f"stage{k}" / "checkpoints" for k in (1, 2)],
                       (*RUN_IDENTITY, "sets", "text", *text_keys, "repeat_every"))
    base = Path(s.model) if s.model else DEFAULT_MODEL
    tok = Tokenizer.from_pretrained(base)
    lm = load_model(base)
    ids = {name: tok.encode(token) for name, token in (("image", IMAGE_TOKEN), ("audio", AUDIO_TOKEN))}
    if any(len(v) != 1 for v in ids.values()):
        raise TrainError(f"{base}: the tokenizer has no single-token {IMAGE_TOKEN} / {AUDIO_TOKEN}")
    encoders = load_encoders(base, lm)
    if encoders is not None:  # it sees and hears already: its own encoders go on learning, in stage 2 only
        if s.encoder.get("max_image_size") is not None:  # and learns larger images
            try:
                encoders = with_large_images(encoders, s.encoder["max_image_size"])
            except ValueError as e:
                raise TrainError(f"{base}: {e}") from None
            lm.config.extra["multimodal"] = encoders.config.to_dict()
        model, stages, cfg = MultimodalLM(lm, encoders), (2,), encoders.config
    else:
        cfg = MultimodalConfig(image_token_id=ids["image"][0], audio_token_id=ids["audio"][0], **s.encoder)
        torch.manual_seed(s.seed)
        model, stages = attach(lm, cfg, s.seed), (1, 2)
    folder = Path(s.data)
    ground = [name for name in s.sets if name in GROUND_SETS]
    if ground and cfg.max_image_size is None:
        raise TrainError(f"the grounding sets ({', '.join(ground)}) are {SIDE}x{SIDE} pictures, which this model's "
                         f"encoder would squeeze onto its {cfg.image_size}x{cfg.image_size} square: train with "
                         f"--max-image-size {SIDE}, or leave them out with --sets")
    train_data = MultimodalData(load_examples(folder, "train", tok, cfg, s.sets, s.max_tokens, progress, log),
                                tok.vocab_size, tok.pad_id, seed=s.seed)
    # shuffled once, with its own seed: eval_batches batches then sample every set, not the first file's head
    val_data = MultimodalData(load_examples(folder, "test", tok, cfg, s.sets, s.max_tokens, progress, log),
                              tok.vocab_size, tok.pad_id, seed=s.seed + 1)
    log(f"seekmoe: {len(train_data)} training and {len(val_data)} test examples from {folder}")
    text = drill = None
    if s.text:
        text = SFTData.from_files(data_files(s.text), tok, s.text_seq_len, seed=s.seed, lookup_weight=s.lookup_weight,
                                  log=log)
        r = text.report
        log(f"seekmoe: {r.conversations} text chats in {len(text)} rows of {s.text_seq_len} tokens from {s.text}, "
            f"one stage 2 step in {s.text_every}" + (" of the others" if s.repeat_every else ""))
        if s.lookup_weight != 1:
            log(f"seekmoe: text chats: {r.lookups(s.lookup_weight)}")
    if s.repeat_every:
        drill = RepeatDrill(tok.vocab_size, tok.special_ids | tok.added_ids, seed=s.seed)
        log("seekmoe: every stage 2 step a repeat drill" if s.repeat_every == 1 else
            f"seekmoe: one stage 2 step in {s.repeat_every} a repeat drill")
    stage2_data = MixedData(train_data, text, s.text_every, s.text_batch_size, drill, s.repeat_every)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "settings.json", json.dumps(s.to_dict(), indent=2).encode())
    for stage in stages:
        cfg_s = stage_config(s, stage)
        t = trainee(model, stage)
        if stage == 2 and latest_checkpoint(Path(cfg_s.out) / "checkpoints", log) is None:
            last = latest_checkpoint(out / "stage1" / "checkpoints", log)
            if last is not None:
                t.load(last)  # stage 2 starts where stage 1 ended
        log(f"seekmoe: stage {stage} ({'encoders, language model frozen' if stage == 1 else 'everything'}), "
            f"{cfg_s.steps} steps")
        run(cfg_s, t, train_data if stage == 1 else stage2_data, val_data, progress, log)
    files = {name: (base / name).read_bytes() for name in TOKENIZER_FILES if (base / name).is_file()}
    final = save_multimodal(model, out / "model", files)
    log(f"seekmoe: wrote {final}")
    return final
