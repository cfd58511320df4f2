"""Patient-level train/val/test assignment: seeded random, k-fold, an official table, or layout.

Every method returns {patient_id: split}; all cases of a patient share one split, and patients whose
cases are all inference-only (`label_path` None) get "infer" and never enter train/val/test.

Order (random, kfold, the val carve-out of `table`): within each stratum (the patient's group when
`stratify`, else one stratum) patients are sorted by sha256(f"{seed}:{patient_id}") and dealt out
test first, then val, then train: the result depends only on the set of patients and the seed, not
on input order, and adding a patient moves only the few patients next to a boundary.

Rounding: per stratum, floor(n·ratio) plus the largest remainders (ties: train, val, test); a split
with ratio > 0 left empty takes one patient from the stratum's largest split when the stratum has
enough patients, and then across strata from the largest split's largest group.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter, defaultdict
from pathlib import Path

from samtune.config import SplitConfig
from samtune.data.cases import Case, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
INFER = "infer"
_SYNONYMS = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
             "validation": "val", "validating": "val", "test": "test", "testing": "test",
             "ts": "test", "infer": "infer", "inference": "infer"}
_ID_HEADERS = ("filename", "file_name", "file", "case", "case_id", "caseid", "id", "patient",
               "patient_id", "patientid", "subject", "subject_id", "name", "image")
_ID_SUFFIXES = (".img.nii.gz", ".label.nii.gz", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _patient_groups(cases: list[Case]) -> tuple[dict[str, str | None], set[str]]:
    """patient → group (its cases' most common; ties: alphabetical), and the labelled patients."""
    dupes = sorted(k for k, n in Counter(c.case_id for c in cases).items() if n > 1)
    if dupes:
        raise DataError(None, f"duplicate case ids: {dupes[:10]}")
    groups: dict[str, Counter] = defaultdict(Counter)
    for c in cases:
        groups[c.patient_id].update([c.group] if c.group is not None else [])
    labelled = {c.patient_id for c in cases if c.label_path is not None}
    best = {p: (min(g, key=lambda k: (-g[k], k)) if g else None) for p, g in groups.items()}
    return best, labelled


def _strata(patients: list[str], groups: dict[str, str | None], stratify: bool,
            seed: int) -> dict[str, list[str]]:
    """Stratum name → its patients in hash order (one stratum "" without stratification)."""
    out: dict[str, list[str]] = defaultdict(list)
    for p in patients:
        out[(groups.get(p) or "") if stratify else ""].append(p)
    key = lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()  # noqa: E731
    return {g: sorted(ps, key=key) for g, ps in sorted(out.items())}


def _split_counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Patients per split for a stratum of n (see the module docstring for the rounding)."""
    exact = [round(n * r, 9) for r in ratios]  # 0.7 * 20 is 13.999…
    counts = [int(e) for e in exact]
    order = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i in range(3) if ratios[i] > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(3), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _allocate(strata: dict[str, list[str]], ratios: tuple[float, float, float]) -> dict[str, str]:
    counts = {g: _split_counts(len(ps), ratios) for g, ps in strata.items()}
    total = lambda j: sum(c[j] for c in counts.values())  # noqa: E731
    for i in range(3):
        if ratios[i] == 0 or total(i) > 0:
            continue
        donor = max((j for j in range(3) if j != i), key=total)
        if total(donor) >= 2:  # too few patients: train first, then val, then test
            group = max(counts, key=lambda g: counts[g][donor])
            counts[group][donor] -= 1
            counts[group][i] += 1
    out: dict[str, str] = {}
    for g, ps in strata.items():
        train, val, test = counts[g]
        out.update(zip(ps, ["test"] * test + ["val"] * val + ["train"] * train))
    return out


def _kfold(strata: dict[str, list[str]], cfg: SplitConfig) -> dict[str, str]:
    """Held-out test (ratios[2], same for every fold), then folds dealt round-robin over strata."""
    test_ratio = cfg.ratios[2]
    first = _allocate(strata, (1.0 - test_ratio, 0.0, test_ratio))
    out = {p: s for p, s in first.items() if s == "test"}
    rest = [p for ps in strata.values() for p in ps if p not in out]
    for idx, p in enumerate(rest):
        out[p] = "val" if idx % cfg.folds == cfg.fold else "train"
    return out


def _cell(value: object) -> str:
    """A table cell as text: None → "", 12.0 → "12", "12.img.nii.gz" → "12"."""
    text = "" if value is None else str(int(value) if isinstance(value, float)
                                        and value.is_integer() else value).strip()
    suffix = next((x for x in _ID_SUFFIXES if text.lower().endswith(x)), "")
    return text[: len(text) - len(suffix)]


def _table_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(path, "split table not found")
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".xlsm", ".csv", ".tsv", ".txt"):
        raise DataError(path, f"unsupported split table format '{suffix}' (use .xlsx or .csv)")
    try:
        if suffix.startswith(".xls"):
            import openpyxl

            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
            try:
                raw = list(wb.worksheets[0].iter_rows(values_only=True))
            finally:
                wb.close()
        else:
            text = path.read_text(encoding="utf-8-sig")
            tab = suffix == ".tsv" or ("\t" in text and "," not in text)
            raw = list(csv.reader(io.StringIO(text), delimiter="\t" if tab else ","))
    except Exception as exc:  # openpyxl/zip/unicode errors all mean "unreadable"
        raise DataError(path, f"cannot read split table: {type(exc).__name__}: {exc}") from None
    return [[_cell(v) for v in row] for row in raw]


def read_split_table(path: Path, column: str | None = None) -> dict[str, str]:
    """Read an official split table (.xlsx first sheet, or .csv) into {id: train|val|test|infer}.

    The header is the first row with an id column (FileName, case_id, patient_id, …) beside other
    columns; title rows above it are skipped. `column` picks the split column (case-insensitive);
    None takes the first column whose values are all split words (Training, Val, Testing, …).
    """
    rows = _table_rows(Path(path))
    norm = lambda s: s.strip().lower().replace(" ", "_").replace("-", "_")  # noqa: E731
    for h, row in enumerate(rows[:50]):
        names = [norm(c) for c in row]
        id_cols = [i for i, n in enumerate(names) if n in _ID_HEADERS]
        if id_cols and sum(1 for n in names if n) >= 2:
            break
    else:
        first = next((r for r in rows if any(r)), [])
        raise DataError(path, f"no header row with an id column (one of {', '.join(_ID_HEADERS)}) "
                              f"and a split column; header found: {[c for c in first if c]}")
    header, id_col = rows[h], id_cols[0]
    data = [(h + i + 2, r) for i, r in enumerate(rows[h + 1:]) if len(r) > id_col and r[id_col]]
    value = lambda r, j: r[j].strip().lower() if j < len(r) else ""  # noqa: E731
    if column is not None:
        matches = [j for j, c in enumerate(header) if norm(c) == norm(column)]
        if not matches:
            raise DataError(path, f"no column '{column}'; header: {[c for c in header if c]}")
        col = matches[0]
    else:
        cols = [j for j, c in enumerate(header) if c and j != id_col
                and any(value(r, j) for _, r in data)
                and all(value(r, j) in _SYNONYMS for _, r in data if value(r, j))]
        if not cols:
            raise DataError(path, f"no split column (values like Training/Val/Testing) in header "
                                  f"{[c for c in header if c]}")
        col = cols[0]
    table: dict[str, str] = {}
    for line, r in data:
        ident, raw = r[id_col], value(r, col)
        if raw not in _SYNONYMS:
            raise DataError(path, f"row {line}: id {ident} has split '{raw}' in column "
                                  f"'{header[col]}' (expected e.g. Training/Val/Testing)")
        if table.setdefault(ident, _SYNONYMS[raw]) != _SYNONYMS[raw]:
            raise DataError(path, f"row {line}: id {ident} is listed twice with different splits")
    log.info("split table %s, column '%s': %d ids", path, header[col], len(table))
    return table


def _one_split_each(found: dict[str, set[str]], path: Path | None, source: str) -> dict[str, str]:
    mixed = {p: sorted(s) for p, s in sorted(found.items()) if len(s) > 1}
    if mixed:
        raise DataError(path, f"{source} puts one patient's cases in several splits: "
                              f"{dict(list(mixed.items())[:10])}")
    return {p: s.pop() for p, s in found.items()}


def _from_table(cases: list[Case], groups: dict[str, str | None], cfg: SplitConfig,
                root: Path | None) -> dict[str, str]:
    if cfg.table is None:
        raise DataError(None, "split.method is 'table' but split.table is not set")
    path = cfg.table if root is None or Path(cfg.table).is_absolute() else Path(root) / cfg.table
    table = read_split_table(path, cfg.table_column)
    found: dict[str, set[str]] = defaultdict(set)
    missing: list[str] = []
    for c in (c for c in cases if c.label_path is not None):
        split = table.get(c.case_id, table.get(c.patient_id))
        if split is None:
            missing.append(c.case_id)
        else:
            found[c.patient_id].add(split)
    if missing:
        raise DataError(path, f"{len(missing)} dataset case(s) absent from the split table: "
                              f"{sorted(missing)[:10]}")
    known = {c.case_id for c in cases} | {c.patient_id for c in cases}
    unused = sorted(set(table) - known)
    if unused:
        log.warning("%s: %d table id(s) not in the dataset (e.g. %s); using the ids present",
                    path, len(unused), unused[:5])
    out = _one_split_each(found, path, "the table")
    r_train, r_val = cfg.ratios[0], cfg.ratios[1]
    if "val" not in table.values() and r_val > 0:
        frac = r_val / (r_train + r_val)
        train = [p for p, s in out.items() if s == "train"]
        carved = _allocate(_strata(train, groups, cfg.stratify, cfg.seed), (1 - frac, frac, 0.0))
        out.update(carved)
        log.info("table has no validation set: %d of %d train patients moved to val (seed %d)",
                 sum(s == "val" for s in carved.values()), len(train), cfg.seed)
    return out


def _from_layout(cases: list[Case]) -> dict[str, str]:
    found: dict[str, set[str]] = defaultdict(set)
    bad = [c.case_id for c in cases if c.label_path is not None
           and (c.split or "").strip().lower() not in _SYNONYMS]
    if bad:
        raise DataError(None, f"split.method is 'layout' but {len(bad)} labelled case(s) have no "
                              f"split from the layout: {sorted(bad)[:10]}")
    for c in (c for c in cases if c.label_path is not None):
        found[c.patient_id].add(_SYNONYMS[c.split.strip().lower()])
    return _one_split_each(found, None, "the layout")


def assert_patient_level(assignment: dict[str, str], cases: list[Case]) -> None:
    """Raise DataError unless every case's patient has exactly one valid split and inference-only
    patients (every case unlabelled) are "infer"."""
    labelled = {c.patient_id for c in cases if c.label_path is not None}
    for c in cases:
        split = assignment.get(c.patient_id)
        if split not in (*SPLITS, INFER):
            raise DataError(None, f"case {c.case_id}: patient {c.patient_id} has split {split!r}")
        if c.patient_id not in labelled and split != INFER:
            raise DataError(None, f"inference-only patient {c.patient_id} assigned to {split}")


def assign_splits(cases: list[Case], cfg: SplitConfig, root: Path | None = None) -> dict[str, str]:
    """Map patient_id → "train" | "val" | "test" | "infer" by `cfg.method` (patient-level).

    random: seeded ratios over patients, stratified by group. kfold: fixed test of ratios[2], the
    rest in `folds` folds, val = fold `fold`. table: `cfg.table`, relative to `root` (data.root)
    when given (Training→train, …; val carved from train when the table has none). layout: each
    case's `split`.
    """
    cases = list(cases)
    groups, labelled = _patient_groups(cases)
    if not labelled:
        raise DataError(None, f"no labelled cases to split ({len(cases)} inference-only case(s))")
    assignment = {p: INFER for p in groups if p not in labelled}
    strata = _strata(sorted(labelled), groups, cfg.stratify, cfg.seed)
    methods = {"random": lambda: _allocate(strata, cfg.ratios),
               "kfold": lambda: _kfold(strata, cfg),
               "table": lambda: _from_table(cases, groups, cfg, root),
               "layout": lambda: _from_layout(cases)}
    assignment.update(methods[cfg.method]())
    expected = {s for s, r in zip(SPLITS, cfg.ratios) if r > 0} if cfg.method == "random" else set()
    if cfg.method == "kfold":
        expected = {"train", "val"} | ({"test"} if cfg.ratios[2] > 0 else set())
    assert_patient_level(assignment, cases)
    empty = sorted(s for s in expected if s not in assignment.values())
    if empty:
        log.warning("%d labelled patient(s) are too few: split(s) %s got no patient",
                    len(labelled), empty)
    log.info("split (%s): %s", cfg.method, dict(Counter(assignment.values())))
    return dict(sorted(assignment.items()))


def split_summary(assignment: dict[str, str], cases: list[Case]) -> dict:
    """Patients and cases per split, overall and per group ("ungrouped" for group None)."""
    names = [*SPLITS, *([INFER] if INFER in assignment.values() else [])]
    patients: dict[tuple[str | None, str], set[str]] = defaultdict(set)
    n_cases: Counter = Counter()
    for c in cases:
        split = assignment.get(c.patient_id)
        if split not in names:
            raise DataError(None, f"case {c.case_id}: patient {c.patient_id} has no split")
        for key in (None, c.group or "ungrouped"):
            patients[key, split].add(c.patient_id)
            n_cases[key, split] += 1
    groups = sorted({key for key, _ in patients if key is not None})
    table = lambda key: {"patients": {s: len(patients[key, s]) for s in names},  # noqa: E731
                         "cases": {s: n_cases[key, s] for s in names}}
    return {**table(None), "groups": {g: table(g) for g in groups}}
