"""Real OpenI reports → findings to draw, report phrases, MIMIC-style text and CheXpert labels.

The MeSH ``major`` tags of each report (``Pleural Effusion/bilateral/small``,
``Opacity/lung/base/left``, ``Cardiomegaly/mild``, ``normal``) say what the radiologist
found and where; they become ``Finding`` objects. A lateral finding whose tag has no side
takes the side its sentence in the report names, so that the image agrees with the text.
"""

from __future__ import annotations

import re
import textwrap

from benchmark.demo.findings import Finding
from benchmark.demo.material import Report

# MeSH heading (lower case) -> finding kind
MESH_KIND = {
    "opacity": "opacity", "airspace disease": "opacity", "density": "opacity", "infiltrate": "infiltrate",
    "consolidation": "consolidation", "pneumonia": "pneumonia", "pulmonary atelectasis": "atelectasis",
    "atelectases": "atelectasis", "pleural effusion": "effusion", "pneumothorax": "pneumothorax",
    "cardiomegaly": "cardiomegaly", "pulmonary edema": "edema", "pulmonary congestion": "edema",
    "nodule": "nodule", "mass": "mass", "calcified granuloma": "calcification", "granuloma": "calcification",
    "granulomatous disease": "calcification", "pulmonary fibrosis": "fibrosis", "cicatrix": "fibrosis",
    "lung diseases, interstitial": "fibrosis", "emphysema": "emphysema", "pulmonary emphysema": "emphysema",
    "pulmonary disease, chronic obstructive": "hyperinflation", "fractures, bone": "fracture",
    "catheters, indwelling": "device", "tube, inserted": "device", "implanted medical device": "device",
    "medical device": "device", "surgical instruments": "device", "electrodes": "device",
}
# kinds whose meaning needs a qualifier to be a lung finding
QUALIFIED = {
    "cardiac shadow": ("enlarged", "cardiomegaly"), "heart": ("enlarged", "cardiomegaly"),
    "mediastinum": ("enlarged", "enlarged_cm"), "lung": ("hyperdistention", "hyperinflation"),
    "diaphragm": ("elevated", "elevated_diaphragm"), "costophrenic angle": ("blunted", "effusion"),
    "calcinosis": ("lung", "calcification"), "markings": ("interstitial", "fibrosis"),
}
SEVERITY_WORDS = {"mild": "small", "small": "small", "minimal": "small", "borderline": "small", "trace": "small",
                  "tiny": "small", "moderate": "moderate", "severe": "large", "large": "large", "extensive": "large",
                  "massive": "large"}
ZONE_WORDS = [("lower lobe", "lower"), ("upper lobe", "upper"), ("middle lobe", "middle"), ("lingula", "lingula"),
              ("retrocardiac", "retrocardiac"), ("base", "base"), ("apex", "apex"), ("hilum", "hilar")]

KIND_WORDS = {
    "opacity": r"opacit|airspace|density|densities", "infiltrate": r"infiltrat", "consolidation": r"consolidat",
    "pneumonia": r"pneumonia", "atelectasis": r"atelecta", "effusion": r"effusion|costophrenic",
    "pneumothorax": r"pneumothora", "nodule": r"nodul", "mass": r"\bmass", "calcification": r"granulom|calcifi",
    "fibrosis": r"scar|fibros|interstitial", "fracture": r"fractur", "elevated_diaphragm": r"hemidiaphragm|diaphragm",
    "emphysema": r"emphysem|bull", "atelectasis_plate": r"atelecta",
}
NEGATION = re.compile(r"\b(no|without|negative for|free of|resolved|resolution|clear of|not|removed|"
                      r"no evidence of|absence of|cleared)\b", re.I)
# anywhere in a sentence, these make it unfit as a positive phrase ("... is not appreciated")
NEGATED_ANYWHERE = re.compile(r"\b(no|not|without|negative|free of|resolved|resolving|resolution|cleared|"
                              r"removed|no longer|absent|unremarkable|normal|exclude|excluded|less likely)\b", re.I)

CHEXPERT_COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                    "Pneumothorax", "Support Devices"]
KIND_LABELS = {
    "opacity": ["Lung Opacity"], "infiltrate": ["Lung Opacity"], "covid": ["Lung Opacity", "Pneumonia"],
    "consolidation": ["Consolidation", "Lung Opacity"], "pneumonia": ["Pneumonia", "Lung Opacity"],
    "effusion": ["Pleural Effusion"], "pneumothorax": ["Pneumothorax"],
    "cardiomegaly": ["Cardiomegaly", "Enlarged Cardiomediastinum"], "enlarged_cm": ["Enlarged Cardiomediastinum"],
    "atelectasis": ["Atelectasis", "Lung Opacity"], "edema": ["Edema", "Lung Opacity"],
    "nodule": ["Lung Lesion"], "mass": ["Lung Lesion"], "calcification": ["Lung Lesion"],
    "fibrosis": ["Lung Opacity"], "fracture": ["Fracture"], "device": ["Support Devices"],
}
# words of the text that name each CheXpert column (for negated mentions → 0.0)
LABEL_WORDS = {
    "Atelectasis": r"atelecta", "Cardiomegaly": r"cardiomegaly|heart size|cardiac silhouette|heart is",
    "Consolidation": r"consolidat", "Edema": r"edema|congestion", "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fractur", "Lung Lesion": r"nodul|mass", "Lung Opacity": r"opacit|airspace",
    "Pleural Effusion": r"effusion", "Pleural Other": r"pleural thicken", "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothora",
}


