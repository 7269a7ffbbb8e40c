"""The API's answers as typed records. Fields the server adds later are kept in `extra`, so an
older client reads a newer server's answers without failing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

T = TypeVar("T")

#: The statuses a job can still leave; every other status is final.
PENDING = frozenset({"queued", "running"})


def _build(cls: Type[T], data: Mapping[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    known = {k: v for k, v in data.items() if k in names and k != "extra"}
    obj = cls(**known)
    if "extra" in names:
        obj.extra = {k: v for k, v in data.items() if k not in names}  # type: ignore[attr-defined]
    return obj


@dataclass
class Job:
    """A job's record (`GET /jobs/{id}`)."""

    job_id: str
    tenant: str
    job_type: str
    status: str
    created_at: str
    reason: Optional[str] = None
    repo_name: Optional[str] = None
    remote_url: Optional[str] = None
    sha: Optional[str] = None
    git_ref: Optional[str] = None
    params: Dict[str, str] = field(default_factory=dict)
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    attempts: int = 0
    max_attempts: int = 1
    cancel_requested: bool = False
    warnings: List[str] = field(default_factory=list)
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    log_truncated: bool = False
    tests: Optional[Dict[str, Any]] = None
    artifact_bytes: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status not in PENDING

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Job":
        return _build(cls, data)


@dataclass
class Submitted:
    """`POST /jobs`'s answer."""

    job_id: str
    status: str
    idempotent_replay: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class JobType:
    name: str
    timeout_s: int
    requires_repo: bool
    allowed_params: List[str] = field(default_factory=list)
    argv: List[str] = field(default_factory=list)
    stages: List[str] = field(default_factory=list)
    network: bool = False
    egress: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TestResult:
    suite: str
    classname: str
    name: str
    status: str
    duration_ms: Optional[int] = None
    message: Optional[str] = None
    flaky: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Tests:
    """One page of a job's test results, failed and errored first."""

    job_id: str
    tests: List[TestResult]
    counts: Optional[Dict[str, Any]] = None
    next_cursor: Optional[str] = None


@dataclass
class Artifact:
    path: str
    kind: str
    size: int
    path_hex: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LogChunk:
    """A piece of a followed log: `text` starts at byte `offset` of the stream."""

    offset: int
    next_offset: int
    text: str


@dataclass
class LogEnd:
    """How a followed log ended: the job's final status."""

    status: str
    next_offset: int
    truncated: bool = False
