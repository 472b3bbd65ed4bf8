"""Every image read as it looks, or refused: `rlq.images.load_image` on every mode PIL opens, EXIF orientation,
the start-up check running the same reader, skipped files named in the dataset summary, and tiny images."""

from __future__ import annotations

import colorsys
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_here

from rlq.data import Sample, load_dataset, summary, summary_table, unreadable_images
from rlq.images import BACKGROUND, ImageReadError, load_image, to_rgb

GREY = np.asarray(BACKGROUND, dtype=np.float64)
LEVELS_16 = np.array([[0, 255, 256, 32767], [32768, 40000, 65280, 65535]], dtype=np.uint16)


def read(path: Path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def gray_as_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.int64)[..., None], 3, axis=2)


def over_grey(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb.astype(np.float64) * a + GREY * (1 - a)).astype(np.int64)


def png_16bit(path: Path, pixels: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): colour type 0 gray, 2 RGB, 6 RGBA."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- 16-bit and 32-bit, float


def test_16bit_gray_png_keeps_the_high_byte(tmp_path):
    path = tmp_path / "gray16.png"
    png_16bit(path, LEVELS_16, 0)
    assert Image.open(path).mode in ("I;16", "I")
    got = read(path)
    assert np.array_equal(got, gray_as_rgb(LEVELS_16 // 256))
    assert got[1, 0, 0] == 128 and got[1, 3, 0] == 255  # 32768 and 65535, which convert("RGB") clips to 255 both


@pytest.mark.parametrize("dtype", [">u2", "<u2"])
def test_16bit_gray_tiff_either_byte_order(tmp_path, dtype):
    path = tmp_path / "gray16.tif"
    Image.fromarray(LEVELS_16.astype(dtype)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    assert np.array_equal(read(path), gray_as_rgb(LEVELS_16 // 256))


def test_32bit_tiff_scales_by_its_stored_depth(tmp_path):
    values = np.array([[0, 2**24 - 1, 2**24, 2**31 - 1, -5]], dtype=np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    assert np.array_equal(read(path), gray_as_rgb([[0, 0, 1, 127, 0]]))


@pytest.mark.parametrize(("values", "expected"), [
    ([[0, 200, 255]], [[0, 200, 255]]),  # fits 8 bits: as it is
    ([[0, 256, 32768, 65535]], [[0, 1, 128, 255]]),  # fits 16 bits: the high byte of 16
])
def test_integer_image_without_a_depth_is_judged_by_its_values(values, expected):
    img = Image.fromarray(np.array(values, dtype=np.int32))
    assert img.mode == "I"
    assert np.array_equal(np.asarray(to_rgb(img)), gray_as_rgb(expected))


def test_integer_image_from_a_16bit_png_is_16bit_whatever_its_values():
    img = Image.fromarray(np.array([[0, 200, 255]], dtype=np.int32))
    assert np.array_equal(np.asarray(to_rgb(img, bits=16)), gray_as_rgb([[0, 0, 0]]))


@pytest.mark.parametrize(("values", "expected"), [
    ([[0.0, 0.25, 0.5, 1.0, -0.5, np.nan]], [[0, 64, 128, 255, 0, 0]]),  # max <= 1: 0..1
    ([[0.0, 100.4, 254.6, 300.0, np.nan]], [[0, 100, 255, 255, 0]]),  # max > 1: 0..255
])
def test_float_tiff(tmp_path, values, expected):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array(values, dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert np.array_equal(read(path), gray_as_rgb(expected))


def test_16bit_colour_png_reads_as_the_high_byte_like_gray(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (3, 5, 3)).astype(np.uint16)
    pixels[0, 0] = (32768, 65535, 255)
    path = tmp_path / "rgb16.png"
    png_16bit(path, pixels, 2)
    got = read(path)
    assert np.array_equal(got, pixels // 256)
    assert np.abs(got - np.rint(pixels / 257)).max() <= 1  # within a level of the exact rescaling
    assert tuple(got[0, 0]) == (128, 255, 0)


def test_16bit_rgba_png_is_composited(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 65536, (4, 3, 4)).astype(np.uint16)
    path = tmp_path / "rgba16.png"
    png_16bit(path, pixels, 6)
    assert np.array_equal(read(path), over_grey(pixels[..., :3] // 256, pixels[..., 3] // 256))


# --------------------------------------------------------------------------- transparency, palette, bilevel


def random_rgba(seed: int = 0, shape: tuple[int, int] = (4, 6)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 4)).astype(np.uint8)
    pixels[0, 0, 3], pixels[0, 1, 3] = 0, 255  # fully transparent and fully opaque
    return pixels


def test_rgba_is_composited_over_grey(tmp_path):
    pixels = random_rgba()
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, "RGBA").save(path)
    got = read(path)
    assert np.array_equal(got, over_grey(pixels[..., :3], pixels[..., 3]))
    assert tuple(got[0, 0]) == BACKGROUND and tuple(got[0, 1]) == tuple(pixels[0, 1, :3])


def test_la_is_composited_over_grey(tmp_path):
    pixels = random_rgba()[..., [0, 3]]
    path = tmp_path / "la.png"
    Image.fromarray(pixels, "LA").save(path)
    assert np.array_equal(read(path), over_grey(gray_as_rgb(pixels[..., 0]), pixels[..., 1]))


def test_pa_is_composited_over_grey():
    palette = np.random.default_rng(2).integers(0, 256, (256, 3)).astype(np.uint8)
    indices = np.random.default_rng(3).integers(0, 256, (3, 4)).astype(np.uint8)
    alpha = np.random.default_rng(4).integers(0, 256, (3, 4)).astype(np.uint8)
    img = Image.fromarray(indices, "L").convert("P")
    img.putpalette(palette.tobytes())
    img = Image.merge("PA", (img, Image.fromarray(alpha, "L")))
    img.putpalette(palette.tobytes())
    assert img.mode == "PA"
    assert np.array_equal(np.asarray(to_rgb(img)), over_grey(palette[indices], alpha))


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_with_and_without_a_transparent_index(tmp_path, transparent):
    palette = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0]], dtype=np.uint8)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(indices, "P")
    img.putpalette(palette.tobytes())
    path = tmp_path / "palette.png"
    img.save(path, **({"transparency": 1} if transparent else {}))
    expected = palette[indices].astype(np.int64)
    if transparent:
        expected[indices == 1] = BACKGROUND
    assert np.array_equal(read(path), expected)


def test_gray_with_a_transparent_value(tmp_path):
    values = np.array([[0, 77, 255, 77]], dtype=np.uint8)
    path = tmp_path / "gray_key.png"
    Image.fromarray(values, "L").save(path, transparency=77)
    assert np.array_equal(read(path), over_grey(gray_as_rgb(values), np.where(values == 77, 0, 255)))


def test_bilevel(tmp_path):
    bits = np.array([[True, False, True], [False, False, True]])
    path = tmp_path / "bilevel.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    assert np.array_equal(read(path), gray_as_rgb(np.where(bits, 255, 0)))


def test_8bit_gray(tmp_path):
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) * 21
    path = tmp_path / "gray.png"
    Image.fromarray(values).save(path)
    assert np.array_equal(read(path), gray_as_rgb(values))


# --------------------------------------------------------------------------- CMYK, YCbCr, LAB, HSV


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    c = cmyk.astype(np.float64)
    return np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.int64)


def test_cmyk_tiff(tmp_path):
    cmyk = np.random.default_rng(5).integers(0, 256, (4, 5, 4)).astype(np.uint8)
    path = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk, "CMYK").save(path)
    assert np.abs(read(path) - cmyk_to_rgb(cmyk)).max() <= 1


def test_cmyk_jpeg_written_adobe_inverted(tmp_path):
    # Pillow writes CMYK JPEGs inverted, with an Adobe marker; the reader must un-invert them.
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[:8, :8], cmyk[:8, 8:], cmyk[8:, :8], cmyk[8:, 8:] = (200, 0, 0, 0), (0, 180, 40, 0), (0, 0, 0, 220), (30, 60, 90, 10)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=100)
    with Image.open(path) as img:
        assert img.mode == "CMYK" and "adobe" in img.info
    assert np.abs(read(path) - cmyk_to_rgb(cmyk)).max() <= 4


def test_ycbcr():
    ycbcr = np.random.default_rng(6).integers(0, 256, (3, 4, 3)).astype(np.float64)
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] - 128, ycbcr[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1).clip(0, 255)
    got = np.asarray(to_rgb(Image.fromarray(ycbcr.astype(np.uint8), "YCbCr"))).astype(np.int64)
    assert np.abs(got - rgb).max() <= 1.01


