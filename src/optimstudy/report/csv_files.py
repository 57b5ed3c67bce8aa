"""Every CSV optimstudy writes goes through `write_csv`: a text cell that a spreadsheet would read as
a formula (it starts with =, +, -, @, a tab or a carriage return) is written with a leading
apostrophe, as OWASP advises against CSV injection. summary.csv is attached to MLflow runs and
opened by whoever reads them, and its text cells (labels, problems, warnings) come from specs.
Numbers stay numbers: a number column is written as it is, and so is a text cell that is a number
("-0.5").

    write_csv(study.summary, out / "summary.csv")
"""
from numbers import Number
from pathlib import Path

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """`value`, with an apostrophe before it when its text starts like a formula and it is no number."""
    if value is None or isinstance(value, (bool, Number)):
        return value
    text = value if isinstance(value, str) else str(value)
    if not text.startswith(FORMULA_STARTS) or _is_number(text):
        return value
    return "'" + text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with every text cell (and column name) neutralised by safe_cell."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]) and not pd.api.types.is_bool_dtype(safe[column]):
            safe[column] = safe[column].map(safe_cell, na_action="ignore")
    return safe.rename(columns=lambda name: safe_cell(name) if isinstance(name, str) else name)


def write_csv(frame: pd.DataFrame, path) -> Path:
    """`frame` as a CSV file at `path` (no index), formula-like text neutralised. Rows end in CRLF, as
    RFC 4180 has them: then a cell holding a carriage return is quoted too (with "\n" it is not)."""
    safe_frame(frame).to_csv(path, index=False, lineterminator="\r\n")
    return Path(path)
