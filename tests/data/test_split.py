"""Patient-level splits: random, kfold, table (incl. the real ImageCAS table), layout."""
from __future__ import annotations

import logging
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtune.config import SplitConfig
from samtune.data.cases import Case, DataError
from samtune.data.split import assert_patient_level, assign_splits, read_split_table, split_summary

IMAGECAS_TABLE = "imagecas_split/imageCAS_data_split.xlsx"


def make_cases(sizes: dict[str | None, int], per_patient: int = 2, prefix: str = "p") -> list[Case]:
    """`sizes[group]` labelled patients per group, `per_patient` cases each."""
    cases = []
    for g, n in sizes.items():
        for i in range(n):
            pid = f"{prefix}{g or ''}{i:03d}"
            cases += [Case(f"{pid}_c{k}", pid, (f"/d/{pid}_{k}.nii.gz",),
                           f"/d/{pid}_{k}_lab.nii.gz", group=g) for k in range(per_patient)]
    return cases


def counts(assignment: dict[str, str]) -> Counter:
    return Counter(assignment.values())


def test_random_counts_and_patient_level():
    cases = make_cases({None: 20}, per_patient=3)
    a = assign_splits(cases, SplitConfig(ratios=(0.7, 0.15, 0.15)))
    assert counts(a) == {"train": 14, "val": 3, "test": 3}
    summary = split_summary(a, cases)
    assert summary["patients"] == {"train": 14, "val": 3, "test": 3}
    assert summary["cases"] == {"train": 42, "val": 9, "test": 9}
    by_patient = {}
    for c in cases:  # every case of a patient in its patient's split
        by_patient.setdefault(c.patient_id, set()).add(a[c.patient_id])
    assert all(len(s) == 1 for s in by_patient.values())


def test_random_deterministic_order_independent_and_seeded():
    cases = make_cases({"A": 12, "B": 9})
    cfg = SplitConfig(seed=7)
    first = assign_splits(cases, cfg)
    shuffled = cases[:]
    random.Random(1).shuffle(shuffled)
    assert assign_splits(shuffled, cfg) == first
    assert assign_splits(list(reversed(cases)), cfg) == first
    assert assign_splits(cases, SplitConfig(seed=8)) != first


def test_adding_a_patient_moves_few():
    cases = make_cases({None: 40})
    before = assign_splits(cases, SplitConfig(stratify=False))
    after = assign_splits(cases + make_cases({None: 1}, prefix="new"), SplitConfig(stratify=False))
    moved = [p for p in before if before[p] != after[p]]
    assert len(moved) <= 3, moved


def test_stratified_per_group_counts():
    cases = make_cases({"A": 10, "B": 6, "C": 3})
    a = assign_splits(cases, SplitConfig(ratios=(0.7, 0.15, 0.15)))
    groups = split_summary(a, cases)["groups"]
    # A: 7/1.5/1.5 -> 7,1,1 + remainder to val (tie goes train, val, test) ; B: 4.2/.9/.9 -> 4,1,1
    # C: 2.1/.45/.45 -> 2,1,0, then test takes one from train -> 1,1,1
    assert groups["A"]["patients"] == {"train": 7, "val": 2, "test": 1}
    assert groups["B"]["patients"] == {"train": 4, "val": 1, "test": 1}
    assert groups["C"]["patients"] == {"train": 1, "val": 1, "test": 1}


def test_unstratified_ignores_groups():
    cases = make_cases({"A": 10, "B": 10})
    a = assign_splits(cases, SplitConfig(ratios=(0.5, 0.25, 0.25), stratify=False))
    assert counts(a) == {"train": 10, "val": 5, "test": 5}


def test_small_groups_still_fill_every_split():
    cases = make_cases({"A": 2, "B": 2, "C": 2})  # each group alone would be 2/0/0
    a = assign_splits(cases, SplitConfig(ratios=(0.7, 0.15, 0.15)))
    assert counts(a) == {"train": 4, "val": 1, "test": 1}


def test_too_few_patients_warns(caplog):
    with caplog.at_level(logging.WARNING):
        a = assign_splits(make_cases({None: 2}), SplitConfig())
    assert counts(a) == {"train": 1, "val": 1}
    assert "too few" in caplog.text and "test" in caplog.text


def test_zero_ratio_split_stays_empty():
    a = assign_splits(make_cases({"A": 5, "B": 5}), SplitConfig(ratios=(0.8, 0.2, 0.0)))
    assert counts(a) == {"train": 8, "val": 2}