def sentences(text: str) -> list[str]:
    """Split report text into sentences (numbered lists included)."""
    text = re.sub(r"\s+", " ", text or "").strip()
    parts = re.split(r"(?<=[.!?])\s+|\s+(?=\d+\.\s)", text)
    return [p.strip() for p in parts if p.strip()]


def side_of(text: str) -> str | None:
    t = text.lower()
    if re.search(r"\b(bilateral|bibasilar|bibasal|both|bilaterally|bi-basilar)\b", t):
        return "bilateral"
    left, right = bool(re.search(r"\bleft\b", t)), bool(re.search(r"\bright\b", t))
    if left and right:
        return "bilateral"
    return "left" if left else ("right" if right else None)


def zone_of(text: str) -> str | None:
    t = text.lower()
    for pat, zone in ((r"retrocardiac", "retrocardiac"), (r"lingula", "lingula"), (r"middle lobe", "middle"),
                      (r"apex|apical|apices", "apex"), (r"upper", "upper"), (r"perihilar|hilar|hilum", "hilar"),
                      (r"bibasilar|basilar|basal|base|bases", "base"), (r"lower", "lower"),
                      (r"mid\b|midlung|mid lung", "mid")):
        if re.search(r"\b(" + pat + r")", t):
            return zone
    return None


def severity_of(text: str) -> str:
    """The severity word that comes first in ``text`` ("large ... minimal residual" is large)."""
    m = re.search(r"\b(" + "|".join(SEVERITY_WORDS) + r")\b", text.lower())
    return SEVERITY_WORDS[m.group(1)] if m else "moderate"


def _device_kind(text: str) -> str:
    t = text.lower()
    if re.search(r"pacemaker|pacer|defibrillator|aicd|icd\b", t):
        return "pacemaker"
    if re.search(r"endotracheal|et tube|\bett\b", t):
        return "et_tube"
    if re.search(r"nasogastric|ng tube|enteric|feeding tube|orogastric", t):
        return "ng_tube"
    if re.search(r"sternotomy|sternal wire|median sternotomy|cabg|clips", t):
        return "sternotomy"
    if re.search(r"catheter|picc|central line|port|venous", t):
        return "cvc"
    if re.search(r"electrode|leads|ecg|ekg", t):
        return "ecg"
    return "cvc"


def findings_from_report(rep: Report) -> list[Finding]:
    """The drawable findings of a report, from its MeSH major tags (``[]`` for normal reports)."""
    if rep.is_normal:
        return []
    text = f"{rep.findings} {rep.impression}"
    sents = sentences(text)
    out: list[Finding] = []
    seen = set()
    for tag in rep.major:
        parts = [p.strip() for p in tag.split("/")]
        head, quals = parts[0].lower(), [q.lower() for q in parts[1:]]
        kind = MESH_KIND.get(head)
        if kind is None and head in QUALIFIED:
            need, k = QUALIFIED[head]
            kind = k if need in quals else None
        if kind is None:
            continue
        if kind == "fracture" and "ribs" not in quals:
            continue
        if head == "calcinosis" and "lung" not in quals:
            continue
        side = next((sd for sd in ("bilateral", "left", "right") if sd in quals), None)
        zone = next((z for w, z in ZONE_WORDS if w in quals), None)
        sev = next((SEVERITY_WORDS[q] for q in quals if q in SEVERITY_WORDS), None)
        if head == "costophrenic angle":
            sev = "small"
        mention = _mention(sents, kind)
        if side is None and kind not in ("cardiomegaly", "enlarged_cm", "device", "edema", "hyperinflation",
                                         "emphysema"):
            side = side_of(mention) if mention else None
        if zone is None and mention and kind not in ("cardiomegaly", "enlarged_cm", "device", "edema"):
            zone = zone_of(mention)
        if zone == "middle":
            side = "right"
        elif zone in ("lingula", "retrocardiac") and side is None:
            side = "left"
        if sev is None:
            sev = severity_of(mention) if mention else "moderate"
        if "multiple" in quals and kind in ("nodule", "calcification") and side is None:
            side = "bilateral"
        device = _device_kind(mention or text) if kind == "device" else None
        key = (kind, side, zone, device)
        if key in seen:
            continue
        seen.add(key)
        out.append(Finding(kind=kind, side=side, zone=zone, severity=sev, device=device, text=mention or ""))
    return out