def test_hsv():
    hsv = np.random.default_rng(7).integers(0, 256, (3, 4, 3)).astype(np.uint8)
    expected = np.array([[colorsys.hsv_to_rgb(*(p / 255)) for p in row] for row in hsv]) * 255
    got = np.asarray(to_rgb(Image.fromarray(hsv, "HSV"))).astype(np.int64)
    assert np.abs(got - expected).max() <= 1.01


def test_lab_tiff(tmp_path):
    # Pillow's LAB pixels: L* scaled to 0..255, a* and b* as signed bytes. White, black, sRGB red (L 53.2, a 80.1, b 67.2).
    lab = (np.array([[[255, 0, 0], [0, 0, 0], [136, 80, 67]]]) % 256).astype(np.uint8)
    path = tmp_path / "lab.tif"
    Image.fromarray(lab, "LAB").save(path)
    assert Image.open(path).mode == "LAB"
    expected = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]])
    assert np.abs(read(path) - expected).max() <= 12


# --------------------------------------------------------------------------- EXIF orientation


def blocks_image() -> np.ndarray:
    """3 x 2 blocks of 8 x 8 pixels, each its own colour: asymmetric under every flip and rotation; JPEG-friendly."""
    colours = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(255, 255, 0), (0, 0, 0), (255, 255, 255)]], dtype=np.uint8)
    return colours.repeat(8, axis=0).repeat(8, axis=1)


