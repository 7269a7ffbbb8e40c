//! Repository URLs and refs: which transports warden fetches over, and which names it resolves.
//!
//! warden fetches over https and ssh. Local paths and `file://` URLs are allowed only for
//! repositories the operator configured so; `ext::`, `git://`, plain `http://` and every other
//! transport are refused. Credentials never live in a URL (they would end up in a git config).

use std::fmt;
use std::path::PathBuf;

/// How warden reaches a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Https,
    /// `ssh://host/path` or scp-like `user@host:path`.
    Ssh,
    /// A directory on this host (`/srv/git/x.git` or `file:///srv/git/x.git`).
    Local(PathBuf),
}

impl Transport {
    /// The value of `GIT_ALLOW_PROTOCOL` that lets git use this transport and nothing else.
    pub fn git_protocol(&self) -> &'static str {
        match self {
            Transport::Https => "https",
            Transport::Ssh => "ssh",
            Transport::Local(_) => "file",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Https => "https",
            Transport::Ssh => "ssh",
            Transport::Local(_) => "local path",
        })
    }
}

const MAX_URL_LEN: usize = 2048;

/// A repository URL warden does not fetch from, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRepoUrl(pub String);

/// A ref name warden will not hand to git, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRefName(pub String);

/// A repository as warden fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub transport: Transport,
    /// A private https repository's login (only ever from the operator's `repos:` entry).
    pub credential: Option<RepoCredential>,
    /// The CA bundle that the https server's certificate is checked against instead of the
    /// system's.
    pub ca_file: Option<PathBuf>,
}

/// How warden logs in to a private https repository: a user name and the secret (by name,
/// from `secrets:`) that is its password or token. git gets the value from a pipe, through a
/// credential helper that answers for this repository's host only; it is never written to
/// disk, to a git config or to a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoCredential {
    pub username: String,
    pub secret: String,
}

impl Remote {
    /// A remote with no credential and the system's CAs.
    pub fn new(url: impl Into<String>, transport: Transport) -> Remote {
        Remote {
            url: url.into(),
            transport,
            credential: None,
            ca_file: None,
        }
    }
}

/// Classifies a repository URL, refusing what warden never fetches from. The message says what
/// to write instead.
pub fn parse_repo_url(url: &str) -> Result<Transport, InvalidRepoUrl> {
    classify_url(url).map_err(InvalidRepoUrl)
}

fn classify_url(url: &str) -> Result<Transport, String> {
    if url.is_empty() {
        return Err("the repository URL is empty".into());
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "the repository URL is longer than {MAX_URL_LEN} bytes"
        ));
    }
    // git reads a leading '-' as an option: never let a URL become one.
    if url.starts_with('-') {
        return Err("a repository URL must not start with '-'".into());
    }
    if url.contains("::") {
        return Err(format!(
            "transport {:?} is not allowed: warden fetches over https or ssh only",
            url.split("::").next().unwrap_or_default()
        ));
    }
    if url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(
            "the repository URL contains whitespace, a backslash or a control character".into(),
        );
    }
    if let Some(rest) = url.strip_prefix("https://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(
                "credentials in a repository URL are refused (they would be stored in the \
                 mirror's git config); use an ssh URL with an agent key instead"
                    .into(),
            );
        }
        if authority.is_empty() || rest.len() <= authority.len() + 1 {
            return Err(format!("{url:?} has no host or no path"));
        }
        return Ok(Transport::Https);
    }
    if let Some(rest) = url.strip_prefix("ssh://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains(':') && authority.rsplit(':').next().unwrap_or_default().is_empty() {
            return Err(format!("{url:?} has an empty port"));
        }
        if authority
            .split('@')
            .next_back()
            .unwrap_or_default()
            .is_empty()
            || rest.len() <= authority.len() + 1
        {
            return Err(format!("{url:?} has no host or no path"));
        }
        if authority.matches('@').count() > 1 || authority.contains(":@") {
            return Err("credentials in a repository URL are refused".into());
        }
        return Ok(Transport::Ssh);
    }
    if let Some(path) = url.strip_prefix("file://") {
        return local(path);
    }
    if url.starts_with('/') {
        return local(url);
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(format!(
            "transport {scheme:?} is not allowed: warden fetches over https or ssh only"
        ));
    }
    // scp-like syntax: [user@]host:path, where host has no '/'.
    if let Some((host, path)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        let hostname = host.rsplit('@').next().unwrap_or_default();
        if hostname.is_empty() || host.matches('@').count() > 1 {
            return Err(format!("{url:?} has no host"));
        }
        return Ok(Transport::Ssh);
    }
    Err(format!(
        "{url:?} is not a repository URL warden understands: use https://host/path, \
         ssh://host/path, user@host:path, or (for configured repos only) an absolute path"
    ))
}

