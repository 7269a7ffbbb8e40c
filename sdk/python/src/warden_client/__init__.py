"""A typed client of warden's HTTP API: submit jobs, wait for them, follow their logs as
iterators, read their test results and artifacts. Standard library only."""

from ._client import Client, LogFollow, Unreachable, WardenError
from ._types import Artifact, Job, JobType, LogChunk, LogEnd, Submitted, TestResult, Tests

__all__ = [
    "Artifact",
    "Client",
    "Job",
    "JobType",
    "LogChunk",
    "LogEnd",
    "LogFollow",
    "Submitted",
    "TestResult",
    "Tests",
    "Unreachable",
    "WardenError",
]
__version__ = "0.1.0"
