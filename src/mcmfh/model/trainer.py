"""Two-stage MCMFH training, seeded and resumable.

Stage 1: the two DV-MLPs alone, symmetric InfoNCE between modalities (+ its label-weighted form in supervised
    mode, ``lambda_label_stage1``); then frozen with their T vote masks drawn.
Stage 2: fusion transformer + hashing heads (+ the DV-MLPs in the no-dv ablation) on
    L = L_fusion + λ_pair·L_pair + λ_h·L_hash + λ_g·L_gate (+ optional quantisation, bit-balance, label terms)
  L_fusion: InfoNCE between the fused image token (image alone) and the fused text token (text alone): the tokens
            inference uses. L_pair: each of them against the fused *pair* token (mean of the two output tokens of
            the [image, text] pass, with modality dropout): the fused pair teaches the single-modality paths.
  L_hash:   contrastive loss on the tanh outputs of the hashing heads.   L_gate: the hybrid gating loss.
  On a small training set (``TrainConfig.views_for``: its size, and whether one tag dominates it) each step sees an
  item's DV token as one of its T stored votes (or the mean of a few), drawn anew, over its input with input
  dropout: T views of a pair where pairs are few. Dev choice and inference use the full vote.
Stage 3 (only when the training split groups items into studies, ``study_head`` on): the study encoder
  (``mcmfh.model.study``) with everything else frozen, so image and text codes are exactly those of a fit without
  studies; its loss and dev score are ``mcmfh.model.study_stage``'s.
Model choice (``select_on``): per stage, the epoch with the best dev tie-aware mAP@all (dev queries vs the train set as
database, both directions averaged; cosine on DV outputs in stage 1, Hamming on codes in stage 2), or the lowest dev
loss, or simply the last epoch. The test split is never seen here.
Resume: with ``checkpoint_dir`` set, the full training state (weights, best weights, optimiser, RNG states,
history) is written atomically as one safetensors file after every epoch; a new fit with the same config, seed and
training data continues from it and ends with exactly the result of an uninterrupted fit.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from mcmfh.errors import ArtefactError
from mcmfh.io import atomic_write_bytes
from mcmfh.manifest import fingerprint
from mcmfh.model.config import MCMFHConfig, top_tag_share
from mcmfh.model.fusion import IMAGE, TEXT
from mcmfh.model.network import MCMFHNet
from mcmfh.model.study_stage import ItemTokens, StudyStage
from mcmfh.progress import SILENT, Progress
from mcmfh.studies import Studies
from mcmfh.training.losses import (
    bank_contrastive_loss,
    bit_balance_loss,
    bit_decorrelation_loss,
    gate_loss,
    hash_contrastive_loss,
    info_nce,
    label_contrastive_loss,
    label_pair_loss,
    label_similarity_loss,
    proxy_loss,
    quantization_loss,
    straight_through_sign,
)
from mcmfh.training.selection import SCORES, DevEvaluation, collapsed_share, evaluate_dev

CHECKPOINT_NAME = "mcmfh-fit.safetensors"
EpochCallback = Callable[[int, int], None]  # (stage, epoch) after each finished epoch


@dataclass
class Split:
    image: torch.Tensor
    text: torch.Tensor
    labels: np.ndarray
    study: np.ndarray | None = None  # per item, its study id (stage 3 runs when the training split has them)

    def __len__(self) -> int:
        return int(self.image.shape[0])


class Trainer:
    def __init__(
        self,
        net: MCMFHNet,
        cfg: MCMFHConfig,
        seed: int,
        train: Split,
        dev: Split | None,
        run_key: str,
        callback: EpochCallback | None = None,
    ) -> None:
        self.net, self.cfg, self.train, self.dev, self.callback = net, cfg, train, dev, callback
        self.gen = torch.Generator().manual_seed(seed)
        self.run_key = run_key
        self.tokens_cached = False
        self.cached: Split | None = None  # stage 2: the train set's frozen DV-MLP outputs
        # lambda_bank: the training set's ±1 codes per modality (refreshed each stage-2 epoch) and the batch's rows
        self.bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batch_index: torch.Tensor | None = None
        self.studies: StudyStage | None = None  # stage 3's data, once stage 2 is done
        # lambda_label_proxy: one learnable proxy per label in hash space, trained in stage 2 only (never saved with
        # the model: codes do not use them); drawn from the run's generator, so seeded.
        self.proxies: torch.nn.Parameter | None = None
        if cfg.train.lambda_label_proxy > 0:
            bits = net.hash_img.net[-1].out_features
            self.proxies = torch.nn.Parameter(torch.randn(train.labels.shape[1], bits, generator=self.gen))
        self.views = cfg.train.views_for(len(train), top_tag_share(train.labels))  # stage 2's votes per view
        self.on_codes = cfg.train.hash_on_codes  # the hash contrast on sign(h) (on in a collapse rescue pass)
        # Collapse rescue (``_run_stage2``): the stage-2 start, and the first pass's log and chosen weights while the
        # second pass runs; both are saved in the checkpoint so a killed rescue resumes exactly.
        self.stage2_start: dict[str, torch.Tensor] | None = None
        self.first_pass: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
        self.ckpt = Path(cfg.train.checkpoint_dir) / CHECKPOINT_NAME if cfg.train.checkpoint_dir else None
        self.progress: Progress = SILENT  # epochs with their dev score, as they finish
        has_dev_labels = dev is not None and len(dev) > 0 and bool(dev.labels.any())
        self.select_on = cfg.train.select_on
        if cfg.train.select_on in SCORES and not has_dev_labels or cfg.train.select_on == "dev_loss" and not dev:
            self.select_on = "last"  # nothing to choose on: the fixed recipe's last epoch

    # ---------------------------------------------------------------- losses
    def stage1_loss(self, data: Split, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ti, tt = self.net.dv_tokens(data.image[idx], data.text[idx])
        loss = info_nce(ti, tt, self.cfg.train.temperature)
        terms = {"fusion": loss}
        if self.cfg.train.lambda_label_stage1 > 0:
            lab = torch.from_numpy(data.labels[idx.numpy()])
            cfg = self.cfg
            terms["label"] = label_contrastive_loss(
                ti, tt, lab, cfg.train.temperature, cfg.train.label_soft, cfg.train.label_instance_share
            )
            loss = loss + self.cfg.train.lambda_label_stage1 * terms["label"]
        return {"total": loss, **terms}

    def stage2_loss(self, data: Split, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, net = self.cfg, self.net
        labels = data.labels[idx.numpy()]
        # With the DV-MLP frozen its (deterministic) vote outputs are computed once per stage: ``data`` then holds DV
        # tokens. Input dropout therefore acts in stage 1, in the vote views of a small training set, and throughout
        # for the no-dv ablation.
        views = self.views if self.tokens_cached and net.training else 0
        if views:
            with torch.no_grad():
                ti, tt = net.vote_views(self.train.image[idx], self.train.text[idx], views, self.gen)
        elif self.tokens_cached:
            ti, tt = data.image[idx], data.text[idx]
        else:
            ti, tt = net.dv_tokens(data.image[idx], data.text[idx])
        u, aux_u = net.fusion.encode_single(ti, IMAGE)
        v, aux_v = net.fusion.encode_single(tt, TEXT)
        aux = aux_u + aux_v
        terms = {"fusion": info_nce(u, v, cfg.train.temperature)}
        if cfg.train.lambda_pair > 0:
            pair_n_2_d, aux_p = net.fusion.encode_pair(ti, tt, self.gen)
            z = pair_n_2_d.mean(dim=1)
            terms["pair"] = 0.5 * (info_nce(u, z, cfg.train.temperature) + info_nce(v, z, cfg.train.temperature))
            aux = aux + aux_p
        hi, ht = net.hash_img(u), net.hash_txt(v)
        coded = (straight_through_sign(hi), straight_through_sign(ht)) if self.on_codes else (hi, ht)
        terms["hash"] = hash_contrastive_loss(*coded, cfg.train.hash_temperature)  # the other terms keep tanh outputs
        terms["gate"] = gate_loss(aux, cfg.train.balance_weight, cfg.train.z_weight)
        weights = {"fusion": 1.0, "hash": cfg.train.lambda_hash, "gate": cfg.train.lambda_gate}
        if "pair" in terms:
            weights["pair"] = cfg.train.lambda_pair
        if cfg.train.lambda_quant > 0:
            terms["quant"] = 0.5 * (quantization_loss(hi) + quantization_loss(ht))
            weights["quant"] = cfg.train.lambda_quant
        if cfg.train.lambda_bit_balance > 0:
            terms["bit_balance"] = 0.5 * (bit_balance_loss(hi) + bit_balance_loss(ht))
            weights["bit_balance"] = cfg.train.lambda_bit_balance
        if cfg.train.lambda_decorrelation > 0:
            terms["decorrelation"] = 0.5 * (bit_decorrelation_loss(hi) + bit_decorrelation_loss(ht))
            weights["decorrelation"] = cfg.train.lambda_decorrelation
        if cfg.train.lambda_bank > 0 and self.bank is not None and self.batch_index is not None:
            bank_img, bank_txt = self.bank
            idx, tau = self.batch_index, cfg.train.bank_temperature
            terms["bank"] = 0.5 * (
                bank_contrastive_loss(hi, bank_txt, idx, tau) + bank_contrastive_loss(ht, bank_img, idx, tau)
            )
            weights["bank"] = cfg.train.lambda_bank
        lab = torch.from_numpy(labels)
        if cfg.train.lambda_label > 0:
            terms["label"] = label_similarity_loss(hi, ht, lab, lab)
            weights["label"] = cfg.train.lambda_label
        if cfg.train.lambda_label_contrast > 0:
            terms["label_contrast"] = label_contrastive_loss(
                u, v, lab, cfg.train.temperature, cfg.train.label_soft, cfg.train.label_instance_share
            )
            weights["label_contrast"] = cfg.train.lambda_label_contrast
        if cfg.train.lambda_label_pair > 0:
            terms["label_pair"] = label_pair_loss(
                hi,
                ht,
                lab,
                cfg.train.label_intra,
                cfg.train.label_margin,
                cfg.train.label_soft,
                cfg.train.label_pos_margin,
            )
            weights["label_pair"] = cfg.train.lambda_label_pair
        if self.proxies is not None:
            terms["label_proxy"] = 0.5 * (proxy_loss(hi, self.proxies, lab, cfg.train.label_delta)
                                          + proxy_loss(ht, self.proxies, lab, cfg.train.label_delta))  # fmt: skip
            weights["label_proxy"] = cfg.train.lambda_label_proxy
        terms["total"] = sum(weights[k] * terms[k] for k in weights)
        return terms

    def stage3_loss(self, data: StudyStage, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return data.loss(idx, self.gen)

    # ---------------------------------------------------------------- dev scores (higher is better)
    @torch.no_grad()
    def _dev_evaluation(self, stage: int) -> DevEvaluation:
        """Dev queries vs the train set (mcmfh.training.selection): cosine on DV outputs in stage 1, Hamming on codes in
        stage 2, where the codes' health is part of the choice."""
        assert self.dev is not None
        self.net.eval()
        if stage == 1:
            q_img, q_txt = (t.numpy() for t in self.net.dv_tokens(self.dev.image, self.dev.text))
            db_img, db_txt = (t.numpy() for t in self.net.dv_tokens(self.train.image, self.train.text))
            binary = False
        else:
            q_img, q_txt = self.net.image_codes(self.dev.image).numpy(), self.net.text_codes(self.dev.text).numpy()
            if (
                self.tokens_cached and self.cached is not None
            ):  # frozen DV-MLP: the train set's vote outputs were computed once (same values)
                db_img = self.net.hash_img.codes(self.net.fusion.encode_single(self.cached.image, IMAGE)[0]).numpy()
                db_txt = self.net.hash_txt.codes(self.net.fusion.encode_single(self.cached.text, TEXT)[0]).numpy()
            else:
                db_img = self.net.image_codes(self.train.image).numpy()
                db_txt = self.net.text_codes(self.train.text).numpy()
            q_img, q_txt, db_img, db_txt = (c > 0 for c in (q_img, q_txt, db_img, db_txt))
            binary = True
        return evaluate_dev(
            (q_img, q_txt),
            (db_img, db_txt),
            (self.dev.labels, self.train.labels),
            (self.dev.text.numpy(), self.train.text.numpy()),
            binary,
            self.select_on,
            (self.dev.image.numpy(), self.train.image.numpy()),
        )

    @torch.no_grad()
    def _bank_codes(self, data: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """±1 codes of every training item under the current model (the memory bank of ``lambda_bank``)."""
        was_training = self.net.training
        self.net.eval()
        ti, tt = (data.image, data.text) if self.tokens_cached else self.net.dv_tokens(data.image, data.text)
        codes = (self.net.hash_img.codes(self.net.fusion.encode_single(ti, IMAGE)[0]),
                 self.net.hash_txt.codes(self.net.fusion.encode_single(tt, TEXT)[0]))  # fmt: skip
        self.net.train(was_training)
        return tuple(c.float() * 2 - 1 for c in codes)  # type: ignore[return-value]

    def _dev_score(self, stage: int, loss_fn: Callable[..., dict[str, torch.Tensor]]) -> DevEvaluation:
        if stage == 3 and self.studies is not None:
            return DevEvaluation(self.studies.dev_score(self.select_on))
        if self.select_on in SCORES:
            return self._dev_evaluation(stage)
        assert self.dev is not None
        self.net.eval()
        dev = self.dev
        if self.tokens_cached:
            dev = Split(*self.net.dv_tokens(dev.image, dev.text), dev.labels)  # type: ignore[arg-type]
        return DevEvaluation(-float(loss_fn(dev, torch.arange(len(dev)))["total"].detach()))

    def _pairing_minimum(self, row: dict[str, Any], state: dict[str, Any]) -> bool:
        """Stage 1: is this epoch's dev InfoNCE (the pairing term alone, label-free) a new minimum? Logged in ``row``
        and kept in ``state`` (checkpointed); always False when the rule is off or there is no dev split."""
        if not self.cfg.train.stage1_after_pairing_minimum or self.dev is None or self.select_on not in SCORES:
            return False
        loss = self._dev_pairing_loss()
        row["dev_pairing_loss"] = round(loss, 5)
        best = state.get("best_pairing_loss")
        if best is not None and loss >= best:
            return False
        state["best_pairing_loss"] = loss
        return True

    @torch.no_grad()
    def _dev_pairing_loss(self) -> float:
        """Stage 1's pairing objective on the dev pairs as one batch: InfoNCE of their DV outputs."""
        assert self.dev is not None
        self.net.eval()
        return float(info_nce(*self.net.dv_tokens(self.dev.image, self.dev.text), self.cfg.train.temperature))

    # ---------------------------------------------------------------- the loop
    def run_stage(
        self,
        stage: int,
        params: Iterable[torch.nn.Parameter],
        epochs: int,
        saved: tuple[dict[str, str], dict[str, torch.Tensor]] | None = None,
        data: Any = None,
    ) -> dict[str, Any]:
        """One stage's epochs over ``data`` (a Split, or stage 3's StudyStage), with dev choice and checkpoints."""
        cfg, net = self.cfg, self.net
        data = data or self.train
        loss_fn = {1: self.stage1_loss, 2: self.stage2_loss, 3: self.stage3_loss}[stage]
        opt = torch.optim.AdamW(list(params), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        state = {"epoch": 0, "best_score": -np.inf, "best_epoch": 0, "best_healthy": False, "history": []}
        best = {k: v.clone() for k, v in net.state_dict().items()}
        resumed = self._restore(saved, opt, best, state) if saved is not None else None
        n = len(data)
        n_batches = max(1, -(-n // (cfg.train.study_batch if stage == 3 else cfg.train.batch_size)))
        min_steps = {1: cfg.train.min_steps_stage1, 2: cfg.train.min_steps_stage2, 3: cfg.train.min_steps_stage3}[stage]
        if epochs > 0:
            epochs = max(epochs, -(-min_steps // n_batches))  # the step floor: see TrainConfig.min_steps_stage*
        task = self.progress.task(f"train stage {stage}", total=epochs, unit="epoch", initial=state["epoch"])
        for epoch in range(state["epoch"], epochs):
            if stage == 2 and cfg.train.lambda_bank > 0:
                self.bank = self._bank_codes(data)  # from the model as it starts the epoch: deterministic on resume
            net.train()
            perm = torch.randperm(n, generator=self.gen)
            sums: dict[str, float] = {}
            for idx in torch.tensor_split(perm, n_batches):
                self.batch_index = idx
                terms = loss_fn(data, idx)
                opt.zero_grad()
                terms["total"].backward()
                opt.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / n_batches
            row: dict[str, Any] = {"epoch": epoch + 1, **{f"loss_{k}": round(v, 5) for k, v in sums.items()}}
            if self.select_on != "last" and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs):
                ev = self._dev_score(stage, loss_fn)
                row["dev_score"] = ev.score
                row.update(ev.figures)
                held = DevEvaluation(state["best_score"], state["best_healthy"]) if state["best_epoch"] else None
                if stage == 1 and self._pairing_minimum(row, state):
                    held = None  # TrainConfig.stage1_after_pairing_minimum: the epochs before this one are out
                if ev.beats(held):  # mcmfh.training.selection: healthy codes first, then the score
                    state["best_score"], state["best_epoch"], state["best_healthy"] = ev.score, epoch + 1, ev.healthy
                    best = {k: v.clone() for k, v in net.state_dict().items()}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            self._save_checkpoint(stage, opt, best, state)
            if self.callback is not None:
                self.callback(stage, epoch + 1)
            task.update(1, dev=row.get("dev_score"), best=state["best_epoch"] or None)
        task.close()
        self.batch_index, self.bank = None, None  # dev evaluations and later stages see no bank term
        if self.select_on != "last" and epochs > 0:
            net.load_state_dict(best)
        else:
            state["best_epoch"] = epochs
        net.eval()
        chosen = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
        return {
            "epochs": epochs,
            "chosen_epoch": state["best_epoch"],
            "dev_score": None if self.select_on == "last" else state["best_score"],
            "collapsed": bool(chosen.get("collapsed", False)),
            "resumed_at_epoch": resumed,
            "history": state["history"],
        }

    def run(self) -> dict[str, Any]:
        cfg, net = self.cfg, self.net
        t0 = time.perf_counter()
        log: dict[str, Any] = {"selection": self.select_on, "selection_split": "dev (queries) vs train (database)",
                               "vote_views": self.views}  # fmt: skip
        dv_params = [*net.dv_img.parameters(), *net.dv_txt.parameters()]
        saved = self._read_checkpoint()
        if saved is not None and saved[0]["stage"] in ("2", "3"):
            log["stage1"] = json.loads(saved[0]["stage1_log"])  # stage 1 finished before the interruption
            self._load_net(saved[1], "net.")  # its DV-MLP weights and drawn masks, before tokens are cached
        else:
            log["stage1"] = self.run_stage(1, dv_params, cfg.train.epochs_stage1, saved)
        # Freeze with masks from the run's generator: drawn once, stored as buffers, saved with the model.
        net.dv_img.freeze(self.gen)
        net.dv_txt.freeze(self.gen)
        self.stage1_log = log["stage1"]
        stage2 = [p for name, p in net.named_parameters() if p.requires_grad and not name.startswith("dv_")]
        if self.proxies is not None:
            stage2.append(self.proxies)
        if not cfg.model.dropout_voting:
            stage2 += dv_params  # no-dv ablation: the plain MLP keeps training with the rest
        resume2 = saved if saved is not None and saved[0]["stage"] == "2" else None
        data2 = None
        if net.dv_img.frozen:
            with torch.no_grad():
                net.eval()
                tok_img, tok_txt = net.dv_tokens(self.train.image, self.train.text)
            data2, self.tokens_cached = Split(tok_img, tok_txt, self.train.labels), True
            self.cached = data2
        if saved is not None and saved[0]["stage"] == "3":
            log["stage2"] = json.loads(saved[0]["stage2_log"])  # stage 2 finished before the interruption
        else:
            log["stage2"] = self._run_stage2(stage2, resume2, data2)
        self.tokens_cached = False
        self.stage2_log = log["stage2"]
        if net.study is not None and self.train.study is not None:
            log["stage3"] = self._run_studies(saved if saved is not None and saved[0]["stage"] == "3" else None)
        log["train_seconds"] = round(time.perf_counter() - t0, 3)
        return log

    def _snapshot(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        if self.proxies is not None:
            state["label.proxies"] = self.proxies.detach().clone()
        return state

    def _load_snapshot(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict({k: v for k, v in state.items() if k != "label.proxies"})
        if self.proxies is not None:
            with torch.no_grad():
                self.proxies.copy_(state["label.proxies"])

    def _run_stage2(
        self,
        params: list[torch.nn.Parameter],
        saved: tuple[dict[str, str], dict[str, torch.Tensor]] | None,
        data: Split | None,
    ) -> dict[str, Any]:
        """Stage 2, and its collapse rescue: when the codes were collapsed on more than ``rescue_collapsed_share`` of
        the pass's evaluated epochs, health-first choice had few healthy epochs (or none) to pick from, so a second
        pass from the same start trains the hash contrast on the codes (``hash_on_codes``), and the better of the
        two passes' chosen epochs is kept by the same rule (mcmfh.training.selection: health first, then the dev
        score; a tie keeps the first pass)."""
        epochs = self.cfg.train.epochs_stage2
        if saved is not None and saved[0].get("stage2_first_log", "null") != "null":
            meta, tensors = saved  # killed in the rescue pass: the first pass is done and saved with it
            self.first_pass = (json.loads(meta["stage2_first_log"]),
                               {k[6:]: v for k, v in tensors.items() if k.startswith("first.")})  # fmt: skip
        else:
            limit = self.cfg.train.rescue_collapsed_share
            # Only a fit that can be rescued keeps its start (and writes it with every checkpoint): health is read on
            # the dev evaluation's codes, and a fit already on codes has no other pass to try.
            can_rescue = bool(limit) and not self.on_codes and self.select_on in SCORES
            if can_rescue and saved is None:
                self.stage2_start = self._snapshot()
            elif can_rescue:  # resumed in the first pass: its start was saved with it
                self.stage2_start = {k[6:]: v for k, v in saved[1].items() if k.startswith("start.")} or None
            first = self.run_stage(2, params, epochs, saved, data)
            share = collapsed_share(first["history"])
            if self.stage2_start is None or share is None or share <= limit:
                self.stage2_start = None
                return first
            self.first_pass = (first, self._snapshot())
            self._load_snapshot(self.stage2_start)
            saved = None
        self.stage2_start, self.on_codes = None, True
        first_log, first_best = self.first_pass
        second = self.run_stage(2, params, epochs, saved, data)
        self.first_pass, self.on_codes = None, self.cfg.train.hash_on_codes
        held = DevEvaluation(first_log["dev_score"], not first_log["collapsed"])
        use_second = DevEvaluation(second["dev_score"], not second["collapsed"]).beats(held)
        if not use_second:
            self._load_snapshot(first_best)
        chosen = second if use_second else first_log
        rescue = {"collapsed_share": collapsed_share(first_log["history"]), "chosen": use_second, **second}
        return {**first_log, **{k: chosen[k] for k in ("chosen_epoch", "dev_score", "collapsed")}, "rescue": rescue}

    def _run_studies(self, saved: tuple[dict[str, str], dict[str, torch.Tensor]] | None) -> dict[str, Any]:
        """Stage 3: the study encoder, started from the trained item fusion transformer, everything else frozen."""
        net, study = self.net, self.net.study
        assert study is not None and self.train.study is not None
        if saved is None:
            study.fusion.load_state_dict(net.fusion.state_dict())
        has = np.ones(len(self.train), dtype=bool)  # training splits hold pairs only (MCMFH.fit)
        train = ItemTokens.of(net, self.train.image, self.train.text, has, self.train.labels)
        dev = dev_studies = None
        if self.dev is not None and len(self.dev) and self.dev.study is not None:
            dev = ItemTokens.of(net, self.dev.image, self.dev.text, np.ones(len(self.dev), bool), self.dev.labels)
            dev_studies = Studies.group(self.dev.study)
        self.studies = StudyStage(net, self.cfg, train, Studies.group(self.train.study), dev, dev_studies)
        select_on = self.select_on
        if dev is None and select_on != "last":
            self.select_on = "last"  # no dev studies to choose on
        try:
            return self.run_stage(3, study.parameters(), self.cfg.train.epochs_stage3, saved, self.studies)
        finally:
            self.select_on, self.studies = select_on, None

    # ---------------------------------------------------------------- checkpoint (one atomic safetensors file)
    def _save_checkpoint(self, stage: int, opt: torch.optim.Optimizer, best: dict, state: dict) -> None:
        if self.ckpt is None:
            return
        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors |= {f"best.{k}": v.contiguous() for k, v in best.items()}
        opt_state = opt.state_dict()
        for i, st in opt_state["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).contiguous()
        if self.proxies is not None:
            tensors["label.proxies"] = self.proxies.detach().contiguous()
        if stage == 2 and self.stage2_start is not None:  # a rescue pass would start here
            tensors |= {f"start.{k}": v.contiguous() for k, v in self.stage2_start.items()}
        if stage == 2 and self.first_pass is not None:  # in the rescue pass: the first pass's result
            tensors |= {f"first.{k}": v.contiguous() for k, v in self.first_pass[1].items()}
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.gen"] = self.gen.get_state()
        meta = {
            "run_key": self.run_key,
            "stage": str(stage),
            "state": json.dumps({**state, "best_score": float(state["best_score"])}),
            "param_groups": json.dumps(opt_state["param_groups"]),
            "stage1_log": json.dumps(getattr(self, "stage1_log", None)),
            "stage2_log": json.dumps(getattr(self, "stage2_log", None)),
            "stage2_first_log": json.dumps(self.first_pass[0] if stage == 2 and self.first_pass else None),
        }
        atomic_write_bytes(self.ckpt, st_save(tensors, metadata=meta))

    def _read_checkpoint(self) -> tuple[dict[str, str], dict[str, torch.Tensor]] | None:
        if self.ckpt is None or not self.ckpt.is_file():
            return None
        try:
            with safe_open(str(self.ckpt), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
            raise ArtefactError(f"{self.ckpt}: unreadable training checkpoint ({e}); delete it to start over") from e
        if meta.get("run_key") != self.run_key:
            raise ArtefactError(
                f"{self.ckpt}: checkpoint of another run (config, seed, bits or training data differ); "
                "use another checkpoint_dir or delete it"
            )
        return meta, tensors

    def _restore(
        self, saved: tuple[dict[str, str], dict[str, torch.Tensor]], opt: torch.optim.Optimizer, best: dict, state: dict
    ) -> int:
        """Put a stage in progress back exactly as it was after its last finished epoch; returns that epoch."""
        meta, tensors = saved
        self._load_net(tensors, "net.")
        if self.proxies is not None and "label.proxies" in tensors:
            with torch.no_grad():
                self.proxies.copy_(tensors["label.proxies"])
        best.update({k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
        opt_state: dict[str, Any] = {"state": {}, "param_groups": json.loads(meta["param_groups"])}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state["state"].setdefault(int(i), {})[name] = v
        opt.load_state_dict(opt_state)
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.gen"])
        state.update(json.loads(meta["state"]))
        return int(state["epoch"])

    def _load_net(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        for module in (self.net.dv_img, self.net.dv_txt):  # masks may be empty (stage 1) or drawn (stage 2)
            key = "dv_img.masks" if module is self.net.dv_img else "dv_txt.masks"
            module.masks = own[key].clone()
            if module.frozen:
                for p in module.parameters():
                    p.requires_grad_(False)
        self.net.load_state_dict(own)


def rescue_line(log: dict[str, Any]) -> str | None:
    """One line on a fit's collapse rescue (``Trainer._run_stage2``), or None when it did not run."""
    stage2 = log.get("stage2")
    rescue = stage2.get("rescue") if isinstance(stage2, dict) else None
    if not rescue:
        return None
    evaluated = [r for r in log["stage2"]["history"] if "collapsed" in r]
    collapsed = sum(bool(r["collapsed"]) for r in evaluated)
    kept = "the second pass (hash contrast on the codes)" if rescue["chosen"] else "the first pass"
    state = "collapsed" if log["stage2"]["collapsed"] else "healthy"
    return (
        f"note: stage 2's codes were collapsed on {collapsed} of its {len(evaluated)} evaluated epochs; a second pass "
        f"trained the hash contrast on the codes and {kept} was kept (health first, then dev score): {state}"
    )


def run_key(cfg: MCMFHConfig, seed: int, bits: int, train_image: np.ndarray, train_text: np.ndarray) -> str:
    """Identity of a fit: a checkpoint is only resumed by the same config, seed, bits and training data."""
    data = hashlib.sha256(np.ascontiguousarray(train_image).tobytes() + np.ascontiguousarray(train_text).tobytes())
    return fingerprint(cfg.model_fields(), seed, bits, data.hexdigest())
