//! The web UI in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! chromedriver (`scripts/setup.sh` installs both). Each test saves a screenshot under
//! `target/tmp/ui/<test>/` and checks that the page asked nothing of another origin.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};
use warden_api::{JobStatus, SubmitJobRequest};

use crate::support::{
    Server, create_admin_token, git, wait_job, wait_terminal, write_config_with,
    write_untrusted_config,
};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium session of one test, with its chromedriver (in a process group of its
/// own, ended whole when the test ends).
struct Browser {
    wd: fantoccini::Client,
    driver: Child,
    shots: PathBuf,
    downloads: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(test: &str) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("ui")
            .join(test);
        std::fs::create_dir_all(&shots).unwrap();
        let profile = tempfile::tempdir().unwrap();
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().join("chrome").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let wd = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(wd) => break wd,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        Browser {
            wd,
            driver,
            shots,
            downloads,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.wd.goto(url).await.unwrap();
    }

    /// Runs `script` in the page (a returned promise is awaited) and gives back its value.
    async fn js(&self, script: &str) -> Value {
        self.wd.execute(script, vec![]).await.unwrap()
    }

    async fn text_of(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        self.js(&script).await.as_str().unwrap_or("").to_string()
    }

    /// Waits until the page's `condition` (a JS expression) is true.
    async fn wait_for(&self, what: &str, condition: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let script = format!("return !!({condition});");
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                self.shot("timeout").await;
                panic!("the page never showed {what} ({condition}) in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// The element at `css`, once it is on the page.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.wd
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    async fn select(&self, css: &str, value: &str) {
        self.element(css)
            .await
            .select_by_value(value)
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.element(css).await.send_keys(text).await.unwrap();
    }

    /// The Submit page, reached from the navigation as a person would.
    async fn open_submit_form(&self) {
        self.click("header nav a[data-section=submit]").await;
        self.wait_for(
            "the submit form",
            "document.getElementById('job_type')",
            Duration::from_secs(20),
        )
        .await;
    }

    /// Submits the form on the page and waits for the job page it leads to: the job's id.
    async fn submit_job(&self) -> String {
        self.click("form button[type=submit]").await;
        self.wait_for(
            "the job page",
            "location.pathname.startsWith('/ui/jobs/')",
            Duration::from_secs(20),
        )
        .await;
        let url = self.wd.current_url().await.unwrap();
        url.path()
            .strip_prefix("/ui/jobs/")
            .unwrap_or_else(|| panic!("not a job page: {url}"))
            .to_string()
    }

    async fn shot(&self, name: &str) {
        if let Ok(png) = self.wd.screenshot().await {
            std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        }
    }

    /// Every request the page made (documents, scripts, styles, fetches, event streams) went
    /// to `origin`.
    async fn assert_same_origin(&self, origin: &str) {
        let names = self
            .js("return performance.getEntries()
                   .filter(e => e.entryType === 'navigation' || e.entryType === 'resource')
                   .map(e => e.name);")
            .await;
        let names: Vec<String> = serde_json::from_value(names).unwrap();
        assert!(!names.is_empty(), "the page made no requests at all?");
        for name in &names {
            assert!(
                name.starts_with(&format!("{origin}/")),
                "a request left for another origin: {name}"
            );
        }
    }

    /// The last screenshot, and the session closed (dropping the browser then ends the
    /// driver's process group, Chromium with it).
    async fn end(self, name: &str) {
        self.shot(name).await;
        let _ = self.wd.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's own process group (it leads it): Chromium's processes are in it too.
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

const UI_TYPES: &str = r#"job_types:
  ticker:
    argv:
      - /bin/sh
      - -c
      - |
        i=1
        while [ $i -le $COUNT ]; do
          echo "line $i"
          if [ $i -eq 3 ]; then printf '\033[31mred alert\033[0m\n'; fi
          i=$((i+1))
          sleep 0.05
        done
    allowed_params: [COUNT]
    timeout_s: 120
  sleeper:
    argv: ["/bin/sh", "-c", "echo sleeping; sleep 60"]
    timeout_s: 120
  reporter:
    argv:
      - /bin/sh
      - -c
      - |
        mkdir -p "$ARTIFACT_DIR/out"
        printf 'artifact body 42\n' > "$ARTIFACT_DIR/out/data.txt"
        cat > "$ARTIFACT_DIR/junit.xml" <<'EOF'
        <testsuite name="calc" tests="3">
          <testcase classname="calc" name="test_add" time="0.01"/>
          <testcase classname="calc" name="test_sub" time="0.01"/>
          <testcase classname="calc" name="test_div" time="0.02"><failure message="division is wrong">assert 1 == 2</failure></testcase>
        </testsuite>
        EOF
        echo reported
    timeout_s: 60
    results: {junit: ["$ARTIFACT_DIR/junit.xml"]}
"#;

fn ui_server(dir: &Path, extra: &str) -> Server {
    Server::start(&write_config_with(dir, &format!("{extra}\n{UI_TYPES}")))
}

fn req(job_type: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_job_submitted_from_the_form_streams_its_log_live_and_resumes_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = ui_server(dir.path(), "");
    let api = server.client();
    let b = Browser::start("live_log").await;
    b.goto(&format!("{}/", server.url)).await;
    b.wait_for(
        "the jobs page",
        "document.querySelector('h1')?.textContent === 'Jobs'",
        Duration::from_secs(20),
    )
    .await;
    assert!(b.wd.current_url().await.unwrap().path().starts_with("/ui/"));

    b.open_submit_form().await;
    b.select("#job_type", "ticker").await;
    b.wait_for(
        "the COUNT field",
        "document.getElementById('param-COUNT')",
        Duration::from_secs(5),
    )
    .await;
    b.type_into("#param-COUNT", "150").await;
    // Every field of the form is labelled for a screen reader.
    let unlabelled = b
        .js("return [...document.querySelectorAll('main input, main select')]
               .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
               .map(e => e.name);")
        .await;
    assert_eq!(unlabelled, json!([]), "fields without a label");
    let id = b.submit_job().await;
    let job = api.get(&id).await.unwrap();
    assert_eq!(job.job_type, "ticker");
    assert_eq!(job.params.get("COUNT").map(String::as_str), Some("150"));

    // Lines appear while the job runs: seen on the page before the job has printed them all.
    b.wait_for(
        "the first lines",
        "document.getElementById('log')?.textContent.includes('line 10\\n')",
        Duration::from_secs(30),
    )
    .await;
    let early = b.text_of("#log").await;
    assert!(
        !early.contains("line 150\n"),
        "the whole log was there at once"
    );
    assert_eq!(api.get(&id).await.unwrap().status, JobStatus::Running);
    b.shot("live").await;

    // A reload in the middle: the page picks the log up again and goes on following it.
    b.wait_for(
        "line 40",
        "document.getElementById('log')?.textContent.includes('line 40\\n')",
        Duration::from_secs(30),
    )
    .await;
    b.wd.refresh().await.unwrap();
    b.wait_for(
        "the log after the reload",
        "document.getElementById('log')?.textContent.includes('line 1\\n')",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        api.get(&id).await.unwrap().status,
        JobStatus::Running,
        "the reload happened after the job ended: the test proves nothing"
    );
    b.wait_for(
        "the end of the log",
        "document.getElementById('log-note')?.textContent.includes('The job ended')",
        Duration::from_secs(60),
    )
    .await;
    let job = wait_terminal(&api, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");

    let text = b.text_of("#log").await;
    let numbers: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=150).collect::<Vec<_>>(),
        "gaps or repeats:\n{text}"
    );
    assert_eq!(text.matches("red alert").count(), 1);
    // ANSI colours are rendered, not shown as escape codes.
    assert!(!text.contains('\u{1b}') && !text.contains("[31m"), "{text}");
    assert_eq!(b.text_of("#log span.fg1").await, "red alert");
    // The badge followed the job to its end without a reload.
    b.wait_for(
        "the final badge",
        "document.querySelector('h1 + p .badge')?.textContent === 'succeeded'",
        Duration::from_secs(10),
    )
    .await;
    // The log's tabs work from the keyboard: an arrow key moves to stderr and shows it.
    b.element("#tab-stdout")
        .await
        .send_keys(&char::from(fantoccini::key::Key::Right).to_string())
        .await
        .unwrap();
    b.wait_for(
        "the stderr tab",
        "document.getElementById('tab-stderr').getAttribute('aria-selected') === 'true' \
         && document.activeElement.id === 'tab-stderr' \
         && document.getElementById('log').getAttribute('aria-label') === 'stderr log'",
        Duration::from_secs(10),
    )
    .await;
    b.assert_same_origin(&server.url).await;
    b.end("ended").await;
}

#[tokio::test]
async fn a_running_job_is_cancelled_from_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = ui_server(dir.path(), "");
    let api = server.client();
    let sub = api.submit(&req("sleeper")).await.unwrap();
    wait_job(&api, &sub.job_id, Duration::from_secs(30), |j| {
        j.status == JobStatus::Running
    })
    .await;
    let b = Browser::start("cancel").await;
    b.goto(&format!("{}/ui/jobs/{}", server.url, sub.job_id))
        .await;
    b.wait_for(
        "the log",
        "document.getElementById('log')?.textContent.includes('sleeping')",
        Duration::from_secs(20),
    )
    .await;
    b.shot("running").await;
    b.click("#cancel").await;
    let job = wait_terminal(&api, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
    b.wait_for(
        "the cancelled badge",
        "document.querySelector('h1 + p .badge')?.textContent === 'cancelled'",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        b.js("return document.getElementById('cancel') === null")
            .await
            == Value::Bool(true),
        "a finished job offers no Cancel"
    );
    b.assert_same_origin(&server.url).await;
    b.end("cancelled").await;
}

#[tokio::test]
async fn failing_tests_are_listed_first_and_an_artifact_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let server = ui_server(dir.path(), "");
    let api = server.client();
    let sub = api.submit(&req("reporter")).await.unwrap();
    let job = wait_terminal(&api, &sub.job_id).await;
    assert_eq!(job.tests.as_ref().map(|t| t.failed), Some(1), "{job:?}");

    let b = Browser::start("tests_artifacts").await;
    b.goto(&format!("{}/ui/jobs/{}", server.url, sub.job_id))
        .await;
    b.wait_for(
        "the tests table",
        "document.querySelector('table.tests tbody tr')",
        Duration::from_secs(20),
    )
    .await;
    let rows = b
        .js("return [...document.querySelectorAll('table.tests tbody tr')].map(r => [r.dataset.status, r.children[1].textContent]);")
        .await;
    assert_eq!(
        rows,
        json!([
            ["failed", "calc.test_div"],
            ["passed", "calc.test_add"],
            ["passed", "calc.test_sub"]
        ]),
        "the failure first"
    );
    assert!(b.text_of("table.tests").await.contains("division is wrong"));

    b.wait_for(
        "the artifacts",
        "document.querySelector('table.artifacts a')",
        Duration::from_secs(20),
    )
    .await;
    b.shot("record").await;
    b.wd.find(Locator::LinkText("out/data.txt"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let target = b.downloads.join("data.txt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !target.exists() {
        assert!(
            Instant::now() < deadline,
            "the download never arrived in {}: {:?}",
            b.downloads.display(),
            std::fs::read_dir(&b.downloads)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "artifact body 42\n"
    );
    b.assert_same_origin(&server.url).await;
    b.end("downloaded").await;
}

#[tokio::test]
async fn a_mutation_detected_job_shows_the_paths_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("proj");
    std::fs::create_dir_all(repo.join("lib")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("lib/add.sh"), "add() { echo 3; }\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    // A slow job on the repository beside the UI's types.
    let types = UI_TYPES.replace(
        "job_types:\n",
        "job_types:\n  slow:\n    argv: [\"/bin/sh\", \"-c\", \"echo ready; sleep 3; echo done\"]\n    requires_repo: true\n    timeout_s: 60\n",
    );
    let config = write_config_with(
        dir.path(),
        &format!("repos:\n  proj: {{url: \"{}\"}}\n{types}", repo.display()),
    );
    let server = Server::start(&config);
    let api = server.client();
    let sub = api
        .submit(&SubmitJobRequest {
            job_type: "slow".into(),
            repo_name: Some("proj".into()),
            sha: Some(sha),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_job(&api, &sub.job_id, Duration::from_secs(30), |j| {
        j.stdout_bytes > 0
    })
    .await;
    // From outside the sandbox, as only root on the host can: the job's read-only tree changes.
    let trees = dir.path().join("data/git/trees");
    let tree = std::fs::read_dir(&trees)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("tree"))
        .find(|p| p.is_dir())
        .expect("the job's checkout");
    let victim = tree.join("lib/add.sh");
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&victim, "add() { echo 5; }\n").unwrap();
    let job = wait_terminal(&api, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::MutationDetected, "{job:?}");

    let b = Browser::start("mutation").await;
    b.goto(&format!("{}/ui/jobs/{}", server.url, sub.job_id))
        .await;
    b.wait_for(
        "the changed paths",
        "document.querySelector('ul.changed-paths li')",
        Duration::from_secs(20),
    )
    .await;
    let paths = b
        .js("return [...document.querySelectorAll('ul.changed-paths li')].map(li => li.textContent);")
        .await;
    assert_eq!(paths, json!(["lib/add.sh"]));
    let page = b.text_of("main").await;
    assert!(page.contains("mutation detected"), "{page}");
    assert!(page.contains("Clean-tree proofNO"), "{page}");
    b.assert_same_origin(&server.url).await;
    b.end("mutation").await;
}

#[tokio::test]
async fn without_a_token_the_ui_refuses_and_a_signed_in_browser_works_only_from_its_own_pages() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_untrusted_config(dir.path(), UI_TYPES);
    let server = Server::start(&config);
    let token = create_admin_token(dir.path(), &config);

    // The headers every page carries.
    let resp = crate::support::http()
        .get(format!("{}/ui/login", server.url))
        .send()
        .await
        .unwrap();
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-frame-options"], "DENY");

    let b = Browser::start("auth").await;
    b.goto(&format!("{}/ui/jobs", server.url)).await;
    let url = b.wd.current_url().await.unwrap();
    assert_eq!(url.path(), "/ui/login", "{url}");
    assert_eq!(url.query(), Some("next=%2Fui%2Fjobs"));
    assert_eq!(
        b.js("return fetch('/jobs').then(r => r.status)").await,
        json!(401)
    );

    // A wrong token: refused with a message, still signed out.
    b.type_into("#token", "wdn_0123456789abcdef_notatokenatall")
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for(
        "the refusal",
        "document.getElementById('login-error')",
        Duration::from_secs(10),
    )
    .await;
    b.shot("refused").await;
    assert_eq!(
        b.js("return fetch('/jobs').then(r => r.status)").await,
        json!(401)
    );

    // The right one: back to the page asked for, signed in by an HttpOnly cookie.
    b.type_into("#token", &token).await;
    b.click("form button[type=submit]").await;
    b.wait_for(
        "the jobs page",
        "document.querySelector('h1')?.textContent === 'Jobs'",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(b.wd.current_url().await.unwrap().path(), "/ui/jobs");
    let cookie = b.js("return document.cookie").await;
    assert!(
        !cookie.as_str().unwrap().contains("wdn_"),
        "the token is readable by scripts: {cookie}"
    );
    assert_eq!(
        b.js("return fetch('/jobs').then(r => r.status)").await,
        json!(200)
    );
    // A change without the page's CSRF value is refused even with the cookie.
    let status = b
        .js("return fetch('/jobs', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({job_type: 'sleeper'})}).then(r => r.status)")
        .await;
    assert_eq!(status, json!(403));
    let listed: Value = crate::support::http()
        .get(format!("{}/jobs", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"], json!([]), "nothing was submitted");

    // The form, which sends it, works; the job is the token's tenant's.
    b.open_submit_form().await;
    b.select("#job_type", "reporter").await;
    let id = b.submit_job().await;
    let job = warden_client::Client::new(&server.url, Duration::from_secs(10), Some(token.clone()))
        .unwrap()
        .get(&id)
        .await
        .unwrap();
    assert_eq!(job.tenant, "ops");
    assert!(
        b.js("return !document.getElementById('nav-admin').hidden")
            .await
            == Value::Bool(true)
    );
    b.assert_same_origin(&server.url).await;

    // Signing out forgets the cookie.
    b.click("#signout").await;
    b.wait_for(
        "the sign-in page",
        "location.pathname === '/ui/login'",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        b.js("return fetch('/jobs').then(r => r.status)").await,
        json!(401)
    );
    b.end("signed_out").await;
}
