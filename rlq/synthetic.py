"""Synthetic clothes-changing ReID dataset in the real LTCC and Celeb-reID layouts.

The real datasets are licensed and cannot ship, so the quickstart, the
end-to-end tests and CI run on this generator, read by the same parsers and
pre-processors as real data::

    DIR/target/LTCC_ReID/{train,query,test}/PPP_C_cX_FFFFFF.png   (test = gallery)
    DIR/target/{gender.csv, keypoints.json, parsing/<split>/<stem>.png}
    DIR/external/{train,query,gallery}/{pid}_{index}_{k}.jpg      (Celeb-reID layout)
    DIR/external/{gender.csv, keypoints.json, parsing/<split>/<stem>.png}
    DIR/{manifest.json, meta.json, contact_sheet.png}

``gender.csv`` is in the authors' format, ``keypoints.json`` in AlphaPose's
results format (a few images deliberately missed, a few with a spurious second
person), parsing maps hold LIP label ids. ``meta.json`` is the ground truth
behind every image; ``manifest.json`` (written last) marks a complete dataset.

People are orthographic projections of a small 3-D skeleton: identity traits
(gender, stature, body proportions, head size, skin tone, hair colour and
length) persist across outfits, clothes change per outfit, pose per image, and
cameras change background, lighting, framing and quality. Keypoints and parsing
maps come from the very geometry that is drawn, so they are exact.

Every image is rendered from its own random stream seeded by (seed, part, image
index), so the output is byte-identical for a seed whatever the worker count.

    python -m rlq.synthetic --output DIR [--seed S] [--preset small|medium|large] [size options]

From Python: ``generate(out, seed, preset, **overrides)`` or
``ensure_synthetic(root=None, seed=0, preset="small")`` (generates only when
the folder is missing or incomplete).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import tyro
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from rlq.files import die_with_parent, ends_cleanly, remove_stale_temporaries
from rlq.options import formerly


class SynthConfigError(ValueError):
    """Sizes of the generated dataset that cannot make a clothes-changing dataset."""


# Bump whenever the output changes: caches written by another version are regenerated.
GENERATOR_VERSION = 3

# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the generated dataset; ranges are inclusive (min, max)."""

    target_train_ids: int = 30
    target_test_ids: int = 20
    target_cameras: int = 8
    target_outfits: tuple[int, int] = (2, 4)  # outfits per target identity
    cameras_per_outfit: tuple[int, int] = (2, 4)
    shots_per_camera: tuple[int, int] = (2, 4)  # images per (outfit, camera)
    external_train_ids: int = 60
    external_test_ids: int = 30
    external_outfits: tuple[int, int] = (3, 6)
    external_images: tuple[int, int] = (10, 16)  # images per external identity
    image_height: int = 128  # stored height of a high-quality crop
    target_wardrobe: int = 40  # distinct outfits the target identities draw theirs from (0: every outfit new)
    external_wardrobe: int = 120  # the same for the external part


PRESETS: dict[str, SynthConfig] = {
    "small": SynthConfig(),
    "medium": SynthConfig(
        target_train_ids=77,
        target_test_ids=75,
        target_cameras=12,
        target_outfits=(2, 5),
        cameras_per_outfit=(2, 5),
        shots_per_camera=(3, 6),
        external_train_ids=300,
        external_test_ids=200,
        external_outfits=(3, 8),
        external_images=(12, 20),
        image_height=192,
    ),
    "large": SynthConfig(
        target_train_ids=77,
        target_test_ids=75,
        target_cameras=12,
        target_outfits=(2, 5),
        cameras_per_outfit=(3, 6),
        shots_per_camera=(5, 9),
        external_train_ids=632,
        external_test_ids=420,
        external_outfits=(4, 10),
        external_images=(12, 24),
        image_height=256,
    ),
}

SUPERSAMPLE = 2  # figures are drawn at 2x the HQ height, then downsampled (anti-aliasing)
MISSING_POSE_FRACTION = 0.025  # images left without any AlphaPose record
EXTRA_POSE_FRACTION = 0.015  # images with a second, lower-scoring spurious person
EXTERNAL_SCENES = 12

TARGET, EXTERNAL = "target", "external"
PART_CODE = {TARGET: 0, EXTERNAL: 1}
# Independent random streams, so that e.g. adding a camera does not change clothes.
_IDENTITY, _OUTFIT, _CAMERA, _PLAN, _IMAGE = range(1, 6)

TARGET_SPLITS = ("train", "query", "test")
EXTERNAL_SPLITS = ("train", "query", "gallery")

# LIP label ids used by the parsing maps.
BACKGROUND, HAT, HAIR, UPPER, COAT, PANTS, SKIRT, FACE = 0, 1, 2, 5, 7, 9, 12, 13
LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, LEFT_SHOE, RIGHT_SHOE = 14, 15, 16, 17, 18, 19
LIP_LABELS_USED = (BACKGROUND, HAT, HAIR, UPPER, COAT, PANTS, SKIRT, FACE,
                   LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, LEFT_SHOE, RIGHT_SHOE)

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)

RGB = tuple[int, int, int]

# Shared clothes palette: every identity draws from it, so a colour never
# gives an identity away. Weights favour the colours common in the street.
CLOTHES_PALETTE: dict[str, RGB] = {
    "black": (32, 32, 34), "white": (232, 232, 226), "grey": (128, 128, 130),
    "charcoal": (72, 72, 78), "navy": (32, 42, 92), "blue": (42, 92, 200),
    "sky": (125, 172, 225), "red": (200, 38, 42), "maroon": (112, 28, 38),
    "green": (42, 142, 62), "olive": (112, 116, 52), "yellow": (232, 198, 52),
    "orange": (232, 122, 34), "pink": (232, 152, 182), "purple": (112, 52, 142),
    "beige": (200, 180, 140), "brown": (122, 82, 46), "denim": (62, 86, 132),
    "teal": (32, 130, 132),
}
TOP_WEIGHTS = {name: 1.0 for name in CLOTHES_PALETTE} | {"black": 1.6, "white": 1.6, "grey": 1.3}
BOTTOM_WEIGHTS = {"black": 3.0, "denim": 3.0, "navy": 2.0, "grey": 1.5, "charcoal": 1.5,
                  "beige": 1.5, "brown": 1.0, "white": 0.8, "olive": 0.8, "blue": 0.6,
                  "red": 0.4, "maroon": 0.4, "green": 0.3, "pink": 0.3, "sky": 0.4}
SHOE_COLOURS: tuple[RGB, ...] = ((25, 25, 25), (235, 235, 235), (95, 60, 35), (120, 120, 125), (180, 40, 40))
SKIN_TONES = np.array([(250, 220, 196), (236, 192, 160), (205, 152, 115),
                       (160, 110, 78), (112, 74, 52), (78, 52, 38)], dtype=np.float64)
# Hair colours, skin tones and builds are spread widely enough to tell people apart at 64x32
# pixels, where faces are a few pixels: they are the identity cues that survive a change of clothes.
HAIR_COLOURS: tuple[tuple[RGB, float], ...] = (
    ((28, 24, 22), 0.26), ((62, 42, 30), 0.2), ((112, 76, 46), 0.14), ((146, 72, 40), 0.1),
    ((214, 184, 118), 0.12), ((168, 164, 158), 0.08), ((236, 226, 200), 0.05), ((168, 38, 44), 0.05),
)
# Hair styles: (probability for female, for male, front cap half-span in
# degrees, length below the chin in body heights; <= 0 means no hanging hair).
HAIR_STYLES = (
    (0.02, 0.22, 62.0, -1.0),  # buzz cut
    (0.14, 0.56, 80.0, 0.0),  # short
    (0.34, 0.17, 86.0, 0.07),  # shoulder length
    (0.50, 0.05, 90.0, 0.18),  # long
)


