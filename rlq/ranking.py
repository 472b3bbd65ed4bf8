"""Rank the images of one folder against another's, without identity labels.

`evaluate.py --query-dir Q --gallery-dir G` lists every image under both folders
(recursively; any size, resized to the checkpoint's input size), extracts features
with the multi-process `rlq.evaluation.extract_features`, and writes, for every
query, its top-k gallery images by cosine similarity as rows of a CSV
(`query,rank,gallery,similarity`, rank 1 = most similar) and as one PNG strip.
The strip drawing is shared with the labelled rankings of `evaluate.py --visualize`.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image, ImageDraw, ImageOps

from rlq.data import IMAGE_EXTENSIONS, Sample, is_macos_metadata, unreadable_images
from rlq.evaluation import extract_features
from rlq.transforms import load_image

QUERY_COLOUR = (0, 0, 255)
SAME_IDENTITY_COLOUR = (0, 160, 0)
OTHER_IDENTITY_COLOUR = (220, 0, 0)
UNLABELLED_COLOUR = (128, 128, 128)

_TILE_SIZE = (64, 128)  # (width, height) of an image in a strip
_BORDER = 4
_GAP = 8
_CAPTION_HEIGHT = 14


class RankingError(ValueError):
    """Folder ranking cannot run: a folder is missing or holds no images, or top_k < 1."""


@dataclass
class Ranking:
    """Every query's top-k gallery images: `indices[q, r]` is the gallery image at rank r + 1, `scores` its similarity."""

    query_paths: list[str]
    gallery_paths: list[str]
    scores: torch.Tensor
    indices: torch.Tensor


def list_images(folder: Path) -> list[str]:
    """Every image file under `folder`, recursively, sorted by path (macOS `._*` metadata files are not images)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RankingError(f"'{folder}' is not a folder")
    paths = sorted(str(p) for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not is_macos_metadata(p.name))
    if not paths:
        raise RankingError(f"'{folder}' holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)")
    return paths


def readable(paths: list[str], name: str) -> list[str]:
    """`paths` without the files that cannot be decoded, with a warning listing those (one broken file must not stop a search)."""
    problems = unreadable_images(_unlabelled(paths))
    if problems:
        warnings.warn(f"{name}: skipping {len(problems)} unreadable image(s):\n" + "\n".join(f"  {p}: {r}" for p, r in problems),
                      stacklevel=2)
    broken = {path for path, _ in problems}
    kept = [p for p in paths if p not in broken]
    if not kept:
        raise RankingError(f"no {name} image could be read (all {len(paths)} failed to decode)")
    return kept


def _unlabelled(paths: list[str]) -> list[Sample]:
    """Samples with no identity, camera or clothes labels (-1), for `extract_features`."""
    return [Sample(path=p, pid=-1, camid=-1, clothes_id=-1, key=p, pid_key="") for p in paths]


def rank(query_features: torch.Tensor, gallery_features: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices) [Q, min(top_k, G)] of the most cosine-similar gallery features (features are L2-normalised)."""
    return (query_features @ gallery_features.T).topk(min(top_k, len(gallery_features)), dim=1)


def write_csv(ranking: Ranking, path: Path) -> None:
    """One row per (query, rank): query,rank,gallery,similarity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["query", "rank", "gallery", "similarity"])
        for query, scores, indices in zip(ranking.query_paths, ranking.scores.tolist(), ranking.indices.tolist()):
            for position, (score, index) in enumerate(zip(scores, indices), start=1):
                writer.writerow([query, position, ranking.gallery_paths[index], f"{score:.6f}"])


def _tile(path: str, colour: tuple[int, int, int], caption: str) -> Image.Image:
    framed = ImageOps.expand(load_image(path).resize(_TILE_SIZE), border=_BORDER, fill=colour)
    tile = Image.new("RGB", (framed.width, framed.height + _CAPTION_HEIGHT), "white")
    tile.paste(framed, (0, 0))
    ImageDraw.Draw(tile).text((_BORDER, framed.height + 1), caption, fill="black")
    return tile


def ranking_strip(query: str, gallery: list[str], scores: list[float], colours: list[tuple[int, int, int]]) -> Image.Image:
    """The query (blue frame) and its ranked gallery images, each framed in its colour and captioned with its similarity."""
    tiles = [_tile(query, QUERY_COLOUR, "query")]
    tiles += [_tile(path, colour, f"{score:.3f}") for path, score, colour in zip(gallery, scores, colours)]
    width = tiles[0].width
    strip = Image.new("RGB", (len(tiles) * (width + _GAP), tiles[0].height), "white")
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (width + _GAP) + (_GAP if i else 0), 0))  # a wider gap after the query
    return strip


def write_strips(ranking: Ranking, folder: Path) -> None:
    """One PNG per query, named by its position in the listing and its file name: 00000_<name>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for qi, (query, scores, indices) in enumerate(zip(ranking.query_paths, ranking.scores.tolist(), ranking.indices.tolist())):
        gallery = [ranking.gallery_paths[g] for g in indices]
        strip = ranking_strip(query, gallery, scores, [UNLABELLED_COLOUR] * len(gallery))
        strip.save(folder / f"{qi:05d}_{Path(query).stem}.png")


def rank_folders(
    model: torch.nn.Module,
    query_dir: Path,
    gallery_dir: Path,
    accelerator: Accelerator,
    *,
    top_k: int,
    out: Path,
    save_features: Path | None,
    **loader_options,
) -> Ranking | None:
    """Rank every image under `gallery_dir` for every image under `query_dir`; write out/ranking.csv and the strips.

    All processes extract; the main process ranks, writes (and with `save_features` saves
    {query, gallery: {features, paths}}) and returns the Ranking; the others return None.
    """
    if top_k < 1:
        raise RankingError(f"top_k must be at least 1, got {top_k}")
    paths = {name: readable(list_images(folder), name) for name, folder in (("query", query_dir), ("gallery", gallery_dir))}
    features = {name: extract_features(model, _unlabelled(p), accelerator, **loader_options) for name, p in paths.items()}
    if not accelerator.is_main_process:
        return None
    scores, indices = rank(features["query"], features["gallery"], top_k)
    ranking = Ranking(paths["query"], paths["gallery"], scores, indices)
    write_csv(ranking, out / "ranking.csv")
    write_strips(ranking, out)
    if save_features is not None:
        save_features.parent.mkdir(parents=True, exist_ok=True)
        torch.save({name: {"features": features[name], "paths": paths[name]} for name in paths}, save_features)
    return ranking
