import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from agejobs.datasets.manifest import MANIFEST_SCHEMA, subject_split
from agejobs.datasets.synthetic import (
    SynthSpec,
    render_face,
    sample_identity,
    sample_nuisance,
    write_synthetic,
)

SMALL = SynthSpec(num_subjects=8, images_per_subject=3, image_size=48, seed=7)


def _manifest(out_dir) -> list[dict]:
    return pq.read_table(os.path.join(out_dir, "manifest.parquet")).to_pylist()


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    counts = write_synthetic(str(out), SMALL)
    return out, counts, _manifest(out)


def test_manifest_schema_and_counts(small_dataset):
    out, counts, rows = small_dataset
    table = pq.read_table(os.path.join(out, "manifest.parquet"))
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert counts["rows_ok"] == len(rows) == SMALL.num_subjects * SMALL.images_per_subject
    assert counts["rows_rejected"] == 0
    assert counts["train"] + counts["test"] == counts["rows_ok"]
    assert counts["test"] == sum(r["split"] == "test" for r in rows)
    assert counts["subjects"] == SMALL.num_subjects
    for row in rows:
        assert row["dataset"] == "synthetic"
        assert os.path.isabs(row["path"]) and os.path.isfile(row["path"])
        assert os.path.basename(row["path"]) == f"{row['image_id']}.jpg"
        assert re.fullmatch(r"s\d{6}", row["subject_id"])
        assert re.fullmatch(re.escape(row["subject_id"]) + r"_\d{2}", row["image_id"])
    assert len({r["image_id"] for r in rows}) == len(rows)


def test_images_decode_to_requested_size_rgb(small_dataset):
    _, _, rows = small_dataset
    for row in rows:
        with Image.open(row["path"]) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (SMALL.image_size, SMALL.image_size)


def test_subjects_keep_gender_split_and_nearby_ages(small_dataset):
    _, _, rows = small_dataset
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject_id"], []).append(row)
    for subject_id, photos in by_subject.items():
        assert len({p["gender"] for p in photos}) == 1
        assert {p["split"] for p in photos} == {subject_split(subject_id, SMALL.test_fraction, SMALL.seed)}
        ages = [p["age"] for p in photos]
        assert max(ages) - min(ages) <= 4
        assert all(SMALL.min_age <= a <= SMALL.max_age for a in ages)


def test_same_seed_is_identical_and_other_seed_differs(tmp_path, small_dataset):
    _, _, first = small_dataset
    again_dir, other_dir = tmp_path / "again", tmp_path / "other"
    write_synthetic(str(again_dir), SMALL)
    write_synthetic(str(other_dir), SynthSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    again, other = _manifest(again_dir), _manifest(other_dir)

    def labels(rows):
        return [{k: v for k, v in r.items() if k != "path"} for r in rows]

    assert labels(again) == labels(first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(_pixels(a["path"]), _pixels(b["path"]))
    assert [r["age"] for r in other] != [r["age"] for r in first]
    assert not np.array_equal(_pixels(other[0]["path"]), _pixels(first[0]["path"]))


def test_render_face_is_a_pure_function():
    identity = sample_identity(np.random.default_rng(1), gender=1)
    nuisance = sample_nuisance(np.random.default_rng(2))
    a = render_face(33.5, 1, identity, nuisance, 64)
    b = render_face(33.5, 1, identity, nuisance, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_age_range_respected_and_roughly_uniform(tmp_path):
    spec = SynthSpec(num_subjects=240, images_per_subject=1, image_size=16, min_age=1, max_age=80, seed=3)
    write_synthetic(str(tmp_path), spec)
    rows = _manifest(tmp_path)
    ages = np.array([r["age"] for r in rows])
    assert ages.min() >= 1 and ages.max() <= 80
    quarters = np.histogram(ages, bins=4, range=(1, 81))[0] / len(ages)
    assert quarters.min() > 0.15, quarters
    # Hash split of 240 subjects: expect ~48 test subjects; 3 sigma is about +-19.
    n_test = sum(r["split"] == "test" for r in rows)
    assert 25 <= n_test <= 75
    genders = [r["gender"] for r in rows]
    assert 0.3 < np.mean(genders) < 0.7


def test_narrow_age_range(tmp_path):
    spec = SynthSpec(num_subjects=5, images_per_subject=4, image_size=24, min_age=30, max_age=32)
    write_synthetic(str(tmp_path), spec)
    assert {r["age"] for r in _manifest(tmp_path)} <= {30, 31, 32}


def test_age_changes_the_picture_more_than_a_few_months():
    """Same person, same photo conditions: decades of aging must change the face a lot."""
    distances = {"months": [], "child_to_adult": [], "adult_to_old": []}
    for k in range(6):
        rng = np.random.default_rng(100 + k)
        gender = k % 2
        identity = sample_identity(rng, gender)
        nuisance = sample_nuisance(rng)

        def face(age, gender=gender, identity=identity, nuisance=nuisance):
            return render_face(age, gender, identity, nuisance, 64).astype(float)

        distances["months"].append(np.abs(face(40.0) - face(40.4)).mean())
        distances["child_to_adult"].append(np.abs(face(3.0) - face(30.0)).mean())
        distances["adult_to_old"].append(np.abs(face(30.0) - face(75.0)).mean())
    months = np.mean(distances["months"])
    assert np.mean(distances["child_to_adult"]) > 3 * months
    assert np.mean(distances["adult_to_old"]) > 3 * months


def test_young_and_old_faces_are_separable_across_people():
    """Across random people, poses and backgrounds, a simple classifier on small grayscale
    thumbnails tells under-12s from over-65s on held-out people well above chance."""
    from sklearn.linear_model import LogisticRegression

    def thumbnails(seed, n):
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for i in range(n):
            old = i % 2
            age = rng.uniform(66, 80) if old else rng.uniform(1, 12)
            gender = int(rng.integers(2))
            pixels = render_face(age, gender, sample_identity(rng, gender), sample_nuisance(rng), 48)
            gray = Image.fromarray(pixels).convert("L").resize((16, 16), Image.BILINEAR)
            xs.append(np.asarray(gray, float).ravel() / 255.0)
            ys.append(old)
        return np.array(xs), np.array(ys)

    x_train, y_train = thumbnails(0, 200)
    x_test, y_test = thumbnails(1, 100)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train)
    assert model.score(x_test, y_test) > 0.75


def test_rejects_ages_the_manifest_cannot_hold(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic(str(tmp_path), SynthSpec(num_subjects=1, min_age=10, max_age=130))
    with pytest.raises(ValueError):
        write_synthetic(str(tmp_path), SynthSpec(num_subjects=1, min_age=40, max_age=30))
