"""A client of warden's HTTP API, on the standard library only (urllib): submit, get, wait,
follow a log as an iterator (server-sent events, resumed where it broke off), test results,
artifacts, cancel."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from ._types import Artifact, Job, JobType, LogChunk, LogEnd, Submitted, TestResult, Tests, _build


class WardenError(Exception):
    """warden answered with an error: its HTTP status, error code and message (which says what
    to fix). `code` is one of the API's error codes (`job_not_found`, `unknown_param`, ...)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class Unreachable(WardenError):
    """The server could not be reached (or the connection broke)."""

    def __init__(self, url: str, detail: str):
        super().__init__(0, "unreachable", f"cannot reach warden at {url}: {detail}")


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class Client:
    """One server, one token.

    >>> c = Client("http://127.0.0.1:8080", token=open("agent.token").read().strip())
    >>> job = c.submit("pytest", repo="app", ref="main")
    >>> for chunk in c.follow(job.job_id):
    ...     print(chunk.text, end="")
    >>> c.wait(job.job_id).status
    'succeeded'
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- plumbing -----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ):
        url = self.url + path
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        data = None
        h = {"Accept": "application/json"}
        if headers:
            h.update(headers)
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise WardenError(e.code, err["code"], err["message"]) from None
            except (ValueError, KeyError, TypeError):
                text = raw.decode("utf-8", "replace")[:200]
                raise WardenError(e.code, "http_error", f"HTTP {e.code}: {text}") from None
        except urllib.error.URLError as e:
            raise Unreachable(self.url, str(e.reason)) from None
        except OSError as e:
            raise Unreachable(self.url, str(e)) from None

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        with self._request(method, path, **kw) as resp:
            return json.loads(resp.read())

    # -- jobs ---------------------------------------------------------------------------------

    def job_types(self) -> List[JobType]:
        """The job types the token's tenant may submit."""
        data = self._json("GET", "/job-types")
        return [_build(JobType, t) for t in data["job_types"]]

    def submit(
        self,
        job_type: str,
        *,
        repo: Optional[str] = None,
        sha: Optional[str] = None,
        ref: Optional[str] = None,
        params: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
        callback_url: Optional[str] = None,
        tool_bundle: Optional[str] = None,
        tool_env_var: Optional[str] = None,
    ) -> Submitted:
        """Queues a job; for a repository job give `repo` and a full `sha` or a `ref`.

        `callback_url` receives the job's events as signed webhooks (a host the server allows);
        `tool_bundle` (`sha256:HEX`) names a tool bundle the server holds, bound read-only at
        /run/warden/tools.json under `tool_env_var` (default `AGENT_TOOL_SPEC`).
        """
        body: Dict[str, Any] = {"job_type": job_type}
        for key, value in (
            ("repo_name", repo),
            ("sha", sha),
            ("ref", ref),
            ("idempotency_key", idempotency_key),
            ("callback_url", callback_url),
            ("tool_bundle", tool_bundle),
            ("tool_env_var", tool_env_var),
        ):
            if value is not None:
                body[key] = value
        if params:
            body["params"] = dict(params)
        return _build(Submitted, self._json("POST", "/jobs", body=body))

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._json("GET", f"/jobs/{_quote(job_id)}"))

    def list(
        self,
        *,
        status: Optional[str] = None,
        job_type: Optional[str] = None,
        repo: Optional[str] = None,
        limit: int = 50,
    ) -> Iterator[Job]:
        """The caller's jobs, newest first, page after page."""
        cursor = None
        while True:
            query = {
                "status": status,
                "job_type": job_type,
                "repo": repo,
                "limit": limit,
                "cursor": cursor,
            }
            data = self._json("GET", "/jobs", query=query)
            for j in data["jobs"]:
                yield Job.from_json(j)
            cursor = data.get("next_cursor")
            if not cursor:
                return

    def wait(self, job_id: str, timeout: Optional[float] = None, poll: float = 0.5) -> Job:
        """Polls until the job has ended (or `timeout` seconds pass: `TimeoutError`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, poll)

    def cancel(self, job_id: str) -> Job:
        return Job.from_json(self._json("POST", f"/jobs/{_quote(job_id)}/cancel"))

    # -- logs ---------------------------------------------------------------------------------

    def logs(self, job_id: str, stream: str = "stdout", offset: int = 0,
             limit: Optional[int] = None) -> bytes:
        """A stream's exact bytes from `offset` (at most `limit`)."""
        query = {"stream": stream, "format": "raw", "offset": offset, "limit": limit}
        with self._request("GET", f"/jobs/{_quote(job_id)}/logs", query=query) as resp:
            return resp.read()

    def follow(
        self,
        job_id: str,
        stream: str = "stdout",
        offset: Optional[int] = None,
        tail: Optional[int] = None,
        reconnects: int = 5,
    ) -> "LogFollow":
        """The stream as it is written, as an iterator of `LogChunk`s, until the job ends; then
        the iterator's `end` holds the job's final status. A broken connection is resumed from
        the last byte received (at most `reconnects` times in a row)."""
        return LogFollow(self, job_id, stream, offset, tail, reconnects)

    # -- results ------------------------------------------------------------------------------

    def tests(
        self,
        job_id: str,
        status: Optional[str] = None,
        limit: int = 1000,
        cursor: Optional[str] = None,
    ) -> Tests:
        """One page of the job's test results, failed and errored first."""
        query = {"status": status, "limit": limit, "cursor": cursor}
        data = self._json("GET", f"/jobs/{_quote(job_id)}/tests", query=query)
        return Tests(
            job_id=data["job_id"],
            tests=[_build(TestResult, t) for t in data["tests"]],
            counts=data.get("counts"),
            next_cursor=data.get("next_cursor"),
        )

    def artifacts(self, job_id: str) -> List[Artifact]:
        data = self._json("GET", f"/jobs/{_quote(job_id)}/artifacts")
        return [_build(Artifact, a) for a in data["artifacts"]]

    def artifact(self, job_id: str, path: str) -> bytes:
        """One artifact file's exact bytes."""
        segments = "/".join(_quote(s) for s in path.split("/"))
        with self._request("GET", f"/jobs/{_quote(job_id)}/artifacts/{segments}",
                           headers={"Accept": "*/*"}) as resp:
            return resp.read()


