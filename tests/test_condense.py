"""Gallery condensation: per-(age, gender) prototypes."""

import numpy as np
import pytest

from agejobs.condense import per_age_prototypes


def gallery(seed=0):
    rng = np.random.default_rng(seed)
    ages = np.repeat([20, 21, 40], [30, 2, 12])
    genders = np.array([0, 1] * 22)
    return {
        "image_id": np.array([f"f{i}" for i in range(len(ages))], dtype=object),
        "age": ages,
        "gender": genders,
        "age_embedding": (ages[:, None] + rng.normal(size=(len(ages), 70))).astype(np.float32),
        "gender_embedding": (genders[:, None] * 5 + rng.normal(size=(len(ages), 10))).astype(np.float32),
    }


def test_groups_larger_than_k_become_k_prototypes_and_small_groups_stay_as_they_are():
    columns = gallery()
    condensed = per_age_prototypes(columns, per_group=4)
    groups = {}
    for age, gender in zip(condensed["age"], condensed["gender"]):
        groups[(int(age), int(gender))] = groups.get((int(age), int(gender)), 0) + 1
    # (20, 0) and (20, 1): 15 faces each -> 4; (21, *): 1 face each, kept; (40, *): 6 each -> 4.
    assert groups == {(20, 0): 4, (20, 1): 4, (21, 0): 1, (21, 1): 1, (40, 0): 4, (40, 1): 4}
    kept = [i for i, name in enumerate(condensed["image_id"]) if not str(name).startswith("prototype:")]
    originals = {name: i for i, name in enumerate(columns["image_id"])}
    for i in kept:  # real faces carried over unchanged
        np.testing.assert_array_equal(
            condensed["age_embedding"][i], columns["age_embedding"][originals[condensed["image_id"][i]]]
        )
    assert condensed["age_embedding"].shape == (18, 70) and condensed["gender_embedding"].shape == (18, 10)
    assert condensed["age_embedding"].dtype == np.float32


def test_one_prototype_of_a_group_is_its_coordinate_wise_median():
    columns = gallery()
    condensed = per_age_prototypes(columns, per_group=1)
    group = (columns["age"] == 40) & (columns["gender"] == 1)
    row = [i for i, (a, g) in enumerate(zip(condensed["age"], condensed["gender"])) if (a, g) == (40, 1)][0]
    np.testing.assert_allclose(
        condensed["age_embedding"][row], np.median(columns["age_embedding"][group], axis=0), rtol=1e-6
    )


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="prototypes per age"):
        per_age_prototypes(gallery(), 0)
