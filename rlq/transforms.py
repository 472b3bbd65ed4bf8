"""Image transforms: training augmentation, evaluation preprocessing and synthetic
low-quality (LQ) degradations (method.md sections 4 and 5).

Every random operation takes an explicit ``numpy.random.Generator``; nothing reads
the global torch / numpy / ``random`` state. The authors reseeded Python's
``random`` with the data-loader worker id every epoch, so augmentations repeated
each epoch and on every GPU; `rng_for` derives one independent stream per
(seed, epoch, rank, worker) instead.

Degradations are split into ``draw_*`` (parameters from an rng) and an apply
function (deterministic given the parameters), so ranges can be tested and
evaluation can rebuild the exact same images (`degrade_for_eval`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from rlq.images import ImageReadError, load_image  # noqa: F401  (the one image reader, re-exported for the loaders)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Random-erasing fill, written as-is into the *normalised* tensor (CAL convention).
ERASE_FILL = (0.4914, 0.4822, 0.4465)

# ---------------------------------------------------------------------------
# Random streams and image loading
# ---------------------------------------------------------------------------


def rng_for(seed: int, epoch: int, rank: int, worker: int) -> np.random.Generator:
    """Independent generator for one (seed, epoch, process rank, loader worker)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, worker]))


def worker_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """`rng_for` with the current data-loader worker id (0 in the main process).

    Call it once per epoch inside each worker (e.g. lazily on the first
    ``__getitem__`` of the epoch) and keep the generator: calling it per sample
    would restart the same stream for every image.
    """
    info = torch.utils.data.get_worker_info()
    return rng_for(seed, epoch, rank, 0 if info is None else info.id)


# ---------------------------------------------------------------------------
# Training / evaluation transforms
# ---------------------------------------------------------------------------


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [0, 1], then ImageNet-normalised."""
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


UPSCALE = 1.125  # the random crop's window moves over the image upscaled by this factor


def draw_crop(height: int, width: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """With p 0.5, the (left, top) of a height x width window in the image upscaled by 1.125; else None."""
    if rng.random() >= 0.5:
        return None
    left = int(rng.integers(0, round(width * UPSCALE) - width + 1))
    top = int(rng.integers(0, round(height * UPSCALE) - height + 1))
    return left, top


def upscale_crop(img: Image.Image, left: int, top: int) -> Image.Image:
    """Upscale by 1.125 (bilinear) and cut the window of the original size at (left, top)."""
    width, height = img.size
    big = img.resize((round(width * UPSCALE), round(height * UPSCALE)), Image.Resampling.BILINEAR)
    return big.crop((left, top, left + width, top + height))


def draw_flip(rng: np.random.Generator) -> bool:
    """Mirror left-right with p 0.5."""
    return bool(rng.random() < 0.5)


def draw_erase_box(
    height: int, width: int, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """Random-erasing box (top, left, box_height, box_width), or None for no erasing.

    With p 0.5 try up to 100 times to fit a box of area fraction U(0.02, 0.4) and
    aspect ratio U(0.3, 1/0.3) strictly inside the image; None if nothing fits.
    """
    if rng.random() >= 0.5:
        return None
    for _ in range(100):
        area = rng.uniform(0.02, 0.4) * height * width
        aspect = rng.uniform(0.3, 1 / 0.3)
        box_h = round(math.sqrt(area * aspect))
        box_w = round(math.sqrt(area / aspect))
        if box_h < height and box_w < width:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    return None


def erase(x: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """Random erasing on a normalised [3, H, W] tensor: the box holds the fill constants; returns a new tensor."""
    if box is None:
        return x
    top, left, box_h, box_w = box
    x = x.clone()
    x[:, top : top + box_h, left : left + box_w] = torch.tensor(ERASE_FILL).view(3, 1, 1)
    return x


# One training augmentation's draws as a row of ints, so that a batch of them collates into a tensor:
# crop?, crop left, crop top, flip?, erase?, erase top, erase left, erase height, erase width.
NUM_DRAWS = 9


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation: ``transform(pil_image, rng) -> FloatTensor [3, H, W]``.

    Resize (bilinear) -> p 0.5 upscale-and-crop -> p 0.5 flip -> tensor ->
    ImageNet normalise -> p 0.5 random erasing.

    The random draws come first (`draw`) and do not depend on the image, so the same draws
    can be finished here, on the CPU (`finish`), or later on the GPU for a whole batch
    (`finish_batch`, with `DeferredTrainTransform`).
    """

    height: int = 384
    width: int = 192

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        crop = draw_crop(self.height, self.width, rng)
        flip = draw_flip(rng)
        box = draw_erase_box(self.height, self.width, rng)
        return np.array([crop is not None, *(crop or (0, 0)), flip, box is not None, *(box or (0, 0, 0, 0))], dtype=np.int64)

    def resize(self, img: Image.Image) -> Image.Image:
        return img.resize((self.width, self.height), Image.Resampling.BILINEAR)

    def finish(self, img: Image.Image, draws: np.ndarray) -> torch.Tensor:
        """The augmentation of a resized image with the given draws, on the CPU."""
        if draws[0]:
            img = upscale_crop(img, int(draws[1]), int(draws[2]))
        if draws[3]:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return erase(to_normalised_tensor(img), tuple(int(v) for v in draws[5:]) if draws[4] else None)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        return self.finish(self.resize(img), self.draw(rng))


