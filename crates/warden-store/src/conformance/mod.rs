//! Behaviour every [`Store`] backend must show. A backend's tests run these with
//! [`conformance_tests!`](crate::conformance_tests), giving a fresh, empty store to each check.

use std::collections::BTreeMap;

use warden_api::ResourceUsage;
use warden_core::{JobId, JobStatus};

mod events;
mod perimeter;
mod retention;
pub use events::*;
pub use perimeter::*;
pub use retention::*;

use crate::{
    CancelOutcome, ClaimFor, Claimed, Completion, Handed, ListFilter, LogStream, Millis, NewJob,
    Store, StoreError, SubmitOutcome,
};

/// Generates one `#[tokio::test]` per conformance check. `$make` is an expression producing a
/// future of `(store, guard)`; the guard (a temp dir, a database to drop) lives for the test.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            submit_and_get_round_trip,
            idempotency_key_returns_the_same_job,
            idempotency_key_with_other_request_conflicts,
            idempotency_keys_are_per_tenant,
            claim_is_fifo_and_exclusive,
            claim_honours_job_types,
            claim_many_takes_the_oldest_each_under_its_own_lease,
            a_submission_claims_fairly_for_an_idle_slot,
            a_claim_for_an_idle_slot_is_handed_over_once_committed,
            a_completion_tells_its_record_once_committed,
            stale_lease_is_fenced_out,
            logs_are_offset_addressed_and_byte_exact,
            cancel_queued_running_and_finished,
            expired_leases_are_requeued_then_lost,
            release_requeues_without_counting_the_attempt,
            list_filters_and_paginates_newest_first,
            complete_records_the_outcome_once,
            repo_fields_and_invariants_round_trip,
            fair_share_serves_a_newcomer_next,
            fair_share_follows_weights_and_max_running,
            max_queued_refuses_without_writing,
            tokens_round_trip_and_revoke_once,
            audit_is_appended_listed_and_purged,
            a_submissions_audit_entry_commits_with_the_job_only,
            inline_argv_round_trips,
            test_results_are_fenced_ordered_and_flaky_across_jobs,
            retention_deletes_only_finished_jobs_oldest_first,
            one_collector_holds_the_lease_until_it_expires,
            the_outbox_holds_every_change_in_order_only_while_on,
            one_publisher_holds_the_outbox_lease,
            webhook_deliveries_follow_the_outbox_in_order_per_job_and_url
        );
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::conformance::$name(&store).await;
            }
        )*
    };
}

pub(super) const LEASE_MS: i64 = 30_000;

fn new_job(job_type: &str, key: Option<&str>, now: i64) -> NewJob {
    NewJob {
        params: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        idempotency_key: key.map(str::to_string),
        max_attempts: 2,
        ..NewJob::plain(job_type, now)
    }
}

pub(super) async fn submit(store: &dyn Store, job: NewJob) -> crate::JobRecord {
    match store.submit(job).await.unwrap() {
        SubmitOutcome::Created(j) => j,
        other => panic!("expected a new job, got {other:?}"),
    }
}