class LogFollow:
    """Iterator over a followed log (see `Client.follow`)."""

    def __init__(self, client: Client, job_id: str, stream: str, offset: Optional[int],
                 tail: Optional[int], reconnects: int):
        self._client = client
        self._job_id = job_id
        self._stream = stream
        self._offset = offset
        self._tail = tail
        self._reconnects = reconnects
        self.end: Optional[LogEnd] = None

    def __iter__(self) -> Iterator[LogChunk]:
        failures = 0
        while self.end is None:
            query: Dict[str, Union[str, int]] = {"stream": self._stream, "follow": "true"}
            if self._offset is not None:
                query["offset"] = self._offset
            elif self._tail is not None:
                query["tail"] = self._tail
            try:
                resp = self._client._request(
                    "GET", f"/jobs/{_quote(self._job_id)}/logs", query=query,
                    headers={"Accept": "text/event-stream"}, timeout=60,
                )
                with resp:
                    for event, data in _sse(resp):
                        failures = 0
                        if event == "log":
                            chunk = LogChunk(data["offset"], data["next_offset"], data["text"])
                            self._offset = chunk.next_offset
                            yield chunk
                        elif event == "end":
                            self.end = LogEnd(data["status"], data["next_offset"],
                                              data.get("truncated", False))
                            return
                        elif event == "error":
                            raise WardenError(500, "log_stream_failed", json.dumps(data))
            except (Unreachable, OSError) as e:
                failures += 1
                if failures > self._reconnects:
                    raise Unreachable(self._client.url, f"the log stream broke: {e}") from None
                time.sleep(min(0.2 * failures, 2.0))
            if self.end is None and self._offset is None:
                self._offset = 0


def _sse(resp) -> Iterator[tuple]:
    """(event, parsed data) pairs of a server-sent event stream."""
    event, data = "message", []
    for raw in resp:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                payload = "\n".join(data)
                try:
                    parsed = json.loads(payload)
                except ValueError:
                    parsed = {"text": payload}
                yield event, parsed
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
