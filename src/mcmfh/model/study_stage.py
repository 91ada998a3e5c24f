"""Stage 3: the study head, trained after the item model with the item model frozen (see ``mcmfh.model.study``).

L_study = L_hash(query hash output, study hash output) + λ_st·L_token(query fused token, study token) + λ_g·L_gate,
both InfoNCE over the batch's studies, for image queries and text queries alike; the query side is a constant (the
frozen item model's outputs for the held-out member), so only the study encoder learns. Model choice on dev: the
tie-aware mAP@all of dev items, coded alone, against the train studies (image→study and text→study averaged), or
the dev loss, or the last epoch, as for the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcmfh.evaluation.metrics import hamming_distances, map_all_tie_aware, relevance
from mcmfh.model.config import MCMFHConfig
from mcmfh.model.fusion import IMAGE, TEXT
from mcmfh.model.network import MCMFHNet
from mcmfh.model.study import Studies, held_out_sets, pack_sets, whole_sets
from mcmfh.training.losses import gate_loss, info_nce

DEV_SEED = 12345  # the dev loss draws its held-out members from a fixed generator: the same view every epoch


@dataclass
class ItemTokens:
    """Frozen item-model outputs of N items: DV tokens, fused single-modality tokens and relaxed hash outputs."""

    dv_img: torch.Tensor
    dv_txt: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    h_img: torch.Tensor
    h_txt: torch.Tensor
    has_image: np.ndarray
    text_key: np.ndarray  # the raw text embeddings: equal rows are one shared report
    labels: np.ndarray

    @classmethod
    @torch.no_grad()
    def of(
        cls, net: MCMFHNet, image: torch.Tensor, text: torch.Tensor, has_image: np.ndarray, labels: np.ndarray
    ) -> ItemTokens:
        was = net.training
        net.eval()
        di, dt = net.dv_tokens(image, text)
        assert di is not None and dt is not None
        u = net.fusion.encode_single(di, IMAGE)[0]
        v = net.fusion.encode_single(dt, TEXT)[0]
        out = cls(di, dt, u, v, net.hash_img(u), net.hash_txt(v), has_image, text.numpy(), labels)
        net.train(was)
        return out


class StudyStage:
    """What stage 3 iterates over: the training studies (``len`` = number of studies), and its dev score."""

    def __init__(
        self,
        net: MCMFHNet,
        cfg: MCMFHConfig,
        train: ItemTokens,
        train_studies: Studies,
        dev: ItemTokens | None,
        dev_studies: Studies | None,
    ) -> None:
        self.net, self.cfg = net, cfg
        self.train, self.studies = train, train_studies
        self.dev, self.dev_studies = dev, dev_studies
        # Fixed for the whole stage (the item model is frozen): the train studies' token sets and the dev queries'
        # relevance to them, so a dev evaluation only re-runs the study encoder. Only a dev split uses them.
        self.train_sets, self.dev_rel = None, None
        if dev is not None:
            imgs, txts = whole_sets(train_studies, train.has_image, train.text_key)
            self.train_sets = pack_sets(train.dv_img, train.dv_txt, imgs, txts)
            self.dev_rel = relevance(dev.labels, train_studies.labels(train.labels))

    def __len__(self) -> int:
        return len(self.studies)

    def loss(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self._loss(self.train, self.studies, idx.numpy(), generator)

    def _loss(
        self, items: ItemTokens, studies: Studies, batch: np.ndarray, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        study, cfg = self.net.study, self.cfg
        assert study is not None
        held, ci_img, ci_txt, ct_img, ct_txt = held_out_sets(studies, items.has_image, items.text_key, batch, generator)
        zi, hi, aux_i = study(pack_sets(items.dv_img, items.dv_txt, ci_img, ci_txt))
        zt, ht, aux_t = study(pack_sets(items.dv_img, items.dv_txt, ct_img, ct_txt))
        ok = torch.from_numpy(items.has_image[held])  # an image query needs an image
        h = torch.from_numpy(held)
        terms = {
            "study_hash": 0.5
            * (
                info_nce(items.h_img[h][ok], hi[ok], cfg.train.hash_temperature)
                + info_nce(items.h_txt[h], ht, cfg.train.hash_temperature)
            ),
            "study_token": 0.5
            * (
                info_nce(items.u[h][ok], zi[ok], cfg.train.temperature)
                + info_nce(items.v[h], zt, cfg.train.temperature)
            ),
            "gate": gate_loss(aux_i + aux_t, cfg.train.balance_weight, cfg.train.z_weight),
        }
        terms["total"] = (
            terms["study_hash"]
            + cfg.train.lambda_study_token * terms["study_token"]
            + cfg.train.lambda_gate * terms["gate"]
        )
        return terms

    @torch.no_grad()
    def dev_score(self, select_on: str) -> float:
        """Higher is better: dev mAP (dev items vs train studies) or minus the dev loss."""
        assert self.dev is not None and self.dev_studies is not None
        self.net.eval()
        if select_on == "dev_loss":
            batch = np.arange(len(self.dev_studies))
            gen = torch.Generator().manual_seed(DEV_SEED)
            return -float(self._loss(self.dev, self.dev_studies, batch, gen)["total"])
        assert self.net.study is not None and self.train_sets is not None and self.dev_rel is not None
        codes = self.net.study.codes(self.train_sets).numpy()
        rel = self.dev_rel
        q_img = (self.dev.h_img > 0).numpy()
        q_txt = (self.dev.h_txt > 0).numpy()
        has = self.dev.has_image
        i2s = map_all_tie_aware(hamming_distances(q_img[has], codes), rel[has]) if has.any() else 0.0
        t2s = map_all_tie_aware(hamming_distances(q_txt, codes), rel)
        return 0.5 * (i2s + t2s)
