"""rlq from Python: retrieval features of images from any checkpoint rlq loads, and a search over them.

    from rlq import FeatureExtractor, search

    extractor = FeatureExtractor("runs/rlq-ltcc/best.pt")       # or the authors' .pth.tar, or an exported folder
    gallery = extractor(["g/0001.jpg", "g/0002.jpg", ...])      # [N, D] float32, L2-normalised
    query = extractor([pil_image, numpy_rgb_array])
    indices, similarities = search(query, gallery, top_k=10)

The features are evaluate.py's, number for number: the same image reader (`rlq.images`), resize and
normalisation (`rlq.transforms.EvalTransform`), flip-sum and precision, through the same extraction loop
(`rlq.evaluation.loader_features`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from rlq.checkpoint import load_checkpoint, model_from_checkpoint
from rlq.evaluation import loader_features
from rlq.images import ImageReadError, load_image, upright_rgb
from rlq.launch import memory_format, mixed_precision
from rlq.ranking import rank
from rlq.rerank import rerank as k_reciprocal_reranking
from rlq.transforms import EvalTransform

ImageItem = str | os.PathLike | Image.Image | np.ndarray


class ImageInputError(ValueError):
    """An input a FeatureExtractor cannot take: the message names the item (its index, its file) and what was expected."""


class OneDevice:
    """What `rlq.evaluation.loader_features` asks of an Accelerator, for this process alone on one device.

    Not an Accelerator: that would set Accelerate's process-wide state, whose device and precision cannot change
    once set, and a feature extractor must not decide them for a training run started later in the same program.
    The autocast is the one Accelerate enters for the same precision.
    """

    is_main_process = True

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device, self.precision = device, precision

    def prepare_data_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def gather_for_metrics(self, tensors):
        return tensors

    def autocast(self):
        if self.precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)


class FeatureExtractor:
    """Retrieval features of images, as evaluate.py computes them, from a checkpoint rlq loads.

    `checkpoint`: a best.pt / last.pt of the training scripts, one of the authors' .pth.tar files, or a folder
    written by `python -m rlq.export --format safetensors`. `device`: default CUDA when there is a GPU, else the
    CPU. `mixed_precision`: "auto" is evaluate.py's default (bf16 autocast on a GPU that has it, fp32 elsewhere).
    `flip`: each feature is the sum of the image's and its mirror image's, as in evaluation (False: the image
    alone, half the compute). `num_workers`: loader processes that read and resize images (0: this process).

    Call it on a list of images (file paths, PIL images, H x W x 3 uint8 RGB numpy arrays, mixed as you like; any
    size), or on a float tensor [N, 3, H, W] of images already resized to `input_size` and normalised (bilinear
    resize, RGB / 255, then ImageNet mean and std: what `rlq.transforms.EvalTransform` gives). It returns [N, D]
    float32 features on the CPU, L2-normalised, in input order: rank by dot product (`search`).
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 64,
                 flip: bool = True, mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto",
                 num_workers: int = 0) -> None:
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size {batch_size}, num_workers {num_workers}: expected batch_size >= 1, num_workers >= 0")
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.precision = _precision(mixed_precision, self.device)
        self.batch_size, self.flip, self.num_workers = batch_size, flip, num_workers
        loaded = load_checkpoint(Path(checkpoint))
        self.model = model_from_checkpoint(loaded, Path(checkpoint)).eval()
        self.model.to(self.device, memory_format=memory_format(self.device))
        self.input_size: tuple[int, int] = tuple(loaded["input_size"])
        self.feature_dim: int = self.model.retrieval_dim

    def __call__(self, images: Sequence[ImageItem] | torch.Tensor) -> torch.Tensor:
        dataset = self._tensor_batch(images) if isinstance(images, torch.Tensor) else self._image_list(images)
        if len(dataset) == 0:
            return torch.empty(0, self.feature_dim)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda")
        return loader_features(self.model, loader, OneDevice(self.device, self.precision), self.flip)

    def _image_list(self, images: Sequence[ImageItem]) -> Dataset:
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or not isinstance(images, Sequence):
            raise ImageInputError(f"got {type(images).__name__}: expected a list of images (paths, PIL images, "
                                  "H x W x 3 uint8 arrays; put a single image in a list) or a float tensor [N, 3, H, W]")
        for index, item in enumerate(images):
            check_item(item, index)
        return ImageList(list(images), EvalTransform(*self.input_size))

    def _tensor_batch(self, images: torch.Tensor) -> Dataset:
        height, width = self.input_size
        if images.dim() != 4 or images.shape[1:] != (3, height, width) or not images.is_floating_point():
            raise ImageInputError(f"got a {images.dtype} tensor of shape {list(images.shape)}: expected a float tensor "
                                  f"[N, 3, {height}, {width}], resized and normalised as rlq.transforms.EvalTransform "
                                  "gives (or pass the images themselves in a list)")
        return TensorDataset(images.float().cpu(), torch.arange(len(images)))


