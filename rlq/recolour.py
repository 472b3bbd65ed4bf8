"""Clothes recolouring augmentation (method.md section 6).

Each training image also yields a copy whose tops and pants are blended with
two solid colours drawn independently from a palette. The copy is a new outfit
of the same person, so it gets a new clothes class:

    num_original_clothes + pid * n**2 + index(pant colour, top colour),  index = pant * n + top,

with n palette colours (9; 6 on LaST), and every identity owns its n**2 colour
classes in the widened pid -> clothes matrix (the CAL loss treats them as that
person's clothes). Images on the faulty-mask lists get one colour over the
whole-clothes mask instead (pant colour = top colour).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rlq.data import Sample
from rlq.masks import faulty_keys, read_masks

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 128, 0),  # green
    (0, 0, 255),  # blue
    (128, 0, 128),  # purple
    (255, 0, 0),  # red
    (0, 0, 0),  # black
    (255, 255, 255),  # white
    (255, 165, 0),  # orange
    (255, 255, 0),  # yellow
    (255, 192, 203),  # pink
)
# LaST uses 6 colours; we take the first 6 of the list.
NUM_COLOURS = {"last": 6}
ALPHA = 0.7  # weight of the solid colour in the blend


def num_colours(dataset_name: str) -> int:
    return NUM_COLOURS.get(dataset_name, len(PALETTE))


def widen_pid2clothes(pid2clothes: np.ndarray, colours: int) -> np.ndarray:
    """[P, C] -> [P, C + P * colours**2]: identity p also owns the colour classes C + p * colours**2 + (0..colours**2-1)."""
    num_pids, num_clothes = pid2clothes.shape
    per_pid = colours**2
    colour_block = np.kron(np.eye(num_pids, dtype=pid2clothes.dtype), np.ones((1, per_pid), dtype=pid2clothes.dtype))
    return np.concatenate([pid2clothes, colour_block], axis=1)


def blend(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """In place: pixels under `mask` become ALPHA * colour + (1 - ALPHA) * pixel."""
    image[mask] = ALPHA * np.asarray(colour, dtype=np.float32) + (1 - ALPHA) * image[mask]


@dataclass
class Recolouring:
    """Make the recoloured copy of a training image and its clothes label.

    `masks_dir` is the output of preprocess_masks.py (bit-field PNGs and faulty lists).
    """

    masks_dir: Path
    num_original_clothes: int
    colours: int = len(PALETTE)

    def __post_init__(self) -> None:
        self.faulty = faulty_keys(self.masks_dir)

    def label(self, pid: int, pant: int, top: int) -> int:
        return self.num_original_clothes + pid * self.colours**2 + pant * self.colours + top

    def __call__(self, img: Image.Image, sample: Sample, rng: np.random.Generator) -> tuple[Image.Image, int]:
        masks = read_masks(self.masks_dir, sample, size=img.size)
        pixels = np.asarray(img, dtype=np.float32).copy()
        top, pant = (int(c) for c in rng.integers(0, self.colours, size=2))
        if sample.key in self.faulty:
            pant = top
            blend(pixels, masks["clothes"], PALETTE[top])
        else:
            blend(pixels, masks["tops"], PALETTE[top])
            blend(pixels, masks["pants"], PALETTE[pant])
        recoloured = Image.fromarray(np.rint(pixels).clip(0, 255).astype(np.uint8))
        return recoloured, self.label(sample.pid, pant, top)
