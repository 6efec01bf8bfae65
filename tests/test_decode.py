"""Each model reads image files as its official code does.

A fixture set of every file format the benchmark's datasets ship (8- and 16-bit PNG, RGB and RGBA
PNG, gray and colour JPEG, a truncated JPEG, DICOM MONOCHROME1/2 at 8, 12 and 16 bits, with and
without rescale slope/intercept and a VOI window) is written here. For each decode recipe the
expected array is computed by the library calls the official code makes (``cv2.imread(p, 0)``,
``PIL.Image.open(p).convert(...)``, ``skimage.io.imread``, pydicom), and for each adapter its model
input is compared, exactly, with the official transform chain applied with torchvision to that
array.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from benchmark.dataset import DataError
from benchmark.io.images import COLOR_RECIPES, RECIPES, read_image

RASTERS = ("gray8.png", "gray16.png", "rgb.png", "rgba.png", "gray.jpg", "color.jpg")
DICOMS = ("mono2_16.dcm", "mono1_12.dcm", "mono2_12_rescale_voi.dcm", "mono1_16_voi.dcm", "mono1_jpeg8.dcm")
FILES = RASTERS + DICOMS


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth float image in [0, 1] with texture (so colour conversions and resizes matter)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.sin(7 * xx + seed) * np.cos(5 * yy) + 0.25 * rng.standard_normal((h, w))
    img += 1.5 * np.exp(-((yy - 0.45) ** 2 + (xx - 0.35) ** 2) / 0.03)
    return (img - img.min()) / (img.max() - img.min())


def _color(h: int, w: int) -> np.ndarray:
    return np.stack([_scene(h, w, s) for s in (1, 2, 3)], -1)


def _write_dicom(path: Path, stored: np.ndarray, *, bits: int, photometric: str, rescale=None, window=None) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from benchmark.demo.encode import write_dicom

    d = tmp_path_factory.mktemp("decode")
    gray, color = _scene(150, 117, 0), _color(121, 160)
    cv2.imwrite(str(d / "gray8.png"), (gray * 255).astype(np.uint8))
    cv2.imwrite(str(d / "gray16.png"), (300 + gray * 60000).astype(np.uint16))
    cv2.imwrite(str(d / "rgb.png"), (color * 255).astype(np.uint8)[..., ::-1])
    alpha = (np.linspace(40, 255, 160)[None, :].repeat(121, 0)).astype(np.uint8)
    cv2.imwrite(str(d / "rgba.png"), np.dstack([(color * 255).astype(np.uint8)[..., ::-1], alpha]))
    cv2.imwrite(str(d / "gray.jpg"), (gray * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(d / "color.jpg"), (color * 255).astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    whole = (d / "color.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    g = _scene(140, 128, 4)
    _write_dicom(d / "mono2_16.dcm", 1000 + g * 50000, bits=16, photometric="MONOCHROME2")
    _write_dicom(d / "mono1_12.dcm", 4095 - (37 + g * 4000), bits=12, photometric="MONOCHROME1")
    _write_dicom(d / "mono2_12_rescale_voi.dcm", 100 + g * 3900, bits=12, photometric="MONOCHROME2",
                 rescale=(2, -1024), window=(2500, 3000))
    _write_dicom(d / "mono1_16_voi.dcm", 65535 - (500 + g * 60000), bits=16, photometric="MONOCHROME1",
                 window=(30000, 40000))
    write_dicom(d / "mono1_jpeg8.dcm", g, photometric="MONOCHROME1", patient_id="p", study_uid="1.2.3",
                series_uid="1.2.3.4", sop_uid="1.2.3.4.5", view="PA", sex="F", age=50)
    return {name: d / name for name in FILES + ("truncated.jpg",)}


# -- the official readers, as library calls ------------------------------------------------------
def _pixels(path: Path):
    import pydicom

    ds = pydicom.dcmread(str(path))
    return ds, ds.pixel_array


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Subtract the minimum, divide by the new maximum, times 255, truncate (``remap_to_uint8``)."""
    a = arr.astype(float) - arr.astype(float).min()
    return (a / a.max() * 255).astype(np.uint8)


