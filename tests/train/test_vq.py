"""The VQ training pieces: EMA codebook, dead-code restarts, the straight-through quantizer."""

import torch

from harness.train import vq


def _codebook(k: int = 4, d: int = 2, decay: float = 0.0, restart_after: int = 3) -> vq.EmaCodebook:
    return vq.EmaCodebook(torch.zeros(k, d), decay, restart_after, torch.Generator().manual_seed(0))


def test_seeding_starts_every_code_at_a_distinct_latent():
    codebook = _codebook(k=4)
    points = torch.arange(20, dtype=torch.float32).view(10, 2)
    codebook.seed_from(points)
    rows = {tuple(r.tolist()) for r in codebook.weight}
    assert len(rows) == 4 and rows <= {tuple(p.tolist()) for p in points}


def test_with_no_memory_a_code_moves_to_the_mean_of_its_latents():
    codebook = _codebook(k=2, decay=0.0)
    codebook.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    points = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 11.0]])
    codebook.update(points, codebook.assign(points))
    assert torch.allclose(codebook.weight, torch.tensor([[2.0, 1.0], [9.0, 11.0]]), atol=1e-4)


def test_a_code_no_latent_chooses_restarts_at_a_latent_of_the_batch():
    codebook = _codebook(k=2, decay=0.5, restart_after=3)
    codebook.seed_from(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for _ in range(2):
        codebook.update(points, codebook.assign(points))
    assert codebook.restarts == 0 and torch.allclose(codebook.weight[1], torch.tensor([100.0, 100.0]), rtol=1e-3)
    codebook.update(points, codebook.assign(points))  # the third idle step
    assert codebook.restarts == 1 and codebook.weight[1].tolist() in points.tolist()


def test_the_quantizer_passes_gradients_straight_through():
    codebook = _codebook(k=3, d=2)
    codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    z = torch.tensor([[[[0.2]], [[0.1]]], [[[4.0]], [[6.0]]]], requires_grad=True)  # [2, 2, 1, 1]
    q, ids = vq.quantize(codebook, z)
    assert ids.tolist() == [[0], [2]]
    assert torch.equal(q.detach().flatten(), torch.tensor([0.0, 0.0, 5.0, 5.0]))
    q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_psnr_of_a_unit_range_error():
    assert abs(vq.psnr(4.0 / 100.0) - 20.0) < 1e-4  # peak-to-peak 2: MSE 0.04 is 20 dB
