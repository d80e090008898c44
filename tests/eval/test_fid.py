from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.errors import HarnessError
from harness.eval import fid
from harness.results.metrics import image_metric, mixed_settings

# torch.jit is deprecated in recent torch, but the Inception file clean-fid uses is TorchScript.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


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
    extractor = fid.Extractor("FD (test)", "first pixels", lambda im: im.reshape(len(im), -1)[:, :8].astype(float))
    images = np.random.default_rng(2).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    cache = tmp_path / "ref.npz"
    first = fid.statistics_of(extractor, [images[:3], images[3:]], cache)
    assert cache.exists()
    again = fid.statistics_of(extractor, [np.zeros_like(images)], cache)  # read back, not recomputed
    assert np.array_equal(first.mean, again.mean) and again.count == 6


def test_the_shapes_classifier_is_never_called_fid_and_is_checked(tmp_path):
    from harness.eval import shapes_classifier as sc

    torch.manual_seed(0)
    sha = sc.save(sc.ShapesClassifier(), tmp_path / "c", image_size=32)
    extractor = fid.shapes_classifier(tmp_path / "c", sha, image_size=32)
    assert extractor.metric == "FD (shapes classifier)" and extractor.fid_mode is None and sha in extractor.identity
    assert extractor.features(np.zeros((3, 32, 32, 3), np.uint8)).shape == (3, sc.FEATURES)
    with pytest.raises(HarnessError, match="trained on 32px images; these are 64px"):
        fid.shapes_classifier(tmp_path / "c", sha, image_size=64)
    with pytest.raises(HarnessError, match="differs from eval.features_sha256"):
        fid.shapes_classifier(tmp_path / "c", "0" * 64, image_size=32)
    (tmp_path / "c" / sc.WEIGHTS).write_bytes(b"cut")
    with pytest.raises(HarnessError, match="is unreadable"):
        fid.shapes_classifier(tmp_path / "c", None, image_size=32)


def test_missing_or_mismatched_inception_weights_are_named(tmp_path):
    with pytest.raises(HarnessError, match="inception-2015-12-05.pt not found"):
        fid.inception(tmp_path / "inception-2015-12-05.pt", None)
    weights = tmp_path / "inception.pt"
    weights.write_bytes(b"not the network")
    with pytest.raises(HarnessError, match="differs from eval.inception_sha256"):
        fid.inception(weights, "0" * 64)


def test_a_complex_root_of_the_covariance_product_stops_with_its_size():
    # Not covariances (one eigenvalue is negative): (S_a S_b)^(1/2) has 2i on its diagonal, and
    # dropping it would report a number that is no Fréchet distance.
    a = fid.Statistics(np.zeros(2), np.eye(2), 10)
    b = fid.Statistics(np.zeros(2), np.diag([-4.0, 1.0]), 10)
    with pytest.raises(HarnessError, match=r"imaginary part of up to 2 \(diagonal beyond 0.001\)"):
        fid.frechet_distance(a, b)


class _FakeInception(torch.nn.Module):
    """The TorchScript file's interface: forward resizes bilinearly to 299x299 and scales to
    [-1, 1] before `layers`; here `layers` just flattens, so features show what reached them."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Flatten()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    return path


def test_the_mode_names_the_metric_and_is_recorded(fake_inception):
    clean, legacy = fid.inception(fake_inception, None), fid.inception(fake_inception, None, mode="legacy_tensorflow")
    assert fid.FID_MODE == "clean" and (clean.metric, clean.fid_mode) == ("clean-FID", "clean")
    assert (legacy.metric, legacy.fid_mode) == ("TF-FID", "legacy_tensorflow")
    # The reference cache is keyed by the identity's first 80 characters: the mode must be in them.
    assert "legacy_tensorflow" in legacy.identity[:80] and "clean" in clean.identity[:80]
    with pytest.raises(HarnessError, match="FID mode 'legacy_pytorch' is not one of"):
        fid.inception(fake_inception, None, mode="legacy_pytorch")


def test_clean_mode_resizes_with_pil_bicubic_outside_the_network(fake_inception):
    images = np.random.default_rng(4).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    resized = fid.clean_resize(images)
    assert resized.shape == (2, 299, 299, 3) and resized.dtype == np.float32
    assert resized.min() >= 0 and resized.max() <= 255  # bicubic overshoot clipped, as clean-fid does
    channel = Image.fromarray(images[1, :, :, 2].astype(np.float32)).resize((299, 299), Image.BICUBIC)
    assert np.allclose(resized[1, :, :, 2], np.asarray(channel).clip(0, 255))
    clean = fid.inception(fake_inception, None).features(images)
    expected = (resized.transpose(0, 3, 1, 2).reshape(2, -1) - 128) / 128  # not resized a second time
    assert np.allclose(clean, expected, atol=1e-5)
    legacy = fid.inception(fake_inception, None, mode="legacy_tensorflow").features(images)
    assert legacy.shape == clean.shape and not np.allclose(legacy, clean, atol=1e-2)
    assert fid.clean_resize(np.full((1, 16, 16, 3), 77, np.uint8)) == pytest.approx(77, abs=1e-3)


class _Evaluated:
    """What the image metric reads of a run: its final eval/image@<step>.json."""

    def __init__(self, image: dict) -> None:
        self.image = image

    def final(self, name: str) -> dict | None:
        return self.image if name == "image" else None


def test_arms_measured_in_different_fid_modes_are_not_comparable():
    base = {"metric": "clean-FID", "value": 10.0, "extractor": "inception", "samples": 64, "dataset": "d",
            "sampling": {"temperature": 1.0, "seed": 0}, "reference": "/cache/ref.npz"}
    clean, legacy = _Evaluated({**base, "fid_mode": "clean"}), _Evaluated({**base, "fid_mode": "legacy_tensorflow"})
    assert "fid_mode" in mixed_settings(image_metric, [clean, legacy])
    # Evaluations written before the mode was recorded read as None, like new random-extractor ones.
    random = {**base, "metric": "FD (random extractor)", "extractor": "random"}
    assert mixed_settings(image_metric, [_Evaluated(random), _Evaluated({**random, "fid_mode": None})]) is None
