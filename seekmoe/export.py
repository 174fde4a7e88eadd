"""Export a model folder for other engines: Hugging Face (transformers, vLLM, SGLang) and llama.cpp (GGUF).

`export_hf` writes the folder those engines load as DeepseekV2ForCausalLM / DeepseekV3ForCausalLM: config.json,
safetensors, tokenizer.json + tokenizer_config.json (with the chat template) and generation_config.json.

`export_gguf` writes one GGUF file of llama.cpp's `deepseek2` architecture, as llama.cpp's own converter
(convert_hf_to_gguf.py, class DeepseekV2Model, as vendored in llama-cpp-python 0.3.36 beside gguf-py 0.19.0)
writes it:
- MLA stored as MQA: head_count_kv 1, key_length = kv_lora_rank + qk_rope_head_dim, value_length = kv_lora_rank,
  and the per-head sizes in key_length_mla / value_length_mla (llama.cpp's attention scale reads them);
- kv_b_proj split per head into attn_k_b (H, L, nope), transposed for the absorbed path, and attn_v_b (H, v, L);
  no attn_kv_b: llama.cpp loads either the split pair or the legacy fused tensor, never both;
- routed experts stacked 3-D (ffn_{gate,up,down}_exps), V3's routing bias as exp_probs_b.bias;
- q_lora_rank 0 for full-rank queries: llama.cpp requires the key unless the model has 26 or 27 layers.
Shapes below are PyTorch's (rows, cols); GGUF lists them reversed (ggml's ne0 first).

Quantisation follows the converter: 1-D tensors, norms, the router (ffn_gate_inp) and the routing bias stay
float32; every other matrix becomes f16 or q8_0, and a q8_0 matrix whose rows are not a multiple of 32 falls back
to f16, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seekmoe.errors import SeekmoeError
from seekmoe.files import atomic_write
from seekmoe.model.config import ConfigError, ModelConfig

QUANTS = ("f32", "f16", "q8_0", "q4_0")
GGUF_ARCH = "deepseek2"
# llama.cpp's pre-tokenizer for our regex: the same three stages as DeepSeek-V3's (digits, CJK runs, then GPT-4's
# word rule), in the same order. Its digit runs of 1-3 give our ids too: no merge joins two digits, since training
# saw each digit alone.
GGUF_PRE_TOKENIZER = "deepseek-v3"
# generation_config.json of a model folder without one of its own: sampling on, DeepSeek's recommended chat defaults
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}
# config.json keys that would point transformers at remote code we do not ship; it has native deepseek classes
_DROPPED_CONFIG_KEYS = ("auto_map",)


class ExportError(SeekmoeError, ValueError):
    """A model folder, output path or option that export cannot use; the message names it."""


# ---- shared: the model folder ---------------------------------------------------------------------------------

def _read_model_folder(model_dir: str | os.PathLike) -> tuple[Path, ModelConfig]:
    """The folder and its config, once it is known to hold config.json, weights and tokenizer.json."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ExportError(f"{path}: not a model folder (expected a folder holding config.json, safetensors "
                          "weights and tokenizer.json)")
    try:
        cfg = ModelConfig.from_json(path / "config.json")
    except ConfigError as e:
        raise ExportError(f"{path}: not a model folder ({e})") from None
    if "quantization_config" in cfg.extra:
        raise ExportError(f"{path / 'config.json'}: a quantized checkpoint; export needs float weights")
    if not (path / "tokenizer.json").is_file():
        raise ExportError(f"{path}: no tokenizer.json (export ships the tokenizer with the weights)")
    return path, cfg


def _tokenizer(path: Path, cfg: ModelConfig):
    from seekmoe.text.tokenizer import Tokenizer, TokenizerError

    try:
        tokenizer = Tokenizer.from_pretrained(path)
    except TokenizerError as e:
        raise ExportError(f"{path}: {e}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ExportError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but config.json vocab_size is "
                          f"{cfg.vocab_size}")
    return tokenizer


def _load(path: Path, cfg: ModelConfig):
    """The model in its checkpoint's dtype, and its tokenizer."""
    from seekmoe.model.checkpoint import CheckpointError, load_model
    from seekmoe.text.tokenizer import Tokenizer, TokenizerError

    try:
        model = load_model(path, dtype=cfg.torch_dtype or "float32")
        tokenizer = Tokenizer.from_pretrained(path)
    except (CheckpointError, TokenizerError, ConfigError) as e:
        raise ExportError(f"{path}: {e}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ExportError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but config.json vocab_size is "
                          f"{cfg.vocab_size}")
    return model, tokenizer


