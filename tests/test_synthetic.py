"""synthetic: determinism, masks that match the drawn cracks, no giveaway in global statistics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crackxai.data import synthetic


def decode(jpg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = synthetic.write_dataset(tmp_path / "a", 4, seed=7, progress=False)
    b = synthetic.write_dataset(tmp_path / "b", 4, seed=7, progress=False)
    synthetic.write_dataset(tmp_path / "c", 4, seed=8, progress=False)
    assert a == b
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert not set(tree(tmp_path / "a").values()) & set(tree(tmp_path / "c").values())
    # One image depends on (seed, class, index) only: not on how many are drawn, nor the order.
    jpg, png = synthetic.encode(7, 1, 3)
    assert jpg == (tmp_path / "a/Positive/00003.jpg").read_bytes()
    assert png == (tmp_path / "a/_masks/Positive/00003.png").read_bytes()


def test_layout_and_manifest_records(tmp_path: Path) -> None:
    samples = synthetic.write_dataset(tmp_path, 3, size=64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Negative", "Positive", "_masks"]
    assert [s.path for s in samples] == [f"{c}/0000{i}.jpg" for c in ("Negative", "Positive")
                                         for i in (1, 2, 3)]
    for s in samples:
        image = cv2.imread(str(tmp_path / s.path))
        assert image.shape == (64, 64, 3)
        assert s.size == (tmp_path / s.path).stat().st_size
        if s.label == "Positive":
            assert s.mask == f"_masks/Positive/{Path(s.path).stem}.png"
            mask = cv2.imread(str(tmp_path / s.mask), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        else:
            assert s.mask == ""
    assert not (tmp_path / "_masks" / "Negative").exists()


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_masks_are_the_dark_crack_pixels(difficulty: float) -> None:
    for i in range(12):
        jpg, png = synthetic.encode(3, 1, i, difficulty=difficulty)
        gray = cv2.cvtColor(decode(jpg), cv2.COLOR_BGR2GRAY).astype(np.float32)
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) > 0
        assert mask.sum() >= 20, f"image {i}: crack mask nearly empty ({mask.sum()} px)"
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
        contrast = gray[ring].mean() - gray[mask].mean()
        # JPEG blurs hairlines at difficulty 1; at 0.5 the crack is clearly darker.
        assert contrast > {0.0: 40, 0.5: 25, 1.0: 4}[difficulty], (i, contrast)
        jpg_neg, png_neg = synthetic.encode(3, 0, i, difficulty=difficulty)
        assert png_neg is None


def test_difficulty_makes_cracks_thinner_and_fainter() -> None:
    area, depth = {}, {}
    for d in (0.0, 0.5, 1.0):
        a, c = [], []
        for i in range(10):
            rgb, mask = synthetic.render(np.random.default_rng([5, 1, i]), True, difficulty=d)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
            m = mask > 0
            a.append(m.mean())
            c.append(np.median(gray[~m]) - np.median(gray[m]))
        area[d], depth[d] = np.mean(a), np.mean(c)
    assert area[0.0] > area[0.5] > area[1.0]
    assert depth[0.0] > depth[0.5] > depth[1.0]


def test_classes_not_separable_by_global_statistics() -> None:
    """Logistic regression on per-channel mean and std of the saved JPEGs: near chance."""
    features, labels = [], []
    for label in (0, 1):
        for i in range(400):
            image = decode(synthetic.encode(11, label, i)[0]).astype(np.float32)
            features.append(np.r_[image.mean(axis=(0, 1)), image.std(axis=(0, 1))])
            labels.append(label)
    x_train, x_test, y_train, y_test = train_test_split(
        np.array(features), np.array(labels), test_size=0.5, stratify=labels, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train, y_train)
    accuracy = clf.score(x_test, y_test)
    print(f"mean/std logistic regression test accuracy: {accuracy:.3f}")
    assert accuracy <= 0.65
