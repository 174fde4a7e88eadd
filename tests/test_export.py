"""Export: Hugging Face folders load in transformers with our logits and chat template; GGUF files hold what
llama.cpp's deepseek2 loader asks for, and a reference of llama.cpp's deepseek2 graph run on them gives our logits."""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import pytest
import torch

from seekmoe import load_model
from seekmoe.cli.export import add_arguments, run_from_args
from seekmoe.export import GGUF_PRE_TOKENIZER, QUANTS, ExportError, export_gguf, export_hf
from seekmoe.llm import DEFAULT_MODEL
from seekmoe.text.tokenizer import SAMPLE_CHINESE, SAMPLE_ENGLISH, Tokenizer
from tests.conftest import run_cli, tiny_model_folder

try:
    import gguf
except ImportError:  # the Hugging Face export needs no gguf
    gguf = None
needs_gguf = pytest.mark.skipif(gguf is None, reason="the gguf package is not installed")

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}
V3 = dict(model_type="deepseek_v3", topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
          norm_topk_prob=True, routed_scaling_factor=2.5)
V2 = dict(model_type="deepseek_v2", topk_method="greedy", scoring_func="softmax")
VARIANTS = {
    "v3 low-rank q": V3,
    "v3 full-rank q, halves rope, tied": dict(V3, q_lora_rank=None, rope_interleave=False, tie_word_embeddings=True),
    "v2 full-rank q": dict(V2, q_lora_rank=None, first_k_dense_replace=0),
    "v2 low-rank q, yarn": dict(V2, rope_scaling=YARN, n_shared_experts=2),
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2 + 2 = ?"}]
IDS = [0, 3, 300, 301, 400, 520, 4, 999, 1500, 7, 64, 2000]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny model folder per variant (bundled tokenizer), built once for the module."""
    root = tmp_path_factory.mktemp("export")
    return {name: tiny_model_folder(root / f"m{i}", seed=i, **kw) for i, (name, kw) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="module")
def ggufs(folders, tmp_path_factory):
    """variant -> quant -> exported GGUF path."""
    root = tmp_path_factory.mktemp("gguf")
    return {name: {q: export_gguf(folder, root / f"{i}-{q}.gguf", q, progress=False) for q in QUANTS}
            for i, (name, folder) in enumerate(folders.items())}


def ours(folder, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return load_model(folder)(torch.tensor([ids]))[0]  # (T, vocab)


# ---- Hugging Face --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(VARIANTS))
def test_hf_export_loads_in_transformers_with_our_logits(name, folders, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = export_hf(folders[name], tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ("DeepseekV3ForCausalLM" if "v3" in name else "DeepseekV2ForCausalLM")
    with torch.no_grad():
        theirs = hf(torch.tensor([IDS])).logits[0]
    assert (theirs - ours(folders[name])).abs().max().item() <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [type(hf).__name__] and config["torch_dtype"] == "float32"
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (0, 1, 2)
    assert gen.do_sample and 0 < gen.temperature < 1 and 0 < gen.top_p < 1


def test_hf_export_tokenizer_and_chat_template_match_ours(folders, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = folders["v3 low-rank q"]
    out = export_hf(folder, tmp_path / "hf")
    theirs, mine = transformers.AutoTokenizer.from_pretrained(out), Tokenizer.from_pretrained(folder)
    for gen_prompt in (True, False):
        got = theirs.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=gen_prompt)
        got = got["input_ids"] if isinstance(got, dict) or hasattr(got, "keys") else got
        assert list(got) == mine.apply_chat_template(MESSAGES, add_generation_prompt=gen_prompt)
    assert theirs(SAMPLE_ENGLISH, add_special_tokens=False)["input_ids"] == mine.encode(SAMPLE_ENGLISH)
    assert not list(tmp_path.glob(".*.tmp"))


def test_hf_export_keeps_bfloat16_and_drops_remote_code(tmp_path):
    folder = tiny_model_folder(tmp_path / "m", **V3)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(folder, dtype="bfloat16")
    from seekmoe import save_model
    save_model(model, folder)  # config.json rewritten by save_model keeps auto_map in extra
    out = json.loads((export_hf(folder, tmp_path / "hf") / "config.json").read_text())
    assert out["torch_dtype"] == "bfloat16" and "auto_map" not in out


def test_hf_export_carries_the_model_sampling_defaults(tmp_path):
    folder = tiny_model_folder(tmp_path / "m")
    plain = json.loads((export_hf(folder, tmp_path / "a") / "generation_config.json").read_text())
    assert {k: plain[k] for k in ("do_sample", "temperature", "top_p")} == {"do_sample": True, "temperature": 0.6,
                                                                             "top_p": 0.95}
    (folder / "generation_config.json").write_text('{"temperature": 0.7, "eos_token_id": 99}')
    own = json.loads((export_hf(folder, tmp_path / "b") / "generation_config.json").read_text())
    assert own["temperature"] == 0.7 and own["do_sample"] is True and "top_p" not in own
    assert own["eos_token_id"] == plain["eos_token_id"]  # the token ids are the export's own
    (folder / "generation_config.json").write_text('{"top_p": 0}')
    with pytest.raises(ExportError, match=r"generation_config\.json.*top_p"):
        export_hf(folder, tmp_path / "c")
    assert not (tmp_path / "c").exists()


# ---- GGUF: what llama.cpp's loader asks for ------------------------------------------------------------------

def expected_tensors(c: dict) -> dict[str, tuple[int, ...]]:
    """name -> ggml shape (ne0 first), as llama.cpp's llama_model_deepseek2::load_arch_tensors creates them."""
    d, h, lat, rope = c["hidden_size"], c["num_attention_heads"], c["kv_lora_rank"], c["qk_rope_head_dim"]
    nope, v, e, f = c["qk_nope_head_dim"], c["v_head_dim"], c["n_routed_experts"], c["moe_intermediate_size"]
    k_mla = nope + rope
    shapes = {"token_embd.weight": (d, c["vocab_size"]), "output_norm.weight": (d,)}
    if not c.get("tie_word_embeddings"):
        shapes["output.weight"] = (d, c["vocab_size"])
    for i in range(c["num_hidden_layers"]):
        p = f"blk.{i}."
        shapes |= {p + "attn_norm.weight": (d,), p + "attn_kv_a_norm.weight": (lat,),
                   p + "attn_kv_a_mqa.weight": (d, lat + rope), p + "attn_k_b.weight": (nope, lat, h),
                   p + "attn_v_b.weight": (lat, v, h), p + "attn_output.weight": (h * v, d),
                   p + "ffn_norm.weight": (d,)}
        if c.get("q_lora_rank"):
            q = c["q_lora_rank"]
            shapes |= {p + "attn_q_a_norm.weight": (q,), p + "attn_q_a.weight": (d, q),
                       p + "attn_q_b.weight": (q, h * k_mla)}
        else:
            shapes[p + "attn_q.weight"] = (d, h * k_mla)
        if i < c["first_k_dense_replace"]:
            n = c["intermediate_size"]
            shapes |= {p + "ffn_gate.weight": (d, n), p + "ffn_up.weight": (d, n), p + "ffn_down.weight": (n, d)}
            continue
        s = f * c["n_shared_experts"]
        shapes |= {p + "ffn_gate_inp.weight": (d, e), p + "ffn_gate_exps.weight": (d, f, e),
                   p + "ffn_up_exps.weight": (d, f, e), p + "ffn_down_exps.weight": (f, d, e),
                   p + "ffn_gate_shexp.weight": (d, s), p + "ffn_up_shexp.weight": (d, s),
                   p + "ffn_down_shexp.weight": (s, d)}
        if c["topk_method"] == "noaux_tc":
            shapes[p + "exp_probs_b.bias"] = (e,)
    return shapes


def expected_type(name: str, ne: tuple[int, ...], quant: str) -> str:
    if quant == "f32" or len(ne) == 1 or "norm" in name or "ffn_gate_inp" in name or name.endswith(".bias"):
        return "F32"
    block = {"q8_0": "Q8_0", "q4_0": "Q4_0"}.get(quant)
    return block if block is not None and ne[0] % 32 == 0 else "F16"


@needs_gguf
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gguf_holds_every_tensor_with_llama_cpp_shape_and_type(name, quant, folders, ggufs):
    config = json.loads((folders[name] / "config.json").read_text())
    reader = gguf.GGUFReader(ggufs[name][quant])
    got = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type.name) for t in reader.tensors}
    want = expected_tensors(config)
    assert set(got) == set(want)
    for tensor, ne in want.items():
        assert got[tensor] == (ne, expected_type(tensor, ne, quant)), tensor
    assert {"Q8_0", "Q4_0", "F16", "F32"} >= {t for _, t in got.values()}
    if quant in ("q8_0", "q4_0"):
        assert quant.upper() in {t for _, t in got.values()}


