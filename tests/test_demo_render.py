"""Rendered findings agree with the real report's MeSH tags (side, zone, appearance).

Convention checked throughout: radiological — the patient's left is on the image's right.
Each finding is compared with the normal rendering of the *same* anatomy (same seed): the
phantom draws its anatomy and noise from a stream independent of the findings.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from benchmark.demo import material, phantom
from benchmark.demo import reports as R
from benchmark.demo.findings import LEFT, RIGHT, Finding

HW = (560, 500)


def _only(kind: str, side: str | None, zone: str | None = None):
    """A real report whose only drawable finding is ``kind`` on ``side`` (and ``zone``)."""
    for rep in material.reports():
        fs = R.findings_from_report(rep)
        if len(fs) == 1 and fs[0].kind == kind and fs[0].side == side and (zone is None or fs[0].zone == zone):
            return rep, fs
    pytest.skip(f"no OpenI report tagged only with {kind}/{side}/{zone}")


def _tagged(prefix: str, kind: str, side: str):
    """A real report with a MeSH tag starting ``prefix`` (and no tag of the other sides), and
    its findings of ``kind`` (the other findings are left out so the comparison is clean)."""
    others = {"left": ("right", "bilateral"), "right": ("left", "bilateral")}[side]
    for rep in material.reports():
        tags = [t.lower() for t in rep.major]
        if any(t.startswith(prefix.lower()) for t in tags) and not any(
                t.startswith(prefix.split("/")[0].lower()) and any(o in t for o in others) for t in tags):
            fs = [f for f in R.findings_from_report(rep) if f.kind == kind]
            if fs and all(f.side == side for f in fs):
                return rep, fs
    pytest.skip(f"no OpenI report tagged {prefix}")


def _pair(fs, seed=3, **kw):
    with_f = phantom.make(np.random.default_rng(seed), HW, fs, with_lungs=True, **kw)
    without = phantom.make(np.random.default_rng(seed), HW, [], with_lungs=True, **kw)
    return with_f, without


def _lower_part(mask: np.ndarray, frac: float) -> np.ndarray:
    ys = np.nonzero(mask)[0]
    cut = ys.min() + (1 - frac) * (ys.max() - ys.min())
    out = mask.copy()
    out[: int(cut)] = False
    return out


def test_same_seed_without_findings_is_the_same_anatomy():
    a, b = _pair([])
    assert np.array_equal(a.image, b.image)


def test_left_pleural_effusion_brightens_the_left_base_only():
    rep, fs = _tagged("Pleural Effusion/left", "effusion", LEFT)
    assert any(t.lower().startswith("pleural effusion/left") for t in rep.major)
    a, b = _pair(fs)
    d = a.image - b.image
    left_base = _lower_part(b.lung_sides[LEFT], 0.35)
    right_base = _lower_part(b.lung_sides[RIGHT], 0.35)
    assert d[left_base].mean() > 0.08
    assert abs(d[right_base].mean()) < 0.01
    # radiological convention: the patient's left base is on the image's right half
    xs = np.nonzero(a.truths[0].mask)[1]
    assert xs.mean() > HW[1] / 2


@pytest.mark.parametrize("side,zone", [(RIGHT, "base"), (LEFT, "upper"), (RIGHT, "upper")])
def test_opacity_follows_tag_side_and_zone(side, zone):
    rep, fs = _only("opacity", side, zone)
    assert any(side in t.lower() and ("base" if zone == "base" else "upper") in t.lower() for t in rep.major)
    a, b = _pair(fs)
    m = a.truths[0].mask
    assert m is not None and m.any()
    ys, xs = np.nonzero(m)
    assert (xs.mean() < HW[1] / 2) == (side == RIGHT)
    lung = b.lung_sides[side]
    ly = np.nonzero(lung)[0]
    rel = (ys.mean() - ly.min()) / (ly.max() - ly.min())
    assert rel > 0.5 if zone == "base" else rel < 0.5
    assert (a.image - b.image)[m].mean() > 0.1  # the opacity is clearly visible


def test_nodule_is_a_round_blob_inside_the_lungs():
    rep, fs = _only("nodule", RIGHT)
    a, b = _pair(fs)
    m = a.truths[0].mask
    ys, xs = np.nonzero(m)
    lungs = b.lung_sides[RIGHT] | b.lung_sides[LEFT]
    assert lungs[m].mean() > 0.9
    r = 0.25 * ((xs.max() - xs.min() + 1) + (ys.max() - ys.min() + 1))
    assert m.sum() / (np.pi * r * r) > 0.75  # round, not a box
    assert xs.mean() < HW[1] / 2
    assert (a.image - b.image)[m].mean() > 0.1


def test_pneumothorax_is_a_peripheral_lucency_without_markings():
    f = [Finding("pneumothorax", side=LEFT, severity="moderate")]
    a, b = _pair(f, seed=11)
    m = a.truths[0].mask
    assert np.nonzero(m)[1].mean() > HW[1] / 2
    d = a.image - b.image
    assert d[m].mean() < -0.03  # darker: air without lung
    # apical and lateral, not along the heart border
    lung = b.lung_sides[LEFT]
    xs_l = np.nonzero(lung)[1]
    assert np.nonzero(m)[1].mean() > np.median(xs_l)


def test_pneumothorax_removes_lung_markings():
    from benchmark.demo import anatomy
    from benchmark.demo import findings as F

    rng = np.random.default_rng(0)
    an = anatomy.build(rng, HW, material.lung_shapes()[3])
    (r,) = F.render(an, [Finding("pneumothorax", side=RIGHT)], np.random.default_rng(1))
    region = r.instances[0] > 0.5
    assert region.any() and an.marking_keep[region].mean() < 0.2
    assert an.marking_keep[an.lung[LEFT]].mean() > 0.99


def test_pneumothorax_from_a_real_siim_mask_lands_in_a_lung():
    ph = phantom.make(np.random.default_rng(2), HW, [Finding("pneumothorax", siim=7)], with_lungs=True)
    m = ph.truths[0].mask
    assert m is not None and m.any()
    full_lungs = ph.lung_sides[RIGHT] | ph.lung_sides[LEFT]
    assert (m & full_lungs).sum() > 0.5 * m.sum()


def test_cardiomegaly_widens_the_heart():
    rep, fs = _only("cardiomegaly", None)
    assert any(t.lower().startswith("cardiomegaly") for t in rep.major)
    a = phantom.make(np.random.default_rng(4), HW, fs, with_lungs=True)
    b = phantom.make(np.random.default_rng(4), HW, [], with_lungs=True)
    heart = a.truths[0].mask
    xs = np.nonzero(heart)[1]
    width_a = xs.max() - xs.min()
    # the normal heart of the same anatomy: the silhouette's widest lower row
    sil = b.silhouette.copy()
    ys = np.nonzero(heart)[0]
    sil[: ys.min()] = False
    wb = max((np.ptp(np.nonzero(r)[0]) if r.any() else 0) for r in sil)
    assert width_a > 1.1 * wb


def test_edema_is_bilateral_and_covid_is_bilateral_peripheral():
    a, _ = _pair([Finding("edema")])
    assert len(a.truths[0].instances) == 2
    c, b = _pair([Finding("covid")], seed=5)
    inst = c.truths[0].instances
    assert len(inst) == 2
    sides = sorted(np.nonzero(m)[1].mean() < HW[1] / 2 for m in inst)
    assert sides == [False, True]


def test_support_device_is_drawn_bright():
    """An ET tube brightens its own mask (on average over anatomies by more than 0.12 of the range,
    each by more than 0.08) and leaves the rest of the image alone."""
    inside, outside = [], []
    for seed in range(6):
        a, b = _pair([Finding("device", device="et_tube")], seed=seed)
        m = a.truths[0].mask > 0.5
        d = a.image - b.image
        inside.append(float(d[m].mean()))
        outside.append(float(np.abs(d[~m]).mean()))
    assert np.mean(inside) > 0.12 and min(inside) > 0.08, inside
    assert max(outside) < 0.02, outside


def test_mesh_tags_parse_to_findings():
    rep = next(r for r in material.reports() if r.uid == "CXR1000")
    fs = R.findings_from_report(rep)
    assert any(f.kind == "opacity" and f.side == RIGHT and f.zone == "upper" for f in fs)
    assert any(f.kind == "atelectasis" and f.side == RIGHT and f.zone == "upper" for f in fs)
    normal = next(r for r in material.reports() if r.is_normal)
    assert R.findings_from_report(normal) == []


def test_phrases_are_positive_real_sentences():
    reps = material.reports()
    n = 0
    for rep in reps[:1500]:
        for _cat, phrase, f in R.phrases(rep):
            n += 1
            text = re.sub(r"\s+", " ", f"{rep.findings} {rep.impression}")
            assert phrase in text
            assert not re.search(r"\b(no|not|without)\b", phrase, re.I)
            if f.side in (LEFT, RIGHT):
                assert f.side in phrase.lower()
    assert n > 50


def test_mimic_report_keeps_the_real_sections():
    rep = next(r for r in material.reports() if r.findings and r.impression and "XXXX" in r.findings)
    txt = R.mimic_text(rep, "PA")
    assert "FINDINGS:" in txt and "IMPRESSION:" in txt and "XXXX" not in txt
    assert " ".join(txt.split("FINDINGS:")[1].split("IMPRESSION:")[0].split()) == \
        " ".join(re.sub(r"X{2,}", "___", rep.findings).split())
