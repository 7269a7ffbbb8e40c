//! The events outbox: written by the store itself, in the transaction of each change.

use warden_core::JobStatus;

use super::{LEASE_MS, new_job, submit};
use crate::{CancelOutcome, Completion, LogStream, OutboxKind, Store};

fn statuses(events: &[crate::OutboxEvent], job: warden_core::JobId) -> Vec<JobStatus> {
    events
        .iter()
        .filter(|e| e.job_id == job)
        .filter_map(|e| match &e.kind {
            OutboxKind::Job { status, .. } => Some(*status),
            OutboxKind::Log { .. } => None,
        })
        .collect()
}

pub async fn the_outbox_holds_every_change_in_order_only_while_on(store: &dyn Store) {
    // Off (the default): nothing is written.
    let quiet = submit(store, new_job("echo", None, 1)).await;
    assert!(store.outbox_pending(100).await.unwrap().is_empty());

    store.set_outbox(true).await.unwrap();
    let job = submit(store, new_job("echo", None, 2)).await;
    let c = store.claim("w", None, LEASE_MS, 3).await.unwrap().unwrap();
    // The quiet job was queued first: claimed first. Its change is recorded now the outbox is on.
    assert_eq!(c.job.id, quiet.id);
    let c2 = store.claim("w", None, LEASE_MS, 3).await.unwrap().unwrap();
    assert_eq!(c2.job.id, job.id);
    store
        .append_log(&c2.lease, LogStream::Stdout, 0, b"one\n")
        .await
        .unwrap();
    store
        .append_log(&c2.lease, LogStream::Stderr, 0, b"err\n")
        .await
        .unwrap();
    store
        .append_log(&c2.lease, LogStream::Stdout, 4, b"two\n")
        .await
        .unwrap();
    store.heartbeat(&c2.lease, LEASE_MS, 4).await.unwrap();
    let done = Completion {
        status: Some(JobStatus::Failed),
        reason: Some("exit_code".into()),
        exit_code: Some(3),
        ..Completion::default()
    };
    store.complete(&c2.lease, done, 5).await.unwrap();
    assert!(matches!(
        store.request_cancel(quiet.id, 6).await.unwrap(),
        CancelOutcome::Requested(_) | CancelOutcome::Cancelled(_)
    ));

    let events = store.outbox_pending(100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        statuses(&events, job.id),
        [JobStatus::Queued, JobStatus::Running, JobStatus::Failed]
    );
    assert_eq!(statuses(&events, quiet.id)[0], JobStatus::Running);
    let logs: Vec<(LogStream, u64, Vec<u8>)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            OutboxKind::Log {
                stream,
                offset,
                data,
                attempt,
            } => {
                assert_eq!(*attempt, 1);
                Some((*stream, *offset, data.clone()))
            }
            OutboxKind::Job { .. } => None,
        })
        .collect();
    assert_eq!(
        logs,
        [
            (LogStream::Stdout, 0, b"one\n".to_vec()),
            (LogStream::Stderr, 0, b"err\n".to_vec()),
            (LogStream::Stdout, 4, b"two\n".to_vec()),
        ]
    );
    // The final event carries the outcome; every event its job's tenant.
    let last = events
        .iter()
        .rfind(|e| e.job_id == job.id && matches!(e.kind, OutboxKind::Job { .. }))
        .unwrap();
    match &last.kind {
        OutboxKind::Job {
            job_type,
            reason,
            exit_code,
            attempt,
            ..
        } => {
            assert_eq!(job_type, "echo");
            assert_eq!(reason.as_deref(), Some("exit_code"));
            assert_eq!(*exit_code, Some(3));
            assert_eq!(*attempt, 1);
        }
        OutboxKind::Log { .. } => unreachable!(),
    }
    assert!(events.iter().all(|e| e.tenant == job.tenant));
    // The log events sit between running and the end, in the order they were written.
    let pos = |pred: &dyn Fn(&crate::OutboxEvent) -> bool| events.iter().position(pred).unwrap();
    let running = pos(&|e| {
        e.job_id == job.id
            && matches!(
                e.kind,
                OutboxKind::Job {
                    status: JobStatus::Running,
                    ..
                }
            )
    });
    let first_log = pos(&|e| matches!(e.kind, OutboxKind::Log { .. }));
    assert!(running < first_log && first_log < events.iter().position(|e| e == last).unwrap());

    // Published: no longer pending, still there for a replay; a page at a time.
    let (head, tail) = seqs.split_at(3);
    store.outbox_published(head, 10).await.unwrap();
    let pending: Vec<u64> = store
        .outbox_pending(100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(pending, tail);
    assert_eq!(
        store.outbox_pending(2).await.unwrap().len(),
        2,
        "a page is at most its limit"
    );
    let replay = store.outbox_since(0, 0, 100).await.unwrap();
    assert_eq!(replay, events);
    let page: Vec<u64> = store
        .outbox_since(0, seqs[1], 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, seqs[2..4]);
    // Pruning drops only published events older than the cut.
    assert_eq!(store.prune_outbox(Millis::MAX, false).await.unwrap(), 3);
    assert_eq!(
        store.outbox_since(0, 0, 100).await.unwrap().len(),
        events.len() - 3
    );

    // Off again: changes are no longer written.
    store.set_outbox(false).await.unwrap();
    submit(store, new_job("echo", None, 20)).await;
    assert_eq!(store.outbox_pending(100).await.unwrap().len(), tail.len());
}