def field(reader, key):
    return reader.fields[key].contents()


@needs_gguf
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gguf_metadata_is_complete(name, folders, ggufs):
    c = json.loads((folders[name] / "config.json").read_text())
    r = gguf.GGUFReader(ggufs[name]["q8_0"])
    a = "deepseek2."
    want = {
        "general.architecture": "deepseek2", "general.name": folders[name].name, "general.file_type": 7,
        a + "context_length": c["max_position_embeddings"], a + "embedding_length": c["hidden_size"],
        a + "feed_forward_length": c["intermediate_size"], a + "block_count": c["num_hidden_layers"],
        a + "vocab_size": c["vocab_size"], a + "attention.head_count": c["num_attention_heads"],
        a + "attention.head_count_kv": 1, a + "rope.dimension_count": c["qk_rope_head_dim"],
        a + "rope.freq_base": c["rope_theta"], a + "expert_count": c["n_routed_experts"],
        a + "expert_used_count": c["num_experts_per_tok"], a + "expert_shared_count": c["n_shared_experts"],
        a + "expert_feed_forward_length": c["moe_intermediate_size"],
        a + "leading_dense_block_count": c["first_k_dense_replace"],
        a + "expert_weights_scale": c["routed_scaling_factor"], a + "expert_weights_norm": c["norm_topk_prob"],
        a + "expert_gating_func": 2 if c["scoring_func"] == "sigmoid" else 1,
        a + "attention.q_lora_rank": c["q_lora_rank"] or 0, a + "attention.kv_lora_rank": c["kv_lora_rank"],
        a + "attention.key_length": c["kv_lora_rank"] + c["qk_rope_head_dim"],
        a + "attention.value_length": c["kv_lora_rank"],
        a + "attention.key_length_mla": c["qk_nope_head_dim"] + c["qk_rope_head_dim"],
        a + "attention.value_length_mla": c["v_head_dim"],
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": GGUF_PRE_TOKENIZER, "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.add_bos_token": True,
    }
    for key, value in want.items():
        got = field(r, key)
        assert (math.isclose(got, value, rel_tol=1e-6) if isinstance(value, float) else got == value), key
    assert math.isclose(field(r, a + "attention.layer_norm_rms_epsilon"), c["rms_norm_eps"], rel_tol=1e-6)
    if c["topk_method"] == "noaux_tc":
        assert (field(r, a + "expert_group_count"), field(r, a + "expert_group_used_count")) == (4, 2)
    else:  # greedy routing ignores groups; llama.cpp must not limit them
        assert a + "expert_group_count" not in r.fields
    if c.get("rope_scaling"):
        assert field(r, a + "rope.scaling.type") == "yarn"
        assert field(r, a + "rope.scaling.factor") == 4.0
        assert field(r, a + "rope.scaling.original_context_length") == 32
        assert math.isclose(field(r, a + "rope.scaling.yarn_log_multiplier"), 0.1, rel_tol=1e-6)
    else:
        assert a + "rope.scaling.type" not in r.fields

    tok = Tokenizer.from_pretrained(folders[name])
    data = json.loads((folders[name] / "tokenizer.json").read_text())
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == tok.vocab_size == c["vocab_size"]
    assert len(field(r, "tokenizer.ggml.merges")) == len(data["model"]["merges"])
    assert all(tokens[i] == t for t, i in tok._backend.get_vocab(with_added_tokens=True).items())
    control = {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    assert control == set(tok.special_ids) and len(control) == 26
    assert field(r, "tokenizer.chat_template") == tok.chat_template


def test_gguf_pre_tokenizer_regexes_give_our_ids():
    """llama.cpp's deepseek-v3 pre-tokenizer (its regexes, run here by the tokenizers library) on our vocabulary
    splits text as ours does."""
    from tokenizers import Regex, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    deepseek_v3 = [r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                   r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
                   r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""]
    theirs = Backend.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    theirs.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in deepseek_v3]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    mine = Tokenizer.from_pretrained(DEFAULT_MODEL)
    for text in (SAMPLE_ENGLISH, SAMPLE_CHINESE, "x = 12345 + foo_bar(3.14)\n\n  if a  1:\n\treturn 'don't'",
                 "Ça été l'été (über) naïve 2024年12月 テスト"):
        assert theirs.encode(text, add_special_tokens=False).ids == mine.encode(text)


