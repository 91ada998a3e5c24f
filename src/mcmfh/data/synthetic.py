"""A small built-in image–text dataset for the demo and for tests, generated in the generic ``csv`` layout.

Each item is a 128x128 grey "scan" of a body region (head, chest, abdomen, limb: a recognisable background shape)
with one finding (a bright round lesion, a dark cyst with a rim, a cluster of calcification dots, a fracture line
through the bone, or nothing) at a location (left, right, upper, lower), plus a caption in radiology language from
varied templates and the labels ``region:<region>;finding:<finding>``. The location is in the picture and the caption
but not in the labels, so text and image carry detail that the labels do not.

Deterministic for a given ``seed`` (NumPy's PCG64); ~600 items take about a second.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mcmfh.io import atomic_dir
from mcmfh.manifest import MANIFEST_NAME

REGIONS = ("head", "chest", "abdomen", "limb")
FINDINGS = ("lesion", "cyst", "calcification", "fracture", "normal")
LOCATIONS = ("left", "right", "upper", "lower")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / dev / test
CSV_NAME = "synthetic.csv"

_REGION_WORDS = {
    "head": ("head", "cranial", "brain"),
    "chest": ("chest", "thoracic", "lung"),
    "abdomen": ("abdomen", "abdominal", "abdominal"),
    "limb": ("extremity", "limb", "long bone"),
}
_FINDING_PHRASES = {
    "lesion": ("a well-circumscribed hyperdense lesion", "a round enhancing mass", "a bright solid nodule"),
    "cyst": (
        "a hypodense cystic lesion with a thin rim",
        "a simple-appearing cyst",
        "a low-attenuation fluid collection",
    ),
    "calcification": ("clustered punctate calcifications", "several small calcific foci", "coarse calcifications"),
    "fracture": (
        "a linear lucent fracture line",
        "a non-displaced fracture",
        "a cortical break consistent with fracture",
    ),
}
_TEMPLATES = (
    "{Mod} image of the {r0} demonstrates {f} in the {loc} {r1} region.",
    "There is {f} in the {loc} aspect of the {r2}.",
    "{Mod} of the {r0}: {f}, {loc} side.",
    "Findings: {f} involving the {loc} {r1} field. No other abnormality.",
)
_NORMAL_TEMPLATES = (
    "{Mod} image of the {r0} without focal abnormality.",
    "Normal {r1} study. No lesion, cyst, calcification or fracture.",
    "Unremarkable {mod} of the {r2}.",
)
_MODALITIES = ("CT", "Radiograph", "MR")
SIZE = 128


@dataclass(frozen=True)
class SyntheticItem:
    id: str
    region: str
    finding: str
    location: str
    caption: str
    split: str


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return yy, xx


_YY, _XX = _grid()


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((_YY - cy) / ry) ** 2 + ((_XX - cx) / rx) ** 2 <= 1.0


def _background(region: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The region's shape (float image in [0, 1]) and a mask of where a finding may sit."""
    img = np.zeros((SIZE, SIZE), np.float32)
    j = rng.uniform(-4, 4, size=4)
    c = SIZE / 2
    if region == "head":
        skull = _ellipse(c + j[0], c + j[1], 52 + j[2], 44 + j[3])
        brain = _ellipse(c + j[0], c + j[1], 47 + j[2], 39 + j[3])
        img[skull] = 0.9
        img[brain] = 0.45
        return img, brain
    if region == "chest":
        body = _ellipse(c + j[0], c, 50, 58 + j[1])
        img[body] = 0.55
        lungs = _ellipse(c - 4 + j[0], c - 24, 36 + j[2], 18) | _ellipse(c - 4 + j[0], c + 24, 36 + j[3], 18)
        img[lungs] = 0.15
        img[_ellipse(c + 6, c + 4, 18, 12)] = 0.7  # heart
        return img, body
    if region == "abdomen":
        body = _ellipse(c + j[0], c, 48 + j[2], 58 + j[1])
        img[body] = 0.5
        img[_ellipse(c - 10, c - 22, 18 + j[3], 24)] = 0.62  # liver
        img[_ellipse(c + 22, c, 8, 8)] = 0.9  # vertebra
        return img, body
    soft = _ellipse(c, c + j[0], 60, 26 + j[1])
    img[soft] = 0.4
    bone = (np.abs(_XX - c - j[0]) < 8 + j[2] / 2) & (np.abs(_YY - c) < 58)
    img[bone] = 0.95
    return img, soft


def _centre(location: str, rng: np.random.Generator) -> tuple[float, float]:
    c, off = SIZE / 2, SIZE * 0.2
    dy, dx = {"left": (0, -off), "right": (0, off), "upper": (-off, 0), "lower": (off, 0)}[location]
    return c + dy + rng.uniform(-5, 5), c + dx + rng.uniform(-5, 5)