def official_decode(recipe: str, path: Path) -> np.ndarray:
    dicom = path.suffix == ".dcm"
    if recipe == "cv2-gray":
        if not dicom:
            return cv2.imread(str(path), 0)
        ds, x = _pixels(path)
        x = cv2.convertScaleAbs(x, alpha=(255.0 / x.max()))
        return cv2.bitwise_not(x) if ds.PhotometricInterpretation == "MONOCHROME1" else x
    if recipe == "cv2-rgb" and not dicom:
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    if recipe == "cv2-bgr" and not dicom:  # AFLoc's pathology read: cv2.imread(p, flag), passed on as it comes
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    if recipe == "pil" and not dicom:
        return np.asarray(Image.open(path))
    if recipe in ("pil-rgb", "medklip") and not dicom:
        return np.asarray(Image.open(path).convert("RGB"))
    if recipe in ("pil-rgb", "pil"):
        return np.asarray(Image.fromarray(_minmax(_pixels(path)[1])).convert("RGB"))
    if recipe == "medklip":
        from skimage import exposure

        x = exposure.equalize_hist(_pixels(path)[1].astype(float) / 255)
        return np.asarray(Image.fromarray((255 * x).astype(np.uint8)).convert("RGB"))
    if recipe == "hi-ml":
        from skimage import io

        arr = _pixels(path)[1] if dicom else io.imread(str(path))
        return np.asarray(Image.fromarray(_minmax(arr)).convert("L"))
    if recipe in ("cv2-rgb", "cv2-bgr", "canonical"):
        if not dicom:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img.ndim == 3:
                img = cv2.cvtColor(img[..., :3].copy(), cv2.COLOR_BGR2GRAY)
            return img if img.dtype == np.uint8 else _minmax(img)
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds, x = _pixels(path)
        x = apply_voi_lut(apply_modality_lut(x, ds), ds).astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            x = x.max() - x
        out = _minmax(x)
        return np.asarray(Image.fromarray(out).convert("RGB")) if recipe in ("cv2-rgb", "cv2-bgr") else out
    raise AssertionError(recipe)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("name", FILES)
def test_each_recipe_reads_each_format_as_the_official_library_calls(files, recipe, name):
    got = read_image(files[name], recipe)
    want = official_decode(recipe, files[name])
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    assert np.array_equal(got, want)
    if recipe != "pil":  # ``pil`` keeps the file's mode (16-bit, RGBA)
        assert got.dtype == np.uint8 and got.ndim == (3 if recipe in COLOR_RECIPES else 2)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_truncated_jpeg_is_named_by_every_recipe(files, recipe):
    with pytest.raises(DataError, match="truncated.jpg.*truncated JPEG"):
        read_image(files["truncated.jpg"], recipe)


def test_the_recipes_really_differ_where_the_official_codes_do(files):
    """The findings behind the recipes: a colour image made gray by OpenCV vs stretched and made gray by
    PIL, a 16-bit PNG cut to its high byte vs stretched, a MONOCHROME1 DICOM inverted or not, the
    min–max op order."""
    jpg = files["color.jpg"]
    assert not np.array_equal(read_image(jpg, "cv2-gray"), read_image(jpg, "hi-ml"))
    png16 = files["gray16.png"]
    hi_byte = (cv2.imread(str(png16), cv2.IMREAD_UNCHANGED) >> 8).astype(np.uint8)
    assert np.array_equal(read_image(png16, "cv2-gray"), hi_byte)
    assert read_image(png16, "hi-ml").max() == 255 and hi_byte.max() < 255
    mono1 = files["mono1_12.dcm"]
    a, b = read_image(mono1, "cv2-gray").astype(int), read_image(mono1, "hi-ml").astype(int)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < -0.9  # GLoRIA/AFLoc invert MONOCHROME1, hi-ml does not
    # (x - min) / new max * 255, not (x - min) * (255 / range): on 0..200 they truncate 100 differently
    v = np.arange(0, 201, dtype=np.float64)
    a = (v / 200 * 255).astype(np.uint8)
    assert not np.array_equal(a, (v * (255.0 / 200)).astype(np.uint8))
    from benchmark.io.images import remap_to_uint8

    assert np.array_equal(remap_to_uint8(v), a)


# -- each adapter's model input ----------------------------------------------------------------
def _letterbox(img: np.ndarray, n: int) -> np.ndarray:
    """Longest side to n with INTER_AREA (other side int()), centred zero padding floor/ceil."""
    h, w = img.shape[:2]
    if h >= w:
        size = (int(float(w) * (n / float(h))), n)
    else:
        size = (n, int(float(h) * (n / float(w))))
    r = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    ph, pw = n - r.shape[0], n - r.shape[1]
    return np.pad(r, [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)])


