//! Conformance: fair share, queue quotas, tokens and the audit trail.

use std::collections::BTreeMap;

use super::{LEASE_MS, submit};
use crate::{AuditEntry, AuditFilter, FairShare, NewJob, Share, Store, StoreError, TokenRecord};

fn job_of(tenant: &str, now: i64) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        ..NewJob::plain("echo", now)
    }
}

async fn claim_tenant(store: &dyn Store) -> Option<String> {
    store
        .claim("w", None, LEASE_MS, 10)
        .await
        .unwrap()
        .map(|c| c.job.tenant)
}

pub async fn fair_share_serves_a_newcomer_next(store: &dyn Store) {
    for i in 0..50 {
        submit(store, job_of("flood", i)).await;
    }
    assert_eq!(claim_tenant(store).await.as_deref(), Some("flood"));
    assert_eq!(claim_tenant(store).await.as_deref(), Some("flood"));
    // One job of another tenant, newer than all 48 waiting: it is the very next one taken.
    let single = submit(store, job_of("single", 100)).await;
    let next = store.claim("w", None, LEASE_MS, 10).await.unwrap().unwrap();
    assert_eq!(next.job.id, single.id);
    // Within one tenant, still oldest first; claim_many interleaves the same way.
    submit(store, job_of("single", 101)).await;
    let many = store.claim_many("w", None, 4, LEASE_MS, 10).await.unwrap();
    let tenants: Vec<&str> = many.iter().map(|c| c.job.tenant.as_str()).collect();
    assert_eq!(
        tenants.iter().filter(|t| **t == "single").count(),
        1,
        "{tenants:?}"
    );
    let flood: Vec<_> = many.iter().filter(|c| c.job.tenant == "flood").collect();
    assert!(flood.windows(2).all(|w| w[0].job.id < w[1].job.id));
}

