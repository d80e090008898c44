"""Peaks by device name and the model-FLOPs count behind every MFU."""

from harness import hardware


def test_the_spec_peak_is_picked_by_device_name():
    assert hardware.spec_peak("NVIDIA H200") == hardware.spec_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.spec_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert hardware.spec_peak("NVIDIA H100 PCIe") == 756e12
    assert hardware.spec_peak("Tesla T4") is None


def test_flops_per_token_is_six_n_plus_attention():
    assert hardware.flops_per_token(1000, 2, 8, 16) == 6 * 1000 + 12 * 2 * 8 * 16
