// A gRPC client of warden: the generated JobService client (src/gen, from proto/warden/v1 by
// ts-proto) with the token on every call, and promise helpers for what every caller does —
// submit, get, wait, follow a log to its end.

import * as grpc from "@grpc/grpc-js";
import {
  Job,
  JobServiceClient,
  JobStatus,
  LogStream,
  SubmitJobRequest,
  SubmitJobResponse,
} from "./gen/warden/v1/jobs.js";

export * from "./gen/warden/v1/jobs.js";

/** Statuses a job can still leave; every other status is final. */
export function isFinished(status: JobStatus): boolean {
  return status !== JobStatus.JOB_STATUS_QUEUED && status !== JobStatus.JOB_STATUS_RUNNING;
}

/** A warden error: the gRPC status, warden's error code (`warden-error-code`) and message. */
export class WardenError extends Error {
  constructor(
    readonly grpcCode: grpc.status,
    readonly code: string,
    message: string,
  ) {
    super(`${message} (${code})`);
  }
}

function wardenError(e: grpc.ServiceError): WardenError {
  const code = e.metadata?.get("warden-error-code")?.[0]?.toString() ?? "unknown";
  return new WardenError(e.code, code, e.details || e.message);
}

export interface ConnectOptions {
  /** An API token (`warden token create`); sent as `authorization: Bearer` on every call. */
  token?: string;
  /** TLS for a `grpcs://` server; plaintext otherwise. */
  credentials?: grpc.ChannelCredentials;
}

/** One server's JobService, as one token. `address` is `host:port`. */
export class Warden {
  readonly raw: JobServiceClient;
  private readonly metadata: grpc.Metadata;

  constructor(address: string, options: ConnectOptions = {}) {
    this.raw = new JobServiceClient(
      address,
      options.credentials ?? grpc.credentials.createInsecure(),
    );
    this.metadata = new grpc.Metadata();
    if (options.token) {
      this.metadata.set("authorization", `Bearer ${options.token}`);
    }
  }

  close(): void {
    this.raw.close();
  }

  submit(req: Partial<SubmitJobRequest> & { jobType: string }): Promise<SubmitJobResponse> {
    const full = SubmitJobRequest.fromPartial(req);
    return new Promise((resolve, reject) =>
      this.raw.submitJob(full, this.metadata, (e, r) => (e ? reject(wardenError(e)) : resolve(r))),
    );
  }

  get(jobId: string): Promise<Job> {
    return new Promise((resolve, reject) =>
      this.raw.getJob({ jobId }, this.metadata, (e, r) => (e ? reject(wardenError(e)) : resolve(r))),
    );
  }

  cancel(jobId: string): Promise<Job> {
    return new Promise((resolve, reject) =>
      this.raw.cancelJob({ jobId }, this.metadata, (e, r) => (e ? reject(wardenError(e)) : resolve(r))),
    );
  }

  /** Polls until the job has ended. */
  async wait(jobId: string, timeoutMs = 600_000): Promise<Job> {
    const deadline = Date.now() + timeoutMs;
    let delay = 50;
    for (;;) {
      const job = await this.get(jobId);
      if (isFinished(job.status)) return job;
      if (Date.now() >= deadline) throw new Error(`job ${jobId} still ${JobStatus[job.status]}`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }

  /**
   * A stream of the job's log from `offset`, chunk by chunk as it is written, until the job
   * ends; resolves with the job's final status once the last chunk was given to `onData`.
   */
  follow(
    jobId: string,
    onData: (data: Buffer, offset: number) => void,
    options: { stream?: LogStream; offset?: number } = {},
  ): Promise<{ status: JobStatus; truncated: boolean }> {
    return new Promise((resolve, reject) => {
      const call = this.raw.streamJobLogs(
        {
          jobId,
          stream: options.stream ?? LogStream.LOG_STREAM_STDOUT,
          offset: options.offset ?? 0,
          follow: true,
        },
        this.metadata,
      );
      let end: { status: JobStatus; truncated: boolean } | undefined;
      call.on("data", (chunk) => {
        if (chunk.data.length > 0) onData(chunk.data, chunk.offset);
        if (chunk.end) end = { status: chunk.status, truncated: chunk.truncated };
      });
      call.on("error", (e: grpc.ServiceError) => reject(wardenError(e)));
      call.on("end", () =>
        end ? resolve(end) : reject(new Error("the log stream ended before the job did")),
      );
    });
  }
}
