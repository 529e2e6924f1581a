"""A headline figure: a ratio measured in one run, with the goal it is judged against."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Direction = Literal[">=", "<="]


@dataclass(frozen=True)
class Figure:
    key: str  # stable identifier, e.g. "dynamic_batch_shm"
    label: str  # what was divided by what
    value: float
    goal: float | None  # None: reported for a decision, judged against nothing
    direction: Direction = ">="
    unit: str = "×"
    context: str = ""  # the absolute numbers behind the ratio (noisy; context only)

    @property
    def met(self) -> bool | None:
        """True/False against the goal; None without a goal or a finite value."""
        if self.goal is None or not math.isfinite(self.value):
            return None
        return self.value >= self.goal if self.direction == ">=" else self.value <= self.goal

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def goal_text(figure: dict[str, Any]) -> str:
    """'≥ 1.8', '≤ 1.3×' or '—' for a figure stored with `Figure.as_dict`."""
    if figure.get("goal") is None:
        return "—"
    symbol = "≥" if figure["direction"] == ">=" else "≤"
    return f"{symbol} {format_value(figure['goal'], figure.get('unit', ''))}"


def format_value(value: float | None, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e4):
        return f"{value:.1e}{unit}"
    return f"{value:.2f}{unit}"


def verdict(figure: dict[str, Any]) -> str:
    if figure.get("goal") is None:
        return "reported"
    value = figure.get("value")
    if value is None or not math.isfinite(value):
        return "not measured"
    return "met" if figure.get("met") else "**missed**"