pub async fn fair_share_follows_weights_and_max_running(store: &dyn Store) {
    let shares = BTreeMap::from([
        (
            "heavy".to_string(),
            Share {
                weight: 3,
                max_running: None,
            },
        ),
        (
            "capped".to_string(),
            Share {
                weight: 1,
                max_running: Some(2),
            },
        ),
    ]);
    store.set_fair_share(FairShare { shares });
    for i in 0..40 {
        submit(store, job_of("heavy", i)).await;
        submit(store, job_of("light", i)).await;
    }
    let mut heavy = 0;
    for _ in 0..20 {
        if claim_tenant(store).await.as_deref() == Some("heavy") {
            heavy += 1;
        }
    }
    assert_eq!(heavy, 15, "weight 3 against 1 takes three claims in four");
    for i in 0..5 {
        submit(store, job_of("capped", 100 + i)).await;
    }
    let mut capped = 0;
    for _ in 0..12 {
        if claim_tenant(store).await.as_deref() == Some("capped") {
            capped += 1;
        }
    }
    assert_eq!(capped, 2, "max_running 2 holds however long it waits");
    // A job type filter that only capped's jobs match: nothing, since capped is at its maximum.
    let only = ["capped-only".to_string()];
    assert!(
        store
            .claim("w", Some(&only), LEASE_MS, 10)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn max_queued_refuses_without_writing(store: &dyn Store) {
    let quota = |now| NewJob {
        max_queued: Some(2),
        ..job_of("quota", now)
    };
    submit(store, quota(1)).await;
    submit(store, quota(2)).await;
    match store.submit(quota(3)).await {
        Err(StoreError::QueueFull { tenant, max }) => {
            assert_eq!((tenant.as_str(), max), ("quota", 2))
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let filter = crate::ListFilter {
        tenant: Some("quota".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store.list(&filter).await.unwrap().len(),
        2,
        "nothing half-written"
    );
    // Another tenant is not counted; a claimed job frees a place.
    submit(
        store,
        NewJob {
            max_queued: Some(2),
            ..job_of("other", 4)
        },
    )
    .await;
    store.claim("w", None, LEASE_MS, 10).await.unwrap().unwrap();
    submit(store, quota(5)).await;
}

fn token(id: &str, tenant: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: Some(format!("{id} name")),
        scopes: vec!["read".into(), "submit".into()],
        hash: vec![7; 32],
        created_at: 10,
        expires_at: Some(1_000),
        revoked_at: None,
    }
}

pub async fn tokens_round_trip_and_revoke_once(store: &dyn Store) {
    store.create_token(token("aaa", "t1")).await.unwrap();
    store.create_token(token("bbb", "t2")).await.unwrap();
    assert!(matches!(
        store.create_token(token("aaa", "t2")).await,
        Err(StoreError::TokenExists(id)) if id == "aaa"
    ));
    assert_eq!(store.token("aaa").await.unwrap(), Some(token("aaa", "t1")));
    assert_eq!(store.token("zzz").await.unwrap(), None);
    let t2 = store.list_tokens(Some("t2")).await.unwrap();
    assert_eq!(
        t2.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["bbb"]
    );
    assert_eq!(store.list_tokens(None).await.unwrap().len(), 2);
    let revoked = store.revoke_token("aaa", 50).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(50));
    let again = store.revoke_token("aaa", 60).await.unwrap().unwrap();
    assert_eq!(
        again.revoked_at,
        Some(50),
        "the first revocation's time stays"
    );
    assert_eq!(store.revoke_token("zzz", 60).await.unwrap(), None);
}

pub async fn audit_is_appended_listed_and_purged(store: &dyn Store) {
    let entry = |at, action: &str, tenant: &str| AuditEntry {
        at,
        action: action.into(),
        tenant: Some(tenant.into()),
        token_id: Some("tok".into()),
        client: Some("127.0.0.1:5555".into()),
        target: Some("job-1".into()),
        outcome: "ok".into(),
        detail: None,
    };
    store
        .append_audit(vec![entry(1, "submit", "a"), entry(2, "cancel", "a")])
        .await
        .unwrap();
    store
        .append_audit(vec![entry(3, "submit", "b"), entry(4, "refused", "a")])
        .await
        .unwrap();
    let all = store
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ats: Vec<i64> = all.iter().map(|r| r.entry.at).collect();
    assert_eq!(ats, [4, 3, 2, 1], "newest first");
    assert_eq!(all[3].entry, entry(1, "submit", "a"));
    let a_submits = store
        .list_audit(&AuditFilter {
            tenant: Some("a".into()),
            action: Some("submit".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a_submits.len(), 1);
    let page = store
        .list_audit(&AuditFilter {
            before: Some(all[1].seq),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page[0].entry.at, 2);
    assert_eq!(store.purge_audit(3).await.unwrap(), 2);
    let left = store
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
}

/// The audit entry a submission carries is written with the job, once: not on an idempotent
/// replay, not for a refused submission.
pub async fn a_submissions_audit_entry_commits_with_the_job_only(store: &dyn Store) {
    let with_entry = |at: i64, key: &str, max_queued: Option<u64>| {
        let id = crate::JobId::new();
        NewJob {
            id,
            idempotency_key: Some(key.into()),
            max_queued,
            audit: Some(AuditEntry {
                at,
                action: "submit".into(),
                tenant: Some("default".into()),
                target: Some(id.to_string()),
                outcome: "ok".into(),
                ..AuditEntry::default()
            }),
            ..NewJob::plain("echo", at)
        }
    };
    let audited = || async {
        store
            .list_audit(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
    };
    let first = with_entry(1, "k", None);
    let entry = first.audit.clone().unwrap();
    let job = submit(store, first).await;
    let trail = audited().await;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].entry, entry);
    assert_eq!(trail[0].entry.target, Some(job.id.to_string()));
    // The same request again: the job it made is returned, nothing more is audited.
    match store.submit(with_entry(2, "k", None)).await.unwrap() {
        crate::SubmitOutcome::Existing(j) => assert_eq!(j.id, job.id),
        other => panic!("expected the existing job, got {other:?}"),
    }
    // Refused (the tenant's one queued job is its cap): no job, no entry.
    assert!(matches!(
        store.submit(with_entry(3, "other", Some(1))).await,
        Err(StoreError::QueueFull { .. })
    ));
    assert_eq!(audited().await.len(), 1);
}

pub async fn inline_argv_round_trips(store: &dyn Store) {
    let argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        "echo 'it''s' \u{e9}".into(),
    ];
    // A chosen tool bundle rides along the same way.
    let bundle = crate::ToolBundleRef {
        sha256: "0f".repeat(32),
        env_var: "MY_TOOLS".into(),
    };
    let job = submit(
        store,
        NewJob {
            inline_argv: Some(argv.clone()),
            tool_bundle: Some(bundle.clone()),
            ..job_of("scripted", 1)
        },
    )
    .await;
    let stored = store.get(job.id).await.unwrap();
    assert_eq!(stored.inline_argv, Some(argv.clone()));
    assert_eq!(stored.tool_bundle, Some(bundle.clone()));
    let claimed = store.claim("w", None, LEASE_MS, 10).await.unwrap().unwrap();
    assert_eq!(claimed.job.inline_argv, Some(argv));
    assert_eq!(claimed.job.tool_bundle, Some(bundle));
    let plain = submit(store, job_of("scripted", 2)).await;
    assert_eq!(plain.inline_argv, None);
    assert_eq!(plain.tool_bundle, None);
}