UPRIGHT = {  # EXIF orientation -> what turns the stored pixels upright
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = blocks_image()
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.jpg"
    img.save(path, exif=exif, quality=100, subsampling=0)
    expected = UPRIGHT[orientation](stored).astype(np.int64)
    got = read(path)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 8


# --------------------------------------------------------------------------- refusals and the start-up check


@pytest.mark.parametrize("content", [None, b"", b"not an image"])
def test_unreadable_file_error_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.png") as caught:
        load_image(path)
    assert isinstance(caught.value, RuntimeError)


def test_start_up_check_flags_exactly_what_the_reader_refuses(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(LEVELS_16).save(good)
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:-200])  # opens (the header is fine), fails to decode
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really")
    paths = [good, whole, truncated, garbage]
    samples = [Sample(str(p), 0, 0, 0, p.stem, "0") for p in paths]
    refused = set()
    for path in paths:
        try:
            load_image(path)
        except ImageReadError:
            refused.add(str(path))
    assert refused == {str(truncated), str(garbage)}
    problems = unreadable_images(samples, workers=2)
    assert {path for path, _ in problems} == refused
    assert all(reason for _, reason in problems)


# --------------------------------------------------------------------------- skipped files in the dataset summary


@pytest.fixture
def ltcc_with_strays(tmp_path):
    root = tmp_path / "LTCC_ReID"
    names = ["train/000_1_c1_000001.png", "train/000_2_c2_000002.png", "train/001_1_c3_000003.png",
             "query/000_1_c1_000010.png", "test/000_2_c2_000020.png", "test/001_1_c4_000021.png"]
    strays = ["train/000_1_c1_000004.webp", "train/001_1_c1_000005.WEBP", "query/000_1_c1_000011.bmp"]
    ignored = ["train/._001_1_c1_000001.png", "train/.DS_Store", "query/._000_1_c1_000010.jpg", "test/notes.txt",
               "test/._000_2_c2_000020.webp"]
    for name in names + strays + ignored:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_skipped_formats_are_counted_and_named(ltcc_with_strays):
    root = ltcc_with_strays
    dataset = load_dataset("ltcc", root)
    assert sorted(Path(s.path).name for s in dataset.train) == ["000_1_c1_000001.png", "000_2_c2_000002.png", "001_1_c3_000003.png"]
    assert len(dataset.splits["query"]) == 1 and len(dataset.splits["gallery"]) == 2
    info = summary(dataset)["skipped"]
    assert info == {
        "train": {"files": 2, "extensions": {".webp": 2},
                  "examples": [str(root / "train/000_1_c1_000004.webp"), str(root / "train/001_1_c1_000005.WEBP")]},
        "query": {"files": 1, "extensions": {".bmp": 1}, "examples": [str(root / "query/000_1_c1_000011.bmp")]},
    }
    last_line = summary_table(dataset).splitlines()[-1]
    assert last_line == (
        "skipped 3 files in formats the ltcc parser does not read: .webp (2), .bmp (1); train 2, query 1; "
        f"e.g. {root / 'query/000_1_c1_000011.bmp'}, {root / 'train/000_1_c1_000004.webp'}, {root / 'train/001_1_c1_000005.WEBP'}"
    )


def test_no_skipped_files_no_line(tmp_path):
    root = tmp_path / "LTCC_ReID"  # (the test's own folder name has the word "skipped" in it)
    for name in ["train/000_1_c1_000001.png", "query/000_1_c1_000010.png", "test/000_2_c2_000020.png", "test/._x.webp"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    dataset = load_dataset("ltcc", root)
    assert "skipped" not in summary(dataset)
    assert not any(line.startswith("skipped") for line in summary_table(dataset).splitlines())


def test_summary_cli_reports_skipped_files(ltcc_with_strays):
    command = ["-m", "rlq.data", "--dataset", "ltcc", "--root", str(ltcc_with_strays)]
    table = run_here(*command)
    assert table.returncode == 0, table.stderr
    assert "skipped 3 files in formats the ltcc parser does not read: .webp (2), .bmp (1)" in table.stdout
    as_json = run_here(*command, "--print-json")
    assert as_json.returncode == 0, as_json.stderr
    assert {split: s["files"] for split, s in json.loads(as_json.stdout)["skipped"].items()} == {"train": 2, "query": 1}


# --------------------------------------------------------------------------- tiny images


TINY_SIZES = [(1, 1), (1, 2), (2, 1), (3, 5), (7, 3)]  # (width, height)
TINY_MODES = ["RGB", "I;16", "P", "RGBA", "CMYK", "1"]
H, W = 16, 8


def tiny_file(folder: Path, size: tuple[int, int], mode: str) -> Path:
    """A random image of `size` in `mode`, saved losslessly."""
    width, height = size
    rng = np.random.default_rng(width * 10 + height)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    elif mode == "1":
        img = Image.fromarray(rng.random((height, width)) < 0.5)
    else:
        rgba = rng.integers(0, 256, (height, width, 4)).astype(np.uint8)
        img = Image.fromarray(rgba, "RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(rgba, "RGBA")
    path = folder / f"tiny_{width}x{height}_{mode.replace(';', '')}.{'tif' if mode == 'CMYK' else 'png'}"
    img.save(path)
    return path


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x.float()).all())


