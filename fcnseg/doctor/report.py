"""Reporting findings: ordering, exit status, text for people, JSON for machines."""
from __future__ import annotations

import json
import textwrap
from typing import Sequence

from .facts import SEVERITIES, Finding


def by_severity(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def has_errors(findings: Sequence[Finding]) -> bool:
    """True when any finding is an error (the exit status of `fcnseg doctor` is then 1)."""
    return any(f.severity == "error" for f in findings)


def summary_line(findings: Sequence[Finding]) -> str:
    counts = [(sum(f.severity == s for f in findings), s) for s in SEVERITIES]
    return ", ".join(f"{c} {s}{'s' if c != 1 and s != 'info' else ''}" for c, s in counts)


def format_findings(findings: Sequence[Finding], width: int = 100) -> str:
    """Findings as text for people: a header line per finding, its message, then 'fix:'."""
    if not findings:
        return "doctor: no problems found"
    lines = []
    for f in findings:
        head = f"{f.severity.upper():7} {f.code}" + (f"  [{f.layer}]" if f.layer else "")
        lines.append(head)
        lines += textwrap.wrap(f.message, width, initial_indent="    ", subsequent_indent="    ")
        lines += textwrap.wrap(f.fix, width, initial_indent="    fix: ", subsequent_indent="         ")
    lines.append(f"doctor: {summary_line(findings)}")
    return "\n".join(lines)


def findings_json(findings: Sequence[Finding]) -> str:
    """Findings for machines: {"errors": n, "warnings": n, "infos": n, "findings": [{...}, ...]}."""
    counts = {f"{s}s": sum(f.severity == s for f in findings) for s in SEVERITIES}
    return json.dumps({**counts, "findings": [f.to_dict() for f in findings]}, indent=2, ensure_ascii=False)

