"""Study codes: one code per study (exam, case) from the fusion transformer over every token the study holds.

A study is one or more images and zero or more reports (MedPix: a case's images, each with its own caption; Open-i:
a frontal and a lateral image and one report). Its tokens are the frozen DV-MLP outputs of its images and of its
distinct texts (a report shared by a study's images counts once), each with its modality's type embedding; a study
with no image or no text gets that modality's learned "absent" token, as single items do. A fusion transformer
(``StudyFusion.fusion``, started from the trained item fusion transformer, then trained on its own) runs over the
set, padding masked out of attention and of the MoE (so padding never enters the gating loss); the study token is
the mean of the outputs, and a study hash head codes it.

Queries stay single-modality, coded alone by the item model exactly as before: the study head is trained after
it (stage 3, ``mcmfh.model.trainer``) with the item model frozen, so image and text codes are unchanged.
Training pairs a study with a *held-out* member: the member's image and text queries against the study coded from
its other members (a one-item study: the image query against the study's text alone, the text query against its
image alone). At search time a query's own item is never in the study it is matched to, so the head must learn
what a study is about, not which items it contains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mcmfh.model.config import ModelConfig
from mcmfh.model.fusion import IMAGE, TEXT, FusionTransformer
from mcmfh.model.hashing import HashHead
from mcmfh.studies import Studies, distinct_texts


@dataclass
class TokenSets:
    """A padded batch of token sets: tokens (B, S, d), modality (B, S) in {IMAGE, TEXT}, pad (B, S) True = empty."""

    tokens: torch.Tensor
    modality: torch.Tensor
    pad: torch.Tensor


def pack_sets(
    img_tok: torch.Tensor, txt_tok: torch.Tensor, image_rows: Sequence[np.ndarray], text_rows: Sequence[np.ndarray]
) -> TokenSets:
    """Gather each set's image tokens and text tokens into one padded batch (rows index the token tables)."""
    b = len(image_rows)
    sizes = [len(i) + len(t) for i, t in zip(image_rows, text_rows, strict=True)]
    s = max(sizes, default=0)
    d = img_tok.shape[1]
    tokens = torch.zeros(b, max(s, 1), d, dtype=img_tok.dtype)
    modality = torch.zeros(b, max(s, 1), dtype=torch.long)
    pad = torch.ones(b, max(s, 1), dtype=torch.bool)
    for j, (ri, rt) in enumerate(zip(image_rows, text_rows, strict=True)):
        ni, nt = len(ri), len(rt)
        if ni:
            tokens[j, :ni] = img_tok[torch.from_numpy(np.asarray(ri))]
            modality[j, :ni] = IMAGE
        if nt:
            tokens[j, ni : ni + nt] = txt_tok[torch.from_numpy(np.asarray(rt))]
            modality[j, ni : ni + nt] = TEXT
        pad[j, : ni + nt] = False
    return TokenSets(tokens, modality, pad)


class StudyFusion(nn.Module):
    """The study encoder: a fusion transformer over a study's token set, mean-pooled, and a study hash head."""

    def __init__(self, cfg: ModelConfig, bits: int) -> None:
        super().__init__()
        self.fusion = FusionTransformer(cfg)
        self.hash = HashHead(cfg.width, cfg.hash_hidden, bits, cfg.hash_dropout)

    def tokens(self, sets: TokenSets) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """(B, width) study tokens (the continuous study space) and the MoE auxiliary losses."""
        return self.fusion.encode_set(sets.tokens, sets.modality, sets.pad)

    def forward(self, sets: TokenSets) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
        """(study tokens, relaxed study codes in (-1, 1), aux losses)."""
        tok, aux = self.tokens(sets)
        return tok, self.hash(tok), aux

    @torch.no_grad()
    def codes(self, sets: TokenSets) -> torch.Tensor:
        return self.hash.codes(self.tokens(sets)[0])


def held_out_sets(
    studies: Studies, has_image: np.ndarray, text: np.ndarray, batch: np.ndarray, generator: torch.Generator
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Training view of a batch of studies: one held-out member per study and the study without it.

    Returns (held-out item rows, image rows / text rows of the context for its *image* query, the same for its
    *text* query). A study of several items drops the held-out item entirely (its image and its text); a one-item
    study keeps the item's other modality only, so the query is never matched against its own token.
    """
    held, ci_img, ci_txt, ct_img, ct_txt = [], [], [], [], []
    for s in batch:
        rows = studies.members[int(s)]
        with_image = rows[has_image[rows]]
        pick_from = with_image if len(with_image) else rows
        k = int(pick_from[int(torch.randint(len(pick_from), (1,), generator=generator))])
        held.append(k)
        rest = rows[rows != k]
        same_text = [r for r in rest if np.array_equal(text[r], text[k])]
        if len(rest):
            # Other members sharing the held-out item's report (Open-i's frontal + lateral) keep their images, but
            # the report itself would hand the text query its answer: it leaves the context.
            imgs = rest[has_image[rest]]
            txts = distinct_texts(text, np.asarray([r for r in rest if r not in same_text], dtype=np.int64))
            ci_img.append(imgs), ci_txt.append(txts), ct_img.append(imgs), ct_txt.append(txts)
        else:
            ci_img.append(rows[:0]), ci_txt.append(np.asarray([k])), ct_txt.append(rows[:0])
            ct_img.append(np.asarray([k]) if has_image[k] else rows[:0])
    return np.asarray(held, dtype=np.int64), ci_img, ci_txt, ct_img, ct_txt


def whole_sets(studies: Studies, has_image: np.ndarray, text: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every study's image rows and distinct text rows: what an archive codes."""
    imgs = [rows[has_image[rows]] for rows in studies.members]
    txts = [distinct_texts(text, rows) for rows in studies.members]
    return imgs, txts
