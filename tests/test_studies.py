"""Studies (issue 14): grouping from the loaders to the feature cache, the study encoder's set semantics, stage 3
(item codes unchanged, resumable), and the study evaluation modes against a brute-force reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_features
from mcmfh.data import load_dataset
from mcmfh.errors import MCMFHError
from mcmfh.evaluation.metrics import RankingOptions, hamming_distances, ranking_metrics, relevance
from mcmfh.evaluation.study_eval import evaluate_modes
from mcmfh.factory import create_method, load_method
from mcmfh.features import FeatureSet
from mcmfh.index.payload import make_codec
from mcmfh.method import HashMethod
from mcmfh.model.config import MCMFHConfig
from mcmfh.model.fusion import IMAGE, TEXT
from mcmfh.model.study import StudyFusion, TokenSets, held_out_sets, pack_sets
from mcmfh.studies import Studies, distinct_texts
from mcmfh.training.experiment import load_config
from tiny_config import TINY_MCMFH

FIT = {**TINY_MCMFH, "min_steps_stage1": 30, "min_steps_stage2": 60, "min_steps_stage3": 60}  # enough steps to learn


def study_features(n_studies: int = 80, size: int = 3, classes: int = 6, seed: int = 1) -> FeatureSet:
    """Studies of ``size`` items about one class each (as MedPix cases share their labels): every item's image and
    text are its class direction plus noise, so relevance is sparse (about 1 / classes)."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(classes, size=n_studies).repeat(size)
    n = n_studies * size
    ci, ct = rng.normal(size=(classes, 24)), rng.normal(size=(classes, 16))
    image, text = ci[cls] + 0.4 * rng.normal(size=(n, 24)), ct[cls] + 0.4 * rng.normal(size=(n, 16))
    split = np.array(["train"] * 60 * size + ["dev"] * 8 * size + ["test"] * (n_studies - 68) * size)
    return FeatureSet(
        ids=[f"item{i}" for i in range(n)],
        image=image / np.linalg.norm(image, axis=1, keepdims=True),
        text=text / np.linalg.norm(text, axis=1, keepdims=True),
        labels=np.eye(classes, dtype=np.uint8)[cls],
        label_vocab=[f"c{j}" for j in range(classes)],
        split=split,
        study=np.array([f"s{i // size}" for i in range(n)]),
    )


@pytest.fixture(scope="module")
def data():
    return study_features()


@pytest.fixture(scope="module")
def fitted(data):
    m = create_method("mcmfh", bits=16, seed=0, **FIT)
    m.fit(data.splits("train"), data.splits("dev"))
    return m


# ------------------------------------------------------------------ grouping and loaders
def test_group_keeps_first_seen_order_and_unions_labels() -> None:
    st = Studies.group(["b", "a", "b", "c", "a"])
    assert st.ids == ["b", "a", "c"]
    assert [m.tolist() for m in st.members] == [[0, 2], [1, 4], [3]]
    assert st.item_study(5).tolist() == [0, 1, 0, 2, 1]
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]], np.uint8)
    assert st.labels(labels).tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]


def test_distinct_texts_counts_a_shared_report_once() -> None:
    text = np.array([[1.0, 0], [1.0, 0], [0, 1.0]])
    assert distinct_texts(text, np.array([0, 1, 2])).tolist() == [0, 2]


def test_csv_study_id_column_reaches_the_feature_cache(tmp_path) -> None:
    from data_fixtures import write_png

    rows = ["image,text,labels,split,study_id"]
    for i in range(4):
        write_png(tmp_path / f"{i}.png", value=40 * i)
        rows.append(f"{i}.png,caption {i},a,train,{'S1' if i < 2 else ''}")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset("csv", tmp_path)
    assert [r.study_id for r in ds.records] == ["S1", "S1", None, None]
    assert ds.has_studies and ds.studies()[2] == ds.records[2].id  # no study: a study of its own

    fs = make_features(n=4)
    fs.study = np.array(["S1", "S1", "", ""])
    fs.save(tmp_path / "cache")
    back = FeatureSet.load(tmp_path / "cache")
    assert back.study_ids().tolist() == ["S1", "S1", "item2", "item3"]
    assert back.subset(np.array([1, 2])).study.tolist() == ["S1", ""]
    assert not make_features(n=4).has_studies