# ---- GGUF: llama.cpp's deepseek2 graph, re-done in torch on the file's tensors ---------------------------------

def llama_cpp_logits(path, ids: list[int]) -> torch.Tensor:
    """Logits (T, vocab) as llama.cpp's deepseek2 graph computes them from the GGUF alone (no YaRN): absorbed MLA
    from attn_k_b / attn_v_b, rope on adjacent pairs, V3 group routing by each group's best two experts."""
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if k.startswith("deepseek2.")}
    w = {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
         for t in r.tensors}
    a = "deepseek2."
    n_head, lat, rope = kv[a + "attention.head_count"], kv[a + "attention.kv_lora_rank"], kv[a + "rope.dimension_count"]
    k_mla, eps = kv[a + "attention.key_length_mla"], kv[a + "attention.layer_norm_rms_epsilon"]
    nope, n_dense = k_mla - rope, kv[a + "leading_dense_block_count"]
    t = len(ids)

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope_pairs(x):  # (T, ..., R): rotate (x0, x1), (x2, x3), ... (LLAMA_ROPE_TYPE_NORM)
        inv = kv[a + "rope.freq_base"] ** (-torch.arange(0, rope, 2, dtype=torch.float32) / rope)
        ang = torch.arange(t, dtype=torch.float32)[:, None] * inv  # (T, R/2)
        ang = ang.view(t, *([1] * (x.dim() - 2)), rope // 2)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * ang.cos() - x1 * ang.sin(), x0 * ang.sin() + x1 * ang.cos()], -1).flatten(-2)

    def swiglu(x, gate, up, down):
        return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T

    x = w["token_embd.weight"][ids]  # (T, D)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(kv[a + "block_count"]):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        if p + "attn_q.weight" in w:
            q = h @ w[p + "attn_q.weight"].T
        else:
            q = rms(h @ w[p + "attn_q_a.weight"].T, w[p + "attn_q_a_norm.weight"]) @ w[p + "attn_q_b.weight"].T
        q = q.view(t, n_head, k_mla)  # (T, H, nope + R)
        q_nope, q_pe = q[..., :nope], rope_pairs(q[..., nope:])
        kv_a = h @ w[p + "attn_kv_a_mqa.weight"].T  # (T, L + R)
        c, k_pe = rms(kv_a[:, :lat], w[p + "attn_kv_a_norm.weight"]), rope_pairs(kv_a[:, lat:])
        q_lat = torch.einsum("thn,hln->thl", q_nope, w[p + "attn_k_b.weight"])  # (T, H, L)
        scores = torch.einsum("thl,sl->hts", q_lat, c) + torch.einsum("thr,sr->hts", q_pe, k_pe)
        probs = (scores / math.sqrt(k_mla)).masked_fill(~mask, float("-inf")).softmax(-1)  # (H, T, T)
        out = torch.einsum("hts,sl->thl", probs, c)  # (T, H, L): MQA over the latent
        out = torch.einsum("thl,hvl->thv", out, w[p + "attn_v_b.weight"]).reshape(t, -1)
        x = x + out @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        if i < n_dense:
            x = x + swiglu(h, w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"], w[p + "ffn_down.weight"])
            continue
        logits = h @ w[p + "ffn_gate_inp.weight"].T  # (T, E)
        probs = logits.sigmoid() if kv[a + "expert_gating_func"] == 2 else logits.softmax(-1)
        select = probs + w.get(p + "exp_probs_b.bias", 0.0)
        groups = kv.get(a + "expert_group_count", 0)
        if groups > 1:
            by_group = select.view(t, groups, -1)
            best = by_group.topk(2, -1).values.sum(-1).topk(kv[a + "expert_group_used_count"], -1).indices
            keep = torch.zeros(t, groups, dtype=torch.bool).scatter_(1, best, True)
            select = by_group.masked_fill(~keep[..., None], float("-inf")).view(t, -1)
        idx = select.topk(kv[a + "expert_used_count"], -1).indices  # (T, K)
        weight = probs.gather(1, idx)
        if kv[a + "expert_weights_norm"]:
            weight = weight / weight.sum(-1, keepdim=True)
        weight = weight * kv[a + "expert_weights_scale"]
        y = swiglu(h, w[p + "ffn_gate_shexp.weight"], w[p + "ffn_up_shexp.weight"], w[p + "ffn_down_shexp.weight"])
        for tok in range(t):
            for e, g in zip(idx[tok].tolist(), weight[tok], strict=True):
                y[tok] += g * swiglu(h[tok], w[p + "ffn_gate_exps.weight"][e], w[p + "ffn_up_exps.weight"][e],
                                     w[p + "ffn_down_exps.weight"][e])
        x = x + y
    return rms(x, w["output_norm.weight"]) @ w.get("output.weight", w["token_embd.weight"]).T


@needs_gguf
@pytest.mark.parametrize("name", [n for n in VARIANTS if "yarn" not in n])
def test_gguf_run_as_llama_cpp_does_gives_our_logits(name, folders, ggufs):
    assert (llama_cpp_logits(ggufs[name]["f32"], IDS) - ours(folders[name])).abs().max().item() <= 1e-4


@needs_gguf
@pytest.mark.parametrize(("quant", "tol"), [("f16", 1e-3), ("q8_0", 1e-2)])
def test_gguf_quantized_tensors_round_the_f32_ones(quant, tol, ggufs):
    """f16 and q8_0 hold the f32 file's values up to their rounding (logits of random tiny models can still
    differ more: a small change flips an expert choice)."""
    exact = {t.name: t.data for t in gguf.GGUFReader(ggufs["v3 low-rank q"]["f32"]).tensors}
    for t in gguf.GGUFReader(ggufs["v3 low-rank q"][quant]).tensors:
        value = gguf.quants.dequantize(t.data, t.tensor_type)
        assert value.shape == exact[t.name].shape
        assert np.abs(value - exact[t.name]).max() <= tol * np.abs(exact[t.name]).max(), t.name


@needs_gguf
def test_bundled_model_exports_to_q8_0(tmp_path):
    start = time.monotonic()
    out = export_gguf(DEFAULT_MODEL, tmp_path / "tiny-chat.gguf", "q8_0", progress=False)
    if time.monotonic() - start > 5:
        pytest.skip("exporting the bundled model took over 5 s on this machine")
    reader = gguf.GGUFReader(out)
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert {t.name for t in reader.tensors} == set(expected_tensors(config))
    assert field(reader, "deepseek2.attention.q_lora_rank") == 0
    assert reader.get_tensor(0).tensor_type.name == "Q8_0"  # token_embd: rows of 256
    mine = ours(DEFAULT_MODEL, IDS[:6])
    theirs = llama_cpp_logits(out, IDS[:6])
    assert (theirs.argmax(-1) == mine.argmax(-1)).float().mean() >= 0.8


# ---- errors, atomic writes, command line -----------------------------------------------------------------------

@needs_gguf
def test_errors_name_the_problem(folders, tmp_path):
    folder = folders["v3 low-rank q"]
    with pytest.raises(ExportError, match="not a model folder"):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"config\.json"):
        export_hf(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ExportError, match="quant must be one of f32, f16, q8_0, q4_0, got 'q5_0'"):
        export_gguf(folder, tmp_path / "x.gguf", "q5_0")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ExportError, match="a-file: is a file, where the output needs a folder"):
        export_gguf(folder, tmp_path / "a-file" / "sub" / "x.gguf")
    with pytest.raises(ExportError, match="a-file: is a file, where the output needs a folder"):
        export_hf(folder, tmp_path / "a-file" / "hf")
    with pytest.raises(ExportError, match="is a folder"):
        export_gguf(folder, tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="full: already exists"):
        export_hf(folder, tmp_path / "full")
    freq = tiny_model_folder(tmp_path / "freq", **V3, moe_layer_freq=2)
    with pytest.raises(ExportError, match="moe_layer_freq is 2"):
        export_gguf(freq, tmp_path / "x.gguf")
    notok = tiny_model_folder(tmp_path / "notok", **V3)
    (notok / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match=r"no tokenizer\.json"):
        export_gguf(notok, tmp_path / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "freq", "full", "notok"]


