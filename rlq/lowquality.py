"""Low-quality robustness evaluation (method.md section 5, data.md sections 2 and 5).

- Degraded evaluation: every query and gallery image is degraded (all pixelation, all
  motion blur, all Gaussian blur, or the dataset's mix) with parameters drawn from a
  generator seeded by (split, image index) alone (`rlq.transforms.degrade_for_eval`), so
  every run sees the same images and gives the same numbers.
- Resolution buckets: the authors' size CSV (`Category,Image,<32,32-64,64-128,128-256,>256`,
  also written by preprocess_masks.py) puts every query in one bucket; each protocol is
  then scored on each bucket's queries against the whole gallery.
- A sample sheet: rows of HQ | pixelation | motion blur | Gaussian blur.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image, ImageDraw

from rlq.data import Evaluation, ReIDDataset, Sample, format_table
from rlq.evaluation import extract_features, run_evaluation
from rlq.files import read_csv_rows
from rlq.masks import SIZE_BUCKETS, size_csv_name
from rlq.metrics import NoValidQuery
from rlq.transforms import DEGRADATIONS, degrade_for_eval, load_image

KINDS = (*DEGRADATIONS, "mix")


class SizeBucketError(ValueError):
    """The size CSV is malformed or does not cover the queries."""


@dataclass(frozen=True)
class Degrade:
    """`(image, index in its split) -> degraded image` for the evaluation loader (picklable for workers)."""

    kind: str
    dataset: str  # picks the probabilities of the mix
    seed: int

    def __call__(self, img: Image.Image, index: int) -> Image.Image:
        return degrade_for_eval(img, self.kind, self.dataset, index, self.seed)


def split_seed(split: str) -> int:
    """A fixed seed per split name, so query i and gallery i draw different parameters."""
    return zlib.crc32(split.encode())


def degraded_features(model: torch.nn.Module, dataset: ReIDDataset, kinds: tuple[str, ...], accelerator: Accelerator,
                      **loader_options) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: {split: features}} of every split the dataset's evaluations use, degraded (call on every process)."""
    names = dict.fromkeys(n for e in dataset.evaluations for n in (e.query_split, e.gallery_split))
    return {
        kind: {name: extract_features(model, dataset.splits[name], accelerator,
                                      degrade=Degrade(kind, dataset.name, split_seed(name)), **loader_options)
               for name in names}
        for kind in kinds
    }


def read_size_buckets(path: Path) -> dict[tuple[str, str], str]:
    """(Category, Image) -> bucket name of a size CSV (one-hot rows)."""
    path = Path(path)
    if not path.is_file():
        raise SizeBucketError(f"size CSV '{path}' does not exist")
    header, rows = read_csv_rows(path, SizeBucketError)
    expected = ["Category", "Image", *SIZE_BUCKETS]
    if header != expected:
        raise SizeBucketError(f"'{path}' has columns {header}: expected {','.join(expected)}")
    buckets = {}
    for line, row in enumerate(rows, 2):
        hot = [b for b in SIZE_BUCKETS if row[b].strip() in ("1", "1.0")]
        if len(hot) != 1:
            raise SizeBucketError(f"'{path}' line {line}: expected exactly one bucket set to 1, got {hot or 'none'}")
        buckets[row["Category"].strip(), row["Image"].strip()] = hot[0]
    return buckets


def query_buckets(dataset: ReIDDataset, samples: list[Sample], buckets: dict[tuple[str, str], str], source: Path) -> list[str]:
    """The bucket of every sample; an error naming the first few samples the CSV lacks."""
    keys = [size_csv_name(dataset.name, dataset.root, s.path) for s in samples]
    missing = [f"{c}/{i}" for c, i in keys if (c, i) not in buckets]
    if missing:
        raise SizeBucketError(f"{len(missing)} query images missing from the size CSV '{source}' (first: {', '.join(missing[:5])})")
    return [buckets[k] for k in keys]


def bucket_results(evaluation: Evaluation, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor],
                   buckets: list[str]) -> dict[str, dict]:
    """{bucket: metrics} of one protocol, each on its bucket's queries (buckets with no valid query: skipped counts only)."""
    query = splits[evaluation.query_split]
    results = {}
    for bucket in SIZE_BUCKETS:
        members = [i for i, b in enumerate(buckets) if b == bucket]
        if not members:
            continue
        sub_splits = splits | {evaluation.query_split: [query[i] for i in members]}
        sub_features = features | {evaluation.query_split: features[evaluation.query_split][members]}
        try:
            results[bucket] = run_evaluation(evaluation, sub_splits, sub_features)
        except NoValidQuery:
            results[bucket] = {"num_valid_queries": 0, "num_skipped_queries": len(members)}
    return results


