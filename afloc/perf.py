"""Throughput of AFLoc on this machine: ``python -m afloc.perf``.

Prints, for the demo and the paper configuration (random weights; the demo vocabulary; ``demo`` is
the architecture the demo recipe ``configs/demo.yaml`` trains, ``demo-preset`` the bare preset):
  * training samples/s (forward + the three losses + backward + clipped Adam step, in memory);
  * inference heatmaps/s through the adapter path (``preprocess`` of 512×480 uint8 images →
    ``encode_images`` → ``encode_texts`` → ``similarity_map``) and through a bare model forward
    on ready tensors (deep features · report embeddings), and the adapter's overhead over the
    bare forward, with and without the preprocessing (the official letterbox: an INTER_AREA
    resize, about 0.4 ms per image here, which the runner does in its DataLoader workers);
  * the word-level loss (forward + backward) on report-like ragged lengths, with texts grouped by
    length (``afloc.losses.length_chunks``, what training uses) against one group padded to the
    longest text (the previous layout), in the same process, and their largest difference.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from afloc import config
from afloc.inference import InferenceEngine, preprocess_image
from afloc.losses import local_loss
from afloc.model import AFLoc, similarity_grid
from afloc.tokenizer import Tokenizer
from benchmark.demo.vocab import ensure_demo_vocab

CAPTION = ("there is a small left pleural effusion. the heart size is normal. "
           "patchy opacity in the right lower lobe concerning for pneumonia")
PROMPTS = ["Findings suggesting pneumonia.", "small left pleural effusion", "right lower lobe opacity"]


def _model(name: str):
    """``demo``: the demo recipe's model (its preset with the recipe's overrides: 192 input, 4 text
    layers); ``paper``; ``<preset>-preset`` or a preset name: the bare preset."""

    if name == "demo":
        from benchmark.training.config import load_train_config
        from benchmark.training.task import get_task

        cfg = load_train_config("demo")
        cfg.seed = 0
        return get_task(cfg.task).build(cfg)[0]
    preset = name.removesuffix("-preset")
    if preset not in config.PRESETS:
        raise ValueError(f"unknown configuration {name!r}; expected demo, paper or one of "
                         f"{', '.join(p + '-preset' for p in config.PRESETS)}")
    tok = Tokenizer.from_path(ensure_demo_vocab())
    cfg = config.paper() if preset == "paper" else config.PRESETS[preset](vocab_size=len(tok))
    torch.manual_seed(0)
    m = AFLoc(cfg)
    m.attach_tokenizer(tok)
    return m


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs after one warm-up (robust to other load on a shared CPU)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(min(times))


def _best_pair(fa, fb, repeats: int) -> tuple[float, float]:
    """Fastest times of two functions measured in alternation (same machine conditions)."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for f, acc in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t)
    return float(min(ta)), float(min(tb))


def train_throughput(preset: str, batch: int, steps: int) -> float:
    m = _model(preset).train()
    opt = torch.optim.Adam(m.parameters(), lr=2e-5, betas=(0.5, 0.999), weight_decay=1e-6)
    x = torch.randn(batch, 3, 224, 224)
    tok = m.tokenizer([CAPTION] * batch)

    def step():
        opt.zero_grad(set_to_none=True)
        out = m(x, tok["input_ids"], tok["attention_mask"], tok["token_type_ids"])
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.25)
        opt.step()

    return batch / _best(step, steps)


# Word counts of one demo training batch (32 reports): ragged like real reports, mean 24, max 93.
RAGGED_WORDS = [93, 61, 67, 41, 48, 46, 39, 44, 37, 31, 28, 23, 20, 18, 17, 12, 15, 13, 13, 12, 11, 10, 10, 10,
                9, 6, 6, 6, 4, 4, 4, 3]