def _rng(*keys: int) -> np.random.Generator:
    """A generator seeded only by the given integers (never by shared state)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _jitter(rng: np.random.Generator, colour, sigma: float) -> RGB:
    c = np.asarray(colour, dtype=np.float64) + rng.normal(0.0, sigma, 3)
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))


def _weighted_choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[rng.choice(len(names), p=p / p.sum())]


def _randint(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def pid_text(part: str, pid: int) -> str:
    """The identity as written in file names and gender.csv: 3-digit for LTCC, unpadded for Celeb-reID."""
    return f"{pid:03d}" if part == TARGET else str(pid)


# ----------------------------------------------------------------------------
# Identities, outfits, cameras
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Traits that persist across outfits; lengths are in body heights."""

    gender: int  # 1 male, 0 female (the authors' convention)
    height: float  # stature factor: taller people fill more of a crop of the same size
    head: float  # head height
    shoulder: float  # shoulder half width
    waist: float  # waist half width
    hip: float  # hip half width
    leg: float  # hip-joint height above the soles
    arm: float  # arm length factor
    limb: float  # limb thickness factor
    skin: RGB
    hair: RGB
    hair_cover: float  # front half-span of the hair cap (degrees)
    hair_length: float  # hanging hair below the chin (<= 0: none)
    arm_swing: float  # personal gait amplitude factor


def sample_identity(rng: np.random.Generator) -> Identity:
    male = bool(rng.random() < 0.5)
    build = rng.uniform(0.82, 1.25)
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[s[1] if male else s[0] for s in HAIR_STYLES])]
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=[w for _, w in HAIR_COLOURS])][0]
    tone = rng.uniform(0.0, len(SKIN_TONES) - 1.0)
    lo = int(tone)
    skin = SKIN_TONES[lo] + (SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[lo]) * (tone - lo)
    return Identity(
        gender=int(male),
        height=(rng.normal(1.03, 0.045) if male else rng.normal(0.97, 0.045)),
        head=rng.uniform(0.12, 0.155),
        shoulder=(rng.normal(0.124, 0.007) if male else rng.normal(0.104, 0.006)) * math.sqrt(build),
        waist=(0.086 if male else 0.070) * build * rng.uniform(0.94, 1.06),
        hip=(rng.normal(0.088, 0.005) if male else rng.normal(0.101, 0.005)) * build,
        leg=rng.uniform(0.45, 0.50),
        arm=rng.uniform(0.94, 1.06),
        limb=(1.0 if male else 0.87) * build * rng.uniform(0.92, 1.08),
        skin=_jitter(rng, skin, 3.0),
        hair=_jitter(rng, hair, 3.0),
        hair_cover=style[2] + rng.uniform(-4.0, 4.0),
        hair_length=style[3] + (rng.uniform(-0.02, 0.04) if style[3] > 0 else 0.0),
        arm_swing=rng.uniform(0.7, 1.3),
    )


@dataclass(frozen=True)
class Outfit:
    """One set of clothes; a person wears several across the dataset."""

    top: RGB
    top2: RGB  # second colour of a patterned top
    top_pattern: str  # solid | stripes | checks | block
    coat: bool  # long coat (LIP label 7) instead of a shirt
    sleeve: str  # none | short | long
    top_hem: float  # hem below the hip line
    bottom_kind: str  # trousers | shorts | skirt
    bottom: RGB
    bottom2: RGB
    bottom_pattern: str  # solid | checks
    bottom_len: float  # shorts: fraction of the thigh; skirt: fraction of the leg
    shoes: RGB
    hat: RGB | None  # a cap (LIP label 1), now and then


def sample_outfit(rng: np.random.Generator, gender: int) -> Outfit:
    top_name = _weighted_choice(rng, TOP_WEIGHTS)
    top2_name = _weighted_choice(rng, {k: w for k, w in TOP_WEIGHTS.items() if k != top_name})
    bottom_name = _weighted_choice(rng, BOTTOM_WEIGHTS)
    bottom2_name = _weighted_choice(rng, {k: w for k, w in BOTTOM_WEIGHTS.items() if k != bottom_name})
    coat = bool(rng.random() < 0.1)
    kinds, p = ("trousers", "shorts", "skirt"), ((0.75, 0.25, 0.0) if gender else (0.45, 0.2, 0.35))
    kind = kinds[rng.choice(3, p=p)]
    bottom_len = {"trousers": 1.0, "shorts": rng.uniform(0.55, 0.85), "skirt": rng.uniform(0.45, 0.8)}[kind]
    return Outfit(
        top=_jitter(rng, CLOTHES_PALETTE[top_name], 6.0),
        top2=_jitter(rng, CLOTHES_PALETTE[top2_name], 6.0),
        top_pattern=str(rng.choice(["solid", "stripes", "checks", "block"], p=[0.5, 0.2, 0.15, 0.15])),
        coat=coat,
        sleeve="long" if coat else str(rng.choice(["none", "short", "long"], p=[0.12, 0.44, 0.44])),
        top_hem=rng.uniform(0.15, 0.22) if coat else rng.uniform(-0.02, 0.05),
        bottom_kind=kind,
        bottom=_jitter(rng, CLOTHES_PALETTE[bottom_name], 6.0),
        bottom2=_jitter(rng, CLOTHES_PALETTE[bottom2_name], 6.0),
        bottom_pattern=str(rng.choice(["solid", "checks"], p=[0.88, 0.12])),
        bottom_len=bottom_len,
        shoes=SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))],
        hat=_jitter(rng, CLOTHES_PALETTE[_weighted_choice(rng, TOP_WEIGHTS)], 6.0) if rng.random() < 0.08 else None,
    )


class Wardrobe:
    """The outfits of one part, shared by its identities: the same clothes are worn by several people,
    as in the street, so an outfit alone cannot name a person.

    Each gender draws from its own half (skirts are drawn for women only); one person never wears the
    same wardrobe outfit twice. A size of 0 gives every person outfits of their own.
    """

    def __init__(self, seed: int, part: str, size: int) -> None:
        self.seed, self.part, self.size = seed, part, size
        self.outfits = [sample_outfit(_rng(seed, _OUTFIT, PART_CODE[part], 0, i), i % 2) for i in range(size)]

    def draw(self, rng: np.random.Generator, gender: int, count: int, owner: tuple[int, ...]) -> list[Outfit]:
        """`count` outfits for a person of `gender`; `owner` seeds the person's own outfits when size is 0."""
        if self.size == 0:
            return [sample_outfit(_rng(self.seed, _OUTFIT, PART_CODE[self.part], 1, *owner, o), gender) for o in range(count)]
        choices = [o for i, o in enumerate(self.outfits) if i % 2 == gender]
        if count > len(choices):
            raise SynthConfigError(f"a wardrobe of {self.size} has {len(choices)} outfits per gender, fewer than {count}")
        return [choices[i] for i in rng.choice(len(choices), count, replace=False)]


@dataclass(frozen=True)
class Camera:
    """A viewpoint: its scene, lighting, framing, preferred view and quality."""

    number: int  # 1-based (LTCC file names); scene number for the external part
    quality: str  # a QUALITY key
    canvas: int  # drawing height in pixels (width is half): SUPERSAMPLE x the stored height
    wall: RGB
    floor: RGB
    horizon: float  # wall / floor boundary, fraction of the height
    bands: tuple[tuple[float, float, float, float, RGB], ...]  # x0, width, top, bottom, colour
    tiles: float  # floor tile spacing as a fraction of the height (0: none)
    noise: float  # sensor noise std (grey levels)
    gain: float
    cast: tuple[float, float, float]
    light_slope: float  # left-to-right brightness change
    person_height: float  # figure height, fraction of the frame
    person_dx: float  # horizontal offset, fraction of the width
    yaw: float  # dominant walking direction seen (degrees, 0 = towards the camera)
    height: int  # stored image height (before per-image jitter)
    blur: float  # Gaussian blur radius at stored size (0: none)
    jpeg: int  # JPEG round-trip quality (0: none)


# Quality classes: (stored height factor range, blur radius range, jpeg quality range).
QUALITY = {
    "hq": ((1.0, 1.0), (0.0, 0.0), (0, 0)),
    "lowres": ((0.375, 0.5), (0.0, 0.0), (35, 60)),
    "blur": ((0.7, 0.9), (0.7, 1.2), (0, 0)),
    "lowres+blur": ((0.4, 0.55), (0.5, 0.8), (40, 70)),
}
# Half the target cameras are high quality; the rest cycle through the degradations.
TARGET_QUALITY_CYCLE = ("hq", "lowres", "hq", "blur", "hq", "lowres+blur", "hq", "lowres")

WALLS: tuple[RGB, ...] = ((196, 192, 184), (170, 172, 176), (214, 206, 186), (150, 156, 150),
                          (186, 196, 204), (120, 118, 114), (206, 200, 206), (176, 160, 140))
