"""``cai eval`` extras: ``--measure-judge`` prints the local refusal classifier's measured accuracy instead of
evaluating (the rest of the command is generated from the eval config, see :mod:`cai.cli.stage_cmd`)."""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

import typer

from cai.cli.common import out

PARAMS = [
    inspect.Parameter("x_measure_judge", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--measure-judge", help="Print the local refusal classifier's precision/recall on the "
                                                   "shipped labeled set and exit")]),
    inspect.Parameter("x_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="With --measure-judge: print the full measurement as JSON")]),
]


def intercept(kw: dict[str, Any]) -> bool:
    """Handle ``--measure-judge``; True when the command is done."""
    if not kw.get("x_measure_judge"):
        return False
    _print_measurement(bool(kw.get("x_json")))
    return True


def _print_measurement(as_json: bool) -> None:
    from cai.evaluate.refusal import measure_refusal_classifier

    m = measure_refusal_classifier()
    if as_json:
        out.print_json(json.dumps(m))
        return
    out.print(f"refusal classifier {m['classifier']} on {m['file']} (positive class: refused)")
    for split, s in m["splits"].items():
        out.print(f"  {split:8s} n={s['n']:3d}  precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
                  f"F1 {s['f1']:.3f}  accuracy {s['accuracy']:.3f}  (tp {s['tp']}, fp {s['fp']}, fn {s['fn']}, tn {s['tn']})")
    out.print("  per-kind accuracy (dev | heldout):")
    kinds = sorted({k for s in m["splits"].values() for k in s["per_kind"]})
    for k in kinds:
        cells = []
        for split in ("dev", "heldout"):
            pk = m["splits"][split]["per_kind"].get(k)
            cells.append(f"{pk['correct']}/{pk['n']} = {pk['accuracy']:.2f}" if pk else "-")
        out.print(f"    {k:26s} {cells[0]:>14s} | {cells[1]}")
