"""Deterministic synthetic face-like images with age and gender labels.

The demo and the tests need face images with a learnable age signal but nothing downloaded, so
this module draws cartoon faces whose appearance follows the main visual age cues:

* shape, mostly in childhood: a round head with a large cranium and small lower face, big
  eyes set low in the head, small nose and ears; with growth the jaw lengthens and tapers;
* texture and slow shape change in adulthood: forehead lines, crow's feet, nasolabial folds and
  eye bags (from the late twenties on), graying hair (from the late thirties on, at a rate that
  varies per person), a receding hairline in some men, age spots, sagging jowls, thinner lips,
  drooping lids, and ears and nose that keep growing.

Everything else varies so the age signal is not a few fixed pixels: identity (skin tone, face
proportions, hair colour and style, how fast the person ages), gender cues that overlap (hair
length, beards, lipstick, brows), pose, lighting, background, blur, noise and JPEG artefacts.
A linear model on raw pixels therefore does clearly worse than a small CNN.

Generation is deterministic: subject k draws everything from a generator seeded with
(spec.seed, k), so subjects can be generated in any order or in parallel chunks.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from agejobs import storage
from agejobs.datasets.face_drawing import (
    AGE_SPREAD,
    BACKGROUNDS,
    BEARDS,
    EYE_COLORS,
    HAIR_COLORS,
    HAIR_STYLES,
    LIPSTICKS,
    MALE,
    SKIN_TONES,
    render_face,
)
from agejobs.datasets.manifest import MAX_AGE, MIN_AGE, rows_to_table, subject_split, write_table_atomic

WRITE_BATCH = 256  # images per batched write


@dataclass
class SynthSpec:
    num_subjects: int = 600
    images_per_subject: int = 5
    image_size: int = 80  # saved JPEG side in pixels
    min_age: int = 1
    max_age: int = 80
    test_fraction: float = 0.2
    seed: int = 0
    jpeg_quality: int = 90


# ----------------------------------------------------------------------------- sampling


def _floats(values) -> list[float]:
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- age model


def sample_identity(rng: np.random.Generator, gender: int) -> dict:
    """What stays fixed for one person across photos: proportions, colours, style, aging rate."""
    male = gender == MALE
    skin = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))], float) + rng.normal(0, 8, 3)
    colours, weights = zip(*HAIR_COLORS)
    hair = np.array(colours[rng.choice(len(colours), p=np.array(weights) / sum(weights))], float)
    # Gender cues overlap on purpose: some men have long hair, some women short hair.
    style_probs = [0.25, 0.6, 0.08, 0.07] if male else [0.02, 0.13, 0.3, 0.55]
    beard = BEARDS[rng.choice(4, p=[0.35, 0.35, 0.15, 0.15])] if male else "none"
    lip = skin * np.array([0.95, 0.62, 0.62]) + np.array([25, 5, 10])
    return {
        "gender": int(gender),
        "skin": _floats(np.clip(skin, 40, 255)),
        "face_width": float(rng.uniform(0.9, 1.1)),
        "jaw_length": float(rng.uniform(0.92, 1.08)),
        "jaw_taper": float(rng.uniform(-0.06, 0.06)),
        "jaw_square": float(rng.uniform(1.5, 3.0) + (0.8 if male else 0.0)),
        "eye_spacing": float(rng.uniform(0.36, 0.44)),
        "eye_size": float(rng.uniform(0.9, 1.1)),
        "eye_color": _floats(np.array(EYE_COLORS[rng.integers(len(EYE_COLORS))]) + rng.normal(0, 6, 3)),
        "nose_width": float(rng.uniform(0.85, 1.15)),
        "nose_length": float(rng.uniform(0.9, 1.1)),
        "mouth_width": float(rng.uniform(0.9, 1.1)),
        "lip_thickness": float(rng.uniform(0.8, 1.2) * (1.0 if male else 1.12)),
        "lip_color": _floats(np.clip(lip + rng.normal(0, 6, 3), 0, 255)),
        "lipstick": _floats(LIPSTICKS[rng.integers(len(LIPSTICKS))]) if not male and rng.random() < 0.5 else None,
        "brow_thickness": float((1.4 if male else 0.9) * rng.uniform(0.75, 1.25)),
        "brow_arch": float(rng.uniform(0.02, 0.1) + (0.0 if male else 0.04)),
        "hair_color": _floats(np.clip(hair + rng.normal(0, 6, 3), 0, 255)),
        "hair_style": HAIR_STYLES[rng.choice(4, p=style_probs)],
        "hair_volume": float(rng.uniform(0.6, 1.4)),
        "fringe": bool(rng.random() < 0.3),
        "curl": float(rng.uniform(0.0, 1.0)),
        "beard": beard,
        # Aging varies between people: texture cues run on age + aging_offset, graying starts at
        # gray_onset and takes gray_years to complete, only some men go bald.
        "aging_offset": float(rng.normal(0.0, 3.0)),
        "wrinkle_propensity": float(rng.uniform(0.75, 1.25)),
        "gray_onset": float(rng.normal(38.0, 5.0)),
        "gray_years": float(rng.uniform(25.0, 40.0)),
        "bald_strength": float(rng.uniform(0.4, 1.0)) if male and rng.random() < 0.55 else 0.0,
        "texture_seed": int(rng.integers(2**31)),
    }


def sample_nuisance(rng: np.random.Generator) -> dict:
    """What changes between two photos of the same person: pose, light, background, camera."""
    return {
        "rotation_deg": float(rng.uniform(-15, 15)),
        "scale": float(rng.uniform(0.9, 1.1)),
        "shift": _floats(rng.uniform(-0.08, 0.08, 2)),  # fraction of the image side
        "light_angle": float(rng.uniform(0, 2 * math.pi)),
        "light_strength": float(rng.uniform(0.0, 0.45)),
        "brightness": float(rng.uniform(0.75, 1.15)),
        "contrast": float(rng.uniform(0.75, 1.2)),
        "color_cast": _floats(np.clip(rng.normal(0.0, 0.05, 3), -0.1, 0.1)),
        "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        "bg_colors": [_floats(rng.uniform(0, 255, 3)), _floats(rng.uniform(0, 255, 3))],
        "clothing_color": _floats(rng.uniform(0, 255, 3)),
        "smile": float(rng.uniform(-0.3, 1.0)),
        "gaze": _floats(rng.uniform(-0.35, 0.35, 2)),
        "noise_sigma": float(rng.uniform(0.0, 7.0)),
        "blur_radius": float(rng.uniform(0.2, 0.8)) if rng.random() < 0.3 else 0.0,
        "precompress_quality": int(rng.integers(40, 86)) if rng.random() < 0.25 else 0,
        "seed": int(rng.integers(2**31)),
    }


def _subject_ages(rng: np.random.Generator, spec: SynthSpec) -> list[int]:
    """A base age plus small offsets; bases stop AGE_SPREAD short of max so ages stay ~uniform."""
    spread = min(AGE_SPREAD, spec.max_age - spec.min_age)
    base = int(rng.integers(spec.min_age, spec.max_age - spread + 1))
    offsets = rng.integers(0, spread + 1, spec.images_per_subject)
    return [int(base + o) for o in offsets]


def generate_subject(subject: int, spec: SynthSpec) -> list[tuple[str, int, int, np.ndarray]]:
    """All photos of one subject as (image_id, age, gender, pixels); independent of other subjects."""
    rng = np.random.default_rng([spec.seed, subject])
    gender = int(rng.integers(2))
    identity = sample_identity(rng, gender)
    photos = []
    for k, age in enumerate(_subject_ages(rng, spec)):
        nuisance = sample_nuisance(rng)
        shown_age = age + float(rng.random())  # someone "30" is anywhere in 30.0..30.99
        pixels = render_face(shown_age, gender, identity, nuisance, spec.image_size)
        photos.append((f"s{subject:06d}_{k:02d}", age, gender, pixels))
    return photos


def write_synthetic(out_dir: str, spec: SynthSpec, progress: bool = False) -> dict:
    """Write out_dir/images/<image_id>.jpg and out_dir/manifest.parquet; return row counts."""
    if not MIN_AGE <= spec.min_age <= spec.max_age <= MAX_AGE:
        raise ValueError(f"age range {spec.min_age}..{spec.max_age} not within {MIN_AGE}..{MAX_AGE}")
    if spec.seed < 0:
        raise ValueError("seed must be >= 0 (it seeds numpy SeedSequence)")
    out_dir = storage.absolute(out_dir)
    image_dir = storage.join(out_dir, "images")
    subjects = range(spec.num_subjects)
    if progress:
        from tqdm import tqdm

        subjects = tqdm(subjects, desc="synthetic faces", unit="subject")
    rows = []
    pending: dict[str, bytes] = {}  # written in batches: concurrent PUTs on object stores
    for subject in subjects:
        subject_id = f"s{subject:06d}"
        split = subject_split(subject_id, spec.test_fraction, spec.seed)
        for image_id, age, gender, pixels in generate_subject(subject, spec):
            path = storage.join(image_dir, f"{image_id}.jpg")
            encoded = io.BytesIO()
            Image.fromarray(pixels).save(encoded, format="JPEG", quality=spec.jpeg_quality)
            pending[path] = encoded.getvalue()
            rows.append(
                {
                    "image_id": image_id,
                    "path": path,
                    "age": age,
                    "gender": gender,
                    "subject_id": subject_id,
                    "split": split,
                    "dataset": "synthetic",
                }
            )
        if len(pending) >= WRITE_BATCH:
            storage.write_many(pending)
            pending = {}
    storage.write_many(pending)
    write_table_atomic(rows_to_table(rows), storage.join(out_dir, "manifest.parquet"))
    n_test = sum(row["split"] == "test" for row in rows)
    return {
        "rows_ok": len(rows),
        "rows_rejected": 0,
        "train": len(rows) - n_test,
        "test": n_test,
        "subjects": spec.num_subjects,
    }


def embedding_like_vectors(
    rows: int, dim: int = 70, latent_dim: int = 8, noise: float = 0.05, seed: int = 0, manifold_seed: int = 0
):
    """(rows, dim) float32 vectors shaped like a trained embedding: a low-dimensional manifold
    (a random linear image of `latent_dim` Gaussian factors, bent by a tanh) plus a little noise.

    For benchmarking nearest-neighbour search at sizes no real gallery here reaches. An isotropic
    Gaussian in 70 dimensions is the wrong stand-in: its distances concentrate, so "nearest"
    means little and every approximate index looks broken on it."""
    import numpy as np

    # Galleries and queries drawn with different `seed`s share the manifold of `manifold_seed`.
    projection = np.random.default_rng(manifold_seed).normal(size=(latent_dim, dim)).astype(np.float32)
    projection /= np.sqrt(latent_dim)
    rng = np.random.default_rng(seed)
    vectors = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 65536):  # bounded temporaries for million-row galleries
        count = min(65536, rows - start)
        latent = rng.normal(size=(count, latent_dim)).astype(np.float32)
        block = np.tanh(latent @ projection) * 10
        vectors[start : start + count] = block + noise * 10 * rng.normal(size=(count, dim)).astype(np.float32)
    return vectors