@needs_gguf
def test_failed_gguf_write_keeps_the_old_file_and_leaves_no_temporary(folders, tmp_path, monkeypatch):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")

    def broken(self, tensor, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", broken)
    with pytest.raises(ExportError, match="No space left"):
        export_gguf(folders["v3 low-rank q"], out, progress=False)
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.gguf"]


@needs_gguf
def test_command_line(folders, tmp_path, capsys):
    from seekmoe.errors import CLIError

    parser = argparse.ArgumentParser(prog="seekmoe export")
    add_arguments(parser)
    folder = str(folders["v2 full-rank q"])
    assert run_from_args(parser.parse_args(["gguf", folder, str(tmp_path / "m.gguf"), "--quant", "f16"])) == 0
    assert run_from_args(parser.parse_args(["hf", folder, str(tmp_path / "hf")])) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'm.gguf'}" in out and f"wrote {tmp_path / 'hf'}" in out
    assert field(gguf.GGUFReader(tmp_path / "m.gguf"), "general.file_type") == 1
    with pytest.raises(CLIError, match="not a model folder"):
        run_from_args(parser.parse_args(["gguf", str(tmp_path / "nope"), str(tmp_path / "x.gguf")]))
    with pytest.raises(SystemExit):
        parser.parse_args(["gguf", folder, "x.gguf", "--quant", "q5_0"])
    for action in parser._subparsers._group_actions[0].choices.values():
        assert all(a.help for a in action._actions)