pub async fn submit_and_get_round_trip(store: &dyn Store) {
    let mut job = new_job("echo", Some("k1"), 1_000);
    job.repo_name = Some("click".into());
    job.remote_url = Some("https://example.invalid/click.git".into());
    job.sha = Some("a".repeat(40));
    job.unsafe_fallback = true;
    let created = submit(store, job.clone()).await;
    let got = store.get(job.id).await.unwrap();
    assert_eq!(created, got);
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.params, job.params);
    assert_eq!(got.sha, job.sha);
    assert_eq!(got.attempts, 0);
    assert!(got.unsafe_fallback);
    assert_eq!(got.created_at, 1_000);
    assert!(matches!(
        store.get(JobId::new()).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn idempotency_key_returns_the_same_job(store: &dyn Store) {
    let first = submit(store, new_job("echo", Some("same"), 1)).await;
    let again = store
        .submit(new_job("echo", Some("same"), 2))
        .await
        .unwrap();
    match again {
        SubmitOutcome::Existing(j) => assert_eq!(j.id, first.id),
        other => panic!("expected the existing job, got {other:?}"),
    }
}

pub async fn idempotency_key_with_other_request_conflicts(store: &dyn Store) {
    let first = submit(store, new_job("echo", Some("k"), 1)).await;
    let mut other = new_job("echo", Some("k"), 2);
    other.params.insert("GREETING".into(), "different".into());
    match store.submit(other).await {
        Err(StoreError::IdempotencyConflict { key, existing }) => {
            assert_eq!(key, "k");
            assert_eq!(existing, first.id);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub async fn idempotency_keys_are_per_tenant(store: &dyn Store) {
    let a = submit(store, new_job("echo", Some("k"), 1)).await;
    let mut job = new_job("echo", Some("k"), 2);
    job.tenant = "other".into();
    let b = submit(store, job).await;
    assert_ne!(a.id, b.id);
}

pub async fn claim_is_fifo_and_exclusive(store: &dyn Store) {
    assert!(
        store
            .claim("w", None, LEASE_MS, 10)
            .await
            .unwrap()
            .is_none()
    );
    let a = submit(store, new_job("echo", None, 1)).await;
    let b = submit(store, new_job("echo", None, 2)).await;
    let ca = store
        .claim("w1", None, LEASE_MS, 10)
        .await
        .unwrap()
        .unwrap();
    let cb = store
        .claim("w2", None, LEASE_MS, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ca.job.id, a.id);
    assert_eq!(cb.job.id, b.id);
    assert!(
        store
            .claim("w3", None, LEASE_MS, 10)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(ca.job.status, JobStatus::Running);
    assert_eq!(ca.job.attempts, 1);
    assert_eq!(ca.job.started_at, Some(10));
    assert_eq!(ca.lease.worker, "w1");
    assert_eq!(ca.job.lease_expires_at, Some(10 + LEASE_MS));
    // A claim returns the row as it stands after the claim.
    assert_eq!(store.get(a.id).await.unwrap(), ca.job);
}

pub async fn claim_honours_job_types(store: &dyn Store) {
    let gpu = submit(store, new_job("gpu", None, 1)).await;
    let plain = submit(store, new_job("echo", None, 2)).await;
    let only_echo = ["echo".to_string()];
    let c = store
        .claim("w", Some(&only_echo), LEASE_MS, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, plain.id, "the older gpu job is not this worker's");
    assert!(
        store
            .claim("w", Some(&only_echo), LEASE_MS, 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim("w", Some(&[]), LEASE_MS, 10)
            .await
            .unwrap()
            .is_none()
    );
    let any = store.claim("w", None, LEASE_MS, 10).await.unwrap().unwrap();
    assert_eq!(any.job.id, gpu.id);
}

pub async fn claim_many_takes_the_oldest_each_under_its_own_lease(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(store, new_job("echo", None, i)).await.id);
    }
    submit(store, new_job("other", None, 9)).await;
    let echo = ["echo".to_string()];
    let got = store
        .claim_many("w", Some(&echo), 3, LEASE_MS, 10)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|c| c.job.id).collect::<Vec<_>>(), ids[..3]);
    for c in &got {
        assert_eq!(c.job.status, JobStatus::Running);
        assert_eq!(c.lease.job_id, c.job.id);
        assert_eq!(c.lease.token, c.job.lease_token);
        store.heartbeat(&c.lease, LEASE_MS, 11).await.unwrap();
    }
    let rest = store
        .claim_many("w", Some(&echo), 10, LEASE_MS, 10)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|c| c.job.id).collect::<Vec<_>>(), ids[3..]);
    assert!(
        store
            .claim_many("w", Some(&echo), 10, LEASE_MS, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_submission_claims_fairly_for_an_idle_slot(store: &dyn Store) {
    let slot = ClaimFor {
        worker: "w".into(),
        job_types: Some(vec!["echo".into()]),
        lease_ms: LEASE_MS,
    };
    // Nothing else queued: the job just submitted, already under the slot's lease.
    let job = new_job("echo", Some("k"), 1);
    let (outcome, claimed) = store
        .submit_and_claim(job.clone(), &slot, 10)
        .await
        .unwrap();
    let SubmitOutcome::Created(created) = outcome else {
        panic!("expected a new job, got {outcome:?}");
    };
    assert_eq!(created.status, JobStatus::Queued, "the record as submitted");
    let c = claimed.expect("claimed for the slot");
    assert_eq!(c.job.id, job.id);
    assert_eq!(c.job.status, JobStatus::Running);
    assert_eq!(c.job.attempts, 1);
    assert_eq!(c.job.started_at, Some(10));
    assert_eq!(c.job.lease_expires_at, Some(10 + LEASE_MS));
    assert_eq!(
        (c.lease.worker.as_str(), c.lease.token),
        ("w", c.job.lease_token)
    );
    assert_eq!(
        store.get(job.id).await.unwrap(),
        c.job,
        "committed as claimed"
    );
    store.heartbeat(&c.lease, LEASE_MS, 11).await.unwrap();
    // A replay claims nothing.
    let (again, none) = store.submit_and_claim(job, &slot, 12).await.unwrap();
    assert!(matches!(again, SubmitOutcome::Existing(j) if j.id == c.job.id));
    assert!(none.is_none());
    // The fair pick, not the newest: an older queued job goes first, and a type the slot does
    // not run stays queued.
    let older = submit(store, new_job("echo", None, 20)).await;
    let second = new_job("echo", None, 21);
    let (_, first) = store
        .submit_and_claim(second.clone(), &slot, 22)
        .await
        .unwrap();
    assert_eq!(first.unwrap().job.id, older.id);
    let gpu = new_job("gpu", None, 30);
    let (_, next) = store
        .submit_and_claim(gpu.clone(), &slot, 31)
        .await
        .unwrap();
    assert_eq!(next.unwrap().job.id, second.id);
    let (_, none) = store
        .submit_and_claim(new_job("gpu", None, 32), &slot, 33)
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(store.get(gpu.id).await.unwrap().status, JobStatus::Queued);
    // Refused (over the tenant's queue cap): nothing written, nothing claimed.
    let full = NewJob {
        max_queued: Some(0),
        ..new_job("echo", None, 40)
    };
    assert!(matches!(
        store.submit_and_claim(full.clone(), &slot, 41).await,
        Err(StoreError::QueueFull { .. })
    ));
    assert!(matches!(
        store.get(full.id).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A hand that keeps what it is given in `got` and takes it (`take`) or gives it back.
fn hand_into(got: &std::sync::Arc<std::sync::Mutex<Vec<Claimed>>>, take: bool) -> crate::Hand {
    let got = got.clone();
    Box::new(move |c: Claimed| {
        got.lock().unwrap().push(c.clone());
        if take { Ok(()) } else { Err(Box::new(c)) }
    })
}

pub async fn a_claim_for_an_idle_slot_is_handed_over_once_committed(store: &dyn Store) {
    let slot = ClaimFor {
        worker: "w".into(),
        job_types: None,
        lease_ms: LEASE_MS,
    };
    let got = std::sync::Arc::default();
    let job = new_job("echo", Some("k"), 1);
    let (outcome, handed) = store
        .submit_and_hand(job.clone(), &slot, 10, hand_into(&got, true))
        .await
        .unwrap();
    assert!(matches!(outcome, SubmitOutcome::Created(_)));
    assert!(
        matches!(handed, Handed::Taken(id) if id == job.id),
        "{handed:?}"
    );
    let c = got
        .lock()
        .unwrap()
        .pop()
        .expect("the hand was given the job");
    assert_eq!(c.job.id, job.id);
    assert_eq!(
        store.get(job.id).await.unwrap(),
        c.job,
        "handed as committed"
    );
    store.heartbeat(&c.lease, LEASE_MS, 11).await.unwrap();

    // A replay claims nothing: the hand is dropped untouched.
    let (_, handed) = store
        .submit_and_hand(job, &slot, 12, hand_into(&got, true))
        .await
        .unwrap();
    assert!(matches!(handed, Handed::Nothing), "{handed:?}");
    assert!(got.lock().unwrap().is_empty());

    // Given back (the slot went away): the caller has the lease and may release it.
    let other = new_job("echo", None, 20);
    let (_, handed) = store
        .submit_and_hand(other.clone(), &slot, 21, hand_into(&got, false))
        .await
        .unwrap();
    let Handed::Refused(back) = handed else {
        panic!("expected the job back, got {handed:?}");
    };
    assert_eq!(back.job.id, other.id);
    store.release(&back.lease).await.unwrap();
    assert_eq!(store.get(other.id).await.unwrap().status, JobStatus::Queued);

    // Refused by the store (over the queue cap): nothing written, nothing handed.
    got.lock().unwrap().clear();
    let full = NewJob {
        max_queued: Some(0),
        ..new_job("echo", None, 30)
    };
    let refused = store
        .submit_and_hand(full, &slot, 31, hand_into(&got, true))
        .await;
    assert!(
        matches!(refused, Err(StoreError::QueueFull { .. })),
        "{refused:?}"
    );
    assert!(got.lock().unwrap().is_empty());
}

pub async fn a_completion_tells_its_record_once_committed(store: &dyn Store) {
    submit(store, new_job("echo", None, 1)).await;
    let c = store.claim("w", None, LEASE_MS, 2).await.unwrap().unwrap();
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tell = |told: &std::sync::Arc<std::sync::Mutex<Vec<crate::JobRecord>>>| -> crate::OnCommit {
        let told = told.clone();
        Box::new(move |rec| told.lock().unwrap().push(rec.clone()))
    };
    let done = Completion {
        status: Some(JobStatus::Succeeded),
        exit_code: Some(0),
        ..Completion::default()
    };
    let rec = store
        .complete_then(&c.lease, done.clone(), 3, tell(&told))
        .await
        .unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(told.lock().unwrap().as_slice(), std::slice::from_ref(&rec));
    assert_eq!(store.get(rec.id).await.unwrap(), rec, "told as committed");
    // A completion that fails (the job ended already) tells nobody.
    let again = store.complete_then(&c.lease, done, 4, tell(&told)).await;
    assert!(again.is_err(), "{again:?}");
    assert_eq!(told.lock().unwrap().len(), 1);
}

pub async fn stale_lease_is_fenced_out(store: &dyn Store) {
    let job = submit(store, new_job("echo", None, 1)).await;
    let first = store.claim("w1", None, 100, 10).await.unwrap().unwrap();
    // The lease expires and the job is claimed again by someone else.
    let reaped = store.reap_expired(1_000, 1_000).await.unwrap();
    assert_eq!(reaped.len(), 1);
    let second = store
        .claim("w2", None, LEASE_MS, 1_001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.job.id, job.id);
    assert!(
        second.lease.token > first.lease.token,
        "fencing tokens must grow"
    );

    let hb = store.heartbeat(&first.lease, LEASE_MS, 1_002).await;
    assert!(matches!(hb, Err(StoreError::LeaseLost(_))), "{hb:?}");
    let log = store
        .append_log(&first.lease, LogStream::Stdout, 0, b"late")
        .await;
    assert!(matches!(log, Err(StoreError::LeaseLost(_))), "{log:?}");
    let done = Completion {
        status: Some(JobStatus::Succeeded),
        ..Completion::default()
    };
    let late = store.complete(&first.lease, done.clone(), 1_003).await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");

    assert!(
        !store
            .heartbeat(&second.lease, LEASE_MS, 1_004)
            .await
            .unwrap()
            .cancel_requested
    );
    let rec = store.complete(&second.lease, done, 1_005).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(rec.attempts, 2);
}

pub async fn logs_are_offset_addressed_and_byte_exact(store: &dyn Store) {
    let job = submit(store, new_job("echo", None, 1)).await;
    let c = store.claim("w", None, LEASE_MS, 2).await.unwrap().unwrap();
    let chunk1: Vec<u8> = vec![0xff, 0xfe, 0x00, b'a', b'\n'];
    let chunk2: Vec<u8> = (0..=255u8).collect();
    store
        .append_log(&c.lease, LogStream::Stdout, 0, &chunk1)
        .await
        .unwrap();
    store
        .append_log(&c.lease, LogStream::Stdout, 5, &chunk2)
        .await
        .unwrap();
    store
        .append_log(&c.lease, LogStream::Stderr, 0, b"err\n")
        .await
        .unwrap();
    let gap = store
        .append_log(&c.lease, LogStream::Stdout, 999, b"x")
        .await;
    assert!(
        matches!(gap, Err(StoreError::LogOffset { len: 261, .. })),
        "{gap:?}"
    );
    let replay = store.append_log(&c.lease, LogStream::Stdout, 0, b"x").await;
    assert!(
        matches!(replay, Err(StoreError::LogOffset { .. })),
        "{replay:?}"
    );

    let all = store
        .read_log(job.id, LogStream::Stdout, 0, 1 << 20)
        .await
        .unwrap();
    let mut expected = chunk1.clone();
    expected.extend_from_slice(&chunk2);
    assert_eq!(all, expected);
    // Reads that start and end inside chunks.
    let mid = store
        .read_log(job.id, LogStream::Stdout, 3, 10)
        .await
        .unwrap();
    assert_eq!(mid, expected[3..13]);
    let past = store
        .read_log(job.id, LogStream::Stdout, 261, 10)
        .await
        .unwrap();
    assert!(past.is_empty());
    assert_eq!(
        store
            .read_log(job.id, LogStream::Stderr, 0, 100)
            .await
            .unwrap(),
        b"err\n"
    );
    let rec = store.get(job.id).await.unwrap();
    assert_eq!((rec.stdout_bytes, rec.stderr_bytes), (261, 4));

    // Chunks of several sizes: every window, starting and ending on and between boundaries,
    // reads exactly its bytes (a read touches only the chunks it needs, so each is sliced).
    for n in [1usize, 7, 300, 2, 1000] {
        let more: Vec<u8> = (0..n).map(|i| (i * 31 + expected.len()) as u8).collect();
        store
            .append_log(&c.lease, LogStream::Stdout, expected.len() as u64, &more)
            .await
            .unwrap();
        expected.extend_from_slice(&more);
    }
    let cuts = [
        0usize, 1, 4, 5, 6, 260, 261, 262, 268, 500, 568, 569, 570, 1569, 1570,
    ];
    for from in cuts {
        for max in [0usize, 1, 5, 256, 400, 1 << 20] {
            let got = store
                .read_log(job.id, LogStream::Stdout, from as u64, max)
                .await
                .unwrap();
            let end = expected.len().min(from + max).max(from.min(expected.len()));
            assert_eq!(
                got,
                expected[from.min(expected.len())..end],
                "from {from} max {max}"
            );
        }
    }
}

pub async fn cancel_queued_running_and_finished(store: &dyn Store) {
    let queued = submit(store, new_job("echo", None, 1)).await;
    let running = submit(store, new_job("echo", None, 2)).await;
    match store.request_cancel(queued.id, 5).await.unwrap() {
        CancelOutcome::Cancelled(j) => {
            assert_eq!(j.status, JobStatus::Cancelled);
            assert_eq!(j.finished_at, Some(5));
        }
        other => panic!("expected cancelled, got {other:?}"),
    }
    let c = store.claim("w", None, LEASE_MS, 6).await.unwrap().unwrap();
    assert_eq!(c.job.id, running.id, "a cancelled job is never claimed");
    match store.request_cancel(running.id, 7).await.unwrap() {
        CancelOutcome::Requested(j) => assert!(j.cancel_requested),
        other => panic!("expected requested, got {other:?}"),
    }
    assert!(
        store
            .heartbeat(&c.lease, LEASE_MS, 8)
            .await
            .unwrap()
            .cancel_requested
    );
    let done = Completion {
        status: Some(JobStatus::Cancelled),
        ..Completion::default()
    };
    store.complete(&c.lease, done, 9).await.unwrap();
    assert!(matches!(
        store.request_cancel(running.id, 10).await.unwrap(),
        CancelOutcome::AlreadyFinished(j) if j.status == JobStatus::Cancelled
    ));
    assert!(matches!(
        store.request_cancel(JobId::new(), 1).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn expired_leases_are_requeued_then_lost(store: &dyn Store) {
    let job = submit(store, new_job("echo", None, 1)).await; // max_attempts = 2
    let c1 = store.claim("w", None, 100, 10).await.unwrap().unwrap();
    assert!(
        store.reap_expired(50, 50).await.unwrap().is_empty(),
        "lease still valid"
    );
    // A heartbeat moves the expiry.
    store.heartbeat(&c1.lease, 100, 100).await.unwrap();
    assert!(store.reap_expired(150, 150).await.unwrap().is_empty());
    let r = store.reap_expired(201, 201).await.unwrap();
    assert_eq!(
        r,
        vec![crate::Reaped {
            job_id: job.id,
            now: JobStatus::Queued
        }]
    );
    let c2 = store.claim("w", None, 100, 300).await.unwrap().unwrap();
    assert_eq!(c2.job.attempts, 2);
    let r = store.reap_expired(401, 401).await.unwrap();
    assert_eq!(
        r,
        vec![crate::Reaped {
            job_id: job.id,
            now: JobStatus::Error
        }]
    );
    let rec = store.get(job.id).await.unwrap();
    assert_eq!(rec.status, JobStatus::Error);
    assert_eq!(rec.reason.as_deref(), Some("worker_lost"));
    assert_eq!(rec.finished_at, Some(401));
    assert!(store.claim("w", None, 100, 500).await.unwrap().is_none());
    // Recovering every lease at once still stamps the real time.
    submit(store, new_job("echo", None, 600)).await;
    let c = store.claim("w", None, 100, 601).await.unwrap().unwrap();
    store.reap_expired(Millis::MAX, 602).await.unwrap();
    let again = store.claim("w", None, 100, 603).await.unwrap().unwrap();
    assert_eq!(again.job.id, c.job.id);
    assert_eq!(again.job.attempts, 2);
    store.reap_expired(Millis::MAX, 700).await.unwrap();
    let lost = store.get(c.job.id).await.unwrap();
    assert_eq!(
        (lost.status, lost.finished_at),
        (JobStatus::Error, Some(700))
    );
}

pub async fn release_requeues_without_counting_the_attempt(store: &dyn Store) {
    let job = submit(store, new_job("echo", None, 1)).await;
    let c = store.claim("w", None, LEASE_MS, 2).await.unwrap().unwrap();
    store
        .append_log(&c.lease, LogStream::Stdout, 0, b"partial")
        .await
        .unwrap();
    store.release(&c.lease).await.unwrap();
    let rec = store.get(job.id).await.unwrap();
    assert_eq!(rec.status, JobStatus::Queued);
    assert_eq!(rec.attempts, 0);
    assert_eq!(rec.stdout_bytes, 0, "a re-run starts its logs afresh");
    assert!(
        store
            .read_log(job.id, LogStream::Stdout, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.release(&c.lease).await,
        Err(StoreError::LeaseLost(_))
    ));
    let again = store.claim("w2", None, LEASE_MS, 3).await.unwrap().unwrap();
    assert_eq!(again.job.attempts, 1);
}

pub async fn list_filters_and_paginates_newest_first(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let ty = if i % 2 == 0 { "even" } else { "odd" };
        let mut job = new_job(ty, None, i);
        if i == 2 {
            job.repo_name = Some("click".into());
            job.sha = Some("a".repeat(40));
        }
        ids.push(submit(store, job).await.id);
    }
    let page1 = store
        .list(&ListFilter {
            limit: 2,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let page2 = store
        .list(&ListFilter {
            limit: 2,
            before: Some(ids[3]),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    let odd = store
        .list(&ListFilter {
            limit: 10,
            job_type: Some("odd".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        odd.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[3], ids[1]]
    );
    let on_click = store
        .list(&ListFilter {
            limit: 10,
            repo_name: Some("click".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(on_click.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[2]]);
    store.claim("w", None, LEASE_MS, 10).await.unwrap().unwrap();
    let running = store
        .list(&ListFilter {
            limit: 10,
            status: Some(JobStatus::Running),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[0]]);
    let none = store
        .list(&ListFilter {
            limit: 10,
            tenant: Some("nobody".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn complete_records_the_outcome_once(store: &dyn Store) {
    let job = submit(store, new_job("echo", None, 1)).await;
    let c = store.claim("w", None, LEASE_MS, 2).await.unwrap().unwrap();
    let usage = ResourceUsage {
        wall_ms: 12,
        user_cpu_ms: 3,
        system_cpu_ms: 4,
        max_rss_kb: 2048,
        peak_memory_bytes: Some(4 << 20),
        cpu_throttled_ms: Some(250),
    };
    let done = Completion {
        status: Some(JobStatus::Failed),
        reason: Some("output_limit".into()),
        exit_code: None,
        signal: Some(9),
        warnings: vec!["SIZE_CAP_EXCEEDED".into()],
        resources: Some(usage.clone()),
        log_truncated: true,
        enforcement: BTreeMap::from([("memory".to_string(), "cgroup v2 (no swap)".to_string())]),
        invariants: None,
        tests: None,
        artifact_bytes: 123_456,
        telemetry: Default::default(),
        stages: vec![
            warden_api::StageRecord {
                name: "build".into(),
                status: warden_api::StageStatus::Failed,
                always: false,
                exit_code: Some(2),
                signal: None,
                started_ms: Some(3),
                duration_ms: Some(40),
                stdout: [0, 12],
                stderr: [0, 7],
            },
            warden_api::StageRecord {
                name: "collect".into(),
                status: warden_api::StageStatus::Succeeded,
                always: true,
                exit_code: Some(0),
                signal: None,
                started_ms: Some(44),
                duration_ms: Some(1),
                stdout: [12, 30],
                stderr: [7, 7],
            },
        ],
    };
    let rec = store.complete(&c.lease, done.clone(), 20).await.unwrap();
    assert_eq!(rec.stages, done.stages);
    assert_eq!(rec.tests, None);
    assert_eq!(rec.id, job.id);
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(rec.reason.as_deref(), Some("output_limit"));
    assert_eq!(rec.signal, Some(9));
    assert_eq!(rec.warnings, ["SIZE_CAP_EXCEEDED"]);
    assert_eq!(rec.resources, Some(usage));
    assert!(rec.log_truncated);
    assert_eq!(rec.artifact_bytes, 123_456);
    assert_eq!(rec.enforcement["memory"], "cgroup v2 (no swap)");
    assert_eq!(rec.finished_at, Some(20));
    assert_eq!(rec.lease_owner, None);
    assert_eq!(store.get(job.id).await.unwrap(), rec);
    let twice = store.complete(&c.lease, done, 21).await;
    assert!(matches!(twice, Err(StoreError::LeaseLost(_))), "{twice:?}");
}

pub async fn repo_fields_and_invariants_round_trip(store: &dyn Store) {
    let sha = "a".repeat(40);
    let mut job = new_job("pytest", Some("by-ref"), 1);
    job.repo_name = Some("click".into());
    job.remote_url = Some("https://example.com/click.git".into());
    job.sha = Some(sha.clone());
    job.git_ref = Some("main".into());
    let rec = submit(store, job.clone()).await;
    assert_eq!(rec.git_ref.as_deref(), Some("main"));
    assert_eq!(rec.sha.as_deref(), Some(sha.as_str()));
    assert_eq!(rec.invariants, None);
    // The same ref again is the same request, even after the ref moved to another commit...
    let mut moved = job.clone();
    moved.id = JobId::new();
    moved.sha = Some("b".repeat(40));
    match store.submit(moved).await.unwrap() {
        SubmitOutcome::Existing(j) => assert_eq!(j.id, rec.id),
        other => panic!("expected the existing job, got {other:?}"),
    }
    // ...while a sha where a ref was given is another request.
    let mut by_sha = job;
    by_sha.id = JobId::new();
    by_sha.git_ref = None;
    assert!(matches!(
        store.submit(by_sha).await,
        Err(StoreError::IdempotencyConflict { .. })
    ));

    let c = store.claim("w", None, LEASE_MS, 2).await.unwrap().unwrap();
    let invariants = warden_api::Invariants {
        read_only_ok: Some(true),
        clean_tree_ok: Some(false),
        tree: Some("c".repeat(40)),
        changed_paths: vec!["a.txt".into(), "new\nname".into()],
        changed_count: 2,
    };
    let done = Completion {
        status: Some(JobStatus::MutationDetected),
        reason: Some("mutation_detected: 2 paths changed".into()),
        invariants: Some(invariants.clone()),
        ..Completion::default()
    };
    let rec = store.complete(&c.lease, done, 3).await.unwrap();
    assert_eq!(rec.status, JobStatus::MutationDetected);
    assert_eq!(rec.invariants, Some(invariants));
    assert_eq!(store.get(rec.id).await.unwrap(), rec);
}

pub async fn test_results_are_fenced_ordered_and_flaky_across_jobs(store: &dyn Store) {
    use crate::{TestResult, TestStatus, TestsQuery};
    let t = |name: &str, status| TestResult {
        suite: "s".into(),
        classname: "c".into(),
        name: name.into(),
        status,
        duration_ms: Some(3),
        message: (status != TestStatus::Passed).then(|| format!("{name} says\nwhy")),
        flaky: false,
    };
    let sha = "d".repeat(40);
    let at_commit = |now| {
        let mut j = new_job("pytest", None, now);
        j.repo_name = Some("click".into());
        j.sha = Some(sha.clone());
        j
    };
    let first = submit(store, at_commit(1)).await;
    let c = store.claim("w", None, LEASE_MS, 2).await.unwrap().unwrap();
    assert_eq!(c.job.id, first.id);
    store
        .append_tests(
            &c.lease,
            0,
            vec![t("a", TestStatus::Passed), t("b", TestStatus::Failed)],
        )
        .await
        .unwrap();
    // Sent again after a lost reply: replaces itself, adds nothing.
    store
        .append_tests(&c.lease, 1, vec![t("b", TestStatus::Failed)])
        .await
        .unwrap();
    store
        .append_tests(
            &c.lease,
            2,
            vec![t("c", TestStatus::Skipped), t("d", TestStatus::Error)],
        )
        .await
        .unwrap();
    let stale = crate::Lease {
        token: c.lease.token + 1,
        ..c.lease.clone()
    };
    let refused = store
        .append_tests(&stale, 4, vec![t("e", TestStatus::Passed)])
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost(_))),
        "{refused:?}"
    );
    let q = |status, after, limit| TestsQuery {
        job: first.id,
        attempt: 1,
        status,
        after,
        limit,
    };
    let names = |v: Vec<TestResult>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.tests(&q(None, 0, 100)).await.unwrap()),
        ["b", "d", "c", "a"],
        "failures first, then skipped, then passed"
    );
    let all = store.tests(&q(None, 0, 100)).await.unwrap();
    assert_eq!(all[0], t("b", TestStatus::Failed));
    assert_eq!(
        names(store.tests(&q(None, 1, 2)).await.unwrap()),
        ["d", "c"]
    );
    assert_eq!(
        names(
            store
                .tests(&q(Some(TestStatus::Passed), 0, 100))
                .await
                .unwrap()
        ),
        ["a"]
    );
    // Another attempt's results are not this one's.
    assert!(
        store
            .tests(&TestsQuery {
                attempt: 2,
                ..q(None, 0, 100)
            })
            .await
            .unwrap()
            .is_empty()
    );
    let counts = warden_api::TestCounts {
        total: 4,
        passed: 1,
        failed: 1,
        error: 1,
        skipped: 1,
        files: 1,
        truncated: false,
    };
    let done = Completion {
        status: Some(JobStatus::Failed),
        tests: Some(counts.clone()),
        ..Completion::default()
    };
    let rec = store.complete(&c.lease, done, 3).await.unwrap();
    assert_eq!(rec.tests, Some(counts));
    assert!(
        store
            .flaky_tests("pytest", Some("click"), &sha)
            .await
            .unwrap()
            .is_empty(),
        "one job alone is not flaky"
    );

    // A second job at the same commit where b passed and a errored: both are flaky there.
    let second = submit(store, at_commit(4)).await;
    let c2 = store.claim("w", None, LEASE_MS, 5).await.unwrap().unwrap();
    assert_eq!(c2.job.id, second.id);
    store
        .append_tests(
            &c2.lease,
            0,
            vec![t("a", TestStatus::Error), t("b", TestStatus::Passed)],
        )
        .await
        .unwrap();
    let mut flaky = store
        .flaky_tests("pytest", Some("click"), &sha)
        .await
        .unwrap();
    flaky.sort();
    let key = |n: &str| ("s".to_string(), "c".to_string(), n.to_string());
    assert_eq!(flaky, [key("a"), key("b")]);
    // Another commit, another repository or another job type sees none of it.
    let other_sha = "e".repeat(40);
    assert!(
        store
            .flaky_tests("pytest", Some("click"), &other_sha)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .flaky_tests("pytest", None, &sha)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .flaky_tests("lint", Some("click"), &sha)
            .await
            .unwrap()
            .is_empty()
    );
}
