//! `warden events replay`: publishes a range of the store's events outbox to NATS JetStream
//! again, with the message ids they were first published with — JetStream drops what it still
//! holds (within the stream's duplicate window) and takes what it lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warden_server::events::Sink;
use warden_store::Store;

use crate::cli::{EventsArgs, EventsCommand, ReplayArgs};
use crate::exit;

pub async fn run(args: EventsArgs) -> i32 {
    match args.command {
        EventsCommand::Replay(a) => match replay(a).await {
            Ok(()) => exit::OK,
            Err((code, message)) => {
                eprintln!("error: {message}");
                code
            }
        },
    }
}

/// `--since`: an RFC 3339 time, or a duration back from now (`2h`, `30m`, `7d`).
fn since_millis(raw: &str) -> Result<i64, String> {
    let at = match humantime::parse_rfc3339_weak(raw) {
        Ok(t) => t,
        Err(_) => {
            let back = humantime::parse_duration(raw).map_err(|_| {
                format!("--since {raw:?}: expected an RFC 3339 time or a duration such as 2h")
            })?;
            SystemTime::now()
                .checked_sub(back)
                .ok_or_else(|| format!("--since {raw:?} is before the epoch"))?
        }
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("--since {raw:?} is before the epoch"))?
        .as_millis() as i64)
}

async fn replay(args: ReplayArgs) -> Result<(), (i32, String)> {
    let usage = |m: String| (exit::USAGE, m);
    let since = since_millis(&args.since).map_err(usage)?;
    let mut config =
        crate::config_file::read(args.config.as_deref()).map_err(|e| usage(e.to_string()))?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    let Some(nats) = config.events.nats.clone() else {
        return Err(usage(
            "the configuration has no events.nats: nothing to replay to".into(),
        ));
    };
    let store: Arc<dyn Store> = match &args.database_url {
        Some(url) => Arc::new(
            warden_store_postgres::PgStore::connect(url, 2)
                .await
                .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?,
        ),
        None => {
            let db = warden_worker::DataDir::new(&config.data_dir).database();
            if !db.is_file() {
                return Err(usage(format!("{} does not exist", db.display())));
            }
            Arc::new(
                warden_store_sqlite::SqliteStore::open(&db)
                    .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?,
            )
        }
    };
    let sink = Sink::connect(&nats)
        .await
        .map_err(|e| (exit::UNAVAILABLE, e))?;
    let (mut sent, mut repeats, mut after) = (0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    loop {
        let page = store
            .outbox_since(since, after, 500)
            .await
            .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page.iter().filter(|e| sink.wants(e)) {
            if sink
                .publish(e)
                .await
                .map_err(|err| (exit::UNAVAILABLE, format!("event {}: {err}", e.seq)))?
            {
                repeats += 1;
            }
            sent += 1;
        }
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("replayed {sent} events so far (up to outbox position {after})");
        }
    }
    println!(
        "replayed {sent} events to {}: {} new to JetStream, {repeats} it already held",
        nats.url,
        sent - repeats
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::since_millis;

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        assert_eq!(
            since_millis("2026-01-02T03:04:05Z").unwrap(),
            1_767_323_045_000
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let back = since_millis("2h").unwrap();
        assert!((now - back - 7_200_000).abs() < 5_000);
        let e = since_millis("yesterday").unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }
}