def test_medpix_studies_are_its_cases(shared_data) -> None:
    ds = load_dataset("medpix2", shared_data / "medpix2", check_images=False)
    studies = Studies.group(ds.studies())
    assert len(studies) == 671  # the dataset's 671 teaching cases
    split_of = {r.id: r.split for r in ds.records}
    for rows in studies.members:  # no case crosses splits
        assert len({split_of[ds.records[i].id] for i in rows}) == 1


# ------------------------------------------------------------------ the study encoder
def test_held_out_member_never_in_its_own_context() -> None:
    st = Studies.group(["a", "a", "a", "b"])
    has = np.array([True, True, True, True])
    text = np.array([[1.0], [1.0], [2.0], [3.0]])  # items 0 and 1 share a report
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        held, ci_img, ci_txt, ct_img, ct_txt = held_out_sets(st, has, text, np.array([0, 1]), gen)
        k = held[0]
        assert k not in ci_img[0] and k not in ct_img[0]
        assert all(not np.array_equal(text[r], text[k]) for r in ci_txt[0])  # its report left the context too
        # a one-item study: the image query meets the study's text alone, the text query its image alone
        assert held[1] == 3 and ci_img[1].tolist() == [] and ci_txt[1].tolist() == [3]
        assert ct_img[1].tolist() == [3] and ct_txt[1].tolist() == []


def test_study_token_is_a_set_function_and_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    cfg = MCMFHConfig.from_options(width=16, heads=2, ffn_hidden=16, hash_hidden=16)
    enc = StudyFusion(cfg.model, 16).eval()
    img, txt = torch.randn(6, 16), torch.randn(6, 16)
    small = pack_sets(img, txt, [np.array([0, 1])], [np.array([2])])
    big = pack_sets(img, txt, [np.array([0, 1]), np.array([0, 1, 2, 3])], [np.array([2]), np.array([4, 5])])
    shuffled = pack_sets(img, txt, [np.array([1, 0])], [np.array([2])])
    with torch.no_grad():
        a, aux_a = enc.tokens(small)
        b, _ = enc.tokens(big)
        c, _ = enc.tokens(shuffled)
        # the padded copy of the small set also gives the same MoE statistics: padding is not routed
        padded = TokenSets(
            torch.cat([small.tokens, torch.zeros(1, 3, 16)], 1),
            torch.cat([small.modality, torch.zeros(1, 3, dtype=torch.long)], 1),
            torch.cat([small.pad, torch.ones(1, 3, dtype=torch.bool)], 1),
        )
        d, aux_d = enc.tokens(padded)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[0], c[0], atol=1e-5)
    assert torch.allclose(a, d, atol=1e-5)
    assert all(torch.allclose(x["balance"], y["balance"]) for x, y in zip(aux_a, aux_d, strict=True))
    # a study with no report is coded with the "absent" text token, not with nothing
    no_text = pack_sets(img, txt, [np.array([0, 1])], [np.array([], np.int64)])
    with torch.no_grad():
        assert not torch.allclose(enc.tokens(no_text)[0], a, atol=1e-3)
    assert int(small.modality[0, 2]) == TEXT and int(small.modality[0, 0]) == IMAGE


# ------------------------------------------------------------------ stage 3
def test_study_head_leaves_item_codes_unchanged_and_round_trips(tmp_path, data, fitted) -> None:
    plain = FeatureSet(data.ids, data.image, data.text, data.labels, data.label_vocab, data.split, manifest={})
    without = create_method("mcmfh", bits=16, seed=0, **FIT)
    log = without.fit(plain.splits("train"), plain.splits("dev"))
    assert "stage3" not in log and not without.has_study_codes
    test = data.splits("test")
    assert np.array_equal(fitted.encode_images(test.image), without.encode_images(test.image))
    assert np.array_equal(fitted.encode_texts(test.text), without.encode_texts(test.text))

    db = data.splits("train", "dev")
    studies, codes = fitted.encode_studies(db)
    assert codes.shape == (len(studies), 16) and codes.dtype == bool
    assert studies.ids == Studies.group(db.study_ids()).ids
    fitted.save(tmp_path / "m")
    again = load_method(tmp_path / "m")
    assert again.has_study_codes and np.array_equal(again.encode_studies(db)[1], codes)
    with pytest.raises(MCMFHError, match="no study head"):
        without.encode_studies(db)