def test_inference_only_patients_go_to_infer():
    cases = make_cases({None: 6})
    cases += [Case("u1", "unl", ("/d/u1.nii.gz",)), Case("u2", "unl", ("/d/u2.nii.gz",))]
    cases += [Case("mix_unl", "p005", ("/d/m.nii.gz",))]  # labelled patient, one unlabelled case
    a = assign_splits(cases, SplitConfig())
    assert a["unl"] == "infer" and a["p005"] != "infer"
    assert counts(a)["infer"] == 1
    with pytest.raises(DataError, match="inference-only patient unl"):
        assert_patient_level({**a, "unl": "train"}, cases)


def test_no_labelled_patients_is_an_error():
    with pytest.raises(DataError, match="no labelled cases"):
        assign_splits([Case("u1", "u", ("/d/u1.nii.gz",))], SplitConfig())


def test_duplicate_case_ids_are_an_error():
    cases = make_cases({None: 2})
    with pytest.raises(DataError, match="duplicate case ids"):
        assign_splits(cases + [cases[0]], SplitConfig())


def test_kfold_folds_disjoint_cover_and_fixed_test():
    cases = make_cases({"A": 14, "B": 9})
    folds = [assign_splits(cases, SplitConfig(method="kfold", folds=4, fold=f,
                                              ratios=(0.7, 0.1, 0.2))) for f in range(4)]
    tests = [{p for p, s in a.items() if s == "test"} for a in folds]
    assert all(t == tests[0] for t in tests) and len(tests[0]) == 5  # A 2.8 -> 3, B 1.8 -> 2
    vals = [{p for p, s in a.items() if s == "val"} for a in folds]
    rest = {c.patient_id for c in cases} - tests[0]
    assert set().union(*vals) == rest and sum(len(v) for v in vals) == len(rest)  # disjoint cover
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5]
    for a, v in zip(folds, vals):
        assert {p for p, s in a.items() if s == "train"} == rest - v
    for v in vals:  # stratified: A has 11 non-test patients, B 7: each fold holds both
        assert {p[1] for p in v} == {"A", "B"}


def write_csv(path, text):
    path.write_text(text)
    return path


def test_table_relative_to_root(tmp_path):
    write_csv(tmp_path / "t.csv", "case_id,split\np000,Training\np001,Testing\n")
    cfg = SplitConfig(method="table", table="t.csv", ratios=(1.0, 0.0, 0.0))
    assert assign_splits(make_cases({None: 2}), cfg, root=tmp_path) == {"p000": "train",
                                                                        "p001": "test"}


def test_table_csv_spellings_and_title_row(tmp_path):
    table = write_csv(tmp_path / "t.csv", "My split table,,\ncase_id,fold,Split\np000,1,Training\n"
                      "p001,1,valid\np002,2,TEST\np003,2,validation\np004,1,train\n")
    cfg = SplitConfig(method="table", table=table)
    a = assign_splits(make_cases({None: 5}), cfg)
    assert a == {"p000": "train", "p001": "val", "p002": "test", "p003": "val", "p004": "train"}
    assert read_split_table(table) == {"p000": "train", "p001": "val", "p002": "test",
                                       "p003": "val", "p004": "train"}


def test_table_without_val_carves_it_from_train(tmp_path):
    rows = "".join(f"p{i:03d},{'Testing' if i >= 8 else 'Training'}\n" for i in range(10))
    table = write_csv(tmp_path / "t.csv", "FileName,Split-1\n" + rows)
    cfg = SplitConfig(method="table", table=table, ratios=(0.7, 0.15, 0.15))
    a = assign_splits(make_cases({None: 10}), cfg)
    # 8 train patients, val share 0.15/0.85 = 1.41 -> 1
    assert counts(a) == {"train": 7, "val": 1, "test": 2}
    assert {p for p, s in a.items() if s == "test"} == {"p008", "p009"}
    assert a == assign_splits(make_cases({None: 10}), cfg)  # seeded


@pytest.mark.parametrize("text,match", [
    ("a,b\n1,Training\n", "header found: \\['a', 'b'\\]"),
    ("case_id,split\np000,Training\np001,maybe\n", "no split column"),
])
def test_table_bad_header_or_values(tmp_path, text, match):
    table = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=match) as err:
        assign_splits(make_cases({None: 2}), SplitConfig(method="table", table=table))
    assert str(table) in str(err.value)


def test_table_bad_value_in_chosen_column_names_the_row(tmp_path):
    table = write_csv(tmp_path / "t.csv", "case_id,split\np000,Training\np001,maybe\n")
    with pytest.raises(DataError, match="row 3: id p001 has split 'maybe'"):
        read_split_table(table, "Split")
    with pytest.raises(DataError, match="no column 'Split-9'"):
        read_split_table(table, "Split-9")