fn local(path: &str) -> Result<Transport, String> {
    let p = PathBuf::from(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "local repository path {path:?} must be absolute and without '..'"
        ));
    }
    Ok(Transport::Local(p))
}

/// Compares repository URLs the way people write them: trailing `/` and `.git` do not matter.
pub fn normalize_repo_url(url: &str) -> String {
    let mut u = url.trim().trim_end_matches('/').to_string();
    if let Some(stripped) = u.strip_suffix(".git") {
        u = stripped.to_string();
    }
    u.trim_end_matches('/').to_string()
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a ref name a caller may ask warden to resolve (`main`, `v1.2`, `refs/heads/x`, `HEAD`),
/// following `git check-ref-format`'s rules, so that nothing odd reaches git's command line.
pub fn check_ref_name(name: &str) -> Result<(), InvalidRefName> {
    let bad = |why: &str| {
        Err(InvalidRefName(format!(
            "ref {name:?} is not a valid ref name: {why}"
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') {
        return bad("it starts with '-' or '/', or ends with '/'");
    }
    if name.ends_with('.') || name.ends_with(".lock") {
        return bad("it ends with '.' or '.lock'");
    }
    if name.contains("..") || name.contains("//") || name.contains("@{") || name == "@" {
        return bad("it contains '..', '//' or '@{'");
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad("it contains a space, a control character or one of ~ ^ : ? * [ \\");
    }
    if name.split('/').any(|part| part.starts_with('.')) {
        return bad("a component starts with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports() {
        for (url, want) in [
            (
                "https://github.com/pallets/click.git",
                Some(Transport::Https),
            ),
            (
                "ssh://git@github.com/pallets/click.git",
                Some(Transport::Ssh),
            ),
            ("ssh://git@host:2222/x", Some(Transport::Ssh)),
            ("git@github.com:pallets/click.git", Some(Transport::Ssh)),
            (
                "/srv/git/x.git",
                Some(Transport::Local(PathBuf::from("/srv/git/x.git"))),
            ),
            (
                "file:///srv/git/x",
                Some(Transport::Local(PathBuf::from("/srv/git/x"))),
            ),
            ("ext::sh -c touch% /tmp/pwned", None),
            ("ext::sh", None),
            ("fd::17", None),
            ("git://example.com/x", None),
            ("http://example.com/x", None),
            ("ftp://example.com/x", None),
            ("https://user:token@github.com/x", None),
            ("https://token@github.com/x", None),
            ("https://github.com", None),
            ("-uhttps://x/y", None),
            ("--upload-pack=touch /tmp/x", None),
            ("relative/path", None),
            ("file://relative", None),
            ("/srv/../etc", None),
            ("https://host/a b", None),
            ("https://host/a\nb", None),
            ("", None),
        ] {
            let got = parse_repo_url(url);
            match want {
                Some(t) => assert_eq!(got, Ok(t), "{url}"),
                None => assert!(got.is_err(), "{url} should be refused, got {got:?}"),
            }
        }
    }

    #[test]
    fn ref_names() {
        for ok in [
            "main",
            "HEAD",
            "v1.2.3",
            "refs/heads/feature/x",
            "release-2024",
        ] {
            assert_eq!(check_ref_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a~1", "a^", "a:b", "x.lock", "/x", "x/", ".hidden", "a/.b",
            "a@{1}", "@", "a\\b", "a\nb", "a*",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn urls_normalise() {
        assert_eq!(normalize_repo_url("https://h/x.git/"), "https://h/x");
        assert_eq!(normalize_repo_url("https://h/x/"), "https://h/x");
        assert_eq!(normalize_repo_url("https://h/x"), "https://h/x");
    }

    #[test]
    fn shas() {
        assert!(is_full_sha(&"a".repeat(40)));
        assert!(is_full_sha(&"0".repeat(64)));
        assert!(!is_full_sha(&"A".repeat(40)));
        assert!(!is_full_sha(&"a".repeat(39)));
        assert!(!is_full_sha("main"));
    }
}
