//! The git side against real repositories: mirrors, refs, the checkout cache and the proof.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use warden_core::repo::Transport;
use warden_repo::{Git, PUSH_DISABLED, Remote, RepoError, Repos};

/// Runs git in `dir` with a fixed identity, for building test repositories.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Source {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Source {
    /// A repository with two commits on main, a branch and an annotated tag.
    fn new() -> Source {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("src");
        std::fs::create_dir(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("a.txt"), "one\n").unwrap();
        std::fs::create_dir(path.join("dir")).unwrap();
        std::fs::write(path.join("dir/b.txt"), "bee\n").unwrap();
        std::fs::write(path.join(".gitignore"), "*.log\n").unwrap();
        git(&path, &["add", "."]);
        git(&path, &["commit", "-q", "-m", "one"]);
        git(&path, &["tag", "-a", "v1", "-m", "v1"]);
        std::fs::write(path.join("a.txt"), "two\n").unwrap();
        git(&path, &["commit", "-q", "-am", "two"]);
        git(&path, &["branch", "feature"]);
        Source { _tmp: tmp, path }
    }

    fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"])
    }

    fn remote(&self) -> Remote {
        Remote::new(
            self.path.to_string_lossy(),
            Transport::Local(self.path.clone()),
        )
    }
}

fn repos(dir: &Path, budget_mb: u64) -> Repos {
    let yaml = format!("git: {{checkout_cache_mb: {budget_mb}, fetch_max_mb: 64}}\n");
    let config = warden_core::Config::from_yaml_str(&yaml, "t").unwrap();
    Repos::open(dir, &config.git).unwrap()
}

#[tokio::test]
async fn a_mirror_cannot_push_and_stores_no_credentials() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let co = r.checkout(&src.remote(), &src.head()).await.unwrap();
    let mirror = r.mirrors.path(&src.remote().url);
    assert_eq!(
        git(&mirror, &["config", "remote.origin.pushurl"]),
        PUSH_DISABLED
    );
    let config = std::fs::read_to_string(mirror.join("config")).unwrap();
    assert!(!config.contains("credential"), "{config}");
    // Pushing from the mirror fails, whatever is asked.
    for args in [
        &["push", "origin", "main"][..],
        &["push", "--mirror", "origin"][..],
        &["push"][..],
    ] {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&mirror)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "git {args:?} succeeded");
    }
    // The source is untouched: still exactly its own two branches.
    assert_eq!(
        git(&src.path, &["branch", "--format=%(refname:short)"]),
        "feature\nmain"
    );
    // The mirror has no hooks directory at all.
    assert!(!mirror.join("hooks").exists());
    drop(co);
}

#[tokio::test]
async fn refs_resolve_to_full_commit_ids() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let remote = src.remote();
    let head = src.head();
    let first = git(&src.path, &["rev-parse", "HEAD~1"]);
    assert_eq!(r.mirrors.resolve_ref(&remote, "main").await.unwrap(), head);
    assert_eq!(
        r.mirrors
            .resolve_ref(&remote, "refs/heads/feature")
            .await
            .unwrap(),
        head
    );
    assert_eq!(r.mirrors.resolve_ref(&remote, "HEAD").await.unwrap(), head);
    // An annotated tag resolves to its commit, not the tag object.
    assert_eq!(r.mirrors.resolve_ref(&remote, "v1").await.unwrap(), first);
    let err = r.mirrors.resolve_ref(&remote, "nope").await.unwrap_err();
    assert!(matches!(err, RepoError::InvalidRef(_)), "{err}");
    let err = r.mirrors.resolve_ref(&remote, "a..b").await.unwrap_err();
    assert!(matches!(err, RepoError::InvalidRef(_)), "{err}");
    // A tag and a branch of one name at different commits: ambiguous, refused.
    git(&src.path, &["tag", "feature", "HEAD~1"]);
    let err = r.mirrors.resolve_ref(&remote, "feature").await.unwrap_err();
    assert!(err.to_string().contains("ambiguous"), "{err}");
}

#[tokio::test]
async fn an_unknown_commit_is_invalid_ref() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let err = r
        .checkout(&src.remote(), &"0123456789abcdef".repeat(3)[..40])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_ref", "{err}");
    assert!(err.to_string().contains("is not in"), "{err}");
    let err = r
        .checkout(&src.remote(), &"ab".repeat(20))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_ref");
}

#[tokio::test]
async fn a_new_commit_is_fetched_and_an_older_one_needs_no_fetch() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let remote = src.remote();
    let c = r.mirrors.ensure_commit(&remote, &src.head()).await.unwrap();
    assert!(c.fetched);
    std::fs::write(src.path.join("a.txt"), "three\n").unwrap();
    git(&src.path, &["commit", "-q", "-am", "three"]);
    let c3 = r.mirrors.ensure_commit(&remote, &src.head()).await.unwrap();
    assert!(c3.fetched, "the new commit needed a fetch");
    let c1 = git(&src.path, &["rev-parse", "HEAD~2"]);
    let again = r.mirrors.ensure_commit(&remote, &c1).await.unwrap();
    assert!(!again.fetched);
    assert_eq!(again.tree, git(&src.path, &["rev-parse", "HEAD~2^{tree}"]));
}

