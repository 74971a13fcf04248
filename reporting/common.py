"""What every renderer shares: number and cell formatting, the verdict a row may state, the
provenance line under each block, Markdown tables and saved figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

MTA_LABELS = {
    "base": "base (no history)",
    "rag": "RAG (BM25 top-1)",
    "prior": "prior (most frequent, newest breaks ties)",
    "prior_recency": "prior_recency",
    "oppu": "OPPU (own LoRA)",
    "fusion": "fusion (no stacking)",
    "mta": "**MTA**",
    "mta_prior": "mta_prior",
    "mta_swept": "MTA (swept)",
    "uniform": "uniform merge of all anchors",
    "random": "random anchors",
}
MEM_COLUMNS = ["recall_all@5", "recall_any@5", "recall_all@10", "ndcg_any@5"]


def _f(x, nd=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def verdict_of(d: dict | None) -> str:
    """The verdict a row may state: an order must hold under every calibration shown, so a row
    whose uncalibrated test disagrees is n.s. (`calibration_dependent`), also for summaries made
    before the summary itself enforced it."""
    if not d:
        return "n.s."
    if "verdict_uncalibrated" in d and d["verdict_uncalibrated"] != d.get("verdict_primary", d["verdict"]):
        return "n.s."
    return d["verdict"]


def _diff(d: dict | None) -> str:
    """diff [95% CI] p_holm verdict (verdict from the Holm-corrected test at the interval's unit;
    "n.s.*" = an order that only one calibration supports)."""
    if not d:
        return "—"
    lo, hi = d["ci95"]
    p = f" p={d['p_holm']:.3g}" if "p_holm" in d else ""
    v = verdict_of(d)
    dep = "*" if v == "n.s." and d.get("verdict_primary", d["verdict"]) != d.get("verdict_uncalibrated", v) else ""
    return f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{p} {v}{dep}"


def _provenance(r: dict) -> list[str]:
    p = r.get("provenance")
    if not p:
        return ["", "_Provenance: not recorded (made before summaries recorded their commit)._"]
    commit = p.get("commit", "unknown")
    dirty = " (uncommitted changes)" if p.get("dirty") else ""
    code = f", method code `{p['code_version']}`" if p.get("code_version") else ""
    if p.get("code_changed"):
        code += f" at the start, **`{p['code_version_end']}` at the end (the code changed while it ran)**"
    files = p.get("files") or {}
    sums = "; sha256 of " + ", ".join(f"{k} `{v['sha256'][:10]}`" for k, v in files.items()) if files else ""
    note = f" ({p['recorded']})" if p.get("recorded") else ""
    bank = f"; bank `{p['bank']['id']}`" if isinstance(p.get("bank"), dict) and p["bank"].get("id") else ""
    return ["", f"_Made at commit `{commit[:10]}`{dirty}{code}{sums}{bank}{note}._"]


def _cell(text: str) -> str:
    """A table cell from data (method names, values): no pipe, no HTML or comment, one line."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _save(fig, png: Path) -> Path:
    """Lay out, write and close a figure (every plot of the report)."""
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(_cell, r)) + " |" for r in rows
    ]


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
