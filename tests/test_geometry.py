"""Geometry: letterbox, box/mask mapping, margins, rasterisation, inverse mapping."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.dataset import DataError
from benchmark.geometry.afloc import (
    afloc_box2mask,
    afloc_box_mapping,
    afloc_boxes_mask,
    afloc_margin_valid,
    afloc_mask_to_frame,
    afloc_sample_mask,
)
from benchmark.geometry.frames import (
    Letterbox,
    Native,
    Resize,
    ResizeCrop,
    bilinear_resize,
    letterbox_array,
    letterbox_params,
    parse_geometry,
    smooth_grid,
    transfer_map,
)
from benchmark.geometry.rasterize import rasterize_boxes, rasterize_polygons, read_mask_file, sample_mask
from benchmark.sample import Sample


def _sample(**kw) -> Sample:
    base = dict(sample_id="demo/x/Cat", image_path="/nonexistent.png", split="test", category="Cat")
    base.update(kw)
    return Sample(**base)


# ----------------------------------------------------------------------------- letterbox
def test_letterbox_taller_image_pads_left_with_floor():
    # 300x200: scale 224/300, width int(200*224/300) = int(149.33) = 149, pad 75 -> left 37, right 38
    p = letterbox_params((300, 200), 224)
    assert (p.new_h, p.new_w, p.top, p.left) == (224, 149, 0, 37)
    out = letterbox_array(np.full((300, 200), 255, np.uint8), 224)
    assert out.shape == (224, 224)
    cols = np.flatnonzero(out.any(axis=0))
    assert cols[0] == 37 and cols[-1] == 37 + 149 - 1
    assert out[:, :37].max() == 0 and out[:, 186:].max() == 0


def test_letterbox_wider_image_pads_top_with_floor():
    # 100x250: scale 224/250 = 0.896, height int(89.6) = 89, pad 135 -> top 67, bottom 68
    p = letterbox_params((100, 250), 224)
    assert (p.new_h, p.new_w, p.top, p.left) == (89, 224, 67, 0)
    out = letterbox_array(np.ones((100, 250), np.float32), 224)
    rows = np.flatnonzero(out.any(axis=1))
    assert rows[0] == 67 and rows[-1] == 67 + 89 - 1


def test_square_image_takes_the_taller_branch_without_padding():
    p = letterbox_params((512, 512), 224)
    assert (p.new_h, p.new_w, p.top, p.left) == (224, 224, 0, 0)


def test_letterbox_colour_image_keeps_channels():
    out = letterbox_array(np.ones((300, 200, 3), np.uint8), 224)
    assert out.shape == (224, 224, 3)


# ----------------------------------------------------------------------------- box mapping
def test_box_mapping_hand_computed():
    # 300x200 image (taller): percent 224/300; box * percent = [7.989, 15.083, 38.005, 22.773]
    # x = floor(7.989 + 37) = 44, y = floor(15.083) = 15, w = 38, h = 22
    b = afloc_box_mapping([10.7, 20.2, 50.9, 30.5], w=200, h=300, n=224)
    assert b.dtype == np.int32
    assert b.tolist() == [44, 15, 38, 22]


def test_box_mapping_wider_image_adds_top_pad():
    # 100x250 (wider): percent 0.896; full-image box -> [0, 67, 224, floor(89.6) = 89]
    assert afloc_box_mapping([0, 0, 250, 100], w=250, h=100, n=224).tolist() == [0, 67, 224, 89]


def test_box2mask_is_end_exclusive():
    m = afloc_box2mask([2, 1, 3, 2], 8, 6)
    assert m.sum() == 6 and m[1:3, 2:5].all()


def test_overlapping_boxes_are_summed_in_afloc_mask():
    m = afloc_boxes_mask([[0, 0, 20, 20], [10, 10, 20, 20]], (224, 224), 224)
    assert m.max() == 2
    assert (m == 2).sum() == 10 * 10
    assert (m > 0).sum() == 20 * 20 * 2 - 100


# ----------------------------------------------------------------------------- masks
def test_afloc_mask_rounding_depends_on_dtype():
    # One lesion pixel in a 448x448 image: INTER_AREA to 224 averages 2x2 blocks -> 0.25.
    m = np.zeros((448, 448), np.uint8)
    m[100, 100] = 1
    assert afloc_mask_to_frame(m, 224).sum() == 0  # uint8 is rounded by OpenCV (0.25 -> 0)
    f = afloc_mask_to_frame(m.astype(np.float32), 224)  # float keeps any coverage (>= 1e-5)
    assert f.sum() == 1 and f[50, 50] == 1


def test_margin_is_14_pixels_on_224_and_floor_ceil_elsewhere():
    v = afloc_margin_valid((224, 224))
    assert v.sum() == 196 * 196
    assert not v[13].any() and v[14, 14] and v[209, 209] and not v[210].any()
    # 100x200 frame: side int(448*100/512) = 87; left floor(113/2) = 56, top floor(13/2) = 6
    w = afloc_margin_valid((100, 200))
    rows, cols = np.flatnonzero(w.any(1)), np.flatnonzero(w.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (6, 92, 56, 142)


def test_rasterize_boxes_pixel_centre_rule_union_and_sum():
    m = rasterize_boxes([[0.5, 0.5, 2, 2]], (5, 5))
    assert np.argwhere(m).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    both = [[0, 0, 3, 3], [2, 2, 3, 3]]
    assert rasterize_boxes(both, (6, 6)).max() == 1
    s = rasterize_boxes(both, (6, 6), mode="sum")
    assert s[2, 2] == 2 and s.sum() == 18


def test_single_pixel_lesion_box_and_polygon():
    assert rasterize_boxes([[3, 4, 1, 1]], (8, 8)).sum() == 1
    assert rasterize_polygons([[[1, 1], [1, 1]]], (4, 4)).sum() >= 1


def test_sample_mask_union_of_sources(tmp_path):
    import cv2
    from pycocotools import mask as mu

    rle_src = np.zeros((20, 30), np.uint8)
    rle_src[0:2, 0:2] = 1
    rle = mu.encode(np.asfortranarray(rle_src))
    rle["counts"] = rle["counts"].decode()
    file_mask = np.zeros((20, 30), np.uint8)
    file_mask[10, 10] = 255
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), file_mask)
    s = _sample(image_size=(20, 30), boxes=[[20, 15, 2, 2]], rles=[rle], mask_paths=[str(path)],
                polygons=[[[25, 2], [28, 2], [28, 5], [25, 5]]])
    m = sample_mask(s)
    assert m[0:2, 0:2].all() and m[10, 10] == 1 and m[15:17, 20:22].all() and m[3, 26] == 1
    assert m.max() == 1


def test_mask_file_of_wrong_size_names_the_file(tmp_path):
    import cv2

    path = tmp_path / "bad.png"
    cv2.imwrite(str(path), np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError) as err:
        read_mask_file(path, (10, 10))
    assert "bad.png" in str(err.value)
    with pytest.raises(DataError):
        read_mask_file(tmp_path / "missing.png")


def test_sample_without_size_is_a_data_error():
    with pytest.raises(DataError):
        sample_mask(_sample(boxes=[[0, 0, 1, 1]]))


def test_afloc_sample_mask_sums_boxes_in_the_frame():
    s = _sample(image_size=(300, 200), boxes=[[10.7, 20.2, 50.9, 30.5], [10.7, 20.2, 50.9, 30.5]])
    m = afloc_sample_mask(s, 224)
    assert m.max() == 2 and (m == 2).sum() == 38 * 22


# ----------------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec,cls,frame", [("letterbox:224", Letterbox, (224, 224)),
                                            ("resize:224x200", Resize, (224, 200)),
                                            ("resize:320", Resize, (320, 320)),
                                            ("resize_crop:512:480", ResizeCrop, (480, 480)),
                                            ("native", Native, (300, 200))])
def test_parse_geometry(spec, cls, frame):
    g = parse_geometry(spec)
    assert isinstance(g, cls) and g.frame_size((300, 200)) == frame


def test_parse_geometry_rejects_unknown():
    with pytest.raises(ValueError):
        parse_geometry("crop:10")


# ----------------------------------------------------------------------------- maps
def test_resize_crop_inverse_has_nan_outside_hi_ml_footprint():
    # 600x800, R=512, C=448: side int(448*600/512) = 525, top floor(75/2) = 37, left floor(275/2) = 137
    g = ResizeCrop(512, 448)
    assert g.crop_window((600, 800)) == (37, 137, 525)
    out = g.grid_to_original(np.random.default_rng(0).random((14, 14)), (600, 800))
    finite = np.isfinite(out)
    rows, cols = np.flatnonzero(finite.any(1)), np.flatnonzero(finite.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (37, 561, 137, 661)


@pytest.mark.parametrize("geom", [Letterbox(224), Resize(224, 224), ResizeCrop(256, 224)])
def test_inverse_mapping_round_trip_of_a_linear_map(geom):
    size = (300, 200)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    ramp = 0.01 * xx + 0.02 * yy
    frame = geom.map_to_frame(ramp, size)
    back = geom.frame_to_original(frame, size)
    inner = np.zeros(size, bool)
    inner[20:-20, 20:-20] = True
    both = inner & np.isfinite(back)
    assert both.sum() > 0.5 * inner.sum()
    np.testing.assert_allclose(back[both], ramp[both], atol=1e-9)
    # letterbox padding never maps back into the image: footprint excludes it
    if isinstance(geom, Letterbox):
        fp = geom.footprint(size)
        assert fp[:, :37].sum() == 0 and fp[:, 37:186].all()


def test_transfer_between_identical_frames_is_identity():
    m = np.random.default_rng(1).random((224, 224))
    np.testing.assert_array_equal(transfer_map(m, "letterbox:224", "letterbox:224", (300, 200)), m)


def test_bilinear_numpy_matches_torch():
    grid = np.random.default_rng(2).standard_normal((3, 19, 19)).astype(np.float32)
    a = bilinear_resize(grid, (224, 224), use_torch=True)
    b = bilinear_resize(grid, (224, 224), use_torch=False)
    # float32 both ways, summed in a different order (torch 2.14's CPU kernel differs from this
    # formula by up to ~3e-6 on values of size ~4, a few ulps); a wrong tap or weight is >1e-2 off
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_resize_grid_to_original_is_one_interpolation():
    grid = np.random.default_rng(3).random((10, 10))
    out = Resize(320, 320).grid_to_original(grid, (50, 70))
    np.testing.assert_allclose(out, bilinear_resize(grid, (50, 70)))
    # the generic one-step sampler agrees with it
    generic = super(Resize, Resize(320, 320)).grid_to_original(grid, (50, 70))
    np.testing.assert_allclose(generic, out, atol=1e-12)


def test_smoothing_is_scipy_reflect_sigma_1_5():
    from scipy import ndimage

    g = np.random.default_rng(4).random((19, 19)).astype(np.float32)
    out = smooth_grid(g, 1.5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ndimage.gaussian_filter(g, sigma=(1.5, 1.5), order=0, mode="reflect"))
    batch = np.random.default_rng(5).standard_normal((6, 19, 23)).astype(np.float32)
    each = np.stack([ndimage.gaussian_filter(m, sigma=(1.5, 1.5), order=0) for m in batch])
    np.testing.assert_array_equal(smooth_grid(batch, 1.5), each)  # a batch: each map as alone


def test_letterbox_crop_is_letterbox_then_centre_crop():
    from benchmark.geometry.frames import Letterbox, parse_geometry
    g = parse_geometry("letterbox_crop:256:224")
    rng = np.random.default_rng(3)
    img = (rng.random((300, 200)) * 255).astype(np.uint8)
    full = Letterbox(256).image_to_frame(img)
    assert g.frame_size(img.shape) == (224, 224)
    np.testing.assert_array_equal(g.image_to_frame(img), full[16:240, 16:240])
    # a point maps to the letterbox position minus the crop offset
    u, v = g.affine(img.shape).to_frame(100.0, 150.0)
    u0, v0 = Letterbox(256).affine(img.shape).to_frame(100.0, 150.0)
    assert abs(u - (u0 - 16)) < 1e-12 and abs(v - (v0 - 16)) < 1e-12
    # the grid maps back to the original with NaN where the crop cut the image off
    back = g.grid_to_original(np.ones((7, 7)), img.shape)
    assert back.shape == img.shape and np.isnan(back[0, 100]) and np.isfinite(back[150, 100])


def test_sample_bilinear_is_the_two_pass_formula_exactly():
    """Rows first (x taps), then columns (y taps), each ``v0 * w0 + v1 * w1`` in float64; NaN outside."""
    from benchmark.geometry.frames import _axis_taps, sample_bilinear

    rng = np.random.default_rng(5)
    fmap = rng.random((3, 19, 23)).astype(np.float32)
    sy, ty, sx, tx, out_hw = 0.0912, -0.7, 0.1063, 0.4, (224, 200)
    src_y = (np.arange(out_hw[0]) + 0.5) * sy + ty - 0.5
    src_x = (np.arange(out_hw[1]) + 0.5) * sx + tx - 0.5
    y0, y1, wy0, wy1, iny = _axis_taps(src_y, 19)
    x0, x1, wx0, wx1, inx = _axis_taps(src_x, 23)
    a = fmap.astype(np.float64)
    rows = a[..., :, x0] * wx0 + a[..., :, x1] * wx1
    want = rows[..., y0, :] * wy0[:, None] + rows[..., y1, :] * wy1[:, None]
    want[..., ~iny, :] = np.nan
    want[..., :, ~inx] = np.nan
    got = sample_bilinear(fmap, sy, ty, sx, tx, out_hw)
    assert got.dtype == np.float64 and np.isnan(got).any() and np.isfinite(got).any()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(sample_bilinear(fmap[1], sy, ty, sx, tx, out_hw), want[1])