@dataclass(frozen=True)
class DeferredTrainTransform(TrainTransform):
    """`TrainTransform` that stops after the resize: ``(uint8 [3, H, W], draws [NUM_DRAWS])``.

    The rest (crop, flip, normalisation, erasing) runs batched on the GPU (`finish_batch`), with
    the draws the CPU path would have used, so loader workers only decode and resize.
    """

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.array(self.resize(img), dtype=np.uint8)).permute(2, 0, 1)
        return pixels, torch.from_numpy(self.draw(rng))


def finish_batch(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`TrainTransform.finish` for a batch, on the batch's device: uint8 [N, 3, H, W] + draws [N, NUM_DRAWS] -> float.

    No host-device sync: every image takes every path and `torch.where` keeps the drawn one.
    The upscale is rounded to whole pixel values as PIL's is; PIL's fixed-point arithmetic can
    still differ by a pixel level here and there.
    """
    n, _, height, width = images.shape
    device = images.device
    x = images.float()
    big = F.interpolate(x, size=(round(height * UPSCALE), round(width * UPSCALE)), mode="bilinear", align_corners=False)
    big = big.round().clamp(0, 255)
    rows = draws[:, 2, None] + torch.arange(height, device=device)  # [N, H]
    cols = draws[:, 1, None] + torch.arange(width, device=device)  # [N, W]
    batch, channel = torch.arange(n, device=device), torch.arange(3, device=device)
    cropped = big[batch[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    x = torch.where(draws[:, 0, None, None, None].bool(), cropped, x)
    x = torch.where(draws[:, 3, None, None, None].bool(), x.flip(-1), x)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x / 255 - mean) / std
    top, left, box_h, box_w = (draws[:, i, None, None] for i in range(5, 9))
    r = torch.arange(height, device=device)[None, :, None]
    c = torch.arange(width, device=device)[None, None, :]
    inside = draws[:, 4, None, None].bool() & (r >= top) & (r < top + box_h) & (c >= left) & (c < left + box_w)
    return torch.where(inside[:, None], torch.tensor(ERASE_FILL, device=device).view(1, 3, 1, 1), x)


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation preprocessing: ``transform(pil_image) -> FloatTensor [3, H, W]``.

    Resize (bilinear) + ImageNet normalise. It takes no rng because nothing in it
    is random; synthetic LQ evaluation degrades the PIL image first
    (`degrade_for_eval`).
    """

    height: int = 384
    width: int = 192

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
        return to_normalised_tensor(img)


# ---------------------------------------------------------------------------
# Synthetic low-quality degradations
# ---------------------------------------------------------------------------


def draw_pixelate(rng: np.random.Generator) -> dict[str, int]:
    """Shorter side after downscaling: uniform integer in 16..63."""
    return {"size": int(rng.integers(16, 64))}


def pixelate(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shorter side is ``size``, keeping the aspect ratio.

    The image stays small: the later Resize to the network input brings it back up.
    """
    width, height = img.size
    scale = size / min(width, height)
    new_size = (size, round(height * scale)) if width <= height else (round(width * scale), size)
    return img.resize(new_size, Image.Resampling.BICUBIC)


def draw_motion(rng: np.random.Generator) -> dict[str, int]:
    """Motion-blur kernel size in 8..19 and angle in 0..179 degrees (integers)."""
    return {"kernel_size": int(rng.integers(8, 20)), "angle": int(rng.integers(0, 180))}


def motion_kernel(kernel_size: int, angle: float) -> torch.Tensor:
    """[k, k] motion-blur kernel built as the authors build it (method.md section 5), normalised to sum 1.

    A horizontal line of k ones in row (k - 1) // 2 of a k x k zero matrix, rotated by ``angle``
    degrees about the point ((k - 1) / 2, (k - 1) / 2) as OpenCV's ``warpAffine`` with
    ``getRotationMatrix2D(centre, angle, 1)`` does: each output element samples the line at the
    inversely rotated position, bilinearly, with zeros outside the matrix. Positive angles turn
    counter-clockwise as seen on screen (rows grow downwards). For even k the line sits half a
    pixel above the centre, and so off the filter anchor (k // 2, k // 2), as in their code.
    (OpenCV rounds sample positions to 1/32 of a pixel; we sample exactly.)
    """
    k, centre = kernel_size, (kernel_size - 1) / 2
    line = np.zeros((k, k))
    line[(k - 1) // 2, :] = 1.0
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    rows, cols = np.mgrid[0:k, 0:k].astype(np.float64)
    # Inverse rotation of every output position: where in the line matrix it samples from.
    x = cos * (cols - centre) - sin * (rows - centre) + centre
    y = sin * (cols - centre) + cos * (rows - centre) + centre
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        inside = (r >= 0) & (r < k) & (c >= 0) & (c < k)
        return np.where(inside, line[r.clip(0, k - 1), c.clip(0, k - 1)], 0.0)

    kernel = ((1 - fx) * (1 - fy) * at(y0, x0) + fx * (1 - fy) * at(y0, x0 + 1)
              + (1 - fx) * fy * at(y0 + 1, x0) + fx * fy * at(y0 + 1, x0 + 1))
    return torch.from_numpy(kernel / kernel.sum()).float()


def pad_reflect101(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Pad the last two axes of ``x`` by ``before`` / ``after`` pixels, mirrored without repeating the edge
    (OpenCV's BORDER_REFLECT_101, torch's "reflect"), for any pad width.

    torch's "reflect" refuses pads as wide as the image; a tiny image (down to 1 x 1) needs the mirror
    repeated, and a 1-pixel axis can only repeat its one pixel (as OpenCV does).
    """

    def indices(size: int) -> torch.Tensor:
        positions = torch.arange(-before, size + after)
        if size == 1:
            return torch.zeros_like(positions)
        period = 2 * (size - 1)
        positions = positions.remainder(period)
        return torch.where(positions < size, positions, period - positions)

    height, width = x.shape[-2:]
    return x.index_select(-2, indices(height)).index_select(-1, indices(width))


def motion_blur(img: Image.Image, kernel_size: int, angle: float) -> Image.Image:
    """Correlate every channel with `motion_kernel`, as OpenCV's ``filter2D`` does: same size, anchor at
    kernel element (k//2, k//2), reflect-101 borders, rounded to uint8.

    Even kernels are padded asymmetrically (k//2 before, k//2 - 1 after) so the
    output keeps the input size and the anchor sits on the output pixel. Images
    smaller than the kernel are padded by repeating the mirror (`pad_reflect101`).
    """
    x = TF.pil_to_tensor(img).float().unsqueeze(0)  # [1, C, H, W]
    channels = x.shape[1]
    x = pad_reflect101(x, kernel_size // 2, (kernel_size - 1) // 2)
    weight = motion_kernel(kernel_size, angle).expand(channels, 1, kernel_size, kernel_size)
    y = F.conv2d(x, weight, groups=channels)[0]
    return TF.to_pil_image(y.round().clamp(0, 255).to(torch.uint8), mode=img.mode)


def draw_gaussian(rng: np.random.Generator) -> dict[str, Any]:
    """Out-of-focus blur: odd kernel size uniform in {5, 7, ..., 21}, sigma ~ U(0.1, 2.0)."""
    return {"kernel_size": 2 * int(rng.integers(2, 11)) + 1, "sigma": float(rng.uniform(0.1, 2.0))}


def gaussian_blur(img: Image.Image, kernel_size: int, sigma: float) -> Image.Image:
    """Isotropic Gaussian blur, same size (torchvision, reflect-101 padding).

    torchvision pads by mirroring once, which an image no wider than half the kernel does not
    allow; such an image is padded here first (`pad_reflect101`, the same mirror repeated), so
    torchvision's own padding only touches pixels that are cropped away again.
    """
    radius = kernel_size // 2
    if min(img.size) > radius:
        return TF.gaussian_blur(img, [kernel_size, kernel_size], [sigma, sigma])
    padded = pad_reflect101(TF.pil_to_tensor(img), radius, radius)
    blurred = TF.gaussian_blur(padded, [kernel_size, kernel_size], [sigma, sigma])
    return TF.to_pil_image(blurred[:, radius:-radius, radius:-radius], mode=img.mode)


Draw = Callable[[np.random.Generator], dict[str, Any]]
# kind -> (draw parameters from an rng, apply them to a PIL image)
DEGRADATIONS: dict[str, tuple[Draw, Callable[..., Image.Image]]] = {
    "pixelate": (draw_pixelate, pixelate),
    "motion": (draw_motion, motion_blur),
    "gaussian": (draw_gaussian, gaussian_blur),
}

_WITH_MOTION = {"pixelate": 0.33, "motion": 0.30, "gaussian": 0.37}
_WITHOUT_MOTION = {"pixelate": 0.5, "gaussian": 0.5}
# Probability of each degradation in the "mix", by target dataset.
MIXES: dict[str, dict[str, float]] = {
    "ltcc": _WITH_MOTION,
    "last": _WITH_MOTION,
    "celeb": _WITH_MOTION,
    "synthetic": _WITH_MOTION,
    "synthetic-external": _WITH_MOTION,  # Celeb-reID's layout
    "prcc": _WITHOUT_MOTION,
    "deepchange": _WITHOUT_MOTION,
}


def mix_for(dataset: str) -> dict[str, float]:
    """Degradation probabilities of the mix used for ``dataset`` (case-insensitive)."""
    try:
        return MIXES[dataset.lower()]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r} for the low-quality mix; known: {sorted(MIXES)}"
        ) from None


def draw_kind(dataset: str, rng: np.random.Generator) -> str:
    """Pick one degradation kind with the dataset's mix probabilities."""
    mix = mix_for(dataset)
    kinds = list(mix)
    return kinds[rng.choice(len(kinds), p=list(mix.values()))]


def degrade(
    img: Image.Image, kind: str, rng: np.random.Generator, dataset: str | None = None
) -> Image.Image:
    """Synthetic low-quality copy of ``img`` (RGB out).

    ``kind`` is one of `DEGRADATIONS` or ``"mix"``; the mix draws the kind with
    the probabilities of ``dataset`` (required for it, see `MIXES`). The single
    kinds accept any kind for any dataset (e.g. all-motion evaluation on PRCC).
    """
    if kind == "mix":
        if dataset is None:
            raise ValueError("kind='mix' needs the target dataset to pick its probabilities")
        kind = draw_kind(dataset, rng)
    elif dataset is not None:
        mix_for(dataset)  # a misspelt dataset fails here too, not only under "mix"
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {[*DEGRADATIONS, 'mix']}")
    draw, apply = DEGRADATIONS[kind]
    return apply(img.convert("RGB"), **draw(rng))


def degrade_for_eval(
    img: Image.Image, kind: str, dataset: str | None, index: int, seed: int = 0
) -> Image.Image:
    """`degrade` with a generator derived from (seed, index) alone.

    The result depends only on (image, kind, dataset, index, seed), so every
    evaluation run sees the same degraded query/gallery images. ``index`` is the
    image's position in its evaluation split.
    """
    return degrade(img, kind, np.random.default_rng([seed, index]), dataset)


def tad_pair(
    img: Image.Image,
    dataset: str,
    transform: TrainTransform,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(HQ, LQ) training views of one external image for a TAD step.

    LQ is the dataset's degradation mix applied to the original image; each view
    then goes through ``transform`` independently (its own crop/flip/erase draws).
    """
    low = degrade(img, "mix", rng, dataset)
    return transform(img, rng), transform(low, rng)
