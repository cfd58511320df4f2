"""The quarantine report of a validation run: `validation.json` and a self-contained HTML page.

Both list every quarantined case with its reasons, the files the layout could not use (the
collection's `skipped`, not counted in the valid fraction) and the full facts table.
"""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from samtune.atomic import atomic_write_text
from samtune.data.cases import CaseCollection
from samtune.data.validate import ValidationResult

log = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr.failed td { background: #fde8e8; }
.summary td:first-child { font-weight: 600; }
"""


def report_payload(result: ValidationResult, collection: CaseCollection) -> dict[str, Any]:
    """The JSON report: summary, failures with reasons, skipped files, GE statistics, facts."""
    data = result.to_dict()
    summary = {
        "layout": collection.layout, "root": collection.root,
        "cases": len(result.passed) + len(result.failed), "passed": len(result.passed),
        "quarantined": len(result.failed), "valid_fraction": data["valid_fraction"],
        "skipped_files": len(collection.skipped),
    }
    return {"summary": summary, "quarantined_cases": data["failed"],
            "quarantined_files": dict(sorted(collection.skipped.items())),
            "passed": data["passed"], "statistics": data["statistics"], "facts": data["facts"]}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    elif isinstance(value, float):
        value = f"{value:.6g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], failed: list[bool] | None = None,
           css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    head = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = []
    for n, row in enumerate(rows):
        cls = ' class="failed"' if failed and failed[n] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}>{head}<tbody>{''.join(body)}</tbody></table>"


def render_html(payload: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts) from `report_payload`'s dict."""
    s = payload["summary"]
    summary = _table([], [
        ["dataset", f"{s['layout']} at {s['root']}"], ["cases", s["cases"]],
        ["passed", s["passed"]], ["quarantined cases", s["quarantined"]],
        ["valid fraction", f"{s['valid_fraction']:.1%}"],
        ["skipped files (not counted)", s["skipped_files"]]], css_class="summary")
    cases = [[cid, "; ".join(reasons)] for cid, reasons in payload["quarantined_cases"].items()]
    files = [[path, reason] for path, reason in payload["quarantined_files"].items()]
    facts = payload["facts"]
    columns = list(facts[0]) if facts else []
    failed_ids = set(payload["quarantined_cases"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Validation report: {html.escape(str(s['root']))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Validation report</h1>{summary}",
        f"<h2>Quarantined cases ({len(cases)})</h2>",
        _table(["case", "reasons"], cases) if cases else "<p>None.</p>",
        f"<h2>Quarantined files ({len(files)})</h2>",
        _table(["file", "reason"], files) if files else "<p>None.</p>",
        f"<h2>Facts ({len(facts)} cases)</h2>",
        _table(columns, [[f.get(c) for c in columns] for f in facts],
               [f.get("case_id") in failed_ids for f in facts]),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(result: ValidationResult, collection: CaseCollection,
                 out_dir: Path) -> dict[str, Path]:
    """Write `validation.json` and `validation.html` into `out_dir` (atomically); their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = report_payload(result, collection)
    paths = {"json": out_dir / "validation.json", "html": out_dir / "validation.html"}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["html"], render_html(payload))
    log.info("validation report: %s (%d quarantined cases, %d skipped files)", paths["html"],
             len(result.failed), len(collection.skipped))
    return paths
