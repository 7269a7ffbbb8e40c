"""The client against a live warden, which the workspace's test suite starts (tests/it/sdk.rs)
with these job types: `pytest` (a project's suite at a commit), `chatty` (prints numbered lines
over a few seconds), `sleeper` (runs until cancelled). Its environment names the server, a
token of tenant `agents` and the commit whose `test_shout` fails."""

import os
import threading

import pytest

from warden_client import Client, Unreachable, WardenError


@pytest.fixture(scope="session")
def env():
    missing = [k for k in ("WARDEN_URL", "WARDEN_TOKEN", "WARDEN_TEST_SHA") if k not in os.environ]
    assert not missing, f"run by tests/it/sdk.rs, which sets {missing}"
    return os.environ


@pytest.fixture(scope="session")
def client(env):
    return Client(env["WARDEN_URL"], token=env["WARDEN_TOKEN"])


@pytest.fixture(scope="session")
def pytest_job(client, env):
    sub = client.submit("pytest", repo="greet", sha=env["WARDEN_TEST_SHA"])
    return client.wait(sub.job_id, timeout=120)


def test_job_types_are_the_tenants(client):
    types = {t.name: t for t in client.job_types()}
    assert set(types) == {"pytest", "chatty", "sleeper"}
    assert types["pytest"].requires_repo
    assert types["chatty"].allowed_params == ["LINES"]


def test_a_job_at_a_commit_ends_with_its_status_and_record(pytest_job, env):
    assert pytest_job.status == "failed"
    assert pytest_job.finished
    assert pytest_job.sha == env["WARDEN_TEST_SHA"]
    assert pytest_job.repo_name == "greet"
    assert pytest_job.exit_code == 1
    assert pytest_job.tests["failed"] == 1


def test_tests_come_failures_first(client, pytest_job):
    page = client.tests(pytest_job.job_id)
    assert [(t.name, t.status) for t in page.tests] == [
        ("test_shout", "failed"),
        ("test_hello", "passed"),
    ]
    assert "assert" in page.tests[0].message
    only = client.tests(pytest_job.job_id, status="passed")
    assert [t.name for t in only.tests] == ["test_hello"]


def test_artifacts_are_listed_and_read_byte_exact(client, pytest_job):
    listing = {a.path: a for a in client.artifacts(pytest_job.job_id)}
    assert "junit.xml" in listing
    body = client.artifact(pytest_job.job_id, "junit.xml")
    assert len(body) == listing["junit.xml"].size
    assert b"test_shout" in body
    with pytest.raises(WardenError) as e:
        client.artifact(pytest_job.job_id, "nope.txt")
    assert (e.value.status, e.value.code) == (404, "artifact_not_found")


def test_a_followed_log_arrives_in_order_while_the_job_runs(client):
    sub = client.submit("chatty", params={"LINES": "30"})
    follow = client.follow(sub.job_id)
    text = ""
    seen_running = False
    for chunk in follow:
        text += chunk.text
        if not seen_running and text:
            # The first lines arrive before the job has ended: live, not after the fact.
            seen_running = client.get(sub.job_id).status == "running"
    assert seen_running
    assert text.splitlines() == [f"line {i}" for i in range(1, 31)]
    assert follow.end.status == "succeeded"
    assert follow.end.next_offset == len(text.encode())
    # The same bytes, exactly, without following; and a range of them.
    assert client.logs(sub.job_id) == text.encode()
    assert client.logs(sub.job_id, offset=7, limit=6) == text.encode()[7:13]


def test_a_follow_from_an_offset_starts_there(client):
    sub = client.submit("chatty", params={"LINES": "5"})
    client.wait(sub.job_id, timeout=60)
    whole = client.logs(sub.job_id)
    follow = client.follow(sub.job_id, offset=7)
    assert "".join(c.text for c in follow).encode() == whole[7:]
    assert follow.end.status == "succeeded"


def test_cancel_ends_a_running_job(client):
    sub = client.submit("sleeper")
    follow = client.follow(sub.job_id)
    done = threading.Event()

    def drain():
        for _ in follow:
            pass
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    client.cancel(sub.job_id)
    job = client.wait(sub.job_id, timeout=60)
    assert job.status == "cancelled"
    assert done.wait(30), "a follow ends when its job does"
    assert follow.end.status == "cancelled"
    with pytest.raises(WardenError) as e:
        client.cancel(sub.job_id)
    assert e.value.code == "job_finished"


def test_listing_pages_through_the_tenants_jobs(client, pytest_job):
    jobs = list(client.list(job_type="pytest", limit=1))
    assert pytest_job.job_id in [j.job_id for j in jobs]
    assert all(j.job_type == "pytest" for j in jobs)


def test_mistakes_are_errors_with_the_apis_code(client, env):
    cases = [
        (lambda: client.get("nope"), 400, "invalid_job_id"),
        (lambda: client.get("0193f1e0-0000-7000-8000-000000000000"), 404, "job_not_found"),
        (lambda: client.submit("rm-rf"), 422, "unknown_job_type"),
        (lambda: client.submit("chatty", params={"PATH": "/evil"}), 422, "unknown_param"),
        (lambda: client.submit("pytest"), 422, "repo_required"),
        (lambda: client.submit("chatty", tool_bundle="sha256:" + "0" * 64), 422,
         "tool_bundle_unknown"),
        (lambda: client.submit("chatty", tool_env_var="TOOLS"), 422, "invalid_request"),
        (lambda: client.tests("0193f1e0-0000-7000-8000-000000000000", status="green"), 400,
         "invalid_query"),
    ]
    for call, status, code in cases:
        with pytest.raises(WardenError) as e:
            call()
        assert (e.value.status, e.value.code) == (status, code), e.value
        assert e.value.message
    with pytest.raises(WardenError) as e:
        Client(env["WARDEN_URL"], token="wdn_0000000000000000_" + "A" * 43).job_types()
    assert (e.value.status, e.value.code) == (401, "unauthenticated")
    with pytest.raises(Unreachable):
        Client("http://127.0.0.1:9", timeout=2).get("x")
