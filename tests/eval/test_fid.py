import numpy as np
import pytest

from harness.errors import HarnessError
from harness.eval import fid


def reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance written independently: Tr((S_a S_b)^(1/2)) as the sum of the square
    roots of the eigenvalues of S_a S_b (real and non-negative for two covariance matrices)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.linalg.eigvals(s_a @ s_b).real.clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(eigenvalues).sum())


def test_fd_of_fixed_features_equals_the_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5
    ours = fid.frechet_distance(fid.Statistics.of(a), fid.Statistics.of(b))
    assert ours == pytest.approx(reference_fd(a, b), rel=1e-6)


def test_a_set_against_itself_is_zero():
    features = np.random.default_rng(1).normal(size=(300, 8))
    stats = fid.Statistics.of(features)
    assert abs(fid.frechet_distance(stats, stats)) < 1e-6


def test_statistics_are_cached(tmp_path):
    extractor = fid.random_extractor(seed=3, dim=8)
    images = np.random.default_rng(2).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    cache = tmp_path / "ref.npz"
    first = fid.statistics_of(extractor, [images[:3], images[3:]], cache)
    assert cache.exists()
    again = fid.statistics_of(extractor, [np.zeros_like(images)], cache)  # read back, not recomputed
    assert np.array_equal(first.mean, again.mean) and again.count == 6


def test_the_random_extractor_is_never_called_fid():
    assert fid.random_extractor().metric == "FD (random extractor)"


def test_missing_or_mismatched_inception_weights_are_named(tmp_path):
    with pytest.raises(HarnessError, match="inception-2015-12-05.pt not found"):
        fid.inception(tmp_path / "inception-2015-12-05.pt", None)
    weights = tmp_path / "inception.pt"
    weights.write_bytes(b"not the network")
    with pytest.raises(HarnessError, match="differs from eval.inception_sha256"):
        fid.inception(weights, "0" * 64)
