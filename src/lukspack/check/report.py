"""Findings: each PASS, WARN or FAIL with its evidence (the path and the value read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("PASS", "WARN", "FAIL")


@dataclass(frozen=True)
class Finding:
    status: str  # PASS | WARN | FAIL
    area: str  # layout, root, os, cloud-init, kernel, boot, network, limits
    check: str
    evidence: str

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "area": self.area, "check": self.check,
                "evidence": self.evidence}


@dataclass
class Report:
    """What the rules add to while they run; INFO lines are facts, not findings."""

    findings: list[Finding] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def add(self, status: str, area: str, check: str, evidence: str) -> None:
        if status == "INFO":
            self.facts.append(evidence)
            return
        if status not in STATUSES:
            raise ValueError(f"finding status {status!r} is not one of {STATUSES}")
        self.findings.append(Finding(status, area, check, evidence))


@dataclass
class CheckReport:
    image: str
    target: str
    virtual_size: int
    findings: list[Finding]
    facts: list[str]
    bytes_read: int
    reads: int
    seconds: float
    cpu_seconds: float
    os: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(f.status == "FAIL" for f in self.findings)

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "target": self.target,
            "result": "FAIL" if self.failed else "PASS",
            "counts": {s: self.count(s) for s in STATUSES},
            "virtual_size": self.virtual_size,
            "os": self.os,
            "findings": [f.to_dict() for f in self.findings],
            "volumes": self.facts,
            "bytes_read": self.bytes_read,
            "reads": self.reads,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }

    def lines(self) -> list[str]:
        out = [f"{self.image}: check for IBM Cloud {self.target}"]
        out += [f"  volume {fact}" for fact in self.facts]
        for f in self.findings:
            out.append(f"  {f.status:4}  {f.area:10} {f.check}: {f.evidence}")
        out.append(f"{'FAIL' if self.failed else 'PASS'}: {self.count('PASS')} passed, "
                   f"{self.count('WARN')} warnings, {self.count('FAIL')} failed; read "
                   f"{self.bytes_read} bytes of {self.virtual_size} in {self.reads} reads, "
                   f"{self.seconds:.2f} s ({self.cpu_seconds:.2f} s CPU)")
        return out
