// The client against a live warden over gRPC, which the workspace's test suite starts
// (tests/it/sdk.rs): WARDEN_GRPC is its gRPC address, WARDEN_TOKEN a token of tenant `agents`,
// WARDEN_TEST_SHA the commit of the `greet` project whose `test_shout` fails.

import assert from "node:assert/strict";
import { test } from "node:test";

import { JobStatus, Warden, WardenError, isFinished } from "../src/index.js";

function env(name: string): string {
  const v = process.env[name];
  assert.ok(v, `run by tests/it/sdk.rs, which sets ${name}`);
  return v;
}

test("a job submitted at a commit is followed live to its end", async () => {
  const w = new Warden(env("WARDEN_GRPC"), { token: env("WARDEN_TOKEN") });
  try {
    const sub = await w.submit({ jobType: "chatty", params: { LINES: "20" } });
    assert.ok(sub.created);
    const id = sub.job!.jobId;
    assert.match(id, /^[0-9a-f-]{36}$/);
    let text = "";
    let next = 0;
    let sawRunning = false;
    const end = await w.follow(id, (data, offset) => {
      assert.equal(offset, next, "chunks arrive in order, without gaps");
      next = offset + data.length;
      text += data.toString("utf8");
      if (!sawRunning && text.length > 0) {
        // The first bytes came while the job still ran: followed live, not after the fact.
        void w.get(id).then((j) => {
          if (j.status === JobStatus.JOB_STATUS_RUNNING) sawRunning = true;
        });
      }
    });
    assert.ok(sawRunning, "the log was followed while the job ran");
    assert.equal(end.status, JobStatus.JOB_STATUS_SUCCEEDED);
    assert.deepEqual(
      text.trimEnd().split("\n"),
      Array.from({ length: 20 }, (_, i) => `line ${i + 1}`),
    );
    const job = await w.get(id);
    assert.ok(isFinished(job.status));
    assert.equal(job.stdoutBytes, Buffer.byteLength(text));

    const tests = await w.submit({ jobType: "pytest", repoName: "greet", sha: env("WARDEN_TEST_SHA") });
    const done = await w.wait(tests.job!.jobId, 120_000);
    assert.equal(done.status, JobStatus.JOB_STATUS_FAILED);
    assert.equal(done.sha, env("WARDEN_TEST_SHA"));
    assert.equal(done.exitCode, 1);
  } finally {
    w.close();
  }
});

test("mistakes are errors with warden's code", async () => {
  const w = new Warden(env("WARDEN_GRPC"), { token: env("WARDEN_TOKEN") });
  try {
    await assert.rejects(w.submit({ jobType: "rm-rf" }), (e: unknown) => {
      assert.ok(e instanceof WardenError);
      assert.equal(e.code, "unknown_job_type");
      return true;
    });
    await assert.rejects(w.get("nope"), (e: unknown) => {
      assert.ok(e instanceof WardenError);
      assert.equal(e.code, "invalid_job_id");
      return true;
    });
  } finally {
    w.close();
  }
  const anonymous = new Warden(env("WARDEN_GRPC"));
  try {
    await assert.rejects(anonymous.get("nope"), (e: unknown) => {
      assert.ok(e instanceof WardenError);
      assert.equal(e.code, "unauthenticated");
      return true;
    });
  } finally {
    anonymous.close();
  }
});