pub async fn one_publisher_holds_the_outbox_lease(store: &dyn Store) {
    assert!(store.outbox_lease("a", 1000, 100).await.unwrap());
    assert!(!store.outbox_lease("b", 1000, 500).await.unwrap());
    assert!(store.outbox_lease("a", 1000, 900).await.unwrap(), "renewed");
    assert!(!store.outbox_lease("b", 1000, 1800).await.unwrap());
    assert!(
        store.outbox_lease("b", 1000, 1900).await.unwrap(),
        "expired"
    );
    // Independent of the collector's lease.
    assert!(store.gc_lease("a", 1000, 1900).await.unwrap());
}

use crate::Millis;

pub async fn webhook_deliveries_follow_the_outbox_in_order_per_job_and_url(store: &dyn Store) {
    use crate::{DeliveryOutcome, NewDelivery, NewJob};
    store.set_outbox(true).await.unwrap();
    let hooked = submit(
        store,
        NewJob {
            callback_url: Some("https://hooks.example/cb".into()),
            ..new_job("echo", None, 1)
        },
    )
    .await;
    let plain = submit(store, new_job("echo", None, 2)).await;
    let c = store.claim("w", None, LEASE_MS, 3).await.unwrap().unwrap();
    assert_eq!(c.job.id, hooked.id);
    store
        .append_log(&c.lease, LogStream::Stdout, 0, b"not a job event\n")
        .await
        .unwrap();

    // Job events only, each with its job's callback URL.
    let (cursor, backlog) = store.webhook_backlog(100).await.unwrap();
    assert_eq!(cursor, 0);
    let seen: Vec<(warden_core::JobId, Option<&str>)> = backlog
        .iter()
        .map(|(e, url)| (e.job_id, url.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (hooked.id, Some("https://hooks.example/cb")),
            (plain.id, None),
            (hooked.id, Some("https://hooks.example/cb")),
        ]
    );
    assert!(
        backlog
            .iter()
            .all(|(e, _)| matches!(e.kind, OutboxKind::Job { .. }))
    );

    // Deliveries for the first two events; the cursor moves with them.
    let url = "https://hooks.example/cb".to_string();
    let d = |i: usize| NewDelivery {
        seq: backlog[i].0.seq,
        job_id: backlog[i].0.job_id,
        url: url.clone(),
        body: format!("event {i}").into_bytes(),
    };
    store
        .add_deliveries(vec![d(0)], backlog[1].0.seq, 10)
        .await
        .unwrap();
    let (cursor, rest) = store.webhook_backlog(100).await.unwrap();
    assert_eq!(cursor, backlog[1].0.seq);
    assert_eq!(rest.len(), 1, "only what is past the cursor");
    store
        .add_deliveries(vec![d(2)], backlog[2].0.seq, 11)
        .await
        .unwrap();
    assert!(store.webhook_backlog(100).await.unwrap().1.is_empty());

    // Per job and URL, one at a time: the second waits for the first.
    let due = store.due_deliveries(20, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].body, b"event 0");
    assert_eq!(due[0].attempts, 0);
    store
        .delivery_attempted(
            due[0].id,
            DeliveryOutcome::Failed {
                status: Some(500),
                error: "the receiver answered 500".into(),
                next_at: 100,
            },
            21,
        )
        .await
        .unwrap();
    assert!(
        store.due_deliveries(50, 10).await.unwrap().is_empty(),
        "not due before next_at, and the next one waits behind it"
    );
    let again = store.due_deliveries(100, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    store
        .delivery_attempted(again[0].id, DeliveryOutcome::Delivered { status: 204 }, 101)
        .await
        .unwrap();
    let next = store.due_deliveries(101, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].body, b"event 2");
    store
        .delivery_attempted(
            next[0].id,
            DeliveryOutcome::GaveUp {
                status: None,
                error: "connection refused".into(),
            },
            102,
        )
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Every attempt is on the job's record of deliveries.
    let all = store.deliveries(hooked.id).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].attempts, 2);
    assert_eq!(all[0].delivered_at, Some(101));
    assert_eq!(all[0].last_status, Some(204));
    assert!(!all[0].gave_up);
    assert_eq!(all[1].attempts, 1);
    assert!(all[1].gave_up);
    assert_eq!(all[1].last_error.as_deref(), Some("connection refused"));
    assert!(store.deliveries(plain.id).await.unwrap().is_empty());

    // Pruning keeps what the webhook cursor has not passed.
    let seqs: Vec<u64> = store
        .outbox_pending(100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    store.outbox_published(&seqs, 200).await.unwrap();
    submit(store, new_job("echo", None, 300)).await;
    let last = store.outbox_pending(100).await.unwrap();
    store.outbox_published(&[last[0].seq], 300).await.unwrap();
    let cursor = backlog[2].0.seq;
    let pruned = store.prune_outbox(Millis::MAX, true).await.unwrap();
    assert_eq!(
        pruned as usize,
        seqs.iter().filter(|s| **s <= cursor).count(),
        "what the cursor has passed goes"
    );
    let left: Vec<u64> = store
        .outbox_since(0, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        left.len(),
        2,
        "the log chunk and the new job's event: past the cursor"
    );
    assert!(left.iter().all(|s| *s > cursor));
    assert!(
        store.deliveries(hooked.id).await.unwrap().is_empty(),
        "finished deliveries go too"
    );
}
