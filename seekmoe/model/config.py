"""ModelConfig: every architecture field of DeepSeek-V2/V3, spelled as Hugging Face's config.json spells it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekmoe.errors import SeekmoeError

TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
ARCHITECTURES = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}
DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto", *DTYPES, "int8")  # what the latent cache may hold: "auto" is the model's dtype
# the parts of the model a LoRA adapter can adapt (model/lora.py; --lora-targets)
LORA_TARGETS = ("attention", "shared_experts", "dense_mlp", "routed_experts")

# Written by us from derived state, never read back as a field.
_DERIVED_KEYS = {"rope_parameters", "architectures", "dtype", "num_key_value_heads", "head_dim", "qk_head_dim"}

# Defaults that differ by model type (the dataclass defaults are DeepSeek-V2's), for a config.json that leaves the
# field out or writes null. transformers' DeepseekV3 always routes sigmoid + noaux_tc with e_score_correction_bias
# and has no such fields, so the configs it saves lack them (transformers 5.24) or carry null (earlier 5.x).
MODEL_TYPE_DEFAULTS = {"deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid"}}


class ConfigError(SeekmoeError, ValueError):
    """A config.json value is missing, has the wrong type, or contradicts another."""


@dataclass
class ModelConfig:
    # size
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    # mla
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None  # None: full-rank queries (V2-Lite)
    # moe
    moe_intermediate_size: int | None = None
    n_routed_experts: int | None = None  # None: every layer is a dense MLP
    n_shared_experts: int | None = None
    num_experts_per_tok: int | None = None
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    n_group: int | None = None
    topk_group: int | None = None
    # rope / yarn
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # YaRN, as the published checkpoints write it
    rope_interleave: bool = True  # DeepSeek's rope dims come in (x0, x1) pairs
    max_position_embeddings: int = 4096
    # misc
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    initializer_range: float = 0.02
    model_type: str = "deepseek_v2"
    # keys we do not model (auto_map, aux_loss_alpha, quantization_config, ...): kept and written back
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived -----------------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts is not None and self.n_routed_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """DeepSeek's rule: the first k layers are dense, then every moe_layer_freq-th layer is MoE."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace and layer_idx % self.moe_layer_freq == 0

    @property
    def yarn(self) -> dict[str, Any] | None:
        return self.rope_scaling

    # ---- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "kv_lora_rank", "qk_nope_head_dim", "v_head_dim", "max_position_embeddings", "moe_layer_freq"):
            _require(getattr(self, name) > 0, name, "> 0", getattr(self, name))
        _require(self.qk_rope_head_dim > 0 and self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
                 "an even number > 0", self.qk_rope_head_dim)
        if self.q_lora_rank is not None:
            _require(self.q_lora_rank > 0, "q_lora_rank", "> 0 or null (full-rank queries)", self.q_lora_rank)
        _require(0 <= self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
                 f"between 0 and num_hidden_layers ({self.num_hidden_layers})", self.first_k_dense_replace)
        _require(self.rms_norm_eps > 0, "rms_norm_eps", "> 0", self.rms_norm_eps)
        _require(self.rope_theta > 0, "rope_theta", "> 0", self.rope_theta)
        _require(self.hidden_act == "silu", "hidden_act", "'silu' (DeepSeek's SwiGLU)", self.hidden_act)
        _require(not self.attention_bias, "attention_bias", "false (DeepSeek has no attention biases)",
                 self.attention_bias)
        _require(self.model_type in ARCHITECTURES, "model_type", f"one of {list(ARCHITECTURES)}", self.model_type)
        _require(self.torch_dtype is None or self.torch_dtype in DTYPES, "torch_dtype", f"one of {list(DTYPES)}",
                 self.torch_dtype)
        _require(self.topk_method in TOPK_METHODS, "topk_method", f"one of {list(TOPK_METHODS)}", self.topk_method)
        _require(self.scoring_func in SCORING_FUNCS, "scoring_func", f"one of {list(SCORING_FUNCS)}",
                 self.scoring_func)
        _require(math.isfinite(self.routed_scaling_factor) and self.routed_scaling_factor > 0,
                 "routed_scaling_factor", "a finite number > 0", self.routed_scaling_factor)
        if self.is_moe:
            self._validate_moe()
        if self.rope_scaling is not None:
            self._validate_yarn()
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            ids = getattr(self, name)
            for i in ids if isinstance(ids, list) else [ids]:
                _require(i is None or 0 <= i < self.vocab_size, name, f"in [0, vocab_size={self.vocab_size})", i)

    def _validate_moe(self) -> None:
        e = self.n_routed_experts
        for name in ("moe_intermediate_size", "num_experts_per_tok"):
            _require(getattr(self, name) is not None, name, "a positive int in an MoE model (n_routed_experts set)",
                     None)
            _require(getattr(self, name) > 0, name, "> 0", getattr(self, name))
        _require(self.n_shared_experts is None or self.n_shared_experts >= 0, "n_shared_experts", ">= 0",
                 self.n_shared_experts)
        _require(self.num_experts_per_tok <= e, "num_experts_per_tok", f"<= n_routed_experts ({e})",
                 self.num_experts_per_tok)
        if self.n_group is not None:
            _require(self.n_group > 0, "n_group", "> 0", self.n_group)
            _require(e % self.n_group == 0, "n_routed_experts",
                     f"divisible by n_group ({self.n_group})", e)
        if self.topk_group is not None:
            _require(self.topk_group > 0, "topk_group", "> 0", self.topk_group)
            _require(self.topk_group <= (self.n_group or 1), "topk_group", f"<= n_group ({self.n_group})",
                     self.topk_group)
        if self.topk_method != "greedy":
            groups, kept = self.n_group or 1, self.topk_group or 1
            _require(kept * (e // groups) >= self.num_experts_per_tok, "topk_group",
                     f"large enough that topk_group * n_routed_experts / n_group >= num_experts_per_tok "
                     f"({self.num_experts_per_tok})", self.topk_group)

    def _validate_yarn(self) -> None:
        rs = self.rope_scaling
        _require(isinstance(rs, dict), "rope_scaling", "an object or null", rs)
        kind = rs.get("type", rs.get("rope_type"))
        _require(kind == "yarn", "rope_scaling.type", "'yarn' (the only scaling DeepSeek uses)", kind)
        factor = rs.get("factor")
        _require(isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor >= 1,
                 "rope_scaling.factor", "a number >= 1", factor)
        for key in YARN_KEYS[1:]:
            value = rs.get(key)
            _require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
                     f"rope_scaling.{key}", "a number", value)
        omp = rs.get("original_max_position_embeddings")
        _require(omp is None or omp > 0, "rope_scaling.original_max_position_embeddings", "> 0", omp)

    # ---- config.json ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        # null for a field that has a default and cannot be null means "not set": the default of the model type,
        # as if left out. Where null is a value (q_lora_rank, n_routed_experts, n_group, ...) it keeps its meaning.
        unset = {f.name for f in dataclasses.fields(cls)
                 if f.default not in (dataclasses.MISSING, None) and "None" not in f.type.split(" | ")}
        d = {k: v for k, v in d.items() if v is not None or k not in unset}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in d]
        if missing:
            raise ConfigError(f"missing required field {missing[0]!r}"
                              + (f" (and {', '.join(missing[1:])})" if missing[1:] else ""))
        _read_rope(d)
        if d.get("torch_dtype") is None and isinstance(d.get("dtype"), str):
            d["torch_dtype"] = d["dtype"]
        if "model_type" not in d:  # transformers runs noaux_tc routing only in its deepseek_v3 class
            d["model_type"] = "deepseek_v3" if d.get("topk_method") == "noaux_tc" else "deepseek_v2"
        for key, value in MODEL_TYPE_DEFAULTS.get(d["model_type"] if isinstance(d["model_type"], str) else "",
                                                  {}).items():
            d.setdefault(key, value)
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _DERIVED_KEYS}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The config.json that loads in transformers 4 (rope_scaling) and 5 (rope_parameters) alike."""
        d: dict[str, Any] = {"architectures": [ARCHITECTURES[self.model_type]]}
        d.update(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            d["rope_scaling"] = {**self.rope_scaling, "type": "yarn"}
            rope = {**self.rope_scaling, "rope_type": "yarn", "type": "yarn", "rope_theta": self.rope_theta}
        d["rope_parameters"] = rope
        # transformers sizes its attention from these; without them DeepseekV3Config defaults to 128 kv heads
        d["num_key_value_heads"] = self.num_attention_heads
        d["head_dim"] = self.qk_rope_head_dim
        if self.torch_dtype is not None:
            d["dtype"] = self.torch_dtype
        return dict(sorted(d.items()))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ModelConfig:
        """Read `path/config.json`, or `path` itself when it is a JSON file."""
        path = Path(path)
        return cls.from_json(path / "config.json" if path.is_dir() else path)

    def save_json(self, path: str | os.PathLike) -> None:
        from seekmoe.files import atomic_write

        atomic_write(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())


def bundled_configs() -> list[str]:
    """Names of the published configs shipped in seekmoe/configs/."""
    from importlib import resources

    folder = resources.files("seekmoe").joinpath("configs")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def resolve_config(source: str | os.PathLike) -> ModelConfig:
    """A folder holding config.json, a .json file, or the name of a bundled config."""
    from importlib import resources

    path = Path(source)
    if path.exists():
        return ModelConfig.from_pretrained(path)
    names = bundled_configs()
    if str(source) in names:
        with resources.as_file(resources.files("seekmoe").joinpath("configs", f"{source}.json")) as p:
            return ModelConfig.from_json(p)
    if str(source).endswith(".json") or path.parent != Path("."):
        raise ConfigError(f"{source}: no such file or directory")
    raise ConfigError(f"{str(source)!r} is neither a path nor a bundled config (one of {', '.join(names)})")


def _read_rope(d: dict[str, Any]) -> None:
    """Fold rope_parameters (transformers >= 5) and rope_scaling (published) into rope_theta + rope_scaling."""
    params = d.get("rope_parameters")
    legacy = d.get("rope_scaling")
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(f"rope_parameters must be an object, got {type(params).__name__}")
        params = dict(params)
        if "rope_theta" in params:
            d.setdefault("rope_theta", params["rope_theta"])
        kind = params.get("rope_type", params.get("type", "default"))
        if kind == "default":
            params = None
        else:
            params = {k: v for k, v in params.items() if k not in ("rope_theta", "rope_type")}
            params["type"] = kind
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise ConfigError(f"rope_scaling must be an object or null, got {type(legacy).__name__}")
        legacy = {k: v for k, v in legacy.items() if k != "rope_type"} | {"type": legacy.get("type",
                                                                                            legacy.get("rope_type"))}
        if params is not None and any(legacy.get(k) != params.get(k) for k in ("type", *YARN_KEYS)):
            raise ConfigError(f"rope_scaling {legacy} and rope_parameters {d['rope_parameters']} disagree")
    d["rope_scaling"] = legacy if legacy is not None else params


def _require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {got!r}")


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Check a JSON value against the field's annotation ('int | None', 'float', 'dict[str, Any] | None', ...)."""
    allowed = [a.strip() for a in annotation.split("|")]
    for a in allowed:
        if a == "None" and value is None:
            return
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if a == "bool" and isinstance(value, bool):
            return
        if a == "str" and isinstance(value, str):
            return
        if a.startswith("dict") and isinstance(value, dict):
            return
        if a == "list[int]" and isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return
    raise ConfigError(f"{name} must be {' or '.join(a.replace('None', 'null') for a in allowed)}, "
                      f"got {value!r} ({type(value).__name__})")
