"""Peaks by device name and the model-FLOPs count behind every MFU."""

from harness import hardware


def test_the_spec_peak_is_picked_by_device_name():
    assert hardware.spec_peak("NVIDIA H200") == hardware.spec_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.spec_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert hardware.spec_peak("NVIDIA H100 PCIe") == 756e12
    assert hardware.spec_peak("Tesla T4") is None


def test_flops_per_token_is_six_n_plus_attention():
    assert hardware.flops_per_token(1000, 2, 8, 16) == 6 * 1000 + 12 * 2 * 8 * 16


def test_recompute_is_the_forward_a_third_of_attention():
    assert hardware.recompute_flops_per_token(1000, 2, 8, 16) == 2 * 1000 + 4 * 2 * 8 * 16
    # With every weight checkpointed it is exactly a third of the training count.
    assert 3 * hardware.recompute_flops_per_token(1000, 2, 8, 16) == hardware.flops_per_token(1000, 2, 8, 16)


def test_the_a100_cluster_interconnect_is_its_stated_links():
    net = hardware.INTERCONNECTS["4x HDR IB per node, NVLink 3"]
    assert net.inter_node_per_node == 100e9
    assert net.intra_node_per_gpu == 300e9


def test_the_anchor_implies_a_model_of_about_a_billion_parameters():
    anchor = hardware.ANCHOR_1B
    assert anchor.gpu == "H100" and hardware.spec_peak(anchor.gpu) == 989e12 and anchor.mfu == 0.31
    # Its model FLOPs per token, from its MFU, are those of ~1.2B parameters (6N).
    implied = anchor.mfu * hardware.spec_peak(anchor.gpu) / anchor.tokens_per_s
    assert 1.0e9 < implied / 6 < 1.4e9
