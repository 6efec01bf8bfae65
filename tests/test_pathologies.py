"""The canonical pathology-name table."""

from __future__ import annotations

import pytest

from benchmark import pathologies as P
from benchmark.dataset import DataError


@pytest.mark.parametrize("source,canonical", [
    ("Effusion", "Pleural Effusion"),
    ("Pleural Effusion", "Pleural Effusion"),
    ("Pleural effusion", "Pleural Effusion"),          # VinDr spelling
    ("Pleural_Effusion", "Pleural Effusion"),
    ("Infiltrate", "Infiltration"),                    # NIH BBox_List_2017
    ("Infiltration", "Infiltration"),
    ("Pleural_Thickening", "Pleural Thickening"),
    ("Pleural thickening", "Pleural Thickening"),
    ("Pulmonary fibrosis", "Fibrosis"),
    ("ILD", "Interstitial Lung Disease"),
    ("Other lesion", "Other Lesion"),
    ("Nodule/Mass", "Nodule/Mass"),
    ("NC", "Non-cancerous"),
    ("G4", "Gleason Pattern 4"),
    ("  cardiomegaly ", "Cardiomegaly"),
])
def test_aliases_map_to_canonical(source, canonical):
    assert P.canonical_name(source) == canonical


def test_lung_lesion_kept_distinct_from_lesion():
    assert P.canonical_name("Lung Lesion") == "Lung Lesion"
    assert P.canonical_name("Lesion") == "Lesion"
    assert not P.same_pathology("Lung Lesion", "Lesion")


def test_airspace_vs_lung_opacity_is_scoped_to_chexlocalize():
    # Globally distinct (prompts use each dataset's word) ...
    assert P.canonical_name("Lung Opacity") == "Lung Opacity"
    assert P.canonical_name("Airspace Opacity") == "Airspace Opacity"
    assert not P.same_pathology("Lung Opacity", "Airspace Opacity")
    # ... but inside CheXlocalize the CheXpert csv's "Lung Opacity" is its "Airspace Opacity".
    assert P.canonical_name("Lung Opacity", scope="chexlocalize") == "Airspace Opacity"
    assert P.same_pathology("Lung Opacity", "Airspace Opacity", scope="chexlocalize")


def test_unknown_category_names_file_and_row():
    with pytest.raises(DataError) as err:
        P.canonical_name("Pnuemothorax", source="/data/x/labels.csv", row=17)
    msg = str(err.value)
    assert "/data/x/labels.csv" in msg and "row 17" in msg and "'Pnuemothorax'" in msg
    assert "Pneumothorax" in msg  # the suggestion
    assert isinstance(err.value, P.UnknownCategoryError)


def test_relabel_returns_new_list():
    src = ["Effusion", "Infiltrate"]
    out = P.relabel(src)
    assert out == ["Pleural Effusion", "Infiltration"] and src == ["Effusion", "Infiltrate"]


def test_every_canonical_name_is_its_own_canonical_and_unique():
    names = P.names()
    assert len(names) == len(set(names))
    for n in names:
        assert P.canonical_name(n) == n
    assert "Gleason Pattern 3" in P.names("pathology") and "Gleason Pattern 3" not in P.names("chest")


def test_real_tables_categories_are_all_known():
    """Every category in the annotation tables torchxrayvision ships is in the table."""
    import pandas as pd
    from datasets_fixtures import txv_data

    bbox = pd.read_csv(txv_data("nih_bbox"), header=None, skiprows=1)[1].unique()
    vindr = pd.read_csv(txv_data("vindr"), usecols=["class_name"])["class_name"].unique()
    entry = {x for labels in pd.read_csv(txv_data("nih_entry"), usecols=["Finding Labels"])["Finding Labels"].unique()
             for x in labels.split("|")}
    for name in [*bbox, *vindr, *entry]:
        assert P.is_known(name), name


def test_journal_class_words_are_scoped_where_they_would_clash():
    from benchmark.pathologies import canonical_name, names

    assert canonical_name("normal") == "No Finding"  # chest X-ray wording
    assert canonical_name("normal", scope="wsss4luad") == "Normal Tissue"
    assert canonical_name("stroma", scope="wsss4luad") == "Tumor-associated Stroma"
    assert canonical_name("papillary", scope="dhmc_luad") == "Papillary Pattern"
    assert canonical_name("Calcification of the Aorta") != canonical_name("Calcification")
    assert {"Normal Tissue", "Solid Pattern", "Gleason Pattern 3"} <= set(names("pathology"))
    assert {"Tortuous Aorta", "Hilum", "Scoliosis"} <= set(names("chest"))
