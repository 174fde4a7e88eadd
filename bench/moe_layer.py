"""Forward + backward of one MoE layer at training batch sizes: seekmoe's grouped dispatch against
transformers' DeepseekV3MoE (its eager path loops over experts with masks), same weights, outputs checked.

    .venv/bin/python bench/moe_layer.py [--tokens 2048 8192] [--repeats 5]

Prints a markdown table: tokens/s of each and the speed-up, median of the repeats, both in this one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seekmoe.model.config import ModelConfig
from seekmoe.model.model import MoE

SHAPES = {  # name -> (hidden, expert width, routed experts, top-k, shared)
    "tiny-default": (256, 128, 16, 4, 1),
    "v2-lite-like/4": (512, 352, 64, 6, 2),
}


def build(hidden: int, inter: int, experts: int, k: int, shared: int):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = ModelConfig.from_dict(dict(
        vocab_size=256, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=1, num_attention_heads=4,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, moe_intermediate_size=inter,
        n_routed_experts=experts, n_shared_experts=shared, num_experts_per_tok=k, topk_method="noaux_tc",
        scoring_func="sigmoid", n_group=1, topk_group=1, norm_topk_prob=True))
    ours = MoE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    hf_cfg = DeepseekV3Config(hidden_size=hidden, moe_intermediate_size=inter, n_routed_experts=experts,
                              num_experts_per_tok=k, n_shared_experts=shared, n_group=1, topk_group=1,
                              norm_topk_prob=True, routed_scaling_factor=1.0)
    hf_cfg._experts_implementation = "eager"
    peer = DeepseekV3MoE(hf_cfg)
    with torch.no_grad():
        peer.gate.weight.copy_(ours.gate.weight)
        peer.experts.gate_up_proj.copy_(torch.cat([ours.experts.gate_proj, ours.experts.up_proj], dim=1))
        peer.experts.down_proj.copy_(ours.experts.down_proj)
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(peer.shared_experts, name).weight.copy_(getattr(ours.shared_experts, name).weight)
    return ours, peer


def step(module, x: torch.Tensor, ours: bool) -> torch.Tensor:
    y = module(x)[0] if ours else module(x)
    y.square().mean().backward()
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192], help="tokens per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| layer | tokens | seekmoe tok/s | transformers eager tok/s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        ours, peer = build(*shape)
        for n in args.tokens:
            x = torch.randn(1, n, shape[0], generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                diff = (ours(x)[0] - peer(x)).abs().max().item()
            times = {True: [], False: []}
            for _ in range(args.repeats):
                for is_ours, module in ((True, ours), (False, peer)):
                    module.zero_grad(set_to_none=True)
                    t = time.perf_counter()
                    step(module, x, is_ours)
                    times[is_ours].append(time.perf_counter() - t)
            a, b = n / statistics.median(times[True]), n / statistics.median(times[False])
            print(f"| {name} | {n} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