HALF = T.Normalize([0.5] * 3, [0.5] * 3)
IMAGENET = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _chexzero(rgb: np.ndarray) -> torch.Tensor:
    img = Image.fromarray(rgb)
    ratio = 320.0 / max(img.size)
    new = tuple(int(x * ratio) for x in img.size)
    img = img.resize(new, Image.LANCZOS)
    sq = Image.new("L", (320, 320))
    sq.paste(img, ((320 - new[0]) // 2, (320 - new[1]) // 2))
    x = torch.from_numpy(np.asarray(sq).astype(np.float32))[None].repeat(3, 1, 1)
    x = T.Normalize([101.48761] * 3, [83.43944] * 3)(x)
    return T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False)(x)


OFFICIAL_INPUT = {
    # AFLoc localization / GLoRIA: process_img (cv2 gray, letterbox, RGB, CenterCrop, ToTensor, Normalize 0.5)
    "afloc:grounding": ("cv2-gray", lambda x: HALF(T.ToTensor()(Image.fromarray(_letterbox(x, 224)).convert("RGB")))),
    "gloria": ("cv2-gray", lambda x: HALF(T.ToTensor()(T.CenterCrop(224)(
        Image.fromarray(_letterbox(x, 256)).convert("RGB"))))),
    # AFLoc zero-shot classification: PIL RGB, Resize(224), CenterCrop(224), ToTensor, Normalize([0.5], [0.5])
    "afloc:classification": ("pil-rgb", T.Compose([Image.fromarray, T.Resize(224), T.CenterCrop(224), T.ToTensor(),
                                                   T.Normalize([0.5], [0.5])])),
    # hi-ml: load_image, Resize(512), CenterCrop(480), ToTensor, ExpandChannels
    "biovil": ("hi-ml", lambda x: T.ToTensor()(T.CenterCrop(480)(T.Resize(512)(Image.fromarray(x)))).repeat(3, 1, 1)),
    # MedKLIP test / ViLMedic eval: PIL RGB, Resize([224, 224]), ToTensor, ImageNet normalisation
    "medklip": ("medklip", T.Compose([Image.fromarray, T.Resize([224, 224]), T.ToTensor(), IMAGENET])),
    "convirt": ("pil-rgb", T.Compose([Image.fromarray, T.Resize([224, 224]), T.ToTensor(), IMAGENET])),
    # CheXzero: img_to_hdf5 (cv2 colour read, RGB, LANCZOS letterbox 320 into L), Normalize, Resize(224) bicubic
    "chexzero": ("cv2-rgb", _chexzero),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from test_baselines_adapters import get

    from benchmark.adapter import build_adapter

    out = {name: get(name, tmp_path_factory)[0] for name in ("gloria", "biovil", "medklip", "convirt", "chexzero")}
    afloc = build_adapter("afloc_untrained")
    afloc.load(None, "cpu")
    out["afloc"] = afloc
    return out


@pytest.mark.parametrize("model", sorted(OFFICIAL_INPUT))
def test_each_adapter_gives_its_official_model_input_for_every_format(files, adapters, model):
    name, _, task = model.partition(":")
    a = adapters[name]
    if task:
        a.for_task(task)
    recipe, transform = OFFICIAL_INPUT[model]
    assert a.decode == recipe
    worst = {}
    for f in FILES:
        got = a.preprocess(read_image(files[f], a.decode))
        want = transform(official_decode(recipe, files[f]))
        assert got.shape == want.shape, (f, got.shape, want.shape)
        worst[f] = float((got - want).abs().max())
    assert all(v == 0.0 for v in worst.values()), worst


def test_afloc_records_the_official_preprocessing_of_each_task(adapters):
    a = adapters["afloc"]
    a.for_task("classification")
    assert a.preprocessing() == {"decode": "pil-rgb", "input_geometry": "resize_crop:224:224",
                                 "preprocessing_id": "afloc-resize224-centercrop224-norm0.5-v1"}
    a.for_task("grounding")
    assert a.preprocessing()["decode"] == "cv2-gray" and a.input_geometry == "letterbox:224"


@pytest.mark.parametrize("case", ["uint8", "uint16_full", "int16_signed", "constant", "two_values", "narrow"])
def test_medklip_equalisation_table_equals_skimage_per_pixel(case):
    """The per-value table gives exactly ``skimage.exposure.equalize_hist`` on every pixel."""
    from skimage import exposure

    from benchmark.io.images import equalize_hist_255

    rng = np.random.default_rng(3)
    arr = {"uint8": lambda: rng.integers(0, 256, (64, 80)).astype(np.uint8),
           "uint16_full": lambda: rng.integers(0, 65536, (300, 200)).astype(np.uint16),
           "int16_signed": lambda: rng.integers(-2000, 3000, (128, 128)).astype(np.int16),
           "constant": lambda: np.full((10, 10), 7, np.uint8),
           "two_values": lambda: np.array([[0, 255], [255, 255]], np.uint8),
           "narrow": lambda: rng.normal(1000, 3, (256, 256)).astype(np.uint16)}[case]()
    want = (255 * exposure.equalize_hist(arr.astype(float) / 255.0)).astype(np.uint8)
    got = equalize_hist_255(arr)
    assert got.dtype == np.uint8 and got.shape == arr.shape
    assert np.array_equal(got, want)
