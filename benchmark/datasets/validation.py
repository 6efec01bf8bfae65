"""``Loader.validate``: files present, counts as the card (or demo manifest) says, one mask decodes,
prompts render. Returns a plain report dict; ``benchmark/cli/validate.py`` prints it."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmark.dataset import DataError

if TYPE_CHECKING:  # pragma: no cover
    from benchmark.datasets.common import Loader


def validate_loader(ds: Loader, expected: dict[str, int] | None = None, card_checks: bool = True) -> dict[str, Any]:
    """``card_checks=False`` (demo data): skip the comparisons with the real dataset (documented counts,
    published files' sha256); the expected counts then come from the caller (the demo manifest)."""
    card = ds.card
    if expected is None:
        expected = dict((card.expected_counts or {}).get(ds.split) or {})
        # counts that change with a non-default option, e.g. {"dedupe=False": {"test": {"samples": 2353}}}
        for cond, by_split in ((getattr(card, "extra", None) or {}).get("option_counts") or {}).items():
            opt, _, value = cond.partition("=")
            if opt in ds.options and str(ds.options[opt]) == value:
                expected.update((by_split or {}).get(ds.split) or {})
    rep: dict[str, Any] = {
        "dataset": getattr(ds, "registry_name", card.name), "loader": card.name, "split": ds.split,
        "root": str(ds.root), "problems": [], "warnings": [], "missing_files": [], "skipped": {},
        "excluded": {}, "counts": {}, "expected": dict(expected), "mismatches": {}, "checks": {},
        "split_source": None,
    }
    problems, warnings = rep["problems"], rep["warnings"]
    if not ds.root.exists():
        problems.append(f"{ds.root}: {ds.missing_root_message()}")
        rep["layout"] = card.layout
        return _done(rep)
    for rel in ds.required_files():
        if not (ds.root / rel).exists():
            rep["missing_files"].append(str(ds.root / rel))
    if rep["missing_files"]:
        problems.append(f"{len(rep['missing_files'])} required file(s) missing: "
                        + ", ".join(rep["missing_files"]) + "; expected layout:\n"
                        + "\n".join("  " + ln for ln in card.layout.splitlines()))
        return _done(rep)
    try:
        samples = ds.samples()
    except DataError as exc:
        problems.append(str(exc))
        return _done(rep)

    by_reason: dict[str, list[str]] = defaultdict(list)
    for s in ds.skipped:
        head, _, detail = s["reason"].partition(" (")
        by_reason[head].append(s["path"] + (f" ({detail}" if detail else ""))
    rep["skipped"] = dict(by_reason)
    for reason, paths in by_reason.items():
        problems.append(f"{len(paths)} sample(s) skipped, {reason}: " + ", ".join(paths))
    excl: dict[str, int] = defaultdict(int)
    for e in ds.excluded:
        excl[e["reason"]] += 1
    rep["excluded"] = dict(excl)

    counts = ds.counts()
    rep["counts"] = counts
    for key, want in expected.items():
        if key not in counts:
            warnings.append(f"expected count {key!r} is not computed by the loader; not checked")
            continue
        if int(counts[key]) != int(want):
            rep["mismatches"][key] = {"found": int(counts[key]), "expected": int(want)}
    if rep["mismatches"]:
        problems.append("counts differ from the expected ones: " + ", ".join(
            f"{k} {v['found']} (expected {v['expected']})" for k, v in rep["mismatches"].items()))
    if not expected:
        warnings.append(f"no expected counts for split {ds.split!r}; counts not checked")
    documented = ((getattr(card, "extra", None) or {}).get("documented_counts") or {}).get(ds.split) or {}
    if not card_checks:
        documented = {}
    for key, want in documented.items():
        if key in counts and int(counts[key]) != int(want):
            warnings.append(f"{key} {counts[key]} differs from the documented (unverified) {want}")

    src = ds.split_source
    rep["split_source"] = src
    if src and not src["overridden"] and src.get("expected_sha256") and src["sha256"] != src["expected_sha256"]:
        problems.append(f"{src['path']}: sha256 {src['sha256']} differs from the card's {src['expected_sha256']}")

    rep["checks"]["mask"] = _check_one_mask(samples, problems, warnings)
    rep["checks"]["prompts"] = _check_prompts(ds, samples, problems)
    hooks = [getattr(ds, "extra_checks", None)] + ([getattr(ds, "card_checks", None)] if card_checks else [])
    for hook in hooks:
        if callable(hook):
            for level, msg in hook():
                (problems if level == "problem" else warnings).append(msg)
    return _done(rep)


def _done(rep: dict[str, Any]) -> dict[str, Any]:
    rep["ok"] = not rep["problems"]
    return rep


def _check_one_mask(samples, problems: list[str], warnings: list[str]) -> str:
    """Decode the first localized sample's ground truth at its original size; bounds-check all boxes."""
    from benchmark.geometry.rasterize import decode_rle

    out_of_bounds = []
    for s in samples:
        if s.boxes and s.image_size:
            h, w = s.image_size
            for b in s.boxes:
                if b[0] < -1 or b[1] < -1 or b[0] + b[2] > w + 1 or b[1] + b[3] > h + 1 or b[2] <= 0 or b[3] <= 0:
                    out_of_bounds.append(s.sample_id)
                    break
    if out_of_bounds:
        warnings.append(f"{len(out_of_bounds)} sample(s) with a box outside the image: "
                        + ", ".join(out_of_bounds[:20]) + (" ..." if len(out_of_bounds) > 20 else ""))
    first = next((s for s in samples if s.rles or s.mask_paths or s.polygons or s.boxes), None)
    if first is None:
        return "no localized sample"
    try:
        if first.rles:
            m = np.zeros(tuple(first.rles[0]["size"]), dtype=bool)
            for r in first.rles:
                m |= decode_rle(r).astype(bool)
            what = "RLE"
        elif first.mask_paths:
            import cv2

            m = cv2.imread(first.mask_paths[0], cv2.IMREAD_UNCHANGED)
            if m is None:
                raise DataError(first.mask_paths[0], "cannot decode mask image")
            m = m.any(axis=2) if m.ndim == 3 else m > 0
            what = "mask file"
        else:
            return f"{first.sample_id}: boxes/polygons only ({len(first.boxes)} boxes), bounds checked"
    except DataError as exc:
        problems.append(f"mask of {first.sample_id} does not decode: {exc}")
        return "failed"
    except Exception as exc:  # noqa: BLE001
        problems.append(f"mask of {first.sample_id} does not decode: {type(exc).__name__}: {exc}")
        return "failed"
    if first.image_size and tuple(m.shape[:2]) != tuple(first.image_size):
        problems.append(f"mask of {first.sample_id} is {m.shape[:2]}, image is {first.image_size}")
    if first.label == 1 and not m.any():
        problems.append(f"mask of positive sample {first.sample_id} is empty")
    return f"{first.sample_id}: {what} decoded, {m.shape[0]}x{m.shape[1]}, {int(m.sum())} pixels"


def _check_prompts(ds, samples, problems: list[str]) -> str:
    sets = list(ds.card.prompt_sets or ["simple"])
    bad: list[str] = []
    for s in samples:
        for name in sets:
            text = s.prompts.get(name)
            if not text or "{" in text or "}" in text:
                bad.append(f"{s.sample_id} [{name}]")
    if bad:
        problems.append(f"{len(bad)} prompt(s) missing or unrendered: " + ", ".join(bad[:20])
                        + (" ..." if len(bad) > 20 else ""))
        return "failed"
    example = next((s.prompts for s in samples), {})
    return f"{len(samples)} sample(s) × {sets} rendered; e.g. " + "; ".join(
        f"{k}: {v[:60]!r}" for k, v in example.items() if k in sets)