def low_quality_report(dataset: ReIDDataset, clean: dict[str, dict], features: dict[str, torch.Tensor],
                       degraded: dict[str, dict[str, torch.Tensor]], size_csv: Path | None) -> tuple[dict, str]:
    """Metrics under each degradation and per query-size bucket (main process), and their tables as text.

    Returns ({"degraded": {kind: {protocol: metrics}}, "size_buckets": {condition: {protocol: {bucket: metrics}}}}
    holding only what was asked for, text).
    """
    extra, text = {}, []
    if degraded:
        extra["degraded"] = {kind: {e.name: run_evaluation(e, dataset.splits, feats) for e in dataset.evaluations}
                             for kind, feats in degraded.items()}
        text.append(degradation_table(clean, extra["degraded"]))
    if size_csv is not None:
        buckets = read_size_buckets(size_csv)
        conditions = {"clean": features} | degraded
        extra["size_buckets"] = {
            condition: {e.name: bucket_results(e, dataset.splits, feats,
                                               query_buckets(dataset, dataset.splits[e.query_split], buckets, size_csv))
                        for e in dataset.evaluations}
            for condition, feats in conditions.items()
        }
        text.append(bucket_table(extra["size_buckets"]))
    return extra, "\n\n".join(text)


def _pair(m: dict) -> list[str]:
    if not m.get("num_valid_queries"):
        return ["-", "-"]
    return [f"{100 * m['top1']:.1f}", f"{100 * m['mAP']:.1f}"]


def degradation_table(clean: dict[str, dict], degraded: dict[str, dict[str, dict]]) -> str:
    """Rows: clean and each degradation; columns: top-1 and mAP of each protocol (percent)."""
    protocols = list(clean)
    header = ["query + gallery"] + [f"{p} {m}" for p in protocols for m in ("top-1", "mAP")]
    rows = [[condition] + [v for p in protocols for v in _pair(results[p])]
            for condition, results in {"clean": clean, **degraded}.items()]
    return format_table(header, rows)


def bucket_table(by_condition: dict[str, dict[str, dict[str, dict]]]) -> str:
    """Rows: (condition, query-size bucket) with its query count; columns: top-1 and mAP of each protocol."""
    protocols = list(next(iter(by_condition.values())))
    header = ["condition", "query size", "queries"] + [f"{p} {m}" for p in protocols for m in ("top-1", "mAP")]
    rows = []
    for condition, by_protocol in by_condition.items():
        for bucket in SIZE_BUCKETS:
            if bucket not in by_protocol[protocols[0]]:
                continue
            first = by_protocol[protocols[0]][bucket]
            count = first["num_valid_queries"] + first["num_skipped_queries"]
            rows.append([condition, bucket, count] + [v for p in protocols for v in _pair(by_protocol[p].get(bucket, {}))])
    return format_table(header, rows)


def lq_sample_sheet(samples: list[Sample], dataset_name: str, count: int, out: Path, split: str = "query",
                    cell: tuple[int, int] = (96, 192)) -> Path:
    """A PNG of `count` images (evenly spread over `samples`), each as HQ | pixelate | motion | gaussian.

    The degraded copies are exactly the ones the degraded evaluation of `split` uses, shown at
    the cell size the way the network's Resize would bring them back up.
    """
    width, height = cell
    label_h = 14
    indices = torch.linspace(0, len(samples) - 1, min(count, len(samples))).round().long().tolist()
    columns = ("HQ", *DEGRADATIONS)
    sheet = Image.new("RGB", (len(columns) * (width + 4), label_h + len(indices) * (height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * (width + 4) + 2, 1), name, fill=(0, 0, 0))
    for r, index in enumerate(indices):
        img = load_image(samples[index].path)
        views = [img] + [Degrade(kind, dataset_name, split_seed(split))(img, index) for kind in DEGRADATIONS]
        for c, view in enumerate(views):
            sheet.paste(view.resize((width, height), Image.Resampling.BILINEAR), (c * (width + 4), label_h + r * (height + 4)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