FLOORS: tuple[RGB, ...] = ((110, 108, 104), (140, 132, 120), (86, 88, 92), (160, 156, 150),
                           (122, 104, 86), (96, 100, 96))


def sample_camera(rng: np.random.Generator, number: int, quality: str, image_height: int) -> Camera:
    heights, blurs, jpegs = QUALITY[quality]
    height = round(image_height * rng.uniform(*heights))
    bands = []
    for _ in range(rng.integers(1, 4)):
        # Doors, pillars, windows: muted colours, a few saturated ones.
        colour = _jitter(rng, WALLS[rng.integers(len(WALLS))], 30.0) if rng.random() < 0.8 \
            else _jitter(rng, (90, 120, 150), 50.0)
        top = rng.uniform(0.0, 0.3)
        bands.append((rng.uniform(0.0, 2.0), rng.uniform(0.08, 0.4), top, rng.uniform(top + 0.3, 0.9), colour))
    return Camera(
        number=number,
        quality=quality,
        canvas=SUPERSAMPLE * height,
        wall=_jitter(rng, WALLS[rng.integers(len(WALLS))], 10.0),
        floor=_jitter(rng, FLOORS[rng.integers(len(FLOORS))], 10.0),
        horizon=rng.uniform(0.45, 0.8),
        bands=tuple(bands),
        tiles=float(rng.choice([0.0, rng.uniform(0.06, 0.14)])),
        noise=rng.uniform(1.5, 5.0),
        gain=rng.uniform(0.85, 1.12),
        cast=tuple(float(v) for v in rng.uniform(0.94, 1.06, 3)),
        light_slope=rng.uniform(-0.2, 0.2),
        person_height=rng.uniform(0.8, 0.88),
        person_dx=rng.uniform(-0.05, 0.05),
        yaw=float(rng.choice([0.0, 90.0, 45.0, -45.0])) + rng.uniform(-15.0, 15.0),
        height=height,
        blur=rng.uniform(*blurs),
        jpeg=int(rng.integers(jpegs[0], jpegs[1] + 1)) if jpegs[1] else 0,
    )


# ----------------------------------------------------------------------------
# Plan: which image shows whom, in what, where
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render and file one image."""

    part: str  # target | external
    index: int  # unique within the part; seeds the image's random stream
    split: str
    name: str  # file name (globally unique within the part)
    pid: int
    outfit: int  # 1-based outfit number of that person
    identity: Identity
    clothes: Outfit
    camera: Camera
    pose_records: int  # AlphaPose records to write: 0 (missed), 1, or 2 (plus a spurious one)


@dataclass(frozen=True)
class Plan:
    images: tuple[ImageSpec, ...]
    genders: dict[str, list[tuple[str, str, int]]]  # part -> (category, raw pid text, gender)


def _pose_record_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Exactly 2.5% missed detections and 1.5% doubled ones, at random images."""
    counts = np.ones(n, dtype=np.int64)
    order = rng.permutation(n)
    n_missing = round(MISSING_POSE_FRACTION * n)
    counts[order[:n_missing]] = 0
    counts[order[n_missing:n_missing + round(EXTRA_POSE_FRACTION * n)]] = 2
    return counts


def _choose_queries(shots: list[tuple[int, int]], rng: np.random.Generator) -> set[int]:
    """Pick query shots of one test identity from (outfit, camera) pairs.

    One query per outfit (a second one, from another camera, now and then).
    Every outfit is seen by >= 2 cameras, so each query keeps a gallery image
    of the same outfit in another camera and one of another outfit in another
    camera.
    """
    by_outfit: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (outfit, cam) in enumerate(shots):
        by_outfit[outfit][cam].append(i)
    queries: set[int] = set()
    for cams in by_outfit.values():
        cam_ids = sorted(cams)
        n_query = 2 if len(cam_ids) >= 3 and rng.random() < 0.3 else 1
        for cam in rng.choice(cam_ids, n_query, replace=False):
            queries.add(int(rng.choice(cams[int(cam)])))
    return queries


def _check_target_queries(specs: list[ImageSpec]) -> None:
    gallery: dict[int, set[tuple[int, int]]] = defaultdict(set)  # pid -> {(camera, outfit)}
    for g in specs:
        if g.split == "test":
            gallery[g.pid].add((g.camera.number, g.outfit))
    for q in (s for s in specs if s.split == "query"):
        other_cams = [outfit for cam, outfit in gallery[q.pid] if cam != q.camera.number]
        assert any(o != q.outfit for o in other_cams), f"no clothes-changing match for {q.name}"
        assert any(o == q.outfit for o in other_cams), f"no same-clothes match for {q.name}"


def plan_target(cfg: SynthConfig, seed: int) -> tuple[list[ImageSpec], list[tuple[str, str, int]]]:
    rng = _rng(seed, _PLAN, PART_CODE[TARGET])
    n_ids = cfg.target_train_ids + cfg.target_test_ids
    qualities = [TARGET_QUALITY_CYCLE[i % len(TARGET_QUALITY_CYCLE)] for i in range(cfg.target_cameras)]
    qualities = [qualities[i] for i in rng.permutation(len(qualities))]
    cameras = [sample_camera(_rng(seed, _CAMERA, PART_CODE[TARGET], c), c + 1, q, cfg.image_height)
               for c, q in enumerate(qualities)]
    test_pids = set(rng.choice(n_ids, cfg.target_test_ids, replace=False).tolist())
    wardrobe = Wardrobe(seed, TARGET, cfg.target_wardrobe)
    specs: list[ImageSpec] = []
    genders = []
    frame = int(rng.integers(100, 3000))
    for pid in range(n_ids):
        identity = sample_identity(_rng(seed, _IDENTITY, PART_CODE[TARGET], pid))
        genders.append(("test" if pid in test_pids else "train", pid_text(TARGET, pid), identity.gender))
        shots: list[tuple[int, int]] = []
        outfits = {}
        worn = wardrobe.draw(rng, identity.gender, _randint(rng, cfg.target_outfits), (pid,))
        for outfit, clothes in enumerate(worn, 1):
            outfits[outfit] = clothes
            n_cams = min(_randint(rng, cfg.cameras_per_outfit), len(cameras))
            for cam in sorted(rng.choice(len(cameras), n_cams, replace=False).tolist()):
                shots += [(outfit, cam)] * _randint(rng, cfg.shots_per_camera)
        queries = _choose_queries(shots, rng) if pid in test_pids else set()
        for i, (outfit, cam) in enumerate(shots):
            frame += int(rng.integers(1, 20))
            split = "query" if i in queries else ("test" if pid in test_pids else "train")
            camera = cameras[cam]
            name = f"{pid_text(TARGET, pid)}_{outfit}_c{camera.number}_{frame:06d}.png"
            specs.append(ImageSpec(TARGET, len(specs), split, name,
                                   pid, outfit, identity, outfits[outfit], camera, 1))
    if frame >= 1_000_000:
        raise SynthConfigError("too many target images for 6-digit frame numbers")
    _check_target_queries(specs)
    counts = _pose_record_counts(rng, len(specs))
    return [replace(s, pose_records=int(c)) for s, c in zip(specs, counts)], genders