def test_study_codes_do_not_depend_on_batch_or_other_studies(data, fitted) -> None:
    db = data.splits("train", "dev")
    studies, codes = fitted.encode_studies(db)
    one = db.subset(studies.members[3])
    assert np.array_equal(fitted.encode_studies(one)[1][0], codes[3])


def test_interrupted_stage3_resumes_to_the_same_study_codes(tmp_path, data) -> None:
    train, dev = data.splits("train"), data.splits("dev")
    opts = {**TINY_MCMFH, "epochs_stage3": 3}
    clean = create_method("mcmfh", bits=16, seed=2, **opts)
    clean.fit(train, dev)

    class Stop(Exception):
        pass

    method = create_method("mcmfh", bits=16, seed=2, **opts, checkpoint_dir=str(tmp_path))
    method.callback = lambda stage, epoch: (_ for _ in ()).throw(Stop) if (stage, epoch) == (3, 2) else None
    with pytest.raises(Stop):
        method.fit(train, dev)
    resumed = create_method("mcmfh", bits=16, seed=2, **opts, checkpoint_dir=str(tmp_path))
    log = resumed.fit(train, dev)
    assert log["stage3"]["resumed_at_epoch"] == 2
    db = data.splits("train", "dev")
    assert np.array_equal(resumed.encode_studies(db)[1], clean.encode_studies(db)[1])


def test_fused_study_code_learns(data, fitted) -> None:
    """On label-structured studies the study code ranks far above chance for both query modalities."""
    out = evaluate_modes(fitted, data, ["test"], ["train", "dev"], ["i2s", "t2s"])
    for mode in ("i2s", "t2s"):
        assert out[f"{mode}_headline"] == "fused"
        assert out[f"{mode}_fused_map"] == out[f"{mode}_map"]
        q = data.splits("test")
        studies = Studies.group(data.splits("train", "dev").study_ids())
        chance = relevance(q.labels, studies.labels(data.splits("train", "dev").labels)).mean()
        assert out[f"{mode}_map"] > chance + 0.3


def test_two_stage_study_rows_rank_by_the_relaxed_study_payload(data, fitted) -> None:
    """``fused_2s``: every study re-scored (the test database is under the floor) by the int8 relaxed study output,
    ties by Hamming distance; equal to a brute-force reference, and ahead of chance like the fused code."""
    out = evaluate_modes(fitted, data, ["test"], ["train", "dev"], ["t2s"])
    q, db = data.splits("test"), data.splits("train", "dev")
    studies, codes = fitted.encode_studies(db)
    relaxed = fitted.relaxed_study_inputs(fitted.study_inputs(db.image, db.text), db.has_image, db.study_ids())[1]
    assert np.array_equal(relaxed > 0, codes)  # the payload's signs are the study codes
    codec = make_codec("int8", relaxed.shape[1])
    sims = codec.score(
        codec.prepare_queries(fitted.relaxed_texts(q.text)), codec.encode(relaxed)[None].repeat(len(q), 0)
    )
    ham = hamming_distances(fitted.encode_texts(q.text), codes)
    keys = np.zeros(ham.shape)
    for i in range(len(q)):  # dense rank of (-similarity, distance)
        pairs = sorted(set(zip((-sims[i]).tolist(), ham[i].tolist(), strict=True)))
        keys[i] = [pairs.index(p) for p in zip((-sims[i]).tolist(), ham[i].tolist(), strict=True)]
    rel = relevance(q.labels, studies.labels(db.labels))
    assert not set(q.ids) & set(db.ids)  # test queries are not in the database: no study to leave out
    ref = ranking_metrics(keys, rel, RankingOptions(p_at_k=(10,)))
    assert out["t2s_fused_2s_map"] == pytest.approx(ref["map"], abs=1e-9)
    assert out["t2s_fused_2s_p10"] == pytest.approx(ref["p_at_k"]["10"], abs=1e-9)
    assert 0.0 <= out["t2s_fused_p10"] <= 1.0 and out["t2s_map"] == out["t2s_fused_map"]  # the headline stays put