def test_table_missing_unset_or_unreadable(tmp_path):
    cases = make_cases({None: 2})
    with pytest.raises(DataError, match="split table not found"):
        assign_splits(cases, SplitConfig(method="table", table=tmp_path / "nope.xlsx"))
    with pytest.raises(DataError, match="split.table is not set"):  # the config validator's twin
        assign_splits(cases, SplitConfig.model_construct(method="table", table=None))
    junk = tmp_path / "junk.xlsx"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read split table") as err:
        assign_splits(cases, SplitConfig(method="table", table=junk))
    assert str(junk) in str(err.value)


def imagecas_cases(ids: list[str]) -> list[Case]:
    return [Case(i, i, (f"/d/{i}.img.nii.gz",), f"/d/{i}.label.nii.gz") for i in ids]


def test_real_imagecas_table_subset(shared_data, caplog):
    path = shared_data / IMAGECAS_TABLE
    for column in ("Split-1", "Split-4"):
        table = read_split_table(path, column)
        assert len(table) == 1000
        assert Counter(table.values()) == {"train": 700, "test": 250, "val": 50}
    split1 = read_split_table(path)  # default: the first split column
    assert split1["10016975"] == "train" and split1["12087501"] == "test"
    by_split = {s: sorted(i for i, v in split1.items() if v == s) for s in ("train", "val", "test")}
    ids = by_split["train"][:12] + by_split["val"][:4] + by_split["test"][:5]
    with caplog.at_level(logging.WARNING):
        a = assign_splits(imagecas_cases(ids), SplitConfig(method="table", table=path))
    assert a == {i: split1[i] for i in ids}  # the table has Val: no carve-out
    assert counts(a) == {"train": 12, "val": 4, "test": 5}
    assert "979 table id(s) not in the dataset" in caplog.text
    fold2 = assign_splits(imagecas_cases(ids), SplitConfig(method="table", table=path,
                                                           table_column="Split-2"))
    assert fold2 == {i: read_split_table(path, "Split-2")[i] for i in ids}


def test_real_imagecas_table_unknown_case_is_an_error(shared_data):
    path = shared_data / IMAGECAS_TABLE
    cases = imagecas_cases(["10016975", "10017784", "99999999"])
    with pytest.raises(DataError, match=r"1 dataset case\(s\) absent .*'99999999'") as err:
        assign_splits(cases, SplitConfig(method="table", table=path))
    assert str(path) in str(err.value)


def test_layout_splits():
    cases = make_cases({None: 4})
    for c, s in zip(cases, ["train", "train", "valid", "valid", "test", "test", "train", "train"]):
        c.split = s
    cases.append(Case("u", "unl", ("/d/u.nii.gz",), split="test"))
    a = assign_splits(cases, SplitConfig(method="layout"))
    assert a == {"p000": "train", "p001": "val", "p002": "test", "p003": "train", "unl": "infer"}
    cases[0].split = None
    with pytest.raises(DataError, match=r"1 labelled case\(s\) have no split.*p000_c0"):
        assign_splits(cases, SplitConfig(method="layout"))
    cases[0].split = "test"
    with pytest.raises(DataError, match="several splits.*p000"):
        assign_splits(cases, SplitConfig(method="layout"))


patients_st = st.lists(
    st.tuples(st.sampled_from(["A", "B", "C", None]), st.integers(1, 3), st.booleans()),
    min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(patients=patients_st, seed=st.integers(0, 10_000),
       method=st.sampled_from(["random", "kfold"]), stratify=st.booleans(),
       shuffle_seed=st.integers(0, 100))
def test_property_patient_level(patients, seed, method, stratify, shuffle_seed):
    cases = [Case(f"P{i}_{k}", f"P{i}", ("/x",), "/y" if labelled else None, group=g)
             for i, (g, n, labelled) in enumerate(patients) for k in range(n)]
    cfg = SplitConfig(method=method, seed=seed, stratify=stratify, folds=3, fold=seed % 3)
    n_labelled = sum(lab for *_, lab in patients)
    if n_labelled == 0:
        with pytest.raises(DataError):
            assign_splits(cases, cfg)
        return
    a = assign_splits(cases, cfg)
    assert set(a) == {c.patient_id for c in cases}
    for i, (_, _, labelled) in enumerate(patients):
        assert (a[f"P{i}"] == "infer") == (not labelled)
    shuffled = cases[:]
    random.Random(shuffle_seed).shuffle(shuffled)
    assert assign_splits(shuffled, cfg) == a
    summary = split_summary(a, cases)
    assert sum(summary["cases"].values()) == len(cases)
    if method == "random" and n_labelled >= 3:
        assert all(summary["patients"][s] >= 1 for s in ("train", "val", "test"))
