"""Accelerator peaks and the model-FLOPs count that MFU is measured with.

Imports nothing heavy: bench/gpu.py (run on a GPU node from source, without YAML or DeepSpeed) and
`harness estimate` count alike, so a measured MFU carries from one to the other.
"""

from __future__ import annotations

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