@needs_gguf
def test_command_line_creates_the_output_folders(folders, tmp_path, capsys):
    """`seekmoe export gguf MODEL out/new/m.gguf` as llama.cpp's and transformers' writers: parents made as needed,
    the file or folder itself still written beside its place and renamed in."""
    folder = str(folders["v2 full-rank q"])
    gguf_out, hf_out = tmp_path / "out" / "new" / "m.gguf", tmp_path / "deep" / "er" / "hf"
    rc, out, err = run_cli(capsys, "export", "gguf", folder, str(gguf_out), "--quant", "f16")
    assert rc == 0 and f"wrote {gguf_out}" in out and "Traceback" not in err
    rc, out, err = run_cli(capsys, "export", "hf", folder, str(hf_out))
    assert rc == 0 and f"wrote {hf_out}" in out
    assert os.listdir(gguf_out.parent) == ["m.gguf"] and os.listdir(hf_out.parent) == ["hf"]  # no temporaries
    assert field(gguf.GGUFReader(gguf_out), "general.file_type") == 1
    assert (hf_out / "config.json").is_file()


@needs_gguf
def test_gguf_of_weights_in_hand_equals_the_folders(tmp_path):
    # bench/full_size.py hands export_gguf views of mapped files (a model too big to load): the same file
    folder = tiny_model_folder(tmp_path / "m")
    loaded = export_gguf(folder, tmp_path / "a.gguf", "q4_0", progress=False)
    given = export_gguf(folder, tmp_path / "b.gguf", "q4_0", progress=False, model=load_model(folder))
    assert loaded.read_bytes() == given.read_bytes()
