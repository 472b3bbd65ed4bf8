from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rlq.transforms import (
    DEGRADATIONS,
    NUM_DRAWS,
    ERASE_FILL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeferredTrainTransform,
    EvalTransform,
    TrainTransform,
    degrade,
    degrade_for_eval,
    draw_crop,
    draw_erase_box,
    draw_flip,
    erase,
    finish_batch,
    draw_gaussian,
    draw_kind,
    draw_motion,
    draw_pixelate,
    gaussian_blur,
    load_image,
    mix_for,
    motion_blur,
    motion_kernel,
    pixelate,
    rng_for,
    tad_pair,
    worker_rng,
)

H, W = 64, 32  # small input size keeps the tests fast


def noise_image(width: int = 50, height: int = 110, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def left_right_image(width: int, height: int) -> Image.Image:
    """Black left half, white right half."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels)


# --- random streams, loading -------------------------------------------------


def test_rng_for_same_key_same_stream_and_each_key_part_matters():
    first = rng_for(1, 2, 3, 4).random(8)
    assert np.array_equal(first, rng_for(1, 2, 3, 4).random(8))
    for key in [(0, 2, 3, 4), (1, 0, 3, 4), (1, 2, 0, 4), (1, 2, 3, 0)]:
        assert not np.array_equal(first, rng_for(*key).random(8))


def test_worker_rng_in_main_process_is_worker_zero():
    assert np.array_equal(worker_rng(5, 1, 2).random(4), rng_for(5, 1, 2, 0).random(4))


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (7, 9), 128).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (7, 9)


@pytest.mark.parametrize("content", [None, b"not an image"])
def test_load_image_error_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RuntimeError, match="broken.jpg"):
        load_image(path)


# --- train / eval transforms -------------------------------------------------


def test_train_transform_shape_dtype_and_default_size():
    out = TrainTransform(H, W)(noise_image(), rng_for(0, 0, 0, 0))
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    assert TrainTransform()(noise_image(), rng_for(0, 0, 0, 0)).shape == (3, 384, 192)


def test_train_transform_reproducible_per_key_and_varies_across_keys():
    transform, img = TrainTransform(H, W), noise_image()

    def run(*key: int) -> torch.Tensor:
        rng = rng_for(*key)
        return torch.stack([transform(img, rng) for _ in range(4)])  # several draws per key

    reference = run(0, 0, 0, 0)
    assert torch.equal(reference, run(0, 0, 0, 0))
    for key in [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]:
        assert not torch.equal(reference, run(*key))


def test_eval_transform_is_deterministic_resize_and_normalise():
    img = noise_image()
    out = EvalTransform(H, W)(img)
    assert torch.equal(out, EvalTransform(H, W)(img))
    resized = np.asarray(img.resize((W, H), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    manual = (resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(out, torch.from_numpy(manual.transpose(2, 0, 1)).float())


def test_flip_and_crop_draws_happen_half_the_time_within_the_upscaled_image():
    rng = np.random.default_rng(0)
    flips = sum(draw_flip(rng) for _ in range(400))
    assert 150 < flips < 250
    crops = [draw_crop(H, W, rng) for _ in range(400)]
    drawn = [c for c in crops if c is not None]
    assert 150 < len(drawn) < 250
    lefts, tops = zip(*drawn)
    assert min(lefts) == 0 and max(lefts) == round(W * 1.125) - W
    assert min(tops) == 0 and max(tops) == round(H * 1.125) - H


def test_train_transform_flips_about_half_the_time():
    # The crop shifts by at most W/8 and erasing fills ~0.48, between the normalised
    # black (~-2) and white (~+2.2) halves, so the darker outer quarter shows the side.
    img, rng, transform = left_right_image(W, H), rng_for(0, 0, 0, 0), TrainTransform(H, W)
    flipped = 0
    for _ in range(200):
        out = transform(img, rng)
        left, right = out[:, :, : W // 4].mean(), out[:, :, -W // 4 :].mean()
        assert left != right
        flipped += bool(left > right)
    assert 70 < flipped < 130


def test_erase_boxes_respect_probability_area_and_aspect():
    rng = np.random.default_rng(0)
    boxes = [draw_erase_box(384, 192, rng) for _ in range(2000)]
    drawn = [b for b in boxes if b is not None]
    assert 0.45 < len(drawn) / len(boxes) < 0.55
    for top, left, h, w in drawn:
        assert 0 <= top and top + h <= 384 and 0 <= left and left + w <= 192
        assert h < 384 and w < 192
    fractions = np.array([h * w / (384 * 192) for _, _, h, w in drawn])
    aspects = np.array([h / w for _, _, h, w in drawn])
    assert fractions.min() > 0.018 and fractions.max() < 0.42  # h, w are rounded
    assert fractions.min() < 0.03 and fractions.max() > 0.35
    assert aspects.min() > 0.28 and aspects.max() < 3.5


def test_erase_writes_the_constants_in_one_box():
    x = torch.full((3, H, W), -7.0)
    rng = np.random.default_rng(0)
    erased = 0
    for _ in range(50):
        out = erase(x, draw_erase_box(H, W, rng))
        assert torch.equal(x, torch.full((3, H, W), -7.0))  # input untouched
        changed = out != -7.0
        if not changed.any():
            continue
        erased += 1
        rows = changed[0].any(dim=1).nonzero().flatten()
        cols = changed[0].any(dim=0).nonzero().flatten()
        box = out[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        fill = torch.tensor(ERASE_FILL).view(3, 1, 1).expand_as(box)
        assert torch.equal(box, fill)  # a full rectangle, exactly the constants
        assert changed.sum() == 3 * box.shape[1] * box.shape[2]
    assert 10 < erased < 40


def _all_draw_kinds(count: int, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    """Resized images and draws covering crop / flip / erase in every combination."""
    transform, rng = TrainTransform(H, W), np.random.default_rng(seed)
    images = [transform.resize(noise_image(40 + 3 * i, 90 + 5 * i, seed=i)) for i in range(count)]
    draws = torch.stack([torch.from_numpy(transform.draw(rng)) for _ in range(count)])
    return images, draws


def test_gpu_finish_matches_the_cpu_path_on_the_same_draws():
    images, draws = _all_draw_kinds(48)
    assert {tuple(d) for d in draws[:, [0, 3, 4]].tolist()} == {(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)}
    transform = TrainTransform(H, W)
    cpu = torch.stack([transform.finish(img, d.numpy()) for img, d in zip(images, draws)])
    pixels = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
    batched = finish_batch(pixels, draws)
    assert batched.shape == cpu.shape == (48, 3, H, W) and batched.dtype == torch.float32
    uncropped = draws[:, 0] == 0
    assert torch.equal(batched[uncropped], cpu[uncropped])  # flip, normalisation and erasing: exactly the same
    # The 1.125x upscale: torch's bilinear against PIL's fixed-point one, both rounded to whole levels.
    level = 1 / 255 / min(IMAGENET_STD)
    # PIL rounds between its two passes, so about a fifth of the pixels of these noise images differ by one level.
    difference = batched[~uncropped] - cpu[~uncropped]
    assert difference.abs().max() <= 1.01 * level
    assert difference.abs().mean() < 0.3 * level
    assert abs(difference.mean()) < 0.1 * level  # no bias to speak of (measured: -0.05 level)


def test_deferred_transform_returns_the_resized_pixels_and_the_cpu_paths_draws():
    img = noise_image()
    pixels, draws = DeferredTrainTransform(H, W)(img, rng_for(1, 2, 3, 4))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, H, W) and draws.shape == (NUM_DRAWS,)
    assert np.array_equal(pixels.permute(1, 2, 0).numpy(), np.asarray(TrainTransform(H, W).resize(img)))
    cpu = TrainTransform(H, W)(img, rng_for(1, 2, 3, 4))
    torch.testing.assert_close(finish_batch(pixels[None], draws[None])[0], cpu, atol=1.01 / 255 / min(IMAGENET_STD), rtol=0)


# --- degradations ------------------------------------------------------------


@pytest.mark.parametrize("size", [(50, 110), (110, 50)])
def test_pixelate_shorter_side_and_aspect(size):
    img = noise_image(*size)
    out = pixelate(img, 20)
    assert out.mode == "RGB" and min(out.size) == 20
    assert abs(out.size[0] / out.size[1] - size[0] / size[1]) < 0.05


@pytest.mark.parametrize(
    ("apply", "params"),
    [
        (motion_blur, {"kernel_size": 8, "angle": 30}),
        (motion_blur, {"kernel_size": 19, "angle": 100}),
        (gaussian_blur, {"kernel_size": 21, "sigma": 2.0}),
    ],
)
def test_blurs_keep_size_and_mode_and_change_pixels(apply, params):
    img = noise_image()
    out = apply(img, **params)
    assert out.mode == "RGB" and out.size == img.size
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_blurs_keep_constant_image_constant():
    img = Image.new("RGB", (40, 90), (10, 200, 77))
    for out in [motion_blur(img, 8, 37), motion_blur(img, 15, 120), gaussian_blur(img, 9, 1.5)]:
        assert np.array_equal(np.asarray(out), np.asarray(img))


def test_motion_blur_of_an_impulse_is_the_kernel():
    pixels = np.zeros((41, 41), dtype=np.uint8)
    pixels[20, 20] = 255
    for k, angle in [(9, 30), (10, 135)]:
        out = np.asarray(motion_blur(Image.fromarray(pixels).convert("RGB"), k, angle))[..., 0]
        expected = np.zeros((41, 41))
        # cross-correlation: output[y, x] = sum kernel[i, j] img[y + i - k//2, x + j - k//2]
        kernel = motion_kernel(k, angle).numpy()[::-1, ::-1] * 255
        expected[20 - (k - 1) // 2 : 20 + k // 2 + 1, 20 - (k - 1) // 2 : 20 + k // 2 + 1] = kernel
        assert np.abs(out - np.round(expected)).max() <= 1


@pytest.mark.parametrize("k", [8, 9, 12, 19])
def test_motion_kernel_axis_aligned_lines_sit_in_row_and_column_k_minus_1_over_2(k):
    """Even k: half a pixel above (left of) the centre, as the authors' line is."""
    row, col = np.zeros((k, k)), np.zeros((k, k))
    row[(k - 1) // 2, :] = 1 / k
    col[:, (k - 1) // 2] = 1 / k
    torch.testing.assert_close(motion_kernel(k, 0), torch.from_numpy(row).float())
    torch.testing.assert_close(motion_kernel(k, 90), torch.from_numpy(col).float(), atol=1e-6, rtol=0)


def _authors_kernel_by_grid_sample(k: int, angle: float) -> torch.Tensor:
    """The authors' rule written another way: torch's affine_grid + grid_sample (bilinear, zeros outside)
    rotate the k x k line matrix about its centre (with align_corners=True, normalised coordinates are
    centred on ((k-1)/2, (k-1)/2) and scaled the same on both axes)."""
    line = torch.zeros(1, 1, k, k, dtype=torch.float64)
    line[0, 0, (k - 1) // 2, :] = 1
    t = math.radians(angle)
    # output position -> input position: the inverse of a counter-clockwise turn on a y-down grid
    theta = torch.tensor([[[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]], dtype=torch.float64)
    grid = F.affine_grid(theta, [1, 1, k, k], align_corners=True)
    rotated = F.grid_sample(line, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
    return (rotated / rotated.sum()).float()


@pytest.mark.parametrize("k", list(range(8, 20)))
def test_motion_kernel_is_the_authors_rotated_line(k):
    for angle in (0, 10, 30, 45, 60, 89, 90, 120, 135, 150, 179):
        torch.testing.assert_close(motion_kernel(k, angle), _authors_kernel_by_grid_sample(k, angle), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [8, 11, 19])
@pytest.mark.parametrize("angle", [0, 17, 45, 63, 90, 112, 135, 150, 179])
def test_motion_kernel_is_a_unit_sum_line_of_length_k_at_the_angle(k, angle):
    kernel = motion_kernel(k, angle).double()
    assert torch.isclose(kernel.sum(), torch.tensor(1.0, dtype=torch.float64))
    rows, cols = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64), indexing="ij")
    x, y = cols - (kernel * cols).sum(), -(rows - (kernel * rows).sum())  # y points up
    t = math.radians(angle)
    along = x * math.cos(t) + y * math.sin(t)
    across = -x * math.sin(t) + y * math.cos(t)
    # A line of k unit-spaced taps: variance (k^2 - 1) / 12 along it, give or take what bilinear sampling
    # spreads or the matrix's corners cut off; a 1-pixel-per-step diagonal, 1.41x longer at 45 degrees,
    # would have twice it.
    line_variance = (k**2 - 1) / 12
    assert 0.95 * line_variance <= (kernel * along**2).sum() <= line_variance + 0.5
    assert (kernel * across**2).sum() <= 0.5


def test_draw_parameter_ranges():
    rng = np.random.default_rng(0)
    sizes = [draw_pixelate(rng)["size"] for _ in range(3000)]
    motions = [draw_motion(rng) for _ in range(3000)]
    gaussians = [draw_gaussian(rng) for _ in range(3000)]
    assert min(sizes) == 16 and max(sizes) == 63
    assert set(sizes) == set(range(16, 64))
    assert {m["kernel_size"] for m in motions} == set(range(8, 20))
    assert {m["angle"] for m in motions} == set(range(0, 180))
    assert {g["kernel_size"] for g in gaussians} == set(range(5, 22, 2))
    sigmas = np.array([g["sigma"] for g in gaussians])
    assert 0.1 <= sigmas.min() < 0.11 and 1.99 < sigmas.max() < 2.0


def test_mix_frequencies_match_the_spec():
    rng = np.random.default_rng(0)
    for dataset, expected in [
        ("ltcc", {"pixelate": 0.33, "motion": 0.30, "gaussian": 0.37}),
        ("prcc", {"pixelate": 0.5, "gaussian": 0.5}),
    ]:
        counts = Counter(draw_kind(dataset, rng) for _ in range(3000))
        assert set(counts) == set(expected)
        for kind, p in expected.items():
            assert abs(counts[kind] / 3000 - p) < 0.03


def test_mix_tables_cover_all_datasets():
    for name in ["ltcc", "last", "celeb", "synthetic"]:
        assert mix_for(name) == {"pixelate": 0.33, "motion": 0.30, "gaussian": 0.37}
    for name in ["prcc", "DeepChange"]:
        assert mix_for(name) == {"pixelate": 0.5, "gaussian": 0.5}


def test_unknown_dataset_and_kind_errors():
    with pytest.raises(ValueError, match="known:.*ltcc"):
        mix_for("market")
    with pytest.raises(ValueError, match="pixelate"):
        degrade(noise_image(), "jpeg", np.random.default_rng(0))
    with pytest.raises(ValueError, match="dataset"):
        degrade(noise_image(), "mix", np.random.default_rng(0))
    with pytest.raises(ValueError, match="known:"):
        degrade_for_eval(noise_image(), "pixelate", "ltc", 0)


@pytest.mark.parametrize("kind", [*DEGRADATIONS, "mix"])
def test_degrade_outputs_rgb(kind):
    img = noise_image().convert("L")
    out = degrade(img, kind, np.random.default_rng(0), "ltcc")
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    if kind in ("motion", "gaussian"):
        assert out.size == img.size


@pytest.mark.parametrize("kind", [*DEGRADATIONS, "mix"])
def test_degrade_for_eval_is_deterministic_per_index(kind):
    img = noise_image()
    outs = [np.asarray(degrade_for_eval(img, kind, "ltcc", index)) for index in range(4)]
    again = [np.asarray(degrade_for_eval(img, kind, "ltcc", index)) for index in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(outs, again))
    assert not all(np.array_equal(outs[0], o) for o in outs[1:])
    other_seed = np.asarray(degrade_for_eval(img, kind, "ltcc", 0, seed=1))
    assert not np.array_equal(outs[0], other_seed)


def test_tad_pair_shapes_and_independent_views():
    img, transform = noise_image(), TrainTransform(H, W)
    hq, lq = tad_pair(img, "prcc", transform, np.random.default_rng(0))
    assert hq.shape == lq.shape == (3, H, W)
    assert not torch.equal(hq, lq)
    again = tad_pair(img, "prcc", transform, np.random.default_rng(0))
    assert torch.equal(hq, again[0]) and torch.equal(lq, again[1])
