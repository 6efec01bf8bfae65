"""Small stand-in files for the dataset-loader tests: tiny DICOMs and PNGs, the real tables
torchxrayvision ships, and hand-written official-format fixtures (written into ``tmp_path``)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

TXV_FILES = {
    "rsna": "kaggle_stage_2_train_labels.csv.zip",
    "rsna_headers": "kaggle_stage_2_train_images_dicom_headers.csv.gz",
    "siim": "siim-pneumothorax-train-rle.csv.gz",
    "nih_bbox": "BBox_List_2017.csv.gz",
    "nih_entry": "Data_Entry_2017_v2020.csv.gz",
    "vindr": "vinbigdata-train.csv.gz",
}


def txv_data(key: str) -> Path:
    """Path of a table shipped in torchxrayvision's ``data/`` (found without importing torch)."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.origin, "torchxrayvision is not installed"
    return Path(spec.origin).parent / "data" / TXV_FILES[key]


def unpack_txv(key: str, dest: Path) -> Path:
    """Write the real table ``key`` uncompressed to ``dest`` (as it is distributed)."""
    src = txv_data(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".zip":
        with zipfile.ZipFile(src) as z:
            name = [n for n in z.namelist() if n.endswith(".csv")][0]
            dest.write_bytes(z.read(name))
    elif src.suffix == ".gz":
        with gzip.open(src, "rb") as f, open(dest, "wb") as g:
            shutil.copyfileobj(f, g)
    else:
        shutil.copy(src, dest)
    return dest


def dicom_bytes(rows: int = 1024, cols: int = 1024, view: str | None = "PA",
                photometric: str = "MONOCHROME2") -> bytes:
    """A valid single-frame 8-bit DICOM, RLE Lossless (encapsulated, so a header read never touches the
    ~17 kB of pixel data of a 1024² image)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    arr = np.zeros((rows, cols), np.uint8)
    arr[rows // 4: rows // 2, cols // 4: cols // 2] = 200
    ds.PixelData = arr.tobytes()
    ds.compress(RLELossless, arr)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_DICOM_CACHE: dict[tuple, bytes] = {}


def write_dicom(path: Path, rows: int = 1024, cols: int = 1024, view: str | None = "PA") -> Path:
    key = (rows, cols, view)
    if key not in _DICOM_CACHE:
        _DICOM_CACHE[key] = dicom_bytes(rows, cols, view)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_DICOM_CACHE[key])
    return path


def write_png(path: Path, h: int = 64, w: int = 64, value: int = 0, mask: np.ndarray | None = None,
              color: bool = False) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w), value, np.uint8) if mask is None else mask.astype(np.uint8)
    if color:
        img = np.repeat(img[:, :, None], 3, axis=2)
    ok = cv2.imwrite(str(path), img)
    assert ok, path
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def symlink_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dest)
    except OSError:
        shutil.copy(src, dest)
