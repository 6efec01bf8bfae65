"""Prompt sets shared by every model: zero-shot classification ensembles and grounding prompts.

Zero-shot classification follows the official AFLoc evaluation (``classification/prompts.py``):

* Chest X-ray: for a category in ``CXR_PROMPT_TABLE`` the positive ensemble is every
  ``f"{category}:{severity} {subtype} {location}"`` (severity × subtype × location, duplicates
  kept) and the negative is ``f"no {category}. "``; a category outside the table gets
  ``"Findings suggesting {category.lower()}"``; "No Finding" gets "No finding" / "finding"
  (the negative is a single word, which AFLoc's prompt cleaning turns into an empty text).
* Histopathology: one template per dataset with the dataset's class names (``PATHOLOGY_PROMPTS``),
  negative ``f"no {class key}. "``.

Which table a dataset uses and how its official code spells a category (NIH says "effusion")
are fields of its card (``prompt_family``, ``official_spelling``), never read off its name.
Grounding prompts are data too: ``datasets/<name>/prompts.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# category -> (severities, subtypes, locations), transcribed from the official table
CXR_PROMPT_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "atelectasis": (
        ("", "mild", "minimal"),
        ("subsegmental atelectasis", "linear atelectasis", "trace atelectasis", "bibasilar atelectasis",
         "retrocardiac atelectasis", "bandlike atelectasis", "residual atelectasis"),
        ("at the mid lung zone", "at the upper lung zone", "at the right lung zone", "at the left lung zone",
         "at the lung bases", "at the right lung base", "at the left lung base", "at the bilateral lung bases",
         "at the left lower lobe", "at the right lower lobe"),
    ),
    "cardiomegaly": (
        ("",),
        ("cardiac silhouette size is upper limits of normal", "cardiomegaly which is unchanged",
         "mildly prominent cardiac silhouette", "portable view of the chest demonstrates stable cardiomegaly",
         "portable view of the chest demonstrates mild cardiomegaly", "persistent severe cardiomegaly",
         "heart size is borderline enlarged", "cardiomegaly unchanged",
         "heart size is at the upper limits of normal", "redemonstration of cardiomegaly",
         "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
         "cardiac silhouette size is mildly enlarged",
         "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less prominent",
         "heart size remains at mildly enlarged", "persistent cardiomegaly with prominent upper lobe vessels"),
        ("",),
    ),
    "consolidation": (
        ("", "increased", "improved", "apperance of"),
        ("bilateral consolidation", "reticular consolidation", "retrocardiac consolidation",
         "patchy consolidation", "airspace consolidation", "partial consolidation"),
        ("at the lower lung zone", "at the upper lung zone", "at the left lower lobe", "at the right lower lobe",
         "at the left upper lobe", "at the right uppper lobe", "at the right lung base", "at the left lung base"),
    ),
    "edema": (("mild", "presistent", "moderate"), ("pulmonary edema",), ("",)),
    "effusion": (
        ("small", "stable", "large", "decreased", "increased"),
        ("bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion"),
        ("left", "right", "tiny"),
    ),
    "pneumonia": (
        ("", "mild", "moderate", "severe", "improved", "worsening"),
        ("pneumonia",),
        ("at the right lower lobe", "at the left lower lobe", "at the right upper lobe", "at the left upper lobe",
         "at the middle lobe", "at the lung bases", "at the bilateral lungs", "at the right lung",
         "at the left lung"),
    ),
    "pneumothorax": (
        ("", "small", "large", "increased", "stable", "resolving"),
        ("pneumothorax",),
        ("right", "left", "bilateral", "at the apex", "at the upper lung zone", "at the mid lung zone",
         "at the lower lung zone"),
    ),
    "infiltration": (
        ("",),
        ("diffuse infiltration", "patchy infiltration", "lobar infiltration", "interstitial infiltration"),
        ("",),
    ),
    "mass": (
        ("small", "medium", "large"),
        ("solitary mass", "multiple masses", "well-circumscribed mass", "spiculated mass"),
        ("at the right upper lobe", "at the left upper lobe", "at the right lower lobe", "at the left lower lobe",
         "mediastinal"),
    ),
    "nodule": (
        ("tiny", "small", "large"),
        ("",),
        ("at the right upper lobe", "at the left upper lobe", "at the right lower lobe", "at the left lower lobe",
         "peripheral", "central"),
    ),
    "emphysema": (
        ("mild", "moderate", "severe"),
        ("centrilobular emphysema", "panlobular emphysema", "paraseptal emphysema", "bullous emphysema"),
        ("upper zones", "lower zones", "diffuse"),
    ),
    "fibrosis": (
        ("mild", "moderate", "severe"),
        ("reticular fibrosis", "honeycombing", "traction bronchiectasis"),
        ("upper zones", "lower zones", "diffuse"),
    ),
    "pleural thickening": (
        ("mild", "moderate", "severe"),
        ("diffuse pleural thickening", "localized pleural thickening"),
        ("apical", "basal", "medial", "lateral", "right", "left"),
    ),
    "hernia": (
        ("mild", "moderate", "severe"),
        ("hiatal hernia", "diaphragmatic hernia", "parahiatal hernia"),
        ("right", "left", "central"),
    ),
    "fracture": (
        ("", "mild", "moderate", "severe"),
        ("rib fracture", "vertebral fracture", "clavicle fracture", "scapula fracture"),
        ("right", "left", "central"),
    ),
    "pleural effusion": (
        ("", "small", "moderate", "large"),
        ("bilateral pleural effusion", "right pleural effusion", "left pleural effusion"),
        ("right", "left", "bilateral"),
    ),
    "pleural other": (
        ("mild", "moderate", "severe"),
        ("pleural calcification", "pleural plaques", "pleural cyst", "fibrothorax"),
        ("apical", "basal", "medial", "lateral", "right", "left", "diffuse"),
    ),
    "enlarged cardiomediastinum": (
        ("mild", "moderate", "severe"),
        ("aortic aneurysm", "mediastinal mass", "pericardial effusion", "cardiac enlargement"),
        ("anterior", "middle", "posterior", "superior", "inferior"),
    ),
    "airspace opacity": (
        ("mild", "moderate", "severe"),
        ("consolidation", "ground-glass opacity", "atelectasis", "alveolar hemorrhage", "pulmonary edema"),
        ("upper lobe", "middle lobe", "lower lobe", "perihilar", "peripheral", "right lung", "left lung",
         "bilateral"),
    ),
    "calcification of the aorta": (
        ("mild", "moderate", "severe"),
        ("intimal calcification", "medial calcification", "perivascular calcification", "diffuse calcification",
         "focal calcification"),
        ("ascending aorta", "descending aorta", "aortic arch", "abdominal aorta"),
    ),
    "lung lesion": (
        ("small", "medium", "large"),
        ("solitary lesion", "multiple lesions", "nodular lesion", "mass-like lesion", "cystic lesion"),
        ("right upper lobe", "left upper lobe", "right lower lobe", "left lower lobe", "right lung base",
         "left lung base", "bilateral lung bases"),
    ),
    "lung opacity": (
        ("mild", "moderate", "severe"),
        ("consolidation", "ground-glass opacity", "infiltrate", "airspace opacity", "reticulonodular opacity"),
        ("right lung", "left lung", "bilateral lungs", "upper lobes", "lower lobes"),
    ),
    "normal": (("",), ("no abnormalities detected", "normal findings", "unremarkable study"), ("",)),
    "pneumomediastinum": (
        ("",),
        ("presence of free air in the mediastinum", "mild pneumomediastinum", "severe pneumomediastinum"),
        ("anterior mediastinum", "posterior mediastinum", "superior mediastinum"),
    ),
    "pneumoperitoneum": (
        ("",),
        ("gas under diaphragm", "perforation of hollow viscus", "post-surgical pneumoperitoneum"),
        ("free air in the abdomen", "abdominal cavity"),
    ),
    "subcutaneous emphysema": (
        ("mild", "moderate", "severe"),
        ("localized subcutaneous emphysema", "extensive subcutaneous emphysema", "diffuse subcutaneous emphysema"),
        ("neck", "chest wall", "abdomen", "upper limbs", "lower limbs"),
    ),
    "support devices": (
        ("",),
        ("endotracheal tube", "central venous catheter", "pacemaker", "internal defibrillator", "ventilator",
         "external fixator"),
        ("chest", "neck", "abdomen", "extremities"),
    ),
    "tortuous aorta": (
        ("mild", "moderate", "severe"),
        ("ascending aorta tortuosity", "descending aorta tortuosity", "aortic arch tortuosity"),
        ("aortic arch", "ascending aorta", "descending aorta"),
    ),
    "bulla": (
        ("small", "medium", "large"),
        ("apical bulla", "subpleural bulla", "bullous emphysema", "paraseptal bulla"),
        ("right lung", "left lung", "upper lobes", "lower lobes", "bilateral lungs"),
    ),
    "cardiomyopathy": (
        ("mild", "moderate", "severe"),
        ("dilated cardiomyopathy", "hypertrophic cardiomyopathy", "restrictive cardiomyopathy",
         "arrhythmogenic right ventricular cardiomyopathy"),
        ("left ventricle", "right ventricle", "bilateral ventricles"),
    ),
    "hilum": (
        ("",),
        ("enlarged hilum", "abnormal hilum", "normal hilum"),
        ("left hilum", "right hilum", "bilateral hilar"),
    ),
    "osteopenia": (
        ("mild", "moderate", "severe"),
        ("generalized osteopenia", "localized osteopenia"),
        ("spine", "hips", "wrists", "ankles"),
    ),
    "scoliosis": (
        ("",),
        ("idiopathic scoliosis", "congenital scoliosis", "neuromuscular scoliosis", "degenerative scoliosis"),
        ("",),
    ),
}

# Histopathology zero-shot prompts: template and class names per dataset family.
PATHOLOGY_PROMPTS: dict[str, dict] = {
    "sicapv2": {"template": "presence of CLASSNAME.",
                "classnames": {"NC": "benign prostate glands", "G3": "prostate cancer, gleason pattern 3",
                               "G4": "gleason grade 4", "G5": "prostate cancer, gleason grade 5",
                               "Tumor": "prostate cancer"}},
    "wsss4luad": {"template": "CLASSNAME is present.",
                  "classnames": {"normal": "non-tumor", "stroma": "tumor-associated stromal tissue",
                                 "tumor": "invasive carcinoma"}},
    "dhmc_luad": {"template": "a histopathological photograph of CLASSNAME.",
                  "classnames": {"papillary": "lung adenocarcinoma, papillary growth pattern",
                                 "solid": "lung adenocarcinoma with a predominantly solid growth pattern",
                                 "micropapillary": "micropapillary pattern adenocarcinoma of the lung",
                                 "acinar": "lung adenocarcinoma, acinar predominant histological subtype",
                                 "lepidic": "lepidic pattern adenocarcinoma of the lung"}},
}

def cxr_prompts(category: str) -> tuple[list[str], list[str]]:
    """Official chest X-ray ensemble for one category (spelled as the official code spells it)."""
    key = category.lower()
    if key in CXR_PROMPT_TABLE:
        sev, sub, loc = CXR_PROMPT_TABLE[key]
        pos = [f"{category}:{s} {t} {place}" for s in sev for t in sub for place in loc]
        return pos, [f"no {category}. "]
    if key == "no finding":
        return ["No finding"], ["finding"]
    return [f"Findings suggesting {key}"], [f"no {category}. "]


def pathology_prompts(family: str, class_key: str) -> tuple[list[str], list[str]]:
    spec = PATHOLOGY_PROMPTS[family]
    if class_key not in spec["classnames"]:
        raise KeyError(f"no {family} prompt for class {class_key!r}; known: {sorted(spec['classnames'])}")
    return [spec["template"].replace("CLASSNAME", spec["classnames"][class_key])], [f"no {class_key}. "]


def classification_prompts(card: Any, category: str | None) -> tuple[list[str], list[str]]:
    """(positive ensemble, negative ensemble) for zero-shot classification of ``category`` on the
    dataset whose card is ``card`` (its ``prompt_family`` and ``official_spelling``)."""
    if category is None:
        raise ValueError(f"{card.name}: a sample without category cannot be classified zero-shot")
    cat = (card.official_spelling or {}).get(category, category)
    if card.prompt_family in PATHOLOGY_PROMPTS:
        return pathology_prompts(card.prompt_family, cat)
    if card.prompt_family != "cxr":
        raise ValueError(f"{card.name}: prompt_family {card.prompt_family!r} is neither 'cxr' nor one of "
                         f"{sorted(PATHOLOGY_PROMPTS)}")
    return cxr_prompts(cat)


def all_prompt_texts(categories: Iterable[str] | None = None) -> list[str]:
    """Every prompt text of the tables and of SICAPv2's grounding prompts (a deterministic corpus, e.g.
    for vocabularies)."""
    from benchmark.datasets.common import load_prompts

    out: list[str] = []
    for cat in categories or sorted(CXR_PROMPT_TABLE):
        pos, neg = cxr_prompts(cat)
        out += pos + neg
    for fam in sorted(PATHOLOGY_PROMPTS):
        spec = PATHOLOGY_PROMPTS[fam]
        out += [spec["template"].replace("CLASSNAME", v) for v in spec["classnames"].values()]
    out += list(load_prompts("sicapv2").per_category["simple"].values())
    return out
