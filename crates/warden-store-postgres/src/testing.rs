//! A database of its own for one test, dropped when the guard is; helpers for benchmarks.

/// The server tests connect to: `WARDEN_TEST_DATABASE_URL`, or the local PostgreSQL.
pub fn admin_url() -> String {
    std::env::var("WARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    /// Creates `warden_test_<random>` on the admin server.
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let name = format!("warden_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("connect to the test PostgreSQL (is it running? see scripts/setup.sh)");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("admin URL {admin:?} names no database"),
        };
        TestDb { name, url, admin }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime; a thread of its own may block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                {
                    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Fills the jobs table with `n` finished jobs, the way months of history would (for the queue
/// benchmark: the claim path must not slow down with history).
pub async fn add_finished_history(pg: &super::PgStore, n: usize) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO jobs (id, tenant, job_type, params, status, max_attempts, attempts,
             created_at, started_at, finished_at, exit_code)
         SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'default', 'noop',
             '{}', 'succeeded', 1, 1, g, g, g, 0
         FROM generate_series(1, $1) AS g",
    )
    .bind(n as i64)
    .execute(pg.pool())
    .await?;
    sqlx::query("ANALYZE jobs").execute(pg.pool()).await?;
    Ok(())
}