@pytest.mark.parametrize("mode", TINY_MODES)
@pytest.mark.parametrize("size", TINY_SIZES)
def test_tiny_images_go_through_every_step(tmp_path, size, mode):
    from rlq.lowquality import Degrade
    from rlq.masks import write_key_list, write_mask_png
    from rlq.ranking import ranking_strip
    from rlq.recolour import Recolouring
    from rlq.transforms import (DEGRADATIONS, MIXES, DeferredTrainTransform, EvalTransform, TrainTransform,
                                degrade, finish_batch, rng_for, tad_pair)

    path = tiny_file(tmp_path, size, mode)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == size
    rng = rng_for(0, 0, 0, 0)

    evaluated = EvalTransform(H, W)(img)
    assert evaluated.shape == (3, H, W) and finite(evaluated)
    trained = TrainTransform(H, W)(img, rng)
    assert trained.shape == (3, H, W) and finite(trained)
    pixels, draws = DeferredTrainTransform(H, W)(img, rng)
    finished = finish_batch(pixels[None], draws[None])
    assert finished.shape == (1, 3, H, W) and finite(finished)

    for kind, (draw, apply) in DEGRADATIONS.items():
        for _ in range(3):  # several parameter draws, the largest kernels among them most likely
            out = apply(img, **draw(rng))
            assert out.mode == "RGB" and min(out.size) >= 1, kind
    for dataset in MIXES:
        assert degrade(img, "mix", rng, dataset).mode == "RGB"
        assert EvalTransform(H, W)(Degrade("mix", dataset, 0)(img, 3)).shape == (3, H, W)
    for kind in (*DEGRADATIONS, "mix"):
        assert min(Degrade(kind, "ltcc", 1)(img, 0).size) >= 1
    high, low = tad_pair(img, "ltcc", TrainTransform(H, W), rng)
    assert high.shape == low.shape == (3, H, W) and finite(high) and finite(low)

    masks_dir = tmp_path / "masks"
    sample = Sample(str(path), 0, 0, 0, path.stem, "0")
    bits = np.random.default_rng(9).choice([0, 1 | 4, 2 | 4], size=(size[1], size[0])).astype(np.uint8)
    write_mask_png(masks_dir / f"{sample.key}.png", bits)
    for name in ("faulty_tops.txt", "faulty_pants.txt"):
        write_key_list(masks_dir / name, [])
    recoloured, label = Recolouring(masks_dir, num_original_clothes=1)(img, sample, rng)
    assert recoloured.size == size and label >= 1
    assert np.array_equal(np.asarray(recoloured)[bits == 0], np.asarray(img)[bits == 0])  # outside the clothes: untouched

    strip = ranking_strip(str(path), [str(path)], [0.5], [(0, 0, 0)])
    assert strip.width > 0 and strip.height > 0


@pytest.mark.parametrize("size", TINY_SIZES)
def test_tiny_images_through_the_loaders(tmp_path, size):
    from rlq.loaders import EvalImages, TADPairs, TrainImages
    from rlq.lowquality import Degrade
    from rlq.transforms import DeferredTrainTransform, EvalTransform, TrainTransform

    path = tiny_file(tmp_path, size, "RGB")
    samples = [Sample(str(path), 0, 0, 0, path.stem, "0")]
    image, index = EvalImages(samples, EvalTransform(H, W), Degrade("mix", "ltcc", 0))[0]
    assert image.shape == (3, H, W) and index == 0 and finite(image)
    images, pids, clothes = TrainImages(samples, TrainTransform(H, W), seed=0, rank=0)[0]
    assert images.shape == (1, 3, H, W) and finite(images)
    high, low, draws = TADPairs(samples, DeferredTrainTransform(H, W), "prcc", seed=0, rank=0)[0]
    assert high.shape == low.shape == (3, H, W) and high.dtype == torch.uint8