def plan_external(cfg: SynthConfig, seed: int) -> tuple[list[ImageSpec], list[tuple[str, str, int]]]:
    """Celeb-reID layout: ``{pid}_{index}_{k}.jpg``; the first digit of index is a pseudo camera."""
    rng = _rng(seed, _PLAN, PART_CODE[EXTERNAL])
    scenes = [sample_camera(_rng(seed, _CAMERA, PART_CODE[EXTERNAL], c), c + 1, "hq", cfg.image_height)
              for c in range(EXTERNAL_SCENES)]
    wardrobe = Wardrobe(seed, EXTERNAL, cfg.external_wardrobe)
    specs: list[ImageSpec] = []
    genders = []
    n_ids = cfg.external_train_ids + cfg.external_test_ids
    for pid in range(1, n_ids + 1):
        is_test = pid > cfg.external_train_ids
        identity = sample_identity(_rng(seed, _IDENTITY, PART_CODE[EXTERNAL], pid))
        genders.append(("test" if is_test else "train", pid_text(EXTERNAL, pid), identity.gender))
        outfits = wardrobe.draw(rng, identity.gender, _randint(rng, cfg.external_outfits), (pid,))
        n_outfits = len(outfits)
        n_images = max(_randint(rng, cfg.external_images), n_outfits)
        # Every outfit appears at least once; the rest are repeats.
        worn = rng.permutation(list(range(n_outfits)) + rng.integers(0, n_outfits, n_images - n_outfits).tolist())
        indices = sorted(rng.choice(np.arange(1, 3 * n_images + 1), n_images, replace=False).tolist())
        queries: set[int] = set()
        if is_test:
            digits = [str(i)[0] for i in indices]
            assert len(set(digits)) > 1, "external test identity needs two pseudo cameras"
            # Queries come from one leading digit, so other digits stay in the gallery as valid matches.
            digit = digits[int(rng.integers(n_images))]
            pool = [i for i, d in enumerate(digits) if d == digit]
            queries = set(rng.choice(pool, min(len(pool), _randint(rng, (2, 3))), replace=False).tolist())
        for i, (index, o) in enumerate(zip(indices, worn)):
            split = ("query" if i in queries else "gallery") if is_test else "train"
            k = int(rng.random() < 0.2)
            name = f"{pid_text(EXTERNAL, pid)}_{index}_{k}.jpg"
            specs.append(ImageSpec(EXTERNAL, len(specs), split, name, pid, int(o) + 1,
                                   identity, outfits[o], scenes[int(rng.integers(len(scenes)))], 1))
    counts = _pose_record_counts(rng, len(specs))
    return [replace(s, pose_records=int(c)) for s, c in zip(specs, counts)], genders


def _validate(cfg: SynthConfig) -> None:
    """Limits of the layouts, and what guarantees a valid match for every query."""
    problems = [
        (cfg.target_train_ids + cfg.target_test_ids > 1000, "at most 1000 target ids (3-digit pids)"),
        (min(cfg.target_train_ids, cfg.target_test_ids, cfg.external_train_ids, cfg.external_test_ids) < 1,
         "at least one identity in every part and split"),
        (cfg.target_outfits[0] < 2, "target identities need >= 2 outfits (clothes-changing queries)"),
        (cfg.target_cameras < 2 or cfg.cameras_per_outfit[0] < 2, ">= 2 cameras, and >= 2 per outfit"),
        (cfg.shots_per_camera[0] < 2, ">= 2 shots per camera, so a query never takes a camera's only image"),
        (cfg.external_images[0] < 2, ">= 2 images per external identity (two pseudo cameras)"),
        (cfg.external_outfits[0] < 1, ">= 1 outfit per external identity"),
        (min(cfg.target_wardrobe, cfg.external_wardrobe) < 0, "wardrobe sizes must be >= 0"),
        (0 < cfg.target_wardrobe < 2 * cfg.target_outfits[1], "a target wardrobe needs >= 2 x the most outfits per identity"),
        (0 < cfg.external_wardrobe < 2 * cfg.external_outfits[1],
         "an external wardrobe needs >= 2 x the most outfits per identity"),
        (any(lo > hi for lo, hi in (cfg.target_outfits, cfg.cameras_per_outfit, cfg.shots_per_camera,
                                    cfg.external_outfits, cfg.external_images)), "ranges must be (min, max)"),
    ]
    errors = [message for failed, message in problems if failed]
    if errors:
        raise SynthConfigError("invalid synthetic config: " + "; ".join(errors))


def build_plan(cfg: SynthConfig, seed: int) -> Plan:
    _validate(cfg)
    target, target_genders = plan_target(cfg, seed)
    external, external_genders = plan_external(cfg, seed)
    return Plan(tuple(target + external), {TARGET: target_genders, EXTERNAL: external_genders})


# ----------------------------------------------------------------------------
# Pose and skeleton (body-height units, y down, soles at y = 1)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    yaw: float  # radians; 0 faces the camera, pi/2 walks to the image right
    phase: float  # walking phase
    stride: float  # 0 standing .. 1 full stride


def sample_pose(rng: np.random.Generator, camera: Camera) -> Pose:
    """Views follow the camera's walking direction (both ways), sometimes anything."""
    if rng.random() < 0.75:
        yaw = camera.yaw + 180.0 * rng.integers(2) + rng.normal(0.0, 18.0)
    else:
        yaw = rng.uniform(0.0, 360.0)
    return Pose(math.radians(yaw), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.25, 1.0))


def _direction(side: float, spread: float, swing: float) -> np.ndarray:
    """Unit vector hanging down, swung forward by `swing` and out sideways by `spread` (radians)."""
    return np.array([side * math.sin(spread), math.cos(spread) * math.cos(swing), math.cos(spread) * math.sin(swing)])


def skeleton(ident: Identity, pose: Pose) -> dict[str, np.ndarray]:
    """3-D joints in the person frame: x = the person's left, y = down, z = forward."""
    head_r = ident.head / 2
    shoulder_y = ident.head + 0.045
    hip_y = 1.0 - ident.leg
    ankle_h = 0.035
    thigh = 0.49 * (ident.leg - ankle_h)
    shin = 0.51 * (ident.leg - ankle_h)
    upper_arm, forearm = 0.185 * ident.arm, 0.15 * ident.arm
    leg_swing = math.radians(26.0) * pose.stride
    arm_swing = math.radians(22.0) * pose.stride * ident.arm_swing
    j: dict[str, np.ndarray] = {"head": np.array([0.0, head_r, 0.0])}
    for name, side in (("left", 1.0), ("right", -1.0)):
        phase = pose.phase if side > 0 else pose.phase + math.pi
        # Arms swing against the leg of the same side; elbows bend more on the forward swing.
        alpha = -arm_swing * math.sin(phase)
        elbow_flex = 0.15 + 0.25 * pose.stride + 0.5 * max(0.0, alpha)
        shoulder = np.array([side * ident.shoulder * 0.85, shoulder_y + 0.01, 0.0])
        elbow = shoulder + upper_arm * _direction(side, 0.1, alpha)
        wrist = elbow + forearm * _direction(side, 0.06, alpha + elbow_flex)
        psi = leg_swing * math.sin(phase)
        knee_flex = 0.08 + 0.6 * pose.stride * max(0.0, math.cos(phase)) ** 1.5
        hip = np.array([side * (ident.hip - 0.045 * ident.limb), hip_y, 0.0])
        knee = hip + thigh * _direction(side, 0.02, psi)
        ankle = knee + shin * _direction(side, 0.02, psi - knee_flex)
        j |= {f"{name}_shoulder": shoulder, f"{name}_elbow": elbow, f"{name}_wrist": wrist,
              f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_ankle": ankle,
              f"{name}_heel": ankle + np.array([0.0, 0.025, -0.015]),
              f"{name}_toe": ankle + np.array([0.0, 0.03, 0.07])}
    # Plant the lower foot on the ground (a bent stride makes the person a bit shorter).
    ground = max(j["left_heel"][1], j["right_heel"][1], j["left_toe"][1], j["right_toe"][1]) + 0.012
    for p in j.values():
        p[1] += 1.0 - ground
    eye_y = j["head"][1] - 0.1 * head_r
    hw = 0.8 * head_r  # head half width (and depth)
    j |= {"nose": j["head"] + [0.0, 0.15 * head_r, 0.95 * hw],
          "left_eye": np.array([0.35 * hw, eye_y, 0.85 * hw]), "right_eye": np.array([-0.35 * hw, eye_y, 0.85 * hw]),
          "left_ear": j["head"] + [0.95 * hw, 0.0, 0.0], "right_ear": j["head"] + [-0.95 * hw, 0.0, 0.0]}
    return j