def _make_parent(out: Path) -> None:
    """Create the folders above out, as `mkdir -p` would: called once the export is known to be possible."""
    nearest = next(p for p in out.parents if p.exists())  # the root, at worst
    if not nearest.is_dir():
        raise ExportError(f"{nearest}: is a file, where the output needs a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise ExportError(f"{out.parent}: cannot create the output's folder ({e.strerror or e})") from None


# ---- Hugging Face --------------------------------------------------------------------------------------------

def _sampling(path: Path) -> dict:
    """generation_config.json's sampling: the model's own defaults where its folder has them (the ones seekmoe
    serves it with), else DeepSeek's recommended ones."""
    from seekmoe.engine.sampling import SamplingError, read_generation_defaults

    try:
        own = read_generation_defaults(path)
    except SamplingError as e:
        raise ExportError(str(e)) from None
    return GENERATION_DEFAULTS if own is None else {"do_sample": True, **own}


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A folder transformers, vLLM and SGLang load natively; written beside out_dir (its parents created if
    missing), then renamed into place."""
    from seekmoe.files import write_folder
    from seekmoe.model.checkpoint import CheckpointError, save_model

    path, cfg = _read_model_folder(model_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not an empty folder; remove it or choose another")
    model, tokenizer = _load(path, cfg)
    for key in _DROPPED_CONFIG_KEYS:
        model.config.extra.pop(key, None)
    generation = {
        "bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else tokenizer.bos_id,
        "eos_token_id": cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_id,
        "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else tokenizer.pad_id,
        **_sampling(path),
    }
    def write(tmp: Path) -> None:
        save_model(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")

    _make_parent(out)
    try:
        return write_folder(out, write)  # an empty out_dir is replaced too
    except (CheckpointError, OSError) as e:
        raise ExportError(f"{out}: cannot write the export ({e})") from None


# ---- GGUF: tensors -------------------------------------------------------------------------------------------

def _rope_rows(w, rope_start: int, rope_dim: int, interleave: bool):
    """Rows of a projection reordered so llama.cpp's rope, which rotates adjacent pairs, rotates ours.

    With rope_interleave our pairs already are (x0, x1), (x2, x3), ...; otherwise they are the two halves
    (x_j, x_j+R/2), which move to adjacent places. Queries and keys get the same order: scores are unchanged.
    """
    if interleave:
        return w
    import torch

    half = rope_dim // 2
    pairs = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()  # (R,) 0, R/2, 1, ...
    order = torch.arange(w.shape[0])
    order[rope_start:rope_start + rope_dim] = rope_start + pairs
    return w[order]


def _q_rows(w, cfg: ModelConfig):
    """A query projection (H * (nope + R), in) with each head's rope rows in llama.cpp's pair order."""
    h, qk = cfg.num_attention_heads, cfg.qk_head_dim
    per_head = w.view(h, qk, -1)  # (H, nope + R, in)
    per_head = _rope_rows(per_head.transpose(0, 1), cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.rope_interleave)
    return per_head.transpose(0, 1).reshape(h * qk, -1)


def gguf_tensors(model) -> Iterator[tuple[str, Any]]:
    """(GGUF name, torch tensor in PyTorch's row-major shape) for every tensor llama.cpp's deepseek2 loads."""
    cfg = model.config
    h, nope, v, lat = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    yield "token_embd.weight", model.model.embed_tokens.weight
    for i, layer in enumerate(model.model.layers):
        p, attn = f"blk.{i}.", layer.self_attn
        yield p + "attn_norm.weight", layer.input_layernorm.weight
        if cfg.q_lora_rank is None:
            yield p + "attn_q.weight", _q_rows(attn.q_proj.weight, cfg)
        else:
            yield p + "attn_q_a.weight", attn.q_a_proj.weight
            yield p + "attn_q_a_norm.weight", attn.q_a_layernorm.weight
            yield p + "attn_q_b.weight", _q_rows(attn.q_b_proj.weight, cfg)
        yield p + "attn_kv_a_mqa.weight", _rope_rows(attn.kv_a_proj_with_mqa.weight, lat, cfg.qk_rope_head_dim,
                                                     cfg.rope_interleave)
        yield p + "attn_kv_a_norm.weight", attn.kv_a_layernorm.weight
        kv_b = attn.kv_b_proj.weight.view(h, nope + v, lat)  # (H, nope + v, L)
        k_b, v_b = kv_b.split([nope, v], dim=1)
        yield p + "attn_k_b.weight", k_b.transpose(1, 2)  # (H, L, nope): absorbed into the queries
        yield p + "attn_v_b.weight", v_b  # (H, v, L)
        yield p + "attn_output.weight", attn.o_proj.weight
        yield p + "ffn_norm.weight", layer.post_attention_layernorm.weight
        mlp = layer.mlp
        if not cfg.is_moe_layer(i):
            yield p + "ffn_gate.weight", mlp.gate_proj.weight
            yield p + "ffn_up.weight", mlp.up_proj.weight
            yield p + "ffn_down.weight", mlp.down_proj.weight
            continue
        yield p + "ffn_gate_inp.weight", mlp.gate.weight  # (E, D)
        if cfg.topk_method == "noaux_tc":
            yield p + "exp_probs_b.bias", mlp.gate.e_score_correction_bias  # (E,)
        yield p + "ffn_gate_exps.weight", mlp.experts.gate_proj  # (E, F, D)
        yield p + "ffn_up_exps.weight", mlp.experts.up_proj  # (E, F, D)
        yield p + "ffn_down_exps.weight", mlp.experts.down_proj  # (E, D, F)
        yield p + "ffn_gate_shexp.weight", mlp.shared_experts.gate_proj.weight
        yield p + "ffn_up_shexp.weight", mlp.shared_experts.up_proj.weight
        yield p + "ffn_down_shexp.weight", mlp.shared_experts.down_proj.weight
    yield "output_norm.weight", model.model.norm.weight
    if not cfg.tie_word_embeddings:  # tied: llama.cpp reuses token_embd
        yield "output.weight", model.lm_head.weight


def gguf_type(name: str, shape: tuple[int, ...], quant: str):
    """The GGML type llama.cpp's converter gives this tensor under `quant`."""
    import gguf

    t = gguf.GGMLQuantizationType
    keep_f32 = len(shape) <= 1 or name.endswith("_norm.weight") or ".ffn_gate_inp." in name \
        or not name.endswith(".weight")
    if quant == "f32" or keep_f32:
        return t.F32
    block = {"q8_0": t.Q8_0, "q4_0": t.Q4_0}.get(quant)
    if block is not None and shape[-1] % gguf.GGML_QUANT_SIZES[block][0] == 0:
        return block
    return t.F16  # f16, or q8_0 / q4_0 rows that do not split into 32-value blocks


# ---- GGUF: metadata ------------------------------------------------------------------------------------------

def _check_llama_cpp_can_run(cfg: ModelConfig, path: Path) -> None:
    """Variants llama.cpp's deepseek2 graph has no place for."""
    if cfg.is_moe and cfg.moe_layer_freq != 1:
        raise ExportError(f"{path}: moe_layer_freq is {cfg.moe_layer_freq}; llama.cpp's deepseek2 makes every "
                          "layer after the leading dense ones MoE, so it needs 1")
    if cfg.is_moe and not cfg.n_shared_experts:
        raise ExportError(f"{path}: n_shared_experts is {cfg.n_shared_experts}; llama.cpp's deepseek2 always runs "
                          "shared experts, so it needs >= 1")


def _write_metadata(w, cfg: ModelConfig, name: str, quant: str) -> None:
    import gguf

    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    # mla, stored as MQA: one latent "head" of L + R for keys and L for values, decompressed per head at run time
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(1)
    w.add_q_lora_rank(cfg.q_lora_rank or 0)
    w.add_kv_lora_rank(cfg.kv_lora_rank)
    w.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    w.add_value_length(cfg.kv_lora_rank)
    w.add_key_length_mla(cfg.qk_head_dim)
    w.add_value_length_mla(cfg.v_head_dim)
    # rope / yarn
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.qk_rope_head_dim)
    if cfg.rope_scaling is not None:
        yarn = cfg.rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(yarn["factor"])
        w.add_rope_scaling_orig_ctx_len(yarn.get("original_max_position_embeddings") or cfg.max_position_embeddings)
        if yarn.get("beta_fast") is not None:
            w.add_rope_scaling_yarn_beta_fast(yarn["beta_fast"])
        if yarn.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(yarn["beta_slow"])
        if yarn.get("mscale_all_dim") is not None:
            # llama.cpp divides this by 0.1 again for deepseek2 (its converter's legacy convention)
            w.add_rope_scaling_yarn_log_mul(0.1 * yarn["mscale_all_dim"])
    # moe
    w.add_leading_dense_block_count(cfg.first_k_dense_replace if cfg.is_moe else cfg.num_hidden_layers)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size if cfg.is_moe else cfg.intermediate_size)
    w.add_expert_shared_count(cfg.n_shared_experts or 0)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if cfg.scoring_func == "sigmoid"
                             else gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    w.add_expert_weights_norm(cfg.norm_topk_prob)
    if cfg.is_moe:
        w.add_expert_count(cfg.n_routed_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        groups, kept = cfg.n_group or 1, cfg.topk_group or 1
        # only when groups limit the choice: llama.cpp asserts expert_group_used_count < expert_group_count.
        # llama.cpp has one group rule, V3's: a group scores the sum of its best two experts. V2's
        # group_limited_greedy scores a group by its best expert, so the top K experts always lie in the top K
        # groups: with topk_group >= K the limit changes nothing, and writing groups would make llama.cpp pick
        # other experts. With fewer groups kept, llama.cpp's rule only approximates V2's (as it does for
        # DeepSeek-V2 converted by llama.cpp's own script).
        limits = cfg.topk_method == "noaux_tc" or (cfg.topk_method == "group_limited_greedy"
                                                   and kept < cfg.num_experts_per_tok)
        if limits and groups > 1 and kept < groups:
            w.add_expert_group_count(groups)
            w.add_expert_group_used_count(kept)


def _write_vocab(w, folder: Path, tokenizer, cfg: ModelConfig) -> None:
    import gguf

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer._backend.get_vocab(with_added_tokens=True)
    by_id = {i: token for token, i in vocab.items()}
    added = {t["id"]: bool(t.get("special")) for t in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(cfg.vocab_size):  # ids the model has beyond the tokenizer's are padding, as the converter does
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    w.add_add_bos_token(True)  # as our tokenizer.json's post-processor and DeepSeek's tokenizers do
    w.add_add_eos_token(False)
    w.add_chat_template(tokenizer.chat_template)


# ---- GGUF: the file ------------------------------------------------------------------------------------------

def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, quant: str = "f32",
                progress: bool = True, model=None) -> Path:
    """One GGUF file of llama.cpp's deepseek2 architecture; quant is f32, f16, q8_0 or q4_0 for the weight matrices.
    The file is written beside out_path (its parents created if missing), then renamed into place. `model`: the
    folder's weights already in hand (bench/full_size.py passes views of the mapped files, a model too big to load),
    used in place of loading them."""
    if quant not in QUANTS:
        raise ExportError(f"quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    try:
        import gguf
    except ImportError:
        raise ExportError("GGUF export needs the gguf package: pip install 'gguf>=0.19'") from None
    import numpy as np
    import torch
    from tqdm import tqdm

    path, cfg = _read_model_folder(model_dir)
    out = Path(out_path)
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the path of the .gguf file to write")
    _check_llama_cpp_can_run(cfg, path)
    if model is None:
        model, tokenizer = _load(path, cfg)
    else:
        tokenizer = _tokenizer(path, cfg)

    w = gguf.GGUFWriter(None, GGUF_ARCH)
    _write_metadata(w, cfg, path.resolve().name, quant)
    _write_vocab(w, path, tokenizer, cfg)
    # announce every tensor (name, shape, type, bytes) first, then stream them one at a time: peak memory is the
    # model plus one converted tensor
    plan = []
    for name, tensor in gguf_tensors(model):
        shape = tuple(tensor.shape)
        qtype = gguf_type(name, shape, quant)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            np_dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
            stored_shape, nbytes = shape, math.prod(shape) * np.dtype(np_dtype).itemsize
        else:
            np_dtype = np.uint8
            stored_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            nbytes = math.prod(stored_shape)
        w.add_tensor_info(name, stored_shape, np.dtype(np_dtype), nbytes, raw_dtype=qtype)
        plan.append((tensor, qtype))

    def write(tmp: Path) -> None:
        try:
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            with torch.no_grad():
                for tensor, qtype in tqdm(plan, desc=f"gguf {quant}", unit="tensor", disable=not progress):
                    data = tensor.detach().float().contiguous().numpy()
                    w.write_tensor_data(gguf.quants.quantize(data, qtype))
        finally:
            if w.fout is not None:
                w.close()
        os.chmod(tmp, 0o644)

    _make_parent(out)
    try:
        atomic_write(out, write)
    except OSError as e:
        raise ExportError(f"{out}: cannot write the GGUF file ({e})") from None
    return out


__all__ = ["QUANTS", "ExportError", "export_gguf", "export_hf", "gguf_tensors", "gguf_type"]
