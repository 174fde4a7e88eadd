"""Image and speech in: small encoders whose outputs are projected into the language model's embedding space.

This is how open multimodal models (LLaVA, Qwen-Audio, DeepSeek-VL) add modalities. A placeholder token stands in
the prompt for each medium, repeated once per embedding the medium's encoder gives; before the first decoder
layer those positions take the encoder's rows instead of the token table's. Everything after that is the
unchanged MoE model, so the same experts route image, speech and text tokens, and the engine's latent cache and
batching work for multimodal prompts as they are.

- image: resized and padded to a square, cut into patches (a strided convolution), a small pre-norm transformer
  over the patches with learned positions, then a two-layer projector: (size / patch)^2 rows an image. A model
  with a max_image_size has two squares: an image whose longer side fits image_size uses it (16 rows for 28 and
  patch 7: a single digit), a larger one is drawn onto the max_image_size square (256 rows for 112: a canvas of
  several digits, a schematic), with positions of its own;
- audio: a log-mel spectrogram (80 bins, 100 frames a second, as Whisper computes it), two strided convolutions
  and a small transformer with sinusoidal positions, average-pooled by 2, then a projector: 12.5 rows a second.

The placeholders are DeepSeek's reserved special tokens <｜place▁holder▁no▁0｜> (image) and ...no▁1｜> (audio):
every DeepSeek tokenizer has them, none of its text uses them, so a text-only checkpoint's vocabulary is unchanged.
The encoders live in multimodal.safetensors beside the language model, configured by config.json's "multimodal"
section; a folder without them loads as a text model everywhere, and Hugging Face loaders ignore both.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from seekmoe.files import write_folder
from seekmoe.model.checkpoint import CheckpointError, load_model, save_model
from seekmoe.model.model import CausalLM
from seekmoe.model.weights import save_tensors

IMAGE_TOKEN = "<｜place▁holder▁no▁0｜>"
AUDIO_TOKEN = "<｜place▁holder▁no▁1｜>"
WEIGHTS_FILE = "multimodal.safetensors"


@dataclass
class MultimodalConfig:
    """config.json's "multimodal" section."""

    image_token_id: int
    audio_token_id: int
    image_size: int = 28  # images are resized and padded to this square
    patch_size: int = 7  # (28 / 7)^2 = 16 rows an image
    n_mels: int = 80
    width: int = 128  # encoder width
    layers: int = 2  # transformer layers of each encoder
    heads: int = 4
    max_image_size: int | None = None  # larger images are drawn onto this square; None: every image is image_size

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "max_image_size":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if "token" in f.name else 1):
                raise ValueError(f"multimodal.{f.name} must be a positive int, got {value!r}")
        for name in ("image_size", "max_image_size"):
            if (getattr(self, name) or 0) % self.patch_size:
                raise ValueError(f"multimodal.{name} ({getattr(self, name)}) must be a multiple of patch_size "
                                 f"({self.patch_size})")
        if self.max_image_size is not None and self.max_image_size <= self.image_size:
            raise ValueError(f"multimodal.max_image_size ({self.max_image_size}) must be larger than image_size "
                             f"({self.image_size})")
        if self.width % self.heads:
            raise ValueError(f"multimodal.width ({self.width}) must be divisible by heads ({self.heads})")

    @property
    def image_rows(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def image_side(self, width: int, height: int) -> int:
        """The square an image of this size is drawn onto."""
        small = max(width, height) <= self.image_size or self.max_image_size is None
        return self.image_size if small else self.max_image_size

    def to_dict(self) -> dict:
        """config.json's section; max_image_size only when set, so older sections read back unchanged."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: object) -> MultimodalConfig:
        if not isinstance(d, dict):
            raise ValueError(f"config.json's multimodal section must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown multimodal setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"multimodal section: {e}") from None


def audio_rows(frames: int) -> int:
    """Rows the audio encoder gives for a spectrogram of `frames` frames (two stride-2 convolutions, pool by 2)."""
    for _ in range(2):
        frames = (frames - 1) // 2 + 1  # kernel 3, stride 2, padding 1
    return frames // 2


def _transformer(cfg: MultimodalConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)


def _projector(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def sincos_2d(side: int, width: int) -> torch.Tensor:
    """(side * side, width) fixed 2-D sine-cosine positions (MAE's): half the channels say the column, half the
    row, so each patch of a large square starts with a position of its own."""
    quarter = width // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / quarter)
    angle = torch.arange(side, dtype=torch.float32)[:, None] * freq[None]  # (side, W/4)
    axis = torch.cat([angle.sin(), angle.cos()], dim=-1)  # (side, W/2)
    pos = torch.cat([axis[None].expand(side, -1, -1), axis[:, None].expand(-1, side, -1)], dim=-1)  # (row, col, W)
    return torch.nn.functional.pad(pos.reshape(side * side, -1), (0, width - 4 * quarter))


class ImageEncoder(nn.Module):
    def __init__(self, cfg: MultimodalConfig, hidden: int):
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.zeros(cfg.image_rows, cfg.width))
        self.image_size = cfg.image_size
        if cfg.max_image_size is not None:
            self.pos_large = nn.Parameter(torch.zeros((cfg.max_image_size // cfg.patch_size) ** 2, cfg.width))
        self.blocks = _transformer(cfg)
        self.proj = _projector(cfg.width, hidden)

    @torch.no_grad()
    def init_large_positions(self) -> None:
        """pos_large from the small square's learned positions, stretched bilinearly, plus 2-D sine-cosine ones:
        an encoder trained on small images only starts with positions of the same scale on the large square."""
        small, large = (round(math.sqrt(p.shape[0])) for p in (self.pos, self.pos_large))
        grid = self.pos.T.reshape(1, -1, small, small)  # (1, W, s, s)
        stretched = F.interpolate(grid, size=(large, large), mode="bilinear", align_corners=True)
        scale = self.pos.std().clamp(min=0.02)
        self.pos_large.copy_(stretched.reshape(-1, large * large).T + scale * sincos_2d(large, self.pos.shape[1]))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1], S image_size or max_image_size -> (B, P, D) rows for the language model."""
        x = self.patch(pixels * 2 - 1).flatten(2).transpose(1, 2)  # (B, P, W): patches in reading order
        pos = self.pos if pixels.shape[-1] == self.image_size else self.pos_large
        return self.proj(self.blocks(x + pos))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: MultimodalConfig, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(cfg.width, cfg.width, 3, stride=2, padding=1)
        self.blocks = _transformer(cfg)
        self.proj = _projector(cfg.width, hidden)
        self.width = cfg.width

    def positions(self, n: int) -> torch.Tensor:
        """Sinusoidal positions (n, W): a clip may be longer than any seen in training."""
        half = self.width // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angle = torch.arange(n, dtype=torch.float32)[:, None] * freq[None]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (T, n_mels), one clip -> (audio_rows(T), D)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel.T[None]))))  # (1, W, T/4)
        x = x.transpose(1, 2)  # (1, T/4, W)
        x = self.blocks(x + self.positions(x.shape[1]).to(x))  # on x's device and in its dtype
        x = F.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2)  # (1, T/8, W)
        return self.proj(x)[0]


class MediaEncoders(nn.Module):
    """Both encoders of a model; `config` says which token ids they replace."""

    def __init__(self, cfg: MultimodalConfig, hidden: int):
        super().__init__()
        self.config = cfg
        self.image = ImageEncoder(cfg, hidden)
        self.audio = AudioEncoder(cfg, hidden)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        for name, p in self.named_parameters():
            if name == "image.pos_large":
                continue  # from image.pos, below
            if p.dim() >= 2:
                nn.init.xavier_uniform_(p, generator=generator) if name != "image.pos" else p.normal_(
                    0, 0.02, generator=generator)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        if hasattr(self.image, "pos_large"):
            self.image.init_large_positions()


@dataclass
class Media:
    """One decoded medium of a prompt, ready for its encoder."""

    kind: str  # "image" | "audio"
    data: torch.Tensor  # image: (3, S, S) in [0, 1]; audio: (frames, n_mels) log-mel
    digest: str  # of the source bytes: equal media give equal cache keys
    source: object = field(default=None, repr=False, compare=False)  # an image's decoded PIL.Image, to draw on

    @property
    def token(self) -> str:
        return IMAGE_TOKEN if self.kind == "image" else AUDIO_TOKEN


def encode(encoders: MediaEncoders, media: list[Media]) -> list[torch.Tensor]:
    """Each medium's rows (n_i, D), in order; the images of a prompt of one size run as one batch."""
    rows: list[torch.Tensor | None] = [None] * len(media)
    for side in {m.data.shape[-1] for m in media if m.kind == "image"}:
        which = [i for i, m in enumerate(media) if m.kind == "image" and m.data.shape[-1] == side]
        for i, r in zip(which, encoders.image(torch.stack([media[i].data for i in which])), strict=True):
            rows[i] = r
    return [r if m.kind == "image" else encoders.audio(m.data) for r, m in zip(rows, media, strict=True)]


def splice(embeds: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, cfg: MultimodalConfig) -> torch.Tensor:
    """embeds (B, T, D) with the placeholder positions of ids (B, T) replaced, in reading order, by rows (P, D)."""
    mask = (ids == cfg.image_token_id) | (ids == cfg.audio_token_id)
    if int(mask.sum()) != rows.shape[0]:
        raise ValueError(f"the prompt has {int(mask.sum())} media placeholder tokens but the media give "
                         f"{rows.shape[0]} rows")
    return embeds.masked_scatter(mask[..., None], rows.to(embeds.dtype))


def rows_of(m: Media, cfg: MultimodalConfig) -> int:
    """How many rows the encoder gives for a medium."""
    return (m.data.shape[-1] // cfg.patch_size) ** 2 if m.kind == "image" else audio_rows(m.data.shape[0])


def repeats(ids: list[int], media: list[Media], cfg: MultimodalConfig) -> list[int]:
    """How often each id is written once media are expanded: a medium's placeholder once a row of its encoding,
    every other id once. ValueError when the placeholders and the media do not pair up."""
    wanted = {cfg.image_token_id: "image", cfg.audio_token_id: "audio"}
    found = [wanted[t] for t in ids if t in wanted]
    if found != [m.kind for m in media]:
        raise ValueError(f"the prompt's media placeholders ({', '.join(found) or 'none'}) do not match the media "
                         f"given ({', '.join(m.kind for m in media) or 'none'})")
    n = iter(rows_of(m, cfg) for m in media)
    return [next(n) if t in wanted else 1 for t in ids]


def expand(ids: list[int], media: list[Media], cfg: MultimodalConfig) -> list[int]:
    """The prompt with each medium's placeholder repeated once a row of its encoding."""
    return [t for t, r in zip(ids, repeats(ids, media, cfg), strict=True) for _ in range(r)]


def media_key(media: list[Media]) -> str:
    """What the prefix cache hashes for a prompt's placeholders: two prompts share cached blocks only when their
    media are the same bytes."""
    return hashlib.blake2b("|".join(m.kind + m.digest for m in media).encode(), digest_size=16).hexdigest()


# ---- the model: language model + encoders, trained and saved together -------------------------------------

class MultimodalLM(nn.Module):
    """A CausalLM with media encoders. forward takes a MultimodalBatch; `config` is the LM's, so the training loop,
    balancing and statistics see the same MoE model as for text."""

    def __init__(self, lm: CausalLM, encoders: MediaEncoders):
        super().__init__()
        self.lm, self.encoders = lm, encoders

    @property
    def config(self):
        return self.lm.config

    def forward(self, batch: MultimodalBatch, return_routing: bool = False, capacity_factor: float | None = None):
        embeds = self.lm.model.embed_tokens(batch.ids)
        if batch.media:
            rows = torch.cat(encode(self.encoders, batch.media))
            embeds = splice(embeds, batch.ids, rows, self.encoders.config)
        return self.lm(batch.ids, return_routing=return_routing, capacity_factor=capacity_factor,
                       inputs_embeds=embeds)


@dataclass
class MultimodalBatch:
    ids: torch.Tensor  # (B, T) with expanded placeholders
    media: list[Media]  # in reading order over the rows

    def to(self, device: torch.device, non_blocking: bool = False) -> MultimodalBatch:
        """The batch on `device` (where the model trains): its ids and every medium's data."""
        return MultimodalBatch(self.ids.to(device, non_blocking=non_blocking),
                               [replace(m, data=m.data.to(device, non_blocking=non_blocking)) for m in self.media])


def config_of(lm: CausalLM) -> MultimodalConfig | None:
    section = lm.config.extra.get("multimodal")
    return None if section is None else MultimodalConfig.from_dict(section)


def attach(lm: CausalLM, cfg: MultimodalConfig, seed: int = 0) -> MultimodalLM:
    """New, randomly initialised encoders for a language model."""
    lm.config.extra["multimodal"] = cfg.to_dict()
    encoders = MediaEncoders(cfg, lm.config.hidden_size)
    encoders.init_weights(torch.Generator().manual_seed(seed))
    return MultimodalLM(lm, encoders)


def with_large_images(encoders: MediaEncoders, max_image_size: int) -> MediaEncoders:
    """The same encoders with a max_image_size square added (its positions from init_large_positions), for a model
    trained on small images only; encoders that have one already come back as they are when it is the same size."""
    cfg = encoders.config
    if cfg.max_image_size == max_image_size:
        return encoders
    if cfg.max_image_size is not None:
        raise ValueError(f"the encoders' max_image_size is {cfg.max_image_size}; it cannot change to {max_image_size}")
    grown = MediaEncoders(MultimodalConfig(**{**asdict(cfg), "max_image_size": max_image_size}),
                          encoders.image.proj[-1].out_features)
    missing, unexpected = grown.load_state_dict(encoders.state_dict(), strict=False)
    assert missing == ["image.pos_large"] and not unexpected, (missing, unexpected)
    grown.image.init_large_positions()
    return grown


def load_encoders(path: str | Path, lm: CausalLM) -> MediaEncoders | None:
    """The encoders of a model folder, None for a text-only one. CheckpointError when they are damaged."""
    path = Path(path)
    try:
        cfg = config_of(lm)
    except ValueError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    if cfg is None:
        return None
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: config.json has a multimodal section but {WEIGHTS_FILE} is missing")
    encoders = MediaEncoders(cfg, lm.config.hidden_size)
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    want = encoders.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{file}: " + (f"missing tensor {missing[0]}" if missing else
                                             f"unexpected tensor {unexpected[0]}") + ": it does not match config.json")
    for name, t in state.items():
        if t.shape != want[name].shape:
            raise CheckpointError(f"{file}: tensor {name} has shape {tuple(t.shape)}, config.json asks for "
                                  f"{tuple(want[name].shape)}")
    encoders.load_state_dict({k: v.float() for k, v in state.items()})
    return encoders.eval()


def load_multimodal(path: str | Path) -> MultimodalLM:
    lm = load_model(path)
    encoders = load_encoders(path, lm)
    if encoders is None:
        raise CheckpointError(f"{path}: a text-only model (config.json has no multimodal section)")
    return MultimodalLM(lm, encoders)


def save_into(model: MultimodalLM, folder: Path) -> None:
    """The language model as save_model writes it, and multimodal.safetensors beside it."""
    save_model(model.lm, folder)
    save_tensors({k: v.detach().contiguous() for k, v in model.encoders.state_dict().items()}, folder / WEIGHTS_FILE)


def save_multimodal(model: MultimodalLM, path: str | Path, extra_files: dict[str, bytes] | None = None) -> Path:
    """A model folder (extra_files: the tokenizer's, say), all renamed into place at once."""

    def write(tmp: Path) -> None:
        save_into(model, tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

    return write_folder(Path(path), write)


def load_encoder_weights(model: MultimodalLM, path: Path) -> None:
    """Training checkpoints: the LM's weights and the encoders', back into an existing model."""
    model.load_state_dict(load_multimodal(path).state_dict())