def _precision(choice: str, device: torch.device) -> str:
    """evaluate.py's --mixed-precision for this device: auto asks about the GPU, so it is fp32 ("no") off it."""
    if choice not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision {choice!r}: expected auto, no, bf16 or fp16")
    if choice == "auto" and device.type != "cuda":
        return "no"
    return mixed_precision(choice)


def check_item(item: ImageItem, index: int) -> None:
    """Refuse, before any image is read, an item that is not an image (a missing file, an array of another shape)."""
    if isinstance(item, (str, os.PathLike)):
        if not Path(item).is_file():
            raise ImageInputError(f"images[{index}]: '{os.fspath(item)}' does not exist: expected an image file")
    elif isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ImageInputError(f"images[{index}]: a numpy array of shape {item.shape} and dtype {item.dtype}: "
                                  "expected H x W x 3 uint8 (RGB)")
    elif not isinstance(item, Image.Image):
        raise ImageInputError(f"images[{index}]: {item!r:.40} ({type(item).__name__}): expected a file path, a PIL image "
                              "or an H x W x 3 uint8 numpy array")


class ImageList(Dataset):
    """Item i: (the i-th image read as evaluation reads its files and transformed for the network, i)."""

    def __init__(self, items: list[ImageItem], transform: EvalTransform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.read(index)), index

    def read(self, index: int) -> Image.Image:
        item = self.items[index]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item)  # H x W x 3 uint8 (check_item): RGB
        if isinstance(item, Image.Image):
            try:
                return upright_rgb(item)
            except (OSError, ValueError, TypeError) as error:  # the errors load_image reports for files
                raise ImageInputError(f"images[{index}]: a PIL image of mode {item.mode}: expected an image convertible "
                                      f"to RGB ({type(error).__name__}: {error})") from None
        try:
            return load_image(item)
        except ImageReadError as error:
            raise ImageInputError(f"images[{index}]: {error}") from None


class SearchResult(NamedTuple):
    """Row q: the gallery items nearest query q, nearest first (`indices`), and their `similarities`."""

    indices: torch.Tensor
    similarities: torch.Tensor


def search(query_features: torch.Tensor, gallery_features: torch.Tensor, top_k: int = 10, rerank: bool = False,
           **rerank_options) -> SearchResult:
    """The `top_k` gallery features nearest each query feature: [Q, min(top_k, G)] indices and similarities.

    Features are L2-normalised rows (as `FeatureExtractor` gives); the similarity is their dot product (cosine).
    `rerank=True` ranks by k-reciprocal re-ranking instead (`rlq.rerank`, evaluate.py --rerank; `rerank_options`:
    k1=20, k2=6, lambda_value=0.3), and the similarities are then minus the re-ranked distances. Runs on the
    features' device.
    """
    if query_features.dim() != 2 or gallery_features.dim() != 2 or query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"query features {list(query_features.shape)}, gallery features {list(gallery_features.shape)}: "
                         "expected two matrices [Q, D] and [G, D] of the same D")
    if top_k < 1 or len(gallery_features) == 0:
        raise ValueError(f"top_k {top_k}, {len(gallery_features)} gallery features: expected 1 or more of each")
    if not rerank:
        similarities, indices = rank(query_features, gallery_features, top_k)
        return SearchResult(indices, similarities)
    reranking = k_reciprocal_reranking(query_features, gallery_features, **rerank_options)
    num_query, num_gallery = len(query_features), len(gallery_features)
    rows = max(1, (1 << 26) // num_gallery)  # query rows at a time: their dense [rows, G] distances stay bounded
    best = [reranking.similarities(slice(start, min(start + rows, num_query))).topk(min(top_k, num_gallery), dim=1)
            for start in range(0, num_query, rows)]
    return SearchResult(torch.cat([b.indices for b in best]), torch.cat([b.values for b in best]))
