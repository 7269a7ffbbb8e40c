//! Which repository a job may run on: the operator's allowlist and the allowed transports.
//! One rule, applied by the service when a job is submitted and again by the worker when it
//! runs (the configuration may have changed in between, and a remote worker has its own).

use crate::config::Config;
use crate::repo::{Remote, Transport, parse_repo_url};

/// Why a repository is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoRefused {
    #[error("repo_name must be at most 200 bytes without control characters")]
    BadName,
    #[error("remote_url {url:?} does not match the allowlisted URL of {name:?}")]
    UrlMismatch { name: String, url: String },
    #[error(
        "repository {name:?} is not in the server's repos allowlist (job type {job_type:?} \
         requires it)"
    )]
    NotAllowlisted { name: String, job_type: String },
    #[error("repository {name:?} is not configured on the server: send its remote_url")]
    NeedsUrl { name: String },
    #[error("{0}")]
    BadUrl(String),
    #[error(
        "local paths and file:// URLs are allowed only for repositories the operator configured"
    )]
    LocalNotConfigured,
}

impl RepoRefused {
    /// Whether the caller's request is malformed (rather than refused by policy).
    pub fn is_malformed(&self) -> bool {
        matches!(self, RepoRefused::BadName | RepoRefused::NeedsUrl { .. })
    }
}

impl Config {
    /// The remote a job of `job_type` on repository `name` fetches from. A configured
    /// repository always uses its configured URL (the allowlist is the truth, not the
    /// submission); an unconfigured one only where the job type does not require the allowlist,
    /// over a network transport, at the URL the caller sent.
    pub fn repo_remote(
        &self,
        job_type: &str,
        name: &str,
        remote_url: Option<&str>,
    ) -> Result<Remote, RepoRefused> {
        if name.len() > 200 || name.chars().any(char::is_control) {
            return Err(RepoRefused::BadName);
        }
        if let Some(repo) = self.repos.get(name) {
            if let Some(url) = remote_url
                && crate::repo::normalize_repo_url(url)
                    != crate::repo::normalize_repo_url(&repo.url)
            {
                return Err(RepoRefused::UrlMismatch {
                    name: name.into(),
                    url: url.into(),
                });
            }
            return Ok(Remote {
                url: repo.url.clone(),
                transport: repo.transport.clone(),
                credential: repo.credential.clone(),
                ca_file: repo.ca_file.clone(),
            });
        }
        if self
            .job_type(job_type)
            .is_some_and(|t| t.requires_repo_allowlist)
        {
            return Err(RepoRefused::NotAllowlisted {
                name: name.into(),
                job_type: job_type.into(),
            });
        }
        let Some(url) = remote_url else {
            return Err(RepoRefused::NeedsUrl { name: name.into() });
        };
        let transport = parse_repo_url(url).map_err(|e| RepoRefused::BadUrl(e.0))?;
        if matches!(transport, Transport::Local(_)) {
            return Err(RepoRefused::LocalNotConfigured);
        }
        Ok(Remote::new(url, transport))
    }

    /// The remote a job accepted at submission fetches from when it runs, by this host's
    /// configuration: a repository configured here uses its configured URL (a remote worker
    /// may name its own mirror of it); any other is checked again as at submission.
    pub fn run_remote(
        &self,
        job_type: &str,
        name: &str,
        recorded_url: Option<&str>,
    ) -> Result<Remote, RepoRefused> {
        let url = if self.repos.contains_key(name) {
            None
        } else {
            recorded_url
        };
        self.repo_remote(job_type, name, url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
job_types:
  open: {argv: [/bin/true], timeout_s: 5, requires_repo: true}
  strict: {argv: [/bin/true], timeout_s: 5, requires_repo: true, requires_repo_allowlist: true}
repos:
  click: {url: "https://github.com/pallets/click.git"}
  local: {url: "/srv/git/local.git"}
"#;

    fn check(job_type: &str, name: &str, url: Option<&str>, expected: Result<&str, RepoRefused>) {
        let config = Config::from_yaml_str(CONFIG, "t.yaml").unwrap();
        let got = config.repo_remote(job_type, name, url).map(|r| r.url);
        assert_eq!(
            got,
            expected.map(str::to_string),
            "{job_type} {name} {url:?}"
        );
    }

    #[test]
    fn the_allowlist_decides_which_remote_a_job_uses() {
        let click = "https://github.com/pallets/click.git";
        // Configured: its URL, whatever the caller sent that normalises the same.
        check("strict", "click", None, Ok(click));
        check(
            "open",
            "click",
            Some("https://github.com/pallets/click/"),
            Ok(click),
        );
        check("open", "local", None, Ok("/srv/git/local.git"));
        check(
            "open",
            "click",
            Some("https://evil.example/click.git"),
            Err(RepoRefused::UrlMismatch {
                name: "click".into(),
                url: "https://evil.example/click.git".into(),
            }),
        );
        // Not configured: only where the job type allows, over the network, with a URL.
        check(
            "strict",
            "other",
            Some("https://a.example/x.git"),
            Err(RepoRefused::NotAllowlisted {
                name: "other".into(),
                job_type: "strict".into(),
            }),
        );
        check(
            "open",
            "other",
            Some("https://a.example/x.git"),
            Ok("https://a.example/x.git"),
        );
        check(
            "open",
            "other",
            None,
            Err(RepoRefused::NeedsUrl {
                name: "other".into(),
            }),
        );
        check(
            "open",
            "other",
            Some("file:///etc"),
            Err(RepoRefused::LocalNotConfigured),
        );
        check("open", "bad\nname", None, Err(RepoRefused::BadName));
        // When it runs, a configured repository is fetched from this host's configured URL.
        let config = Config::from_yaml_str(CONFIG, "t.yaml").unwrap();
        let run = config.run_remote("open", "click", Some("https://mirror.example/click.git"));
        assert_eq!(run.unwrap().url, click);
        assert!(matches!(
            Config::from_yaml_str(CONFIG, "t.yaml")
                .unwrap()
                .repo_remote("open", "x", Some("ext::sh -c id")),
            Err(RepoRefused::BadUrl(_))
        ));
    }
}