def project(points: dict[str, np.ndarray], yaw: float) -> dict[str, tuple[float, float, float]]:
    """Orthographic view: (image x, image y, depth towards the camera)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return {k: (c * p[0] + s * p[2], p[1], -s * p[0] + c * p[2]) for k, p in points.items()}


# ----------------------------------------------------------------------------
# Drawing: label map and shade map share every primitive
# ----------------------------------------------------------------------------


class _Layers:
    """A LIP label map and a multiplicative shade map, drawn with identical geometry.

    The RGB image is later computed from these two maps, so the parsing map
    agrees exactly with what is drawn.
    """

    def __init__(self, width: int, height: int):
        self.label = Image.new("L", (width, height), BACKGROUND)
        self.shade = Image.new("L", (width, height), 255)
        self._draws = (ImageDraw.Draw(self.label), ImageDraw.Draw(self.shade))

    def _both(self, method: str, label: int, shade: int, *args, **kwargs) -> None:
        for draw, value in zip(self._draws, (label, shade)):
            getattr(draw, method)(*args, fill=value, **kwargs)

    def polygon(self, points, label: int, shade: int = 255) -> None:
        self._both("polygon", label, shade, [tuple(p) for p in points])

    def ellipse(self, centre, rx: float, ry: float, label: int, shade: int = 255) -> None:
        x, y = centre
        self._both("ellipse", label, shade, (x - rx, y - ry, x + rx, y + ry))

    def chord(self, centre, rx: float, ry: float, start: float, end: float, label: int, shade: int = 255) -> None:
        x, y = centre
        self._both("chord", label, shade, (x - rx, y - ry, x + rx, y + ry), start, end)

    def limb(self, a, b, width: float, label: int, shade: int = 255) -> None:
        """A thick segment with round caps."""
        self._both("line", label, shade, [tuple(a), tuple(b)], width=max(1, round(width)))
        for p in (a, b):
            self.ellipse(p, width / 2, width / 2, label, shade)

    def shade_only(self, centre, rx: float, ry: float, shade: int) -> None:
        """Details with no label of their own (eyes, the floor shadow)."""
        x, y = centre
        self._draws[1].ellipse((x - rx, y - ry, x + rx, y + ry), fill=shade)


@dataclass(frozen=True)
class _Frame:
    """Maps body units to canvas pixels."""

    cx: float
    top: float
    scale: float

    def __call__(self, p: tuple[float, ...]) -> tuple[float, float]:
        return self.cx + self.scale * p[0], self.top + self.scale * p[1]


def _lerp(a, b, t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def _draw_figure(layers: _Layers, ident: Identity, outfit: Outfit, pts: dict, yaw: float, f: _Frame) -> None:
    """Paint the person back to front (painter's algorithm on depth)."""
    s = f.scale
    c, sn = abs(math.cos(yaw)), abs(math.sin(yaw))
    facing = math.cos(yaw)  # > 0: we see the face
    top_label = COAT if outfit.coat else UPPER
    bottom_label = SKIRT if outfit.bottom_kind == "skirt" else PANTS
    shoulder_y, hip_y = pts["left_shoulder"][1] - 0.01, pts["left_hip"][1]
    head = f(pts["head"])
    head_rx, head_ry = 0.8 * ident.head / 2 * s, ident.head / 2 * s
    items: list[tuple[float, Callable[[], None]]] = []  # (depth key, painter)

    def extent(half_width: float, depth: float) -> float:
        return s * (half_width * c + depth * sn)

    e_sh, e_w, e_h = extent(ident.shoulder, 0.06), extent(ident.waist, 0.055), extent(ident.hip, 0.065)
    waist_y = shoulder_y + 0.6 * (hip_y - shoulder_y)

    def row(y: float, half: float) -> list[tuple[float, float]]:
        y0 = f((0.0, y))[1]
        return [(f.cx - half, y0), (f.cx + half, y0)]

    def far(depth: float) -> int:
        return 205 if depth < -0.02 else 255  # far-side limbs are in shadow

    # Legs (always behind the pelvis), then the pelvis, the torso, the arms.
    for side, leg_label, shoe_label in (("left", LEFT_LEG, LEFT_SHOE), ("right", RIGHT_LEG, RIGHT_SHOE)):
        hip, knee, ankle = (f(pts[f"{side}_{k}"]) for k in ("hip", "knee", "ankle"))
        depth = pts[f"{side}_hip"][2]
        thigh_w, shin_w = 0.085 * ident.limb * s, 0.06 * ident.limb * s

        def leg(hip=hip, knee=knee, ankle=ankle, side=side, leg_label=leg_label, shoe_label=shoe_label,
                depth=depth, thigh_w=thigh_w, shin_w=shin_w):
            shade = far(depth)
            layers.limb(hip, knee, thigh_w, leg_label, shade)
            layers.limb(knee, ankle, shin_w, leg_label, shade)
            if outfit.bottom_kind == "trousers":
                layers.limb(hip, knee, thigh_w * 1.1, bottom_label, shade)
                layers.limb(knee, ankle, shin_w * 1.15, bottom_label, shade)
            elif outfit.bottom_kind == "shorts":
                layers.limb(hip, _lerp(hip, knee, outfit.bottom_len), thigh_w * 1.15, bottom_label, shade)
            layers.limb(f(pts[f"{side}_heel"]), f(pts[f"{side}_toe"]), 0.045 * s, shoe_label, shade)

        items.append((-1.0 + depth, leg))

    def pelvis():
        layers.polygon(row(hip_y - 0.05, e_h) + row(hip_y + 0.05, e_h * 0.95)[::-1], bottom_label)

    items.append((-0.5, pelvis))

    if outfit.bottom_kind == "skirt":
        knees_x = [f(pts[f"{k}_knee"])[0] for k in ("left", "right")]
        hem_y = hip_y + outfit.bottom_len * (1.0 - hip_y)
        spread = max(e_h * 1.25, (max(knees_x) - min(knees_x)) / 2 + 0.05 * s)
        mid = (f.cx + sum(knees_x) / 2) / 2  # the hem follows the knees a little

        def skirt():
            y_hem = f((0.0, hem_y))[1]
            layers.polygon(row(hip_y - 0.05, e_h) + [(mid + spread, y_hem), (mid - spread, y_hem)], bottom_label)

        items.append((-0.4, skirt))

    def torso():
        x0 = f.cx
        sy, wy = f((0.0, shoulder_y))[1], f((0.0, waist_y))[1]
        hem = hip_y + outfit.top_hem
        flare = 1.15 if outfit.coat else 1.02
        outline = [(x0 - e_sh, sy + 0.025 * s), (x0 - 0.7 * e_sh, sy - 0.004 * s),
                   (x0 + 0.7 * e_sh, sy - 0.004 * s), (x0 + e_sh, sy + 0.025 * s),
                   (x0 + e_w, wy), (x0 + e_h * flare, f((0.0, hem))[1]),
                   (x0 - e_h * flare, f((0.0, hem))[1]), (x0 - e_w, wy)]
        layers.polygon(outline, top_label)
        for side in (-1, 1):  # rounded shoulders
            layers.ellipse((x0 + side * 0.8 * e_sh, sy + 0.02 * s), 0.22 * e_sh, 0.03 * s, top_label)

    items.append((0.0, torso))

    def neck():
        layers.limb(_lerp(head, f((0.0, shoulder_y)), 0.4), f((0.0, shoulder_y + 0.01)),
                    (0.05 if ident.gender else 0.042) * s, FACE)

    items.append((-0.05, neck))

    for side, arm_label in (("left", LEFT_ARM), ("right", RIGHT_ARM)):
        shoulder, elbow, wrist = (f(pts[f"{side}_{k}"]) for k in ("shoulder", "elbow", "wrist"))
        depth = pts[f"{side}_shoulder"][2]

        def arm(shoulder=shoulder, elbow=elbow, wrist=wrist, arm_label=arm_label, depth=depth):
            shade = far(depth)
            upper_w, fore_w = 0.05 * ident.limb * s, 0.042 * ident.limb * s
            layers.limb(shoulder, elbow, upper_w, arm_label, shade)
            layers.limb(elbow, wrist, fore_w, arm_label, shade)
            if outfit.sleeve == "long":
                layers.limb(shoulder, elbow, upper_w * 1.2, top_label, shade)
                layers.limb(elbow, _lerp(elbow, wrist, 0.85), fore_w * 1.2, top_label, shade)
            elif outfit.sleeve == "short":
                layers.limb(shoulder, _lerp(shoulder, elbow, 0.7), upper_w * 1.3, top_label, shade)
            layers.ellipse(wrist, 0.026 * s, 0.03 * s, arm_label, shade)  # hand

        items.append((0.001 + depth, arm))

    # Hanging hair: behind the body when we see the face, over the back otherwise.
    if ident.hair_length > 0:
        hair_bottom = pts["head"][1] + ident.head / 2 + ident.hair_length
        back = -math.sin(yaw) * 0.3 * head_rx  # hair hangs on the back side of the head

        def hanging_hair():
            y_end = f((0.0, hair_bottom))[1]
            layers.polygon([(head[0] + back - 1.05 * head_rx, head[1]), (head[0] + back + 1.05 * head_rx, head[1]),
                            (head[0] + back + 0.95 * head_rx, y_end), (head[0] + back - 0.95 * head_rx, y_end)], HAIR)

        items.append((-0.9 if facing > 0.2 else 0.3, hanging_hair))

    def head_and_hair():
        layers.ellipse(head, head_rx, head_ry, FACE)
        # Hair cap: a chord of the head ellipse centred up and towards the back of the head,
        # covering the whole head seen from behind.
        half = ident.hair_cover + (180.0 - ident.hair_cover) * (1.0 - facing) / 2
        centre = 270.0 - 50.0 * math.sin(yaw)
        cap = (head[0], head[1] - 0.04 * head_ry)
        volume = 1.04 if ident.hair_cover > 70 else 1.0
        if half >= 179.0:
            layers.ellipse(cap, head_rx * volume, head_ry * 1.02, HAIR)
        else:
            layers.chord(cap, head_rx * volume, head_ry * 1.02, centre - half, centre + half, HAIR)
        if outfit.hat is not None:  # a cap: the crown, and the peak when it is on our side
            layers.chord(cap, head_rx * 1.08, head_ry * 1.06, 195.0, 345.0, HAT)
            if facing > 0.0:
                peak_x = head[0] + math.sin(yaw) * head_rx * 0.9
                layers.ellipse((peak_x, head[1] - 0.2 * head_ry), head_rx * (0.45 + 0.45 * facing),
                               0.12 * head_ry, HAT)
        if facing > 0.3:
            for eye in ("left_eye", "right_eye"):
                if pts[eye][2] > 0.0:
                    layers.shade_only(f(pts[eye]), 0.008 * s, 0.006 * s, 90)

    items.append((0.5, head_and_hair))
    for _, paint in sorted(items, key=lambda item: item[0]):
        paint()


# ----------------------------------------------------------------------------
# Colour: background, clothes patterns, lighting, camera quality
# ----------------------------------------------------------------------------

# Colour slot of each LIP label: 0 background, 1 hair, 2 top, 3 bottom, 4 skin, 5 shoes, 6 hat.
_SLOT = np.zeros(20, dtype=np.uint8)
_SLOT[HAIR] = 1
_SLOT[[UPPER, COAT]] = 2
_SLOT[[PANTS, SKIRT]] = 3
_SLOT[[FACE, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG]] = 4
_SLOT[[LEFT_SHOE, RIGHT_SHOE]] = 5
_SLOT[HAT] = 6
_SECOND = 7  # offset of the second (pattern) colours in the colour table


def _background(cam: Camera, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Wall, floor, a few vertical structures, seen through a slightly shifted crop."""
    y = (np.arange(h, dtype=np.float32) / h)[:, None]
    horizon = cam.horizon + rng.normal(0.0, 0.02)
    wall = np.asarray(cam.wall, np.float32) * (1.0 - 0.15 * (horizon - y))[..., None]
    floor = np.asarray(cam.floor, np.float32) * (0.85 + 0.3 * (y - horizon))[..., None]
    img = np.broadcast_to(np.where((y < horizon)[..., None], wall, floor), (h, w, 3)).copy()
    offset = rng.uniform(0.0, 1.0)  # the scene is two frames wide; crops land anywhere in it
    for x0, width, top, bottom, colour in cam.bands:
        a, b = round((x0 - offset) * w), round((x0 - offset + width) * w)
        rows = slice(round(top * h), round(min(bottom, horizon) * h))
        if b > 0 and a < w:
            img[rows, max(a, 0):max(min(b, w), 0)] = colour
    if cam.tiles:
        period = cam.tiles * h
        floor_rows = np.arange(round(horizon * h), h)
        lines = floor_rows[(floor_rows - horizon * h) % period < 1.5]
        img[lines] *= 0.8
    return img


def _pattern(kind: str, shape: tuple[int, int], period: float, split_y: float) -> np.ndarray | None:
    """Where a garment shows its second colour (separable, so built from 1-D rows and columns)."""
    if kind == "solid":
        return None
    h, w = shape
    rows = np.arange(h, dtype=np.float32)[:, None]
    if kind == "stripes":
        return (rows // period) % 2 == 1
    if kind == "checks":
        cols = np.arange(w, dtype=np.float32)[None, :]
        return ((rows // period) % 2 == 1) ^ ((cols // period) % 2 == 1)
    return rows > split_y  # block: two-tone top


def _colourise(label: np.ndarray, shade: np.ndarray, bg: np.ndarray, ident: Identity, outfit: Outfit,
               frame: _Frame, block_y: float) -> np.ndarray:
    """RGB from the label map: one colour-table lookup (pattern colours at slot + _SECOND), shaded."""
    slot = _SLOT[label]
    hat = outfit.hat or (0, 0, 0)
    table = np.array([(0, 0, 0), ident.hair, outfit.top, outfit.bottom, ident.skin, outfit.shoes, hat,
                      (0, 0, 0), ident.hair, outfit.top2, outfit.bottom2, ident.skin, outfit.shoes, hat], np.float32)
    top_pat = _pattern(outfit.top_pattern, label.shape, 0.035 * frame.scale, block_y)
    if top_pat is not None:
        slot = slot + _SECOND * ((slot == 2) & top_pat).astype(np.uint8)
    bottom_pat = _pattern(outfit.bottom_pattern, label.shape, 0.04 * frame.scale, 0.0)
    if bottom_pat is not None:
        slot = slot + _SECOND * ((slot == 3) & bottom_pat).astype(np.uint8)
    img = np.where((slot == 0)[..., None], bg, np.take(table, slot, axis=0))
    return img * (shade.astype(np.float32) * np.float32(1 / 255))[..., None]


def _light(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    h, w, _ = img.shape
    x = np.arange(w, dtype=np.float32) / w - 0.5
    gain = np.float32(cam.gain * rng.uniform(0.94, 1.06)) * np.asarray(cam.cast, np.float32)
    img *= gain[None, None, :] * (1.0 + np.float32(cam.light_slope) * x)[None, :, None]
    img += np.float32(cam.noise) * rng.standard_normal((h, w, 1), dtype=np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _degrade(img: Image.Image, size: tuple[int, int], cam: Camera) -> Image.Image:
    """Downsample to the stored size, then the camera's blur and compression."""
    img = img.resize(size, Image.Resampling.BILINEAR)
    if cam.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    if cam.jpeg:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=cam.jpeg)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


# ----------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------


@dataclass
class Rendered:
    image: Image.Image
    parsing: Image.Image  # mode "L", LIP ids, same size as the image
    keypoints: np.ndarray  # (17, 3): x, y in stored pixels, score
    yaw: float  # degrees


def _keypoint_scores(proj: dict, torso_half_width: float, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Detector-like confidences: low for face points turned away and for joints behind the torso,
    lower overall in poor images."""
    base = 0.9 if cam.quality == "hq" else 0.72
    scores = []
    for i, name in enumerate(COCO_KEYPOINTS):
        x, _, depth = proj[name]
        if i < 5:  # face points
            hidden = depth - proj["head"][2] < -0.02
        else:
            hidden = depth < -0.02 and abs(x) < torso_half_width
        scores.append((base + rng.normal(0.0, 0.05)) * (0.35 if hidden else 1.0))
    return np.clip(np.array(scores), 0.05, 0.99)


def render(spec: ImageSpec, seed: int) -> Rendered:
    """Draw one image, its parsing map and its keypoints from the spec's own random stream."""
    rng = _rng(seed, _IMAGE, PART_CODE[spec.part], spec.index)
    cam = spec.camera
    h = cam.canvas
    w = h // 2
    pose = sample_pose(rng, cam)
    proj = project(skeleton(spec.identity, pose), pose.yaw)
    scale = min(cam.person_height * spec.identity.height * rng.uniform(0.97, 1.03), 0.95) * h
    top = h * (1.0 - rng.uniform(0.015, 0.05)) - scale
    cx = w * (0.5 + cam.person_dx + rng.normal(0.0, 0.03))
    # Keep every keypoint (and the hands around them) inside the frame.
    xs = [p[0] for p in proj.values()]
    margin = 0.05 * scale
    lo, hi = cx + scale * min(xs) - margin, cx + scale * max(xs) + margin
    cx += max(0.0, -lo) - max(0.0, hi - (w - 1))
    frame = _Frame(cx, top, scale)

    layers = _Layers(w, h)
    feet_y = max(proj["left_heel"][1], proj["right_heel"][1])
    layers.shade_only(frame((0.0, feet_y)), 0.18 * scale, 0.02 * scale, 150)
    _draw_figure(layers, spec.identity, spec.clothes, proj, pose.yaw, frame)
    label = np.asarray(layers.label)
    shoulder_y, hip_y = proj["left_shoulder"][1], proj["left_hip"][1]
    block_y = frame((0.0, shoulder_y + 0.55 * (hip_y - shoulder_y)))[1]
    img = _colourise(label, np.asarray(layers.shade), _background(cam, rng, h, w),
                     spec.identity, spec.clothes, frame, block_y)
    img = _light(img, cam, rng)

    stored_h = max(16, round(cam.height * rng.uniform(0.92, 1.08)))
    size = (max(8, round(stored_h * rng.uniform(0.44, 0.54))), stored_h)
    image = _degrade(Image.fromarray(img, "RGB"), size, cam)
    parsing = layers.label.resize(size, Image.Resampling.NEAREST)
    kp = np.zeros((17, 3))
    for i, name in enumerate(COCO_KEYPOINTS):
        x, y = frame(proj[name])
        # Pixel-centre convention, as PIL's resize uses.
        kp[i, 0] = (x + 0.5) * size[0] / w - 0.5
        kp[i, 1] = (y + 0.5) * size[1] / h - 0.5
    torso = spec.identity.shoulder * abs(math.cos(pose.yaw)) + 0.06 * abs(math.sin(pose.yaw))
    kp[:, 2] = _keypoint_scores(proj, torso, cam, rng)
    return Rendered(image, parsing, kp, math.degrees(pose.yaw) % 360.0)


def _pose_records(spec: ImageSpec, r: Rendered, rng: np.random.Generator) -> list[dict]:
    """AlphaPose-style records: none, the person, or the person plus a weaker ghost."""
    records = []
    if spec.pose_records >= 1:
        records.append(_record(spec.name, r.keypoints, 1.0 + 1.8 * float(r.keypoints[:, 2].mean())))
    if spec.pose_records == 2:
        ghost = r.keypoints.copy()
        w, h = r.image.size
        ghost[:, 0] = np.clip(ghost[:, 0] * 0.6 + rng.uniform(0, 0.4) * w, 0, w - 1)
        ghost[:, 1] = np.clip(ghost[:, 1] * 0.6 + rng.uniform(0, 0.4) * h, 0, h - 1)
        ghost[:, 2] = rng.uniform(0.05, 0.3, 17)
        records.append(_record(spec.name, ghost, 0.3 + float(ghost[:, 2].mean())))
    return records


def _record(name: str, kp: np.ndarray, score: float) -> dict:
    return {"image_id": name, "category_id": 1,
            "keypoints": [round(float(v), 3) for v in kp.reshape(-1)], "score": round(score, 4)}


def _image_path(root: Path, spec: ImageSpec) -> Path:
    if spec.part == TARGET:
        return root / TARGET / "LTCC_ReID" / spec.split / spec.name
    return root / EXTERNAL / spec.split / spec.name


def _parsing_path(root: Path, spec: ImageSpec) -> Path:
    return root / spec.part / "parsing" / spec.split / (Path(spec.name).stem + ".png")


def _render_chunk(root: Path, seed: int, specs: list[ImageSpec]) -> list[tuple[list[dict], float]]:
    """Worker: render and write a chunk; returns (pose records, yaw) per image."""
    out = []
    for spec in specs:
        r = render(spec, seed)
        # Fast PNG compression: level 6 triples the writing time for 5% smaller files.
        if spec.part == TARGET:
            r.image.save(_image_path(root, spec), "PNG", compress_level=1)
        else:
            r.image.save(_image_path(root, spec), "JPEG", quality=92)
        r.parsing.save(_parsing_path(root, spec), "PNG", compress_level=1)
        out.append((_pose_records(spec, r, _rng(seed, _IMAGE, PART_CODE[spec.part], spec.index, 1)), r.yaw))
    return out


# ----------------------------------------------------------------------------
# Whole dataset
# ----------------------------------------------------------------------------


def _make_dirs(root: Path) -> None:
    for split in TARGET_SPLITS:
        (root / TARGET / "LTCC_ReID" / split).mkdir(parents=True)
        (root / TARGET / "parsing" / split).mkdir(parents=True)
    for split in EXTERNAL_SPLITS:
        (root / EXTERNAL / split).mkdir(parents=True)
        (root / EXTERNAL / "parsing" / split).mkdir(parents=True)


def _pool_context():
    """fork on Linux: workers only run numpy and PIL, and unlike spawn, fork does not re-import
    (and so re-run) the caller's main script. Elsewhere the platform's default, spawn."""
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _render_all(root: Path, seed: int, specs: tuple[ImageSpec, ...], workers: int) -> list[tuple[list[dict], float]]:
    if workers <= 1:
        return _render_chunk(root, seed, list(specs))
    n_chunks = workers * 4
    chunks = [list(specs[i::n_chunks]) for i in range(n_chunks)]
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=die_with_parent)
    try:
        parts = list(pool.map(_render_chunk, [root] * n_chunks, [seed] * n_chunks, chunks))
    except BaseException:
        # Ctrl-C or an error: end the workers now instead of waiting for the chunks they render (the executor keeps
        # its processes in a private table; the workers ignore SIGINT and would otherwise finish their chunk).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    results: list = [None] * len(specs)
    for i, part in enumerate(parts):
        results[i::n_chunks] = part
    return results


def _write_side_files(root: Path, plan: Plan, results: list[tuple[list[dict], float]]) -> None:
    for part in (TARGET, EXTERNAL):
        with open(root / part / "gender.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["Category", "ID", "Gender"])
            writer.writerows(plan.genders[part])
        records = [rec for spec, (recs, _) in zip(plan.images, results) if spec.part == part for rec in recs]
        (root / part / "keypoints.json").write_text(json.dumps(records, separators=(",", ":")))


def _meta(plan: Plan, results: list[tuple[list[dict], float]]) -> dict:
    """Ground truth behind every image (traits, clothes, camera, view), for analysis and tests."""
    meta: dict = {}
    for part in (TARGET, EXTERNAL):
        specs = [(s, yaw) for s, (_, yaw) in zip(plan.images, results) if s.part == part]
        meta[part] = {
            "identities": {pid_text(part, s.pid): asdict(s.identity) for s, _ in specs},
            "outfits": {f"{pid_text(part, s.pid)}_{s.outfit}": asdict(s.clothes) for s, _ in specs},
            "cameras": {str(s.camera.number): asdict(s.camera) for s, _ in specs},
            "images": {s.name: {"split": s.split, "pid": pid_text(part, s.pid), "outfit": s.outfit,
                                "camera": s.camera.number, "yaw": round(yaw, 1),
                                "pose_records": s.pose_records} for s, yaw in specs},
        }
    return meta


def _counts(plan: Plan) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {TARGET: {}, EXTERNAL: {}}
    for (part, split), n in sorted(Counter((s.part, s.split) for s in plan.images).items()):
        counts[part][split] = n
    for part in counts:
        counts[part]["ids"] = len({s.pid for s in plan.images if s.part == part})
    return counts


def _label_palette() -> np.ndarray:
    """Contact-sheet colours for the LIP labels (a visual check of the parsing maps)."""
    palette = np.zeros((20, 3), np.uint8)
    for label, colour in {HAT: (255, 255, 0), HAIR: (120, 60, 0), UPPER: (255, 90, 0), COAT: (255, 200, 0),
                          PANTS: (0, 80, 255), SKIRT: (160, 0, 255), FACE: (255, 200, 170),
                          LEFT_ARM: (0, 200, 0), RIGHT_ARM: (0, 120, 0), LEFT_LEG: (0, 220, 220),
                          RIGHT_LEG: (0, 130, 130), LEFT_SHOE: (255, 0, 120), RIGHT_SHOE: (150, 0, 70)}.items():
        palette[label] = colour
    return palette


def _contact_sheet(root: Path, plan: Plan, rows: int = 8, cols: int = 9) -> None:
    """Rows: target identities (then two external ones); columns: outfits x cameras; last: a parsing map."""
    cell_w, cell_h, label_h, head_w = 64, 128, 14, 70
    font = ImageFont.load_default()
    by_pid: dict[tuple[str, int], list[ImageSpec]] = defaultdict(list)
    for s in plan.images:
        by_pid[(s.part, s.pid)].append(s)
    keys = [k for k in by_pid if k[0] == TARGET][:rows] + [k for k in by_pid if k[0] == EXTERNAL][:2]
    sheet = Image.new("RGB", (head_w + (cols + 1) * cell_w, len(keys) * (cell_h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, key in enumerate(keys):
        seen, chosen = set(), []
        for s in sorted(by_pid[key], key=lambda s: (s.outfit, s.camera.number)):
            if (s.outfit, s.camera.number) not in seen and len(chosen) < cols:
                seen.add((s.outfit, s.camera.number))
                chosen.append(s)
        y = r * (cell_h + label_h)
        ident = chosen[0].identity
        draw.text((4, y + 4), f"{key[0]}\nid {pid_text(*key)}\n{'male' if ident.gender else 'female'}",
                  fill=(0, 0, 0), font=font)
        for c, s in enumerate(chosen):
            img = Image.open(_image_path(root, s)).convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
            sheet.paste(img, (head_w + c * cell_w, y))
            draw.text((head_w + c * cell_w + 2, y + cell_h), f"o{s.outfit} c{s.camera.number}",
                      fill=(0, 0, 0), font=font)
        parsing = np.asarray(Image.open(_parsing_path(root, chosen[0])))
        vis = Image.fromarray(_label_palette()[parsing], "RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
        sheet.paste(vis, (head_w + cols * cell_w, y))
        draw.text((head_w + cols * cell_w + 2, y + cell_h), "parsing", fill=(0, 0, 0), font=font)
    sheet.save(root / "contact_sheet.png")


def _manifest(seed: int, preset: str, cfg: SynthConfig, overrides: dict, plan: Plan) -> dict:
    return {"generator": "rlq.synthetic", "version": GENERATOR_VERSION, "seed": seed, "preset": preset,
            "overrides": overrides, "config": asdict(cfg), "counts": _counts(plan)}


def _read_manifest(out: Path) -> dict | None:
    """The manifest of a folder this generator wrote, else None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "rlq.synthetic" else None


def _is_generated(out: Path) -> bool:
    """True for a missing or empty folder or one this generator wrote (safe to replace)."""
    return not out.exists() or (out.is_dir() and (not any(out.iterdir()) or _read_manifest(out) is not None))


def generate(out: Path, seed: int = 0, preset: str = "small", *, workers: int | None = None,
             **overrides) -> Path:
    """Write the dataset to `out` atomically and return `out`.

    `overrides` replace fields of the preset's SynthConfig (e.g. target_test_ids=10).
    The data is built in a temporary sibling folder and renamed at the end, so an
    interrupted run never leaves a half dataset that looks complete.
    """
    out = Path(out).expanduser().resolve()
    cfg = replace(PRESETS[preset], **overrides)
    if not _is_generated(out):
        raise FileExistsError(f"{out} exists and was not written by rlq.synthetic; refusing to replace it")
    plan = build_plan(cfg, seed)
    workers = workers if workers is not None else os.cpu_count() or 1
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)  # the half-built folders of killed generations
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _make_dirs(tmp)
        results = _render_all(tmp, seed, plan.images, workers)
        _write_side_files(tmp, plan, results)
        (tmp / "meta.json").write_text(json.dumps(_meta(plan, results), indent=1))
        _contact_sheet(tmp, plan)
        # The manifest is written last: its presence marks a complete dataset.
        manifest = _manifest(seed, preset, cfg, overrides, plan)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _same_dataset_there(tmp: Path, out: Path) -> bool:
    """A concurrent run (e.g. another test worker) already put the very same dataset at `out`."""
    return is_complete(out) and _read_manifest(out) == _read_manifest(tmp)


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`, replacing an older dataset there.

    An identical complete dataset already at `out` is kept (readers may be using it).
    """
    if _same_dataset_there(tmp, out):
        return
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        shutil.rmtree(old)
    try:
        tmp.rename(out)
    except OSError:  # another run got there between the two renames
        if not _same_dataset_there(tmp, out):
            raise


def is_complete(out: Path) -> bool:
    """Whether `out` holds a finished dataset of this generator version (any seed or preset)."""
    manifest = _read_manifest(out)
    if manifest is None or manifest.get("version") != GENERATOR_VERSION:
        return False
    folders = {TARGET: (out / TARGET / "LTCC_ReID", out / TARGET / "parsing"),
               EXTERNAL: (out / EXTERNAL, out / EXTERNAL / "parsing")}
    try:
        return all(sum(1 for _ in os.scandir(folder / split)) == n
                   for part, splits in manifest["counts"].items() for split, n in splits.items() if split != "ids"
                   for folder in folders[part])
    except OSError:
        return False


def default_location(seed: int = 0, preset: str = "small") -> Path:
    """``$RLQ_CACHE/synthetic-<preset>-seed<seed>`` (``RLQ_CACHE`` defaults to ``~/.cache/rlq``)."""
    cache = Path(os.environ.get("RLQ_CACHE") or Path.home() / ".cache" / "rlq").expanduser()
    return cache / f"synthetic-{preset}-seed{seed}"


def ensure_synthetic(root: Path | None = None, seed: int = 0, preset: str = "small") -> Path:
    """Return a complete synthetic dataset folder, generating it only if absent or incomplete.

    `root` is the dataset folder itself (it holds ``target/`` in the LTCC layout
    and ``external/`` in the Celeb-reID layout); any complete dataset already
    there is used as is, whatever seed or preset made it. Without `root`, the
    folder is ``default_location(seed, preset)``.
    """
    out = Path(root).expanduser() if root is not None else default_location(seed, preset)
    if not is_complete(out):
        generate(out, seed, preset)
    return out


Range = Annotated[tuple[int, int] | None, tyro.conf.arg(metavar="MIN MAX")]


@dataclass
class Args:
    """Generate the synthetic clothes-changing ReID dataset (LTCC and Celeb-reID layouts, with pose and parsing files).

    The size options override the preset's; ranges are inclusive."""

    output: Annotated[Path, formerly("--out", "--output")]
    """Dataset folder to (re)write (only a missing or empty folder, or one this generator wrote, is replaced)."""
    seed: int = 0
    """Seed of everything drawn: the same seed gives the same dataset, byte for byte."""
    preset: Literal["large", "medium", "small"] = "small"
    """Sizes to start from."""
    workers: int | None = None
    """Render processes (default: the CPU count)."""
    target_train_ids: int | None = None
    """Target (LTCC layout) training identities."""
    target_test_ids: int | None = None
    """Target test identities."""
    target_cameras: int | None = None
    """Target cameras."""
    target_outfits: Range = None
    """Outfits per target identity."""
    cameras_per_outfit: Range = None
    """Cameras per target outfit."""
    shots_per_camera: Range = None
    """Target images per (outfit, camera)."""
    external_train_ids: int | None = None
    """External (Celeb-reID layout) training identities."""
    external_test_ids: int | None = None
    """External test identities."""
    external_outfits: Range = None
    """Outfits per external identity."""
    external_images: Range = None
    """Images per external identity."""
    image_height: int | None = None
    """Stored height of a high-quality crop."""
    target_wardrobe: int | None = None
    """Distinct outfits the target identities draw theirs from (0: every outfit new)."""
    external_wardrobe: int | None = None
    """Distinct outfits the external identities draw theirs from (0: every outfit new)."""


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, prog="python -m rlq.synthetic")
    overrides = {f.name: getattr(args, f.name) for f in fields(SynthConfig) if getattr(args, f.name) is not None}
    start = time.perf_counter()
    try:
        out = generate(args.output, args.seed, args.preset, workers=args.workers, **overrides)
    except (SynthConfigError, FileExistsError) as error:
        sys.exit(f"error: {error}")
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s: {json.dumps(counts)}")


if __name__ == "__main__":
    with ends_cleanly():
        main()
