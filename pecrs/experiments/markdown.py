"""Table cells and markdown tables: our numbers in the paper's scale, "not run" where nothing
was measured, "n/a" where a measured number is undefined, the paper's numbers as printed."""
from __future__ import annotations

NOT_RUN = "not run"
UNDEFINED = "n/a"          # measured, but undefined on its input (e.g. no sample with a target)


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(x):
        return str(x).replace("|", "\\|")

    for row in rows:   # a cell too many or too few shifts every number after it under another header
        if len(row) != len(headers):
            raise ValueError(f"table row of {len(row)} cells under {len(headers)} headers: {row[:2]}")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fmt(value, kind: str = "num", measured: bool = True) -> str:
    """A table cell: `value` in the paper's scale, "not run" when not measured, "n/a" when undefined.
    kind: "pct" (a fraction printed x100, 1 decimal), "pct2" (x100, 2 decimals), "num2", "num3",
    "int", "sec"."""
    if not measured:
        return NOT_RUN
    if value is None:
        return UNDEFINED
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "pct2":
        return f"{100 * value:.2f}"
    if kind == "int":
        return f"{int(value)}"
    if kind == "num3":
        return f"{value:.3f}"
    if kind == "sec":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return f"{value:.2f}"


def paper(value, spec: str = "") -> str:
    """A paper cell, printed with the paper's decimals (`spec`: "int" or a format such as ".2f");
    "—" where the paper has no number."""
    if value is None:
        return "—"
    if spec == "int":
        return str(int(value))
    return format(value, spec) if spec else str(value)