def _mention(sents: list[str], kind: str) -> str:
    """The first sentence that names ``kind`` without any negation, else the first whose
    mention is not preceded by one."""
    pat = KIND_WORDS.get(kind)
    if kind == "cardiomegaly":
        pat = r"cardiomegaly|enlarged|enlargement"
    elif kind == "edema":
        pat = r"edema|congestion|vascular"
    elif kind == "device":
        pat = r"tube|catheter|line|pacemaker|pacer|wire|sternotomy|device|clip|port|lead|electrode"
    elif kind in ("hyperinflation", "hypoinflation"):
        pat = r"inflat|hyperexpan|volume|copd|emphysem"
    elif kind == "enlarged_cm":
        pat = r"mediastin"
    if not pat:
        return ""
    for s in sents:
        if re.search(pat, s, re.I) and not NEGATED_ANYWHERE.search(s):
            return s
    for s in sents:
        m = re.search(pat, s, re.I)
        if m and not NEGATION.search(s[: m.start()]):
            return s
    return ""


# --------------------------------------------------------------------------- phrases (MS-CXR)
MSCXR_CATEGORIES = {
    "Atelectasis": ("atelectasis", r"atelecta"),
    "Cardiomegaly": ("cardiomegaly",
                     r"cardiomegaly|heart (size )?is enlarged|enlarged (heart|cardiac)|cardiac silhouette is enlarged"),
    "Consolidation": ("consolidation", r"consolidation"),
    "Edema": ("edema", r"edema|vascular congestion"),
    "Lung Opacity": ("opacity", r"opacity|opacities|airspace disease"),
    "Pleural Effusion": ("effusion", r"pleural effusion|effusions?\b"),
    "Pneumonia": ("pneumonia", r"pneumonia"),
    "Pneumothorax": ("pneumothorax", r"pneumothorax"),
}
_UNCERTAIN = re.compile(r"\b(may|might|could|possibl|question|cannot be excluded|versus|vs|\?|or)\b", re.I)


def phrases(rep: Report) -> list[tuple[str, str, Finding]]:
    """``(category, phrase, finding)`` for each positive, localisable sentence of a report.

    The phrase is the report's own sentence; the finding is parsed from the phrase alone
    (side, zone, severity), so that the drawn region is the one the phrase describes.
    """
    out = []
    for sent in sentences(f"{rep.findings} {rep.impression}"):
        if "XXXX" in sent or len(sent.split()) > 22 or len(sent.split()) < 2:
            continue
        clean = re.sub(r"^\d+\.\s*", "", sent).strip()
        for cat, (kind, pat) in MSCXR_CATEGORIES.items():
            m = re.search(pat, clean, re.I)
            if not m or NEGATED_ANYWHERE.search(clean) or _UNCERTAIN.search(clean):
                continue
            side = side_of(clean)
            if kind not in ("cardiomegaly", "edema") and side is None:
                continue  # MS-CXR phrases localise; keep those that say where
            zone = zone_of(clean) if kind not in ("cardiomegaly", "edema") else None
            out.append((cat, clean, Finding(kind=kind, side=side, zone=zone, severity=severity_of(clean), text=clean)))
            break
    return out


# --------------------------------------------------------------------------- MIMIC text and labels
def mimic_text(rep: Report, view: str) -> str:
    """A report in MIMIC-CXR's layout, its sections taken from the real OpenI text
    (OpenI's ``XXXX`` de-identification becomes MIMIC's ``___``)."""

    def clean(t: str) -> str:
        return re.sub(r"X{2,}", "___", re.sub(r"\s+", " ", t or "")).strip()

    def block(t: str) -> str:
        return "\n".join(textwrap.wrap(clean(t), 78, initial_indent=" ", subsequent_indent=" "))

    exam = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
    lines = ["                                 FINAL REPORT", f" EXAMINATION:  {exam}", " "]
    if rep.indication:
        lines += [f" INDICATION:  {clean(rep.indication)}", " "]
    lines += [f" COMPARISON:  {clean(rep.comparison) or 'None.'}", " "]
    if rep.findings:
        lines += [" FINDINGS:", " ", block(rep.findings), " "]
    if rep.impression:
        lines += [" IMPRESSION:", " ", block(rep.impression)]
    return "\n".join(lines) + "\n"


def chexpert_labels(found: list[Finding], text: str = "") -> dict[str, float | None]:
    """CheXpert-style labels: 1.0 for drawn findings, 0.0 for negated mentions, None otherwise."""
    labels: dict[str, float | None] = {c: None for c in CHEXPERT_COLUMNS}
    for s in sentences(text):
        for col, pat in LABEL_WORDS.items():
            m = re.search(pat, s, re.I)
            if m and NEGATION.search(s[: m.start()]):
                labels[col] = 0.0
    for f in found:
        for col in KIND_LABELS.get(f.kind, []):
            labels[col] = 1.0
    if not any(labels[c] == 1.0 for c in CHEXPERT_COLUMNS if c not in ("No Finding", "Support Devices")):
        labels["No Finding"] = 1.0
    return labels
