"""A finding: one thing doctor (or a loader) has to say, as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]
_RANK = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    severity: Severity
    category: str
    field: str
    message: str
    fix: str = ""
    where: str = ""  # file:line when known

    def location(self) -> str:
        if self.where and self.field:
            return f"{self.where}: {self.field}"
        return self.where or self.field

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; stable within a severity."""
    return sorted(findings, key=lambda f: _RANK[f.severity])


def exit_code(findings: list[Finding], fail_on_warnings: bool) -> int:
    """doctor's contract: 1 on any error, 2 on warnings under --fail-on-warnings, else 0."""
    if any(f.severity == "error" for f in findings):
        return 1
    if fail_on_warnings and any(f.severity == "warning" for f in findings):
        return 2
    return 0
