"""Accelerator peaks, the model-FLOPs count that MFU is measured with, the recompute that
activation checkpointing adds (hardware FLOPs), the interconnects of cluster profiles and a
published throughput anchor.

Imports nothing heavy: bench/gpu.py (run on a GPU node from source, without YAML or DeepSpeed) and
`harness estimate` count alike, so a measured MFU carries from one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s, by device name
# (torch.cuda.get_device_name); the first key the name contains wins, so specific names come first.
DENSE_BF16_PEAK: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("GH200", 989e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
]


def spec_peak(device_name: str) -> float | None:
    for key, flops in DENSE_BF16_PEAK:
        if key.lower() in device_name.lower():
            return flops
    return None


def flops_per_token(matmul_params: int, n_layers: int, d_model: int, context: int) -> float:
    """Training FLOPs per token: 6N + 12 L d context. N counts every matmul weight, the output layer
    included, not the input embedding (a lookup); 12 L d context is attention's QK^T and AV, forward
    and backward, counted as if not causal (as the PaLM paper's MFU)."""
    return 6 * matmul_params + 12 * n_layers * d_model * context


def recompute_flops_per_token(block_params: int, n_layers: int, d_model: int, context: int) -> float:
    """The extra forward that activation checkpointing costs per token: each checkpointed block runs
    its forward again in the backward, 2 FLOPs per block weight plus attention's forward 4 L d
    context (a third of the 12 above). Only what is checkpointed counts: in harness.model.open_lm the
    blocks are, the final norm and the output layer are not."""
    return 2 * block_params + 4 * n_layers * d_model * context


@dataclass(frozen=True)
class Interconnect:
    inter_node_per_node: float   # bytes/s a node sends to other nodes, all its NICs, one direction
    intra_node_per_gpu: float    # bytes/s a GPU sends to GPUs of its node, one direction


# Interconnects by the name a cluster profile gives (harness.estimate.CLUSTER_INTERCONNECT). These
# are datasheet figures taken as assumptions, not measurements of any site:
#   "4x HDR IB per node, NVLink 3": 4 HDR InfiniBand HCAs of 200 Gb/s (25 GB/s) per 8-GPU node,
#   100 GB/s per node; A100 NVLink 3, 12 links x 25 GB/s = 300 GB/s per
#   direction per GPU (NVIDIA's A100 datasheet: 600 GB/s, both directions).
INTERCONNECTS: dict[str, Interconnect] = {
    "4x HDR IB per node, NVLink 3": Interconnect(inter_node_per_node=4 * 200e9 / 8, intra_node_per_gpu=300e9),
}


@dataclass(frozen=True)
class Anchor:
    tokens_per_s: float   # per GPU
    gpu: str
    mfu: float
    model: str
    source: str


# A published throughput for a model of this size, to hold an estimate against: about 42,000
# tokens/s per H100 for a 1B Llama trained with nanotron, about 31% MFU.
ANCHOR_1B = Anchor(tokens_per_s=42_000, gpu="H100", mfu=0.31, model="1B Llama (nanotron)",
                   source="nanotron/Hugging Face Ultra-Scale Playbook figure, approximate")