def word_loss_grouping(preset: str, repeats: int) -> dict[str, float]:
    """Word-level local loss, grouped by length vs one padded group, on the preset's shallow grid."""

    m = _model(preset).eval()
    with torch.no_grad():
        shallow = m.encode_image(torch.zeros(1, 3, 224, 224), shallow=True).shallow
    _, D, H, W = shallow.shape
    lens = torch.tensor(RAGGED_WORDS)
    B = len(RAGGED_WORDS)
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(B, D, H, W, generator=gen).requires_grad_()
    units = torch.randn(B, int(lens.max()), D, generator=gen).requires_grad_()

    def run(chunk):
        img.grad = units.grad = None
        l0, l1 = local_loss(img, units, lens, chunk=chunk)
        (l0 + l1).backward()
        return float((l0 + l1).detach())

    grouped, padded = run(None), run(B)
    t_g, t_p = _best_pair(lambda: run(None), lambda: run(B), repeats)
    return {"word_loss_grouped_ms": 1e3 * t_g, "word_loss_padded_ms": 1e3 * t_p, "word_loss_speedup": t_p / t_g,
            "word_loss_abs_diff": abs(grouped - padded), "grid": f"{H}x{W}", "batch": B}


def inference_throughput(preset: str, batch: int, repeats: int) -> dict[str, float]:

    m = _model(preset).eval()
    eng = InferenceEngine(m, "cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 480), dtype=np.uint8) for _ in range(batch)]
    pair = [i % len(PROMPTS) for i in range(batch)]

    def adapter_path():
        x = torch.stack([preprocess_image(im) for im in images])
        emb = eng.encode_images(x)
        txt = eng.encode_texts(PROMPTS)
        return eng.similarity_map(emb, txt[pair])

    ready = torch.stack([preprocess_image(im) for im in images])

    def bare():
        with torch.inference_mode():
            deep = m.encode_image(ready, shallow=False).deep
            rep = m.report_embeddings(PROMPTS)
            return similarity_grid(deep, rep[pair])

    def adapter_from_tensors():  # the same path minus the image preprocessing (runner workers do that)
        emb = eng.encode_images(ready)
        txt = eng.encode_texts(PROMPTS)
        return eng.similarity_map(emb, txt[pair])

    t_ad, t_bare = _best_pair(adapter_path, bare, repeats)
    t_ad_t, t_bare2 = _best_pair(adapter_from_tensors, bare, repeats)
    return {"adapter_maps_per_s": batch / t_ad, "bare_maps_per_s": batch / t_bare,
            "overhead_pct": 100.0 * (t_ad / t_bare - 1.0),
            "overhead_without_preprocess_pct": 100.0 * (t_ad_t / t_bare2 - 1.0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m afloc.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="demo,paper",
                   help="comma-separated: demo (the demo model's architecture), paper, demo-preset, tiny-preset")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    print(f"{'config':<12}{'train samples/s':>17}{'adapter maps/s':>16}{'bare maps/s':>13}{'overhead':>10}"
          f"{'w/o preprocess':>16}")
    for preset in a.configs.split(","):
        tr = train_throughput(preset, a.train_batch, a.repeats)
        inf = inference_throughput(preset, a.infer_batch, a.repeats)
        rows.append({"config": preset, "train_samples_per_s": tr, **inf,
                     "train_batch": a.train_batch, "infer_batch": a.infer_batch, "threads": torch.get_num_threads()})
        print(f"{preset:<12}{tr:>17.2f}{inf['adapter_maps_per_s']:>16.2f}{inf['bare_maps_per_s']:>13.2f}"
              f"{inf['overhead_pct']:>9.1f}%{inf['overhead_without_preprocess_pct']:>15.1f}%")
    print(f"\nword-level loss, forward + backward, {len(RAGGED_WORDS)} texts of "
          f"{min(RAGGED_WORDS)}-{max(RAGGED_WORDS)} words:")
    print(f"{'config':<12}{'grid':>7}{'grouped ms':>12}{'padded ms':>11}{'speed-up':>10}{'|loss diff|':>13}")
    for row in rows:
        w = word_loss_grouping(row["config"], a.repeats)
        row.update(w)
        print(f"{row['config']:<12}{w['grid']:>7}{w['word_loss_grouped_ms']:>12.1f}{w['word_loss_padded_ms']:>11.1f}"
              f"{w['word_loss_speedup']:>9.2f}x{w['word_loss_abs_diff']:>13.2e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