def _draw_finding(img: np.ndarray, region: str, finding: str, location: str, rng: np.random.Generator) -> None:
    cy, cx = _centre(location, rng)
    if finding == "lesion":
        r = rng.uniform(6, 11)
        img[_ellipse(cy, cx, r, r * rng.uniform(0.8, 1.2))] = 1.0
    elif finding == "cyst":
        r = rng.uniform(7, 12)
        img[_ellipse(cy, cx, r + 1.5, r + 1.5)] = 0.8
        img[_ellipse(cy, cx, r, r)] = 0.05
    elif finding == "calcification":
        for _ in range(int(rng.integers(4, 9))):
            img[_ellipse(cy + rng.normal(0, 5), cx + rng.normal(0, 5), 1.6, 1.6)] = 1.0
    elif finding == "fracture":
        # A dark line crossing the bone (limb) or the dense structure nearest the location.
        angle = rng.uniform(-0.6, 0.6)
        if region == "limb":
            cx = SIZE / 2
        dist = np.abs((_YY - cy) * np.cos(angle) - (_XX - cx) * np.sin(angle))
        img[(dist < 1.2) & (np.hypot(_YY - cy, _XX - cx) < 18) & (img > 0.3)] = 0.02


def _render(region: str, finding: str, location: str, rng: np.random.Generator) -> bytes:
    img, _ = _background(region, rng)
    if finding != "normal":
        _draw_finding(img, region, finding, location, rng)
    img = img + rng.normal(0, 0.04, img.shape).astype(np.float32)  # quantum noise
    # Cheap 3x3 box blur: softens the drawn edges like a reconstruction kernel.
    pad = np.pad(img, 1, mode="edge")
    img = sum(pad[dy : dy + SIZE, dx : dx + SIZE] for dy in range(3) for dx in range(3)) / 9.0
    buf = io.BytesIO()
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(
        buf, format="PNG", compress_level=1
    )  # noise compresses badly; speed wins
    return buf.getvalue()


def _caption(region: str, finding: str, location: str, rng: np.random.Generator) -> str:
    r0, r1, r2 = _REGION_WORDS[region]
    mod = str(rng.choice(_MODALITIES))
    mod_lower = mod if mod.isupper() else mod.lower()  # "CT"/"MR" stay upper case mid-sentence
    if finding == "normal":
        t = str(rng.choice(_NORMAL_TEMPLATES))
        return t.format(Mod=mod, mod=mod_lower, r0=r0, r1=r1, r2=r2)
    f = str(rng.choice(_FINDING_PHRASES[finding]))
    return str(rng.choice(_TEMPLATES)).format(Mod=mod, r0=r0, r1=r1, r2=r2, f=f, loc=location)


def synthetic_items(n: int, seed: int = 0) -> list[SyntheticItem]:
    """The item list (without pixels): balanced over region x finding, locations random, splits by permutation."""
    rng = np.random.default_rng(seed)
    combos = [(r, f) for r in REGIONS for f in FINDINGS]
    order = rng.permutation(n)
    n_train, n_dev = int(round(n * SPLIT_FRACTIONS[0])), int(round(n * SPLIT_FRACTIONS[1]))
    split_of = {
        int(k): ("train" if i < n_train else "dev" if i < n_train + n_dev else "test") for i, k in enumerate(order)
    }
    items = []
    for i in range(n):
        region, finding = combos[i % len(combos)]
        location = str(rng.choice(LOCATIONS))
        items.append(
            SyntheticItem(
                f"syn{i:05d}", region, finding, location, _caption(region, finding, location, rng), split_of[i]
            )
        )
    return items


def make_synthetic_dataset(out_dir: str | Path, n: int = 600, seed: int = 0, keep: Sequence[str] = ()) -> Path:
    """Write ``n`` items to ``out_dir`` (``synthetic.csv`` + ``images/``) atomically and return ``out_dir``.

    Load it with ``load_dataset("csv", out_dir)``. Files named in ``keep`` are carried over from an earlier
    ``out_dir`` (e.g. the manifest that marks a prepared folder).
    """
    if n < len(REGIONS) * len(FINDINGS):
        raise ValueError(f"n must be at least {len(REGIONS) * len(FINDINGS)} (one item per region x finding)")
    out = Path(out_dir)
    items = synthetic_items(n, seed)
    rng = np.random.default_rng([seed, 1])  # pixels use their own stream, so captions do not depend on drawing
    with atomic_dir(out) as tmp:
        for name in keep:
            if (out / name).is_file():
                shutil.copy2(out / name, tmp / name)
        (tmp / "images").mkdir()
        with open(tmp / CSV_NAME, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "image", "text", "labels", "split", "location"])
            for it in items:
                (tmp / "images" / f"{it.id}.png").write_bytes(_render(it.region, it.finding, it.location, rng))
                w.writerow(
                    [it.id, f"images/{it.id}.png", it.caption, f"region:{it.region};finding:{it.finding}", it.split,
                     it.location]
                )  # fmt: skip
    return out


def prepare_synthetic(out: Path, n: int = 600, seed: int = 0) -> dict:
    """``mcmfh prepare synthetic``: generate the dataset into ``out`` (replacing an earlier one, manifest kept)."""
    make_synthetic_dataset(out, n=n, seed=seed, keep=(MANIFEST_NAME,))
    return {"items": n, "seed": seed}