#[tokio::test]
async fn the_cache_shares_one_read_only_tree_per_commit() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = Arc::new(repos(data.path(), 100));
    let remote = src.remote();
    let sha = src.head();
    // Eight at once: one checkout, shared.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (r, remote, sha) = (r.clone(), remote.clone(), sha.clone());
            tokio::spawn(async move { r.checkout(&remote, &sha).await.unwrap() })
        })
        .collect();
    let mut cos = Vec::new();
    for t in tasks {
        cos.push(t.await.unwrap());
    }
    assert_eq!(cos.iter().filter(|c| !c.hit).count(), 1);
    assert!(cos.iter().all(|c| c.tree() == cos[0].tree()));
    let stats = r.cache.stats();
    assert_eq!((stats.entries, stats.in_use), (1, 1));
    let tree = cos[0].tree();
    assert_eq!(
        std::fs::read_to_string(tree.join("a.txt")).unwrap(),
        "two\n"
    );
    use std::os::unix::fs::PermissionsExt;
    for p in [
        tree.join("a.txt"),
        tree.join("dir"),
        tree.join("dir/b.txt"),
        tree.clone(),
    ] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "{} is writable: {mode:o}", p.display());
    }
    let proof = r.cache.verify(&cos[0]).await.unwrap();
    assert!(proof.clean, "{proof:?}");
    assert_eq!(
        cos[0].tree_id(),
        git(&src.path, &["rev-parse", "HEAD^{tree}"])
    );
    // The job's git directory: HEAD at the commit, git works against it.
    let gitdir = cos[0].gitdir(None).unwrap();
    let out = Command::new("git")
        .env("GIT_DIR", &gitdir)
        .env("GIT_WORK_TREE", &tree)
        .env("GIT_OBJECT_DIRECTORY", cos[0].objects())
        .args(["log", "--format=%s"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\none\n");
    drop(cos);
    assert_eq!(r.cache.stats().in_use, 0);
}

#[tokio::test]
async fn the_proof_lists_every_change_and_a_tainted_tree_leaves_the_cache() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let remote = src.remote();
    let sha = src.head();
    let co = r.checkout(&remote, &sha).await.unwrap();
    let other = r.checkout(&remote, &sha).await.unwrap();
    let tree = co.tree();
    // Tamper from outside, as root can: same size, new content; a new file; an ignored file;
    // a removed file; something in the .git mount point.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tree.join("dir"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tree.join(".git"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tree.join("a.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(tree.join("a.txt"), "TWO\n").unwrap();
    std::fs::write(tree.join("new\nname\x1b[31m"), "x").unwrap();
    std::fs::write(tree.join("debug.log"), "ignored by .gitignore").unwrap();
    std::fs::remove_file(tree.join("dir/b.txt")).unwrap();
    std::fs::write(tree.join(".git/config"), "[core]\n").unwrap();
    let proof = r.cache.verify(&co).await.unwrap();
    assert!(!proof.clean);
    assert_eq!(
        proof.changed,
        vec![
            ".git",
            "a.txt",
            "debug.log",
            "dir/b.txt",
            "new\nname\x1b[31m"
        ]
    );
    assert_eq!(proof.changed_count, 5);
    r.cache.taint(&co);
    assert_eq!(r.cache.stats().entries, 0);
    // A new checkout of the commit is a fresh, clean tree elsewhere.
    let fresh = r.checkout(&remote, &sha).await.unwrap();
    assert!(!fresh.hit);
    assert_ne!(fresh.tree(), tree);
    assert!(r.cache.verify(&fresh).await.unwrap().clean);
    // The tainted tree goes when its last user lets go.
    drop(co);
    assert!(tree.exists(), "still in use by another job");
    drop(other);
    for _ in 0..200 {
        if !tree.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!tree.exists());
}

#[tokio::test]
async fn a_metadata_only_tamper_of_the_same_size_is_found() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let co = r.checkout(&src.remote(), &src.head()).await.unwrap();
    let f = co.tree().join("dir/b.txt");
    let before = std::fs::metadata(&f).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&f, "BEE\n").unwrap();
    // Put the old mtime back: the content still differs and must be found.
    let mtime = before.modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let proof = r.cache.verify(&co).await.unwrap();
    assert_eq!(proof.changed, vec!["dir/b.txt"]);
}