# ------------------------------------------------------------------ evaluation modes, against brute force
class FixedCodes(HashMethod):
    """Codes looked up by embedding row: image code = first 8 dims > 0, text code = last 8 dims > 0."""

    name = "fixed"

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        return {}

    def encode_images(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(image)[:, :8] > 0

    def encode_texts(self, text: np.ndarray) -> np.ndarray:
        return np.asarray(text)[:, -8:] > 0

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pass


def test_study_modes_match_a_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    n = 30
    fs = FeatureSet(
        ids=[f"x{i}" for i in range(n)],
        image=rng.normal(size=(n, 8)),
        text=rng.normal(size=(n, 8)),
        labels=(rng.random((n, 3)) < 0.4).astype(np.uint8),
        label_vocab=["a", "b", "c"],
        split=np.array(["train"] * n),  # queries = database: every query's own study must be left out
        has_image=np.arange(n) % 7 != 0,
        study=np.array([f"s{i // 4}" for i in range(n)]),
    )
    m = FixedCodes(bits=8)
    out = evaluate_modes(m, fs, ["train"], ["train"], ["i2s", "t2s", "i2i", "t2t"])
    st = Studies.group(fs.study_ids())
    img_c, txt_c = m.encode_images(fs.image), m.encode_texts(fs.text)
    slab = st.labels(fs.labels)
    for mode, qrows in (("i2s", np.flatnonzero(fs.has_image)), ("t2s", np.arange(n))):
        qc = img_c[qrows] if mode == "i2s" else txt_c[qrows]
        for rule in ("min", "sum"):
            aps = []
            for qi, r in enumerate(qrows):
                d_s, rel_s = [], []
                for s, rows in enumerate(st.members):
                    if r in rows:
                        continue  # its own study is not in its database
                    dt = hamming_distances(qc[qi : qi + 1], txt_c[rows])[0]
                    di = np.array([hamming_distances(qc[qi : qi + 1], img_c[[j]])[0, 0] if fs.has_image[j]
                                   else np.inf for j in rows])  # fmt: skip
                    if rule == "min":
                        d_s.append(min(dt.min(), di.min()))
                    else:
                        d_s.append(np.min(np.where(np.isinf(di), 2 * dt, di + dt)))
                    rel_s.append(bool((fs.labels[r] & slab[s]).any()))
                aps.append(ranking_metrics(np.array([d_s]), np.array([rel_s]), RankingOptions())["map"])
            assert out[f"{mode}_{rule}_map"] == pytest.approx(np.mean(aps), abs=1e-9)
        assert out[f"{mode}_headline"] == "min" and out[f"{mode}_map"] == out[f"{mode}_min_map"]
    # i2i: an image query against the other images (never itself)
    rows = np.flatnonzero(fs.has_image)
    aps = []
    for r in rows:
        others = rows[rows != r]
        d = hamming_distances(img_c[[r]], img_c[others])
        aps.append(ranking_metrics(d, relevance(fs.labels[[r]], fs.labels[others]), RankingOptions())["map"])
    assert out["i2i_map"] == pytest.approx(np.mean(aps), abs=1e-9)


def test_experiment_modes_field_is_checked(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("features: f\nmethods: [lsh]\nmodes: [i2t, t2i, i2x]\n")
    with pytest.raises(MCMFHError, match=r"c.yaml: field 'modes'.*i2x"):
        load_config(cfg)
    cfg.write_text("features: f\nmethods: [lsh]\nmodes: [i2s, i2s, t2s]\n")
    assert load_config(cfg).modes == ["i2s", "t2s"]


def test_study_inputs_re_code_a_study_without_its_members_embeddings(data, fitted) -> None:
    """What an archive keeps per item (``study_inputs``) codes a study exactly as the embeddings do."""
    db = data.splits("train", "dev")
    _, codes = fitted.encode_studies(db)
    inputs = fitted.study_inputs(db.image, db.text)
    assert inputs.shape == (len(db), 2, 32)
    studies, again = fitted.encode_study_inputs(inputs, db.has_image, db.study_ids())
    assert np.array_equal(again, codes)
    with pytest.raises(MCMFHError, match="study inputs must be"):
        fitted.encode_study_inputs(inputs[:, :1], db.has_image, db.study_ids())
