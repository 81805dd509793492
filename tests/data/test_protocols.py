"""Protocol splits: disjoint, deterministic per seed, stratified; PETuning parity; impossible splits refused."""

from __future__ import annotations

import numpy as np
import pytest

from pl_petune.data.protocols import PROTOCOLS, SplitError, limit_train, make_split
from pl_petune.data.sources import load_split
from pl_petune.tasks import get_task

TASKS_WITH_TRAIN = ("cb", "copa", "wsc", "rte", "glue_rte", "cola", "sst2")


@pytest.fixture(scope="module")
def labels(data_dir):
    out = {}
    for t in TASKS_WITH_TRAIN:
        spec = get_task(t)
        out[t] = (np.asarray(load_split(spec, "train", data_dir)["label"]),
                  np.asarray(load_split(spec, "dev", data_dir)["label"]))
    return out


def _rows(split, part):
    src, idx = split.parts[part]
    return {(src, int(i)) for i in idx}


@pytest.mark.parametrize("task", TASKS_WITH_TRAIN)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_split_sizes_disjoint_deterministic(labels, task, protocol):
    train, dev = labels[task]
    a = make_split(protocol, train, dev, seed=1111)
    b = make_split(protocol, train, dev, seed=1111)
    for part in ("train", "dev", "test"):
        assert np.array_equal(a.parts[part][1], b.parts[part][1]), "same seed must give the same split"
    tr, dv, te = (_rows(a, p) for p in ("train", "dev", "test"))
    assert not tr & dv and not tr & te
    if protocol == "leaky":
        assert dv == te == {("dev", i) for i in range(len(dev))}
        return
    if protocol == "dev_split_leaky":  # Table 1's 2-2: selects and reports on the very dev2 that dev_split reports
        assert dv == te == _rows(make_split("dev_split", train, dev, seed=1111), "test") and len(tr) == len(train)
        assert a.leaky and not make_split("dev_split", train, dev, seed=1111).leaky
        return
    assert not dv & te, "selection and reporting rows must be disjoint"
    if protocol in ("train_split", "petuning"):
        assert len(tr) + len(dv) == len(train) and len(dv) == int(np.ceil(0.1 * len(train)))
        assert te == {("dev", i) for i in range(len(dev))}
    else:  # dev_split
        assert len(dv) + len(te) == len(dev) and abs(len(dv) - len(te)) <= 1 and len(tr) == len(train)


@pytest.mark.parametrize("task", ("cb", "rte", "cola"))
def test_seeded_split_is_stratified_and_seed_dependent(labels, task):
    train, dev = labels[task]
    s1 = make_split("train_split", train, dev, seed=1)
    s2 = make_split("train_split", train, dev, seed=2)
    assert not np.array_equal(s1.parts["dev"][1], s2.parts["dev"][1])
    held = train[s1.parts["dev"][1]]
    for c in np.unique(train):
        expected = (train == c).mean() * len(held)
        assert abs((held == c).sum() - expected) <= 1.0, f"class {c} not stratified"
    d1 = make_split("dev_split", train, dev, seed=1)
    half = dev[d1.parts["dev"][1]]
    for c in np.unique(dev):
        assert abs((half == c).sum() - (dev == c).mean() * len(half)) <= 1.0


def test_petuning_parity_is_last_tenth_unshuffled_for_every_seed(labels):
    train, dev = labels["cb"]
    a = make_split("petuning", train, dev, seed=1)
    b = make_split("petuning", train, dev, seed=99)
    assert np.array_equal(a.parts["dev"][1], np.arange(225, 250))
    assert np.array_equal(a.parts["dev"][1], b.parts["dev"][1])


def test_impossible_splits_are_refused():
    with pytest.raises(SplitError, match="cannot stratify 5 train examples.*class"):
        make_split("train_split", [0, 0, 0, 1, 2], [0, 1], seed=0)
    with pytest.raises(SplitError, match="unknown protocol 'fair'; known: train_split, petuning"):
        make_split("fair", [0, 1], [0, 1], seed=0)
    with pytest.raises(SplitError, match="train_limit 0 must be positive"):
        limit_train(make_split("leaky", [0, 1] * 10, [0, 1], 0), 0, 0, [0, 1] * 10)


def test_train_limit_is_seeded_stratified_subset(labels):
    train, dev = labels["rte"]
    split = make_split("train_split", train, dev, seed=3)
    small = limit_train(split, 1000, 3, train)
    idx = small.parts["train"][1]
    assert len(idx) == 1000 and set(idx) <= set(split.parts["train"][1])
    assert abs(train[idx].mean() - train[split.parts["train"][1]].mean()) < 0.01