#[tokio::test]
async fn eviction_keeps_the_budget_and_never_takes_a_tree_in_use() {
    let src = Source::new();
    // Three commits with a 1 MiB file each.
    let mut shas = Vec::new();
    for i in 0..3 {
        std::fs::write(src.path.join("big.bin"), vec![i as u8; 1 << 20]).unwrap();
        git(&src.path, &["add", "big.bin"]);
        git(&src.path, &["commit", "-q", "-m", &format!("big {i}")]);
        shas.push(src.head());
    }
    let data = tempfile::tempdir().unwrap();
    // Room for one tree and a little (a tree bigger than the whole budget is refused).
    let r = repos(data.path(), 2);
    let remote = src.remote();
    let held = r.checkout(&remote, &shas[0]).await.unwrap();
    let second = r.checkout(&remote, &shas[1]).await.unwrap();
    drop(second);
    let third = r.checkout(&remote, &shas[2]).await.unwrap();
    // The held tree stays (in use); the unused second one went; the third is in use.
    assert!(held.tree().join("big.bin").exists());
    let stats = r.cache.stats();
    assert_eq!(stats.entries, 2, "{stats:?}");
    assert!(r.checkout(&remote, &shas[0]).await.unwrap().hit);
    assert!(!r.checkout(&remote, &shas[1]).await.unwrap().hit);
    drop((held, third));
}

#[tokio::test]
async fn a_restart_keeps_clean_trees_and_drops_tampered_ones() {
    let src = Source::new();
    let data = tempfile::tempdir().unwrap();
    let remote = src.remote();
    let sha = src.head();
    let first = git(&src.path, &["rev-parse", "HEAD~1"]);
    let (t1, t2) = {
        let r = repos(data.path(), 100);
        let a = r.checkout(&remote, &sha).await.unwrap();
        let b = r.checkout(&remote, &first).await.unwrap();
        (a.tree(), b.tree())
    };
    // While warden is down, someone edits one cached tree.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t2.join("a.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(t2.join("a.txt"), "evil\n").unwrap();
    let r = repos(data.path(), 100);
    assert_eq!(r.cache.stats().entries, 2);
    let a = r.checkout(&remote, &sha).await.unwrap();
    assert!(a.hit);
    assert_eq!(a.tree(), t1);
    let b = r.checkout(&remote, &first).await.unwrap();
    assert!(!b.hit, "the tampered tree was not reused");
    assert_ne!(b.tree(), t2);
    assert_eq!(
        std::fs::read_to_string(b.tree().join("a.txt")).unwrap(),
        "one\n"
    );
}

#[tokio::test]
async fn hooks_path_lives_in_the_gitdir_config_and_no_hook_ever_runs() {
    let src = Source::new();
    let marker = src.path.parent().unwrap().join("hook-ran");
    std::fs::create_dir(src.path.join(".githooks")).unwrap();
    for hook in [
        "post-checkout",
        "pre-commit",
        "reference-transaction",
        "post-index-change",
    ] {
        let p = src.path.join(".githooks").join(hook);
        std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    git(&src.path, &["add", ".githooks"]);
    git(&src.path, &["commit", "-q", "-m", "hooks"]);
    let data = tempfile::tempdir().unwrap();
    let r = repos(data.path(), 100);
    let co = r.checkout(&src.remote(), &src.head()).await.unwrap();
    let gitdir = co.gitdir(Some(".githooks")).unwrap();
    let out = Command::new("git")
        .env("GIT_DIR", &gitdir)
        .args(["config", "core.hooksPath"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), ".githooks\n");
    // The default git directory has none, and the tree carries no config.
    assert!(
        !std::fs::read_to_string(co.gitdir(None).unwrap().join("config"))
            .unwrap()
            .contains("hooksPath")
    );
    assert!(r.cache.verify(&co).await.unwrap().clean);
    assert!(!marker.exists(), "a hook ran");
}

#[tokio::test]
async fn a_fetch_over_the_size_cap_is_refused() {
    let src = Source::new();
    // 3 MiB of incompressible data against a 1 MiB cap.
    let mut data = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(src.path.join("noise.bin"), data).unwrap();
    git(&src.path, &["add", "noise.bin"]);
    git(&src.path, &["commit", "-q", "-m", "noise"]);
    let dir = tempfile::tempdir().unwrap();
    let config = warden_core::Config::from_yaml_str("git: {fetch_max_mb: 1}\n", "t").unwrap();
    let r = Repos::open(dir.path(), &config.git).unwrap();
    let err = r.checkout(&src.remote(), &src.head()).await.unwrap_err();
    assert_eq!(err.code(), "fetch_too_large", "{err}");
    // No half-made mirror is left to be mistaken for a good one.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("mirrors"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_git_command_past_its_deadline_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let g = Git::new(dir.path().join("home")).unwrap();
    let pidfile = dir.path().join("pid");
    let started = std::time::Instant::now();
    let err = g
        .command(None)
        .arg("-c")
        .arg(format!(
            "alias.hang=!sh -c 'echo $$ > {}; exec sleep 60'",
            pidfile.display()
        ))
        .arg("hang")
        .timeout(Duration::from_millis(500))
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, warden_repo::git::GitError::Timeout(_)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the hook's child {pid} outlived the deadline");
}

#[test]
fn mirror_ids_are_safe_names() {
    let id = warden_repo::mirror_id("https://example.com/a/../../etc/passwd\n");
    assert!(
        !id.contains('/') && !id.contains('\n') && !id.starts_with('.'),
        "{id}"
    );
    assert_eq!(
        warden_repo::mirror_id("https://h/x.git"),
        warden_repo::mirror_id("https://h/x/")
    );
}
