"""MCMFH as a HashMethod, and its three ablations (same settings except the one switch).

fit = stage 1 (DV-MLP) then stage 2 (fusion + hashing, DV-MLP frozen); see trainer.py. ``encode_images`` and
``encode_texts`` code each modality alone (fusion.py: the single-item rule). The state is named numpy arrays: the
network weights and buffers (incl. the stored dropout-vote masks and the train-fitted preprocessing), the input
dims, and the full config as JSON bytes, so a loaded model is refused if its config differs from the options.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.method import HashMethod, register_method
from mcmfh.model.config import MCMFHConfig, flat_fields
from mcmfh.model.network import MCMFHNet
from mcmfh.model.study import TokenSets, pack_sets, whole_sets
from mcmfh.model.trainer import EpochCallback, Split, Trainer, run_key
from mcmfh.studies import Studies

ENCODE_BATCH = 4096  # rows per forward pass at inference; codes do not depend on it (no cross-item op)
STUDY_BATCH = 256  # studies per forward pass of the study encoder; codes do not depend on it either


@register_method("mcmfh")
class MCMFH(HashMethod):
    ablation: ClassVar[dict[str, Any]] = {}

    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        super().__init__(bits, seed, **options)
        clash = sorted(k for k in self.ablation if k in options and options[k] != self.ablation[k])
        if clash:
            raise MCMFHError(f"{self.name}: option(s) {', '.join(clash)} are fixed by this ablation")
        self.requested = MCMFHConfig.from_options(**{**options, **self.ablation})
        self.cfg = self.requested  # the fit's config: capacity resolved for its training set by ``fit``
        self.net: MCMFHNet | None = None
        self.n_train = 0  # pairs of the fit (its capacity was resolved for them): saved with the model
        self.callback: EpochCallback | None = None  # test hook: called after each epoch

    def _build(self, image_dim: int, text_dim: int, with_study: bool = False) -> MCMFHNet:
        return MCMFHNet(self.cfg.model, image_dim, text_dim, self.bits, with_study=with_study)

    def recipe(self) -> dict[str, Any]:
        return self.requested.model_fields()

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        if len(train) < 2:
            raise MCMFHError(f"{self.name}: need at least 2 training pairs, got {len(train)}")
        if not bool(np.all(train.has_image)):
            train = train.subset(train.has_image)  # pairs only: an item without an image has nothing to pair
        self.cfg = self.requested.sized_for(len(train))
        self.n_train = len(train)
        threads = torch.get_num_threads()
        if self.cfg.train.num_threads > 0:
            torch.set_num_threads(self.cfg.train.num_threads)
        used_threads = torch.get_num_threads()  # a fit's float sums depend on it: logged so a row can be rerun
        try:
            torch.manual_seed(self.seed)  # weights init and dropout; batch order uses the trainer's own generator
            self.net = self._build(train.image_dim, train.text_dim, self.cfg.model.study_head and train.has_studies)
            self.net.pre_img.fit(torch.from_numpy(train.image))
            self.net.pre_txt.fit(torch.from_numpy(train.text))

            def to_split(fs: FeatureSet) -> Split:
                study = fs.study_ids() if fs.has_studies else None
                return Split(torch.from_numpy(fs.image), torch.from_numpy(fs.text), fs.labels, study)

            dev_split = to_split(dev.subset(dev.has_image)) if dev is not None and len(dev) else None
            key = run_key(self.cfg, self.seed, self.bits, train.image, train.text)
            trainer = Trainer(self.net, self.cfg, self.seed, to_split(train), dev_split, key, self.callback)
            trainer.progress = self.progress
            log = trainer.run()
        finally:
            torch.set_num_threads(threads)
        self.net.eval()
        log["parameters"] = sum(p.numel() for p in self.net.parameters())
        log["torch_threads"] = used_threads
        return log

    def _encode(self, x: np.ndarray, image: bool, relaxed: bool = False) -> np.ndarray:
        if self.net is None:
            raise MCMFHError(f"{self.name}: not fitted (call fit or load a saved model first)")
        want = self.net.pre_img.mean.shape[0] if image else self.net.pre_txt.mean.shape[0]
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != want:
            kind = "image" if image else "text"
            raise MCMFHError(f"{self.name}: {kind} embeddings must be (N, {want}), got {x.shape}")
        self.net.eval()
        fn = self._relaxed_fn(image) if relaxed else self._output_fn(image)
        with torch.no_grad():
            parts = [fn(torch.from_numpy(x[i : i + ENCODE_BATCH])).numpy() for i in range(0, len(x), ENCODE_BATCH)]
        if parts:
            return np.concatenate(parts)
        if relaxed:
            return np.zeros((0, self.bits), np.float32)
        return np.zeros((0, self.output_dim()), dtype=self._output_dtype())

    def _relaxed_fn(self, image: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """The hashing MLP's tanh(h): what the losses train and what sign() binarises into the codes."""
        net = self.net
        assert net is not None
        if image:
            return lambda x: net.hash_img(net.image_tokens(x))
        return lambda x: net.hash_txt(net.text_tokens(x))

    def _output_fn(self, image: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        assert self.net is not None
        return self.net.image_codes if image else self.net.text_codes

    def _output_dtype(self) -> type:
        return bool

    def output_dim(self) -> int:
        """Width of what encode_* returns: the code length."""
        return self.bits

    def encode_images(self, image: np.ndarray) -> np.ndarray:
        return self._encode(image, image=True)

    def encode_texts(self, text: np.ndarray) -> np.ndarray:
        return self._encode(text, image=False)

    @property
    def has_relaxed(self) -> bool:
        return True

    def relaxed_images(self, image: np.ndarray) -> np.ndarray:
        return self._encode(image, image=True, relaxed=True)

    def relaxed_texts(self, text: np.ndarray) -> np.ndarray:
        return self._encode(text, image=False, relaxed=True)

    # ---------------------------------------------------------------- studies (model/study.py)
    @property
    def has_study_codes(self) -> bool:
        return self.net is not None and self.net.study is not None

    def study_inputs(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """(N, 2, width) float32: per item, its frozen DV-MLP image and text tokens, what a study is coded from. An
        archive keeps them, so a study gaining a member is re-coded without its other members' embeddings."""
        if self.net is None or self.net.study is None:
            raise MCMFHError(f"{self.name}: no study head (fit on data with studies to train one)")
        self.net.eval()
        image, text = np.asarray(image, np.float32), np.asarray(text, np.float32)
        with torch.no_grad():
            di, dt = self.net.dv_tokens(torch.from_numpy(image), torch.from_numpy(text))
        assert di is not None and dt is not None
        return torch.stack([di, dt], dim=1).numpy()

    def _study_batches(
        self, inputs: np.ndarray, has_image: np.ndarray, study_of_item: Sequence[str] | np.ndarray
    ) -> tuple[Studies, Iterator[TokenSets]]:
        """The studies and their token sets, packed ``STUDY_BATCH`` studies at a time (padding is per batch, so one
        very large study does not pad every other one)."""
        if self.net is None or self.net.study is None:
            raise MCMFHError(f"{self.name}: no study head (fit on data with studies to train one)")
        inputs = np.asarray(inputs, np.float32)
        if inputs.ndim != 3 or inputs.shape[1:] != (2, self.cfg.model.width) or len(has_image) != len(inputs):
            raise MCMFHError(f"{self.name}: study inputs must be (N, 2, {self.cfg.model.width}), got {inputs.shape}")
        studies = Studies.group(study_of_item)
        tokens = torch.from_numpy(inputs)
        imgs, txts = whole_sets(studies, np.asarray(has_image, bool), inputs[:, 1])  # equal text tokens: one report
        batches = (pack_sets(tokens[:, 0], tokens[:, 1], imgs[i : i + STUDY_BATCH], txts[i : i + STUDY_BATCH])
                   for i in range(0, len(studies), STUDY_BATCH))  # fmt: skip
        return studies, batches

    def encode_study_inputs(
        self, inputs: np.ndarray, has_image: np.ndarray, study_of_item: Sequence[str] | np.ndarray
    ) -> tuple[Studies, np.ndarray]:
        """One code per study from its members' ``study_inputs`` (rows grouped by ``study_of_item``)."""
        return self._run_studies(inputs, has_image, study_of_item, self._study_output_fn())

    def relaxed_study_inputs(
        self, inputs: np.ndarray, has_image: np.ndarray, study_of_item: Sequence[str] | np.ndarray
    ) -> tuple[Studies, np.ndarray]:
        """The study hash head's tanh outputs (S, bits), whose signs are the study codes."""
        assert self.net is not None and self.net.study is not None
        study = self.net.study
        return self._run_studies(inputs, has_image, study_of_item, lambda sets: study(sets)[1])

    def _run_studies(
        self, inputs: np.ndarray, has_image: np.ndarray, study_of_item: Sequence[str] | np.ndarray,
        fn: Callable[[TokenSets], torch.Tensor],
    ) -> tuple[Studies, np.ndarray]:  # fmt: skip
        studies, batches = self._study_batches(inputs, has_image, study_of_item)
        self.net.eval()  # type: ignore[union-attr]
        with torch.no_grad():
            parts = [fn(b).numpy() for b in batches]
        return studies, np.concatenate(parts) if parts else np.zeros((0, self.output_dim()), self._output_dtype())

    def _study_output_fn(self) -> Callable[[TokenSets], torch.Tensor]:
        """What ``encode_studies`` returns per study: the binary code (overridden by the continuous ceilings)."""
        assert self.net is not None and self.net.study is not None
        return self.net.study.codes

    def study_tokens(self, features: FeatureSet) -> tuple[Studies, np.ndarray]:
        """Unquantised study tokens, in the space of ``image_tokens`` / ``text_tokens`` (the continuous ceiling)."""
        inputs = self.study_inputs(features.image, features.text)
        studies, batches = self._study_batches(inputs, features.has_image, features.study_ids())
        assert self.net is not None and self.net.study is not None
        with torch.no_grad():
            parts = [self.net.study.tokens(b)[0].numpy() for b in batches]
        return studies, np.concatenate(parts) if parts else np.zeros((0, self.cfg.model.width), np.float32)

    def image_tokens(self, image: np.ndarray) -> np.ndarray:
        """Fused (N, width) image tokens, images alone: the real-valued space the hash head codes."""
        assert self.net is not None
        with torch.no_grad():
            return self.net.image_tokens(torch.from_numpy(np.asarray(image, np.float32))).numpy()

    def text_tokens(self, text: np.ndarray) -> np.ndarray:
        assert self.net is not None
        with torch.no_grad():
            return self.net.text_tokens(torch.from_numpy(np.asarray(text, np.float32))).numpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.net is None:
            raise MCMFHError(f"{self.name}: nothing to save, the model is not fitted")
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        state["meta.dims"] = np.array([self.net.pre_img.mean.shape[0], self.net.pre_txt.mean.shape[0]], np.int64)
        state["meta.study_head"] = np.array([self.net.study is not None], np.uint8)
        state["meta.n_train"] = np.array([self.n_train], np.int64)
        state["meta.config_json"] = np.frombuffer(json.dumps(self.cfg.saved()).encode(), dtype=np.uint8)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        try:
            saved_cfg = flat_fields(json.loads(bytes(state["meta.config_json"]).decode()))
            image_dim, text_dim = (int(v) for v in state["meta.dims"])
        except (KeyError, ValueError) as e:
            raise ArtefactError(f"{self.name}: saved state lacks its config or dims ({e})") from e
        # The options give capacity "auto"; the saved model holds what it resolved to for its training set.
        n_train = int(state["meta.n_train"][0]) if "meta.n_train" in state else 0
        cfg = self.requested.sized_for(n_train) if n_train else self.requested
        # A field added after the model was saved is at its default there: new fields default to the old behaviour.
        saved_cfg = {**MCMFHConfig().model_fields(), **saved_cfg}
        if saved_cfg != cfg.model_fields():
            diff = sorted(k for k in saved_cfg if saved_cfg[k] != cfg.model_fields().get(k))
            raise ArtefactError(f"{self.name}: saved model was made with other settings ({', '.join(diff)})")
        with_study = bool(state["meta.study_head"][0]) if "meta.study_head" in state else False
        self.cfg, self.n_train = cfg, n_train
        net = self._build(image_dim, text_dim, with_study)
        tensors = {k[4:]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("net.")}
        for name, module in (("dv_img", net.dv_img), ("dv_txt", net.dv_txt)):
            module.masks = tensors[f"{name}.masks"]  # stored vote masks: their count sets the buffer's shape
        try:
            net.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtefactError(f"{self.name}: saved weights do not fit the model ({e})") from e
        net.eval()
        self.net = net


@register_method("mcmfh-no-moe")
class MCMFHNoMoE(MCMFH):
    """Ablation: each fusion layer's feed-forward is one dense FFN (no experts, no router, no gating loss)."""

    ablation_of: ClassVar[str | None] = "mcmfh"
    ablation: ClassVar[dict[str, Any]] = {"use_moe": False}


@register_method("mcmfh-no-dv")
class MCMFHNoDV(MCMFH):
    """Ablation: no dropout voting: a plain MLP (T = 1 eval pass), not frozen, trained on in stage 2."""

    ablation_of: ClassVar[str | None] = "mcmfh"
    ablation: ClassVar[dict[str, Any]] = {"dropout_voting": False}


@register_method("mcmfh-no-gateloss")
class MCMFHNoGateLoss(MCMFH):
    """Ablation: the MoE is kept but the hybrid gating loss is off (λ_g = 0)."""

    ablation_of: ClassVar[str | None] = "mcmfh"
    ablation: ClassVar[dict[str, Any]] = {"lambda_gate": 0.0}


@register_method("mcmfh-no-fusion")
class MCMFHNoFusion(MCMFH):
    """Ablation: no fusion layers (L = 0): tokens go from the DV-MLP through the final LayerNorm to the hash heads,
    and a study token is the mean of its members' tokens (a set average instead of attention over the study)."""

    ablation_of: ClassVar[str | None] = "mcmfh"
    ablation: ClassVar[dict[str, Any]] = {"layers": 0}
