"""Training the saliency baselines' classifier from image-level labels, and loading it back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from baselines.saliency import train as T
from benchmark.dataset import Dataset, DatasetCard
from benchmark.registry import datasets
from benchmark.sample import Sample

LABELS = ["Cardiomegaly", "Pneumothorax"]


class BlobDataset(Dataset):
    """PNG images with a bright square low-centre (Cardiomegaly) and/or top-left (Pneumothorax)."""

    card = DatasetCard(name="test_blobs", tasks=["classification"], default_split="train")

    def load_samples(self):
        table = json.loads((self.root / "labels.json").read_text())
        return [Sample(sample_id=f"blobs/{name}", image_path=str(self.root / name), split="train", category=None,
                       patient_id=name, meta={"labels": labels}) for name, labels in sorted(table.items())]


@pytest.fixture()
def blob_root(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    table = {}
    for i in range(40):
        img = rng.integers(0, 60, size=(48, 40), dtype=np.uint8)
        cardio, ptx = bool(i % 2), bool((i // 2) % 2)
        if cardio:
            img[28:40, 14:28] = 230
        if ptx:
            img[4:14, 4:14] = 230
        name = f"img{i:02d}.png"
        cv2.imwrite(str(tmp_path / name), img)
        table[name] = {"Cardiomegaly": float(cardio), "Pneumothorax": float(ptx) if i % 5 else -1.0,
                       "Fracture": None}
    (tmp_path / "labels.json").write_text(json.dumps(table))
    datasets.add("test_blobs", BlobDataset, tags=("hidden",))
    yield tmp_path
    datasets.unregister("test_blobs")


def test_collect_labels_masks_unknown_and_uncertain():
    samples = [Sample("a", "/x/a.png", "train", None, meta={"labels": {"Cardiomegaly": 1.0, "Lung Opacity": -1.0,
                                                                        "Hernia": 1.0, "Pleural Effusion": None}}),
               Sample("b1", "/x/b.png", "train", "Pleural Effusion", label=0),
               Sample("b2", "/x/b.png", "train", "Cardiomegaly", label=1),
               Sample("c", "/x/c.png", "train", None)]
    labels = ["Cardiomegaly", "Airspace Opacity", "Pleural Effusion"]
    paths, y, counts = T.collect_labels(samples, labels)
    assert paths == ["/x/a.png", "/x/b.png"]
    np.testing.assert_array_equal(y[0], [1.0, np.nan, 0.0])  # blank = negative (CheXpert convention)
    np.testing.assert_array_equal(y[1], [1.0, np.nan, 0.0])
    assert counts["uncertain"] == 1 and counts["unknown_findings"] == 1 and counts["unlabelled_samples"] == 1
    assert counts["blank_as_negative"] == 1
    _, y_ones, _ = T.collect_labels(samples, labels, uncertain="ones", blank="ignore")
    assert y_ones[0, 1] == 1.0 and np.isnan(y_ones[0, 2])


def test_label_csv_joined_by_subject_and_study(tmp_path):
    csv = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    csv.write_text("subject_id,study_id,Cardiomegaly,Lung Opacity\n10000032,50414267,1.0,\n10000033,50000001,,-1.0\n")
    table = T.read_study_labels(csv)
    s1 = Sample("m1", "/m/1.jpg", "train", None, patient_id="10000032", meta={"study_id": "50414267"})
    s2 = Sample("m2", "/m/2.jpg", "train", None, patient_id="10000099", meta={"study_id": "1"})
    assert T.attach_study_labels([s1, s2], table) == 1
    assert s1.meta["labels"] == {"Cardiomegaly": 1.0, "Lung Opacity": None} and "labels" not in s2.meta
    bad = tmp_path / "bad.csv"
    bad.write_text("study_id,Cardiomegaly\n1,1\n")
    from benchmark.dataset import DataError

    with pytest.raises(DataError, match="subject_id"):
        T.read_study_labels(bad)


def test_train_save_resume_and_load_into_gradcam(blob_root, tmp_path):
    out = tmp_path / "run"
    common = dict(labels=LABELS, arch="tiny", input_geometry="resize:32x32", batch_size=8, lr=3e-3,
                  val_fraction=0.25, seed=0, progress=False)
    summary = T.train_classifier("test_blobs", str(blob_root), out, 2, **common)
    assert summary["n_train"] == 30 and summary["n_val"] == 10
    assert summary["label_counts"]["uncertain"] == 8 and summary["positives"] == {"Cardiomegaly": 20,
                                                                                 "Pneumothorax": 16}
    assert (out / "classifier.safetensors").is_file() and (out / "last.pt").is_file()
    first = summary["history"]

    resumed = T.train_classifier("test_blobs", str(blob_root), out, 4, **common)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][:2] == first  # epochs 1-2 were not redone
    losses = [h["train_loss"] for h in resumed["history"]]
    assert losses[-1] < losses[0]
    assert set(resumed["history"][-1]["val_auroc"]) == set(LABELS)

    from baselines.saliency.adapter import GradCAMDenseNet

    a = GradCAMDenseNet()
    a.load(str(out / "classifier.safetensors"), "cpu")
    assert a.spec.labels == LABELS and a.input_geometry == "resize:32x32"
    import cv2

    img = cv2.imread(str(blob_root / "img03.png"), cv2.IMREAD_GRAYSCALE)
    emb = a.encode_images(a.collate([a.preprocess(img)]))
    from benchmark.adapter import Query

    txt = a.encode_texts([Query("Findings suggesting Cardiomegaly.", "Cardiomegaly")])
    assert a.similarity_map(emb, txt).shape == (1, 1, 1)
    assert 0.0 <= float(a.score(emb, txt, txt)[0]) <= 1.0


def test_two_builds_of_the_same_weights_give_one_checkpoint_file(blob_root, tmp_path):
    # another copy of the data (another root) and other timings: the same bytes, hence one hash
    import shutil

    from benchmark.cache import file_sha256

    other = tmp_path / "elsewhere"
    shutil.copytree(blob_root, other, ignore=shutil.ignore_patterns("run*", "elsewhere"))
    common = dict(labels=LABELS, arch="tiny", input_geometry="resize:32x32", batch_size=8, lr=3e-3,
                  val_fraction=0.25, seed=0, progress=False)
    a = T.train_classifier("test_blobs", str(blob_root), tmp_path / "run_a", 1, **common)
    b = T.train_classifier("test_blobs", str(other), tmp_path / "run_b", 1, **common)
    assert a["root"] != b["root"]  # the summary keeps where the data was
    ckpt = "classifier.safetensors"
    assert file_sha256(tmp_path / "run_a" / ckpt) == file_sha256(tmp_path / "run_b" / ckpt)


def test_cli_main(blob_root, tmp_path, capsys):
    rc = T.cli_main(["test_blobs", "--data-root", str(blob_root), "--out", str(tmp_path / "cli"), "--epochs", "1",
                     "--arch", "tiny", "--input-geometry", "resize:32x32", "--labels", ",".join(LABELS),
                     "--quiet"])
    assert rc == 0
    assert "classifier saved to" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["epochs"] == 1


def test_cli_takes_the_dataset_as_option_too(blob_root, tmp_path, capsys):
    common = ["--data-root", str(blob_root), "--epochs", "1", "--arch", "tiny", "--input-geometry", "resize:32x32",
              "--labels", ",".join(LABELS), "--quiet"]
    assert T.cli_main(["--dataset", "test_blobs", "--out", str(tmp_path / "opt"), *common]) == 0
    assert json.loads((tmp_path / "opt" / "summary.json").read_text())["dataset"] == "test_blobs"
    with pytest.raises(SystemExit):
        T.cli_main(["--out", str(tmp_path / "none"), *common])
    with pytest.raises(SystemExit):
        T.cli_main(["test_blobs", "--dataset", "other", "--out", str(tmp_path / "two"), *common])
    assert "two datasets given" in capsys.readouterr().err


def test_no_labels_is_a_clear_error(tmp_path):
    (tmp_path / "labels.json").write_text("{}")
    datasets.add("test_blobs", BlobDataset, tags=("hidden",))
    try:
        from benchmark.dataset import DataError

        with pytest.raises(DataError, match="labelled images"):
            T.train_classifier("test_blobs", str(tmp_path), tmp_path / "o", 1, arch="tiny", progress=False)
    finally:
        datasets.unregister("test_blobs")
