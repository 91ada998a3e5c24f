"""Shared machinery for the deep cross-modal hashing baselines (DJSRH, JDSH, DGCPN, UCCH, DCMHT, DSPH heads).

All of them, as published, train one network per modality that maps a frozen (or fine-tuned) embedding to ``bits``
tanh outputs whose signs are the codes; they differ in the *loss*. Here every one gets the same two towers on the
same frozen features, so the comparison is about the objectives:

- tower = Linear(d, hidden) -> ReLU -> Linear(hidden, bits) -> tanh, one per modality, separate weights (the papers'
  text networks are 1-2 hidden-layer MLPs; their image networks are CNNs whose last layers play this role);
- inputs centred on the training mean (evaluation.md protocol), seeded initialisation and batch order;
- the epoch is chosen on dev by ``mcmfh.training.selection`` (healthy codes first, then tie-aware mAP@all, dev queries
vs the
  train set: the rule MCMFH's stages use),
  evaluated every ``eval_every`` epochs (default 1) and after the last one, the best state kept (never the test set);
  a larger ``eval_every`` only makes the choice coarser (it never changes what an epoch computes: the training
  batches, their order and the random draws are the same whatever it is), which makes UCCH's 100 epochs affordable;
- each modality is coded alone: an image code is sign(tower_image(image)), no text involved.

A subclass supplies ``options_class`` and ``batch_loss``; it may override ``prepare`` (precomputation on the whole
training set, e.g. DGCPN's neighbour graph) and add extra trainable parameters (``extra_parameters``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcmfh.errors import MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.method import HashMethod
from mcmfh.options import parse_options
from mcmfh.training.selection import DevEvaluation, evaluate_dev


@dataclass
class DeepHashOptions:
    epochs: int = 40  # upper bound; the epoch actually kept is chosen on dev
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 1024
    grad_clip: float = 0.0  # >0: clip the gradient norm (UCCH clips at 1)
    num_threads: int = 1  # 0: leave torch's setting; 1: on two shared, loaded cores 2 threads made a step ~6x slower
    eval_every: int = 1  # dev evaluation every N epochs (and after the last); the choice is among those epochs
    encode_batch: int = 4096


@dataclass
class Batch:
    """One training batch: the towers' tanh outputs, the centred inputs, the rows' training indices and labels."""

    hi: torch.Tensor
    ht: torch.Tensor
    xi: torch.Tensor
    xt: torch.Tensor
    idx: torch.Tensor
    labels: torch.Tensor


class Tower(nn.Module):
    def __init__(self, dim: int, hidden: int, bits: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


class DeepHashMethod(HashMethod):
    options_class: ClassVar[type] = DeepHashOptions
    supervised: ClassVar[bool] = False  # True: the loss reads training labels (reported in a separate block)

    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        super().__init__(bits, seed, **options)
        self.opts = parse_options(self.options_class, options, f"method {self.name!r}")
        for key in ("epochs", "eval_every", "batch_size"):
            value = getattr(self.opts, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MCMFHError(f"method {self.name!r}: option {key!r} must be a positive integer, got {value!r}")
        self.tower_image: Tower | None = None
        self.tower_text: Tower | None = None
        self.mean_image: np.ndarray | None = None
        self.mean_text: np.ndarray | None = None

    # ------------------------------------------------------------------ subclass hooks
    def prepare(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> None:
        """Precompute anything that needs the whole training set (default: nothing)."""

    def extra_parameters(self) -> list[nn.Parameter]:
        return []

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def recipe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        o = self.opts
        pairs = train.subset(np.flatnonzero(train.has_image))
        if len(pairs) < 2:
            raise MCMFHError(f"method {self.name!r}: need at least 2 training pairs, got {len(pairs)}")
        threads = torch.get_num_threads()
        if o.num_threads > 0:
            torch.set_num_threads(o.num_threads)
        try:
            return {**self._fit(pairs, dev), "torch_threads": torch.get_num_threads()}  # the fit depends on it
        finally:
            torch.set_num_threads(threads)

    def _fit(self, pairs: FeatureSet, dev: FeatureSet | None) -> dict[str, Any]:
        o = self.opts
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.mean_image, self.mean_text = pairs.image.mean(0), pairs.text.mean(0)
        x = torch.from_numpy(pairs.image - self.mean_image)
        y = torch.from_numpy(pairs.text - self.mean_text)
        labels = torch.from_numpy(pairs.labels.astype(np.float32))
        self.tower_image = Tower(x.shape[1], o.hidden, self.bits)
        self.tower_text = Tower(y.shape[1], o.hidden, self.bits)
        self.prepare(x, y, labels)
        params = [*self.tower_image.parameters(), *self.tower_text.parameters(), *self.extra_parameters()]
        opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        bs = min(o.batch_size, len(x))
        use_dev = dev is not None and bool(np.any(dev.has_image))
        dev_pairs = dev.subset(np.flatnonzero(dev.has_image)) if use_dev and dev is not None else None
        losses: list[float] = []
        dev_scores: list[float] = []
        dev_epochs: list[int] = []
        best: tuple[DevEvaluation, int, dict[str, Any]] | None = None
        collapsed: list[bool] = []
        t0 = time.perf_counter()
        for epoch in range(o.epochs):
            self.tower_image.train()
            self.tower_text.train()
            perm = torch.randperm(len(x), generator=gen)
            total, steps = 0.0, 0
            for s in range(0, len(x) - bs + 1, bs):  # drop the last partial batch in training only
                idx = perm[s : s + bs]
                b = Batch(self.tower_image(x[idx]), self.tower_text(y[idx]), x[idx], y[idx], idx, labels[idx])
                loss = self.batch_loss(b, epoch)
                opt.zero_grad()
                loss.backward()
                if o.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, o.grad_clip)
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            losses.append(total / max(steps, 1))
            if dev_pairs is not None and ((epoch + 1) % o.eval_every == 0 or epoch + 1 == o.epochs):
                ev = self._dev_score(pairs, dev_pairs)
                dev_scores.append(ev.figures["dev_map"])
                collapsed.append(not ev.healthy)
                dev_epochs.append(epoch + 1)
                if ev.beats(None if best is None else best[0]):  # healthy first, then strictly higher mAP
                    best = (ev, epoch + 1, self._snapshot())
        chosen = o.epochs
        if best is not None:
            chosen = best[1]
            self._restore(best[2])
        self.tower_image.eval()
        self.tower_text.eval()
        return {
            "epochs": o.epochs,
            "chosen_epoch": chosen,
            "loss": losses,
            "dev_map_tie_aware": dev_scores,
            "dev_collapsed": collapsed,
            "dev_epochs": dev_epochs,
            "n_train_pairs": len(pairs),
            "fit_seconds": time.perf_counter() - t0,
        }

    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({"image": self.tower_image.state_dict(), "text": self.tower_text.state_dict()})  # type: ignore[union-attr]

    def _restore(self, snap: dict[str, Any]) -> None:
        assert self.tower_image is not None and self.tower_text is not None
        self.tower_image.load_state_dict(snap["image"])
        self.tower_text.load_state_dict(snap["text"])

    def _dev_score(self, train: FeatureSet, dev: FeatureSet) -> DevEvaluation:
        q_img, q_txt = self.encode_images(dev.image), self.encode_texts(dev.text)
        db_img, db_txt = self.encode_images(train.image), self.encode_texts(train.text)
        return evaluate_dev((q_img, q_txt), (db_img, db_txt), (dev.labels, train.labels), (dev.text, train.text),
                            images=(dev.image, train.image))  # fmt: skip

    # ------------------------------------------------------------------ inference (each modality alone)
    @torch.no_grad()
    def _relaxed(self, feats: np.ndarray, modality: str) -> np.ndarray:
        tower = self.tower_image if modality == "image" else self.tower_text
        mean = self.mean_image if modality == "image" else self.mean_text
        if tower is None or mean is None:
            raise MCMFHError(f"method {self.name!r}: not fitted")
        tower.eval()
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != mean.shape[0]:
            raise MCMFHError(f"method {self.name!r}: expected {modality} input (N, {mean.shape[0]}), got {feats.shape}")
        out = [
            tower(torch.from_numpy(feats[s : s + self.opts.encode_batch] - mean)).numpy()
            for s in range(0, len(feats), self.opts.encode_batch)
        ]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.bits), dtype=np.float32)

    @property
    def has_relaxed(self) -> bool:
        return True

    def relaxed_images(self, image: np.ndarray) -> np.ndarray:
        return self._relaxed(image, "image")

    def relaxed_texts(self, text: np.ndarray) -> np.ndarray:
        return self._relaxed(text, "text")

    def encode_images(self, image: np.ndarray) -> np.ndarray:
        return self._relaxed(image, "image") > 0

    def encode_texts(self, text: np.ndarray) -> np.ndarray:
        return self._relaxed(text, "text") > 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        if self.tower_image is None or self.tower_text is None:
            raise MCMFHError(f"method {self.name!r}: not fitted")
        state = {f"image.{k}": v.detach().numpy() for k, v in self.tower_image.state_dict().items()}
        state.update({f"text.{k}": v.detach().numpy() for k, v in self.tower_text.state_dict().items()})
        return {**state, "mean_image": self.mean_image, "mean_text": self.mean_text}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        try:
            self.mean_image, self.mean_text = state["mean_image"], state["mean_text"]
            self.tower_image = Tower(len(self.mean_image), self.opts.hidden, self.bits)
            self.tower_text = Tower(len(self.mean_text), self.opts.hidden, self.bits)
            for prefix, tower in (("image.", self.tower_image), ("text.", self.tower_text)):
                sub = {
                    k[len(prefix) :]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith(prefix)
                }
                tower.load_state_dict(sub)
        except (KeyError, RuntimeError) as e:
            raise MCMFHError(f"method {self.name!r}: state does not fit the model ({e})") from e
        self.tower_image.eval()
        self.tower_text.eval()
