"""Every MCMFH choice, typed (see ../shared/reference/mcmfh.md: the paper leaves them open), in two parts: the
architecture (``ModelConfig``: what builds the network and loads saved weights, as nanoGPT's GPTConfig) and the
training settings (``TrainConfig``: losses and their weights, optimisation, epochs, model choice, run control).

Options given to ``mcmfh.factory.create_method("mcmfh", bits, seed, **options)`` stay flat (``width=64``,
``lr=5e-4``): each name goes to the part that owns it; an unknown name or a wrong type is refused with the field
named. A saved config is ``{"model": {...}, "train": {...}}``; one saved before the split (flat) loads too.

The defaults are the recipe chosen on the MedPix 2.0 *dev* split, revised on the robustness suite (docs/model.md,
"Recipe revision"): batches of 128, no pair-distillation term, and a longer stage-2 floor for small training sets.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.options import parse_options

GateType = Literal["hybrid", "dense", "sparse"]
SingleRule = Literal["absent", "alone"]
Selection = Literal["dev_map", "dev_map_recall", "dev_loss", "last"]
Capacity = Literal["auto", "full", "small"]
# Upper bounds on the widths for a small training set (capacity "small", or "auto" below ``small_train_pairs``):
# about a tenth of the parameters. Not the default: +0.01-0.02 tie-aware mAP on MedPix subsets of 60 and 150 pairs
# but -0.03 on the 60-pair stress-panels set (docs/model.md, "Small archives and collapse").
SMALL_WIDTHS = {"dv_hidden": 128, "width": 64, "ffn_hidden": 64, "hash_hidden": 64}


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: every field here is read by the network's modules (``mcmfh.model.network``, ``fusion``,
    ``study``); dropout rates included, as the modules apply them."""

    # --- input preprocessing (fitted on train only, stored with the model) ---
    center: bool = True  # subtract the train mean of each modality
    whiten_dim: int = 0  # >0: PCA-whiten each modality to this many dims (a CCA-style start); 0 = off
    whiten_eps: float = 1e-3  # ridge added to PCA eigenvalues before whitening (relative to the largest)
    input_dropout: float = 0.3  # dropout on the (preprocessed) input features, training only
    # --- Dropout-Voting MLP (stage 1), one per modality ---
    dv_hidden: int = 512  # Linear(d_in, dv_hidden) -> GELU -> Dropout(dv_dropout) -> Linear(dv_hidden, width)
    width: int = 128  # shared token width d
    dv_dropout: float = 0.5  # p
    dv_votes: int = 8  # T stored masks; inference = mean of T masked passes
    dropout_voting: bool = True  # ablation "no-dv": False = plain MLP (eval pass, T = 1), trained on in stage 2
    # --- MoE fusion transformer over [image token, text token] ---
    layers: int = 2  # L
    heads: int = 4
    ffn_hidden: int = 128  # hidden width of each expert (and of the dense FFN of the no-MoE ablation)
    attn_dropout: float = 0.1
    ffn_dropout: float = 0.1
    use_moe: bool = True  # ablation "no-moe": False = one dense FFN per layer
    experts: int = 4  # E
    top_k: int = 2  # k
    gate: GateType = "hybrid"  # dense softmax / sparse top-k / hybrid = blend of the two
    gate_blend: float = 0.5  # hybrid weight of the dense gate: g = a * dense + (1 - a) * sparse
    router_noise: float = 0.0  # std of Gaussian noise on router logits in training (noisy top-k); 0 = off
    single_rule: SingleRule = "absent"  # missing modality = learned "absent" token, or the modality token alone
    modality_dropout: float = 0.5  # share of pairs whose pair-pass sees one token replaced by "absent"
    # --- hashing MLP, one per modality ---
    hash_hidden: int = 128
    hash_dropout: float = 0.1
    # --- study head (stage 3, model/study.py): trained only when the training data groups items into studies ---
    study_head: bool = True

    def validate(self) -> None:
        if self.width % self.heads:
            raise MCMFHError(f"mcmfh: width {self.width} must be divisible by heads {self.heads}")
        if self.use_moe and not 1 <= self.top_k <= self.experts:
            raise MCMFHError(f"mcmfh: top_k {self.top_k} must be in 1..experts ({self.experts})")
        if self.dropout_voting and self.dv_votes < 1:
            raise MCMFHError(f"mcmfh: dv_votes must be >= 1, got {self.dv_votes}")
        for name in ("input_dropout", "dv_dropout", "attn_dropout", "ffn_dropout", "hash_dropout", "modality_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MCMFHError(f"mcmfh: {name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.gate_blend <= 1.0:
            raise MCMFHError(f"mcmfh: gate_blend must be in [0, 1], got {self.gate_blend}")


@dataclass(frozen=True)
class TrainConfig:
    """How the network is fitted: read by the trainer (``mcmfh.model.trainer``, ``study_stage``) and the fit."""

    # --- capacity: the widths below ("full"), capped by SMALL_WIDTHS ("small"), or picked by the training set size ---
    capacity: Capacity = "full"
    small_train_pairs: int = 400  # a smaller training set is "small": SMALL_WIDTHS (capacity "auto")
    # --- losses ---
    temperature: float = 0.1  # InfoNCE on fused tokens (and stage 1)
    hash_temperature: float = 1.0  # contrastive loss on tanh hash outputs (cosine of 16-128 dims: a high τ)
    lambda_hash: float = 1.0  # λ_h
    lambda_gate: float = 0.01  # λ_g (ablation "no-gateloss": 0)
    balance_weight: float = 1.0  # inside L_gate: load-balancing E·Σ f_e·P_e
    z_weight: float = 0.1  # inside L_gate: router z-loss mean logsumexp²
    # Fusion distillation: single-modality tokens vs the fused pair token. Off by default: with it on, tie-aware
    # mAP was 0.01-0.02 lower on MedPix and on the demo set (docs/model.md, "Recipe revision").
    lambda_pair: float = 0.0
    lambda_quant: float = 0.0  # optional: quantisation term mean (|h| - 1)², off by default
    lambda_bit_balance: float = 0.0  # optional: each bit's batch mean pulled to 0, off by default
    lambda_decorrelation: float = 0.0  # optional: off-diagonal of HᵀH/N pulled to 0 (independent bits)
    lambda_label: float = 0.0  # optional, supervised: hash cosine vs shared-label similarity, off by default
    # --- supervised terms (``mcmfh-supervised``, docs/model.md "Supervised mode"): they read the training labels
    # of the feature cache's label set; an item without labels takes part in the unsupervised terms only ---
    label_soft: bool = False  # S = cosine of the multi-hot label vectors, not the shared-label indicator
    lambda_label_stage1: float = 0.0  # stage 1: label-weighted InfoNCE on the DV-MLP tokens
    lambda_label_contrast: float = 0.0  # stage 2: label-weighted InfoNCE on the fused tokens
    label_instance_share: float = 0.0  # share of those InfoNCE targets kept on the item's own pair
    lambda_label_pair: float = 0.0  # stage 2: DCMHT-form pairwise term on the hash outputs (cross + intra-modal)
    label_intra: float = 1.0  # weight of the intra-modal pairs inside lambda_label_pair's term
    label_margin: float = 0.0  # dissimilar pairs are pushed below this cosine
    label_pos_margin: float = 1.0  # similar pairs are pulled up to this cosine (DCMHT: 1)
    lambda_label_proxy: float = 0.0  # stage 2: DSPH-form class proxies in hash space (trained with the heads)
    label_delta: float = 0.0  # proxy term: other labels' proxies pushed below this cosine
    # Optional: UCCH's contrast of each hash output against the other modality's binary codes of the whole training
    # set (a memory bank, refreshed from the model at every stage-2 epoch), off by default (docs/model.md).
    lambda_bank: float = 0.0
    bank_temperature: float = 0.3
    # The hash contrast on the codes themselves: sign(h) forward, the tanh's gradient backward (straight-through), so
    # the loss sees two items that share a code. Off: the relaxed tanh outputs (the recipe chosen on MedPix dev).
    hash_on_codes: bool = False
    # Collapse rescue: a stage-2 pass whose codes (train + dev) were collapsed on more than this share of its
    # evaluated epochs is followed by a second pass from the same start with ``hash_on_codes``, and model choice
    # (health first, then the dev score) takes the better of the two passes; 0 = never. On vqa_rad the default pass
    # was collapsed on 84% of its epochs over 9 seeds (one seed on all 48), the pass on codes on 49% (none on all);
    # on the MedPix subsets and the stress sets almost no epoch collapses, so the rule never fires there
    # (docs/model.md, "Collapse rescue").
    rescue_collapsed_share: float = 0.5
    # Stage 2 on "vote views": at each step every item's DV token is the mean of this many of its T stored votes,
    # drawn anew, over its input with input dropout (0 = the full vote, which inference always uses): T views of a
    # pair where pairs are few. Below 400 pairs it raised tie-aware mAP and held paired recall on MedPix 60 / 150 /
    # 300 pairs, vqa_rad and both stress sets, a dominant tag or not. From 400 to 1,000 pairs it still raised label
    # mAP (+0.01-0.03) but left fewer distinct codes, and paired recall fell where one tag dominates (746 pairs, one
    # tag on 70%: text->image R@10 0.525 -> 0.443, behind CCA-ITQ), so there it is used only when no tag is on
    # ``view_dominant_share`` of the labelled training items; on full MedPix it bought nothing (docs/model.md,
    # "Where the views stop").
    view_train_pairs: int = 400  # fits on fewer pairs: small_vote_views
    view_spread_pairs: int = 1000  # fits on fewer (and view_train_pairs or more): small_vote_views if no tag dominates
    view_dominant_share: float = 0.6  # a tag on this share of the labelled training items or more dominates
    vote_views: int = 0  # every other fit
    small_vote_views: int = 1
    epochs_stage3: int = 12
    min_steps_stage3: int = 96
    study_batch: int = 64  # studies per batch (each with one held-out member as its image and text query)
    lambda_study_token: float = 1.0  # InfoNCE of study tokens vs the queries' fused tokens (the continuous space)
    # --- optimisation ---
    lr: float = 1e-3
    weight_decay: float = 1e-2
    epochs_stage1: int = 8
    epochs_stage2: int = 12
    # A floor on optimiser steps per stage: a small training set gets more epochs. MedPix 2.0 (13 batches of 128 per
    # epoch) is above both floors; the demo set (420 pairs, 4 batches) gets 24 stage-2 epochs.
    min_steps_stage1: int = 32
    min_steps_stage2: int = 96
    # 128 rather than 512 (one batch for small training sets): higher tie-aware mAP in every robustness setting
    # (docs/model.md, "Recipe revision").
    batch_size: int = 128
    select_on: Selection = "dev_map"  # epoch choice per stage: dev mAP (dev queries vs train database), or last
    # Stage 1 trains the pairing space (InfoNCE) that stage 2 builds on: its epoch is chosen on dev mAP only among the
    # epochs from the last minimum of its dev InfoNCE on (an earlier epoch is still under-trained for pairing). With a
    # few coarse labels dev mAP peaks at stage-1 epoch 1 (MedPix coarse labels: stage 2's codes then collapsed on half
    # its epochs and paired R@10 fell to 0.254 / 0.212); on MedPix's fine labels the choice is unchanged
    # (docs/model.md, "Stage 1 chosen after its pairing minimum").
    stage1_after_pairing_minimum: bool = True
    eval_every: int = 1  # epochs between dev evaluations
    num_threads: int = 0  # >0: torch.set_num_threads for the fit; 0 = leave as is
    checkpoint_dir: str = ""  # non-empty: resumable fit writes its checkpoint here

    def validate(self) -> None:
        if self.temperature <= 0 or self.hash_temperature <= 0 or self.bank_temperature <= 0:
            raise MCMFHError("mcmfh: temperatures must be > 0")
        if self.vote_views < 0 or self.small_vote_views < 0:
            raise MCMFHError("mcmfh: vote_views and small_vote_views must be >= 0 (0 = the full vote)")
        if min(self.view_train_pairs, self.view_spread_pairs, self.small_train_pairs) < 0:
            raise MCMFHError(
                "mcmfh: view_train_pairs, view_spread_pairs and small_train_pairs must be >= 0 (training pairs)"
            )
        if not 0.0 <= self.rescue_collapsed_share <= 1.0:
            raise MCMFHError(f"mcmfh: rescue_collapsed_share must be in [0, 1], got {self.rescue_collapsed_share}")
        if not 0.0 < self.view_dominant_share <= 1.0:
            raise MCMFHError(f"mcmfh: view_dominant_share must be in (0, 1], got {self.view_dominant_share}")

    def views_for(self, n_train: int, top_tag_share: float) -> int:
        """Votes per stage-2 training view (0 = the full vote) for a fit on ``n_train`` pairs whose most frequent tag
        is on ``top_tag_share`` of the labelled training items (``top_tag_share``)."""
        small = n_train < self.view_train_pairs or (
            n_train < self.view_spread_pairs and top_tag_share < self.view_dominant_share
        )
        return self.small_vote_views if small else self.vote_views


def top_tag_share(labels: np.ndarray) -> float:
    """Share of the labelled items (a non-zero multi-hot row) that carry the most frequent tag; 0 with none."""
    tagged = np.asarray(labels) > 0
    labelled = tagged[tagged.any(axis=1)]
    return float(labelled.mean(axis=0).max()) if len(labelled) else 0.0


PARTS = {"model": ModelConfig, "train": TrainConfig}
RUN_ONLY = ("num_threads", "checkpoint_dir")  # training fields that do not shape the fitted arrays


@dataclass(frozen=True)
class MCMFHConfig:
    """The architecture (``model``) and the training settings (``train``) of one MCMFH fit."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_options(cls, **options: Any) -> MCMFHConfig:
        """The config with flat ``options`` (keyword arguments, YAML values or CLI strings) over the defaults, each
        to the part that owns it (``mcmfh.options.parse_options``: unknown names and wrong types refused)."""
        parsed = parse_options(_FlatOptions, options, "mcmfh")
        cfg = cls(**{part: kind(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(kind)})
                     for part, kind in PARTS.items()})  # fmt: skip
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()

    def sized_for(self, n_train: int) -> MCMFHConfig:
        """The config a fit on ``n_train`` pairs uses: capacity resolved to "full" or "small" (its widths set)."""
        t = self.train
        small = t.capacity == "small" or (t.capacity == "auto" and n_train < t.small_train_pairs)
        if not small:
            return dataclasses.replace(self, train=dataclasses.replace(t, capacity="full"))
        # Capped, not set: widths already below SMALL_WIDTHS (a tiny test config) stay as given.
        widths = {k: min(v, getattr(self.model, k)) for k, v in SMALL_WIDTHS.items()}
        return MCMFHConfig(dataclasses.replace(self.model, **widths), dataclasses.replace(t, capacity="small"))

    def saved(self) -> dict[str, Any]:
        """What a fitted model saves: both parts, without the run-only fields (``RUN_ONLY``)."""
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in RUN_ONLY}
        return {"model": dataclasses.asdict(self.model), "train": train}

    def model_fields(self) -> dict[str, Any]:
        """Every field that shapes the fitted arrays, flat (a checkpoint and a saved model must match them)."""
        return flat_fields(self.saved())


def flat_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config's fields by name, from the nested form or the flat one (saved before the split)."""
    if set(saved) <= set(PARTS):
        return {k: v for part in PARTS if part in saved for k, v in saved[part].items()}
    return dict(saved)


# Every option name, flat, so the one coercer (mcmfh.options) checks and types them all in one pass.
_FlatOptions = dataclasses.make_dataclass(
    "MCMFHOptions",
    [(f.name, typing.get_type_hints(kind)[f.name], field(default=f.default))
     for kind in PARTS.values() for f in dataclasses.fields(kind)],
)  # fmt: skip
