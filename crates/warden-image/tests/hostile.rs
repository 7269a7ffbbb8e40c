//! Hostile images: each layer below is one a naive unpacker gets wrong. Every case is
//! unpacked through the same path a job's image takes (`Images::prepare` on an OCI layout
//! written here), and must be refused or neutralised exactly as asserted, with nothing
//! written outside the cache.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use warden_core::config::{ImagesConfig, Positive};
use warden_core::image::{Digest, ImageRef};
use warden_image::{ImageError, Images};

/// One tar entry, with its name written raw (no checks: hostile names are the point).
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    /// A GNU sparse file of this logical size whose only data is its last 512 bytes.
    Sparse(&'a str, u64),
}

fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let raw = &mut h.as_old_mut().name;
    raw.fill(0);
    raw[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn link_name(h: &mut tar::Header, target: &str) {
    let raw = &mut h.as_old_mut().linkname;
    raw.fill(0);
    raw[..target.len()].copy_from_slice(target.as_bytes());
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::Dir(n, m) => (header(n, tar::EntryType::Directory, *m, 0), &[]),
            E::File(n, m, d) => (header(n, tar::EntryType::Regular, *m, d.len() as u64), d),
            E::Symlink(n, t) => {
                let mut h = header(n, tar::EntryType::Symlink, 0o777, 0);
                link_name(&mut h, t);
                (h, &[])
            }
            E::Hardlink(n, t) => {
                let mut h = header(n, tar::EntryType::Link, 0o644, 0);
                link_name(&mut h, t);
                (h, &[])
            }
            E::Char(n) => {
                let mut h = header(n, tar::EntryType::Char, 0o666, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                (h, &[])
            }
            E::Sparse(n, size) => {
                let mut h = header(n, tar::EntryType::GNUSparse, 0o644, 512);
                let gnu = h.as_gnu_mut().unwrap();
                gnu.set_real_size(*size);
                gnu.sparse[0].set_offset(size - 512);
                gnu.sparse[0].set_length(512);
                (h, &[7u8; 512][..])
            }
        };
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes an OCI layout at `dir` with these (already compressed) layers; returns the
/// manifest's digest. `lie` replaces a layer's digest in the manifest.
fn layout(dir: &Path, layers: &[Vec<u8>], lie: Option<(usize, String)>) -> Digest {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let h = sha(bytes);
        std::fs::write(blobs.join(&h), bytes).unwrap();
        h
    };
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin","LANG=C.UTF-8"],"WorkingDir":"/srv","User":"1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_hex = put(config);
    let mut descs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let mut h = put(l);
        if let Some((at, fake)) = &lie
            && *at == i
        {
            h = fake.clone();
        }
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{h}","size":{}}}"#,
            l.len()
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let m = put(manifest.as_bytes());
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{m}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Digest::from_hex(&m).unwrap()
}

struct Case {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    images: Images,
    reference: ImageRef,
}

fn case(layers: &[&[E]], config: ImagesConfig) -> (Case, Digest) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let gz: Vec<Vec<u8>> = layers.iter().map(|l| gzip(&tar_of(l))).collect();
    let digest = layout(&base.join("layout"), &gz, None);
    let images = Images::open(base.join("cache"), config, Default::default()).unwrap();
    let reference = format!("oci:{}:t", base.join("layout").display())
        .parse()
        .unwrap();
    (
        Case {
            _tmp: tmp,
            base,
            images,
            reference,
        },
        digest,
    )
}

impl Case {
    async fn prepare(&self, digest: &Digest) -> Result<warden_image::Root, ImageError> {
        self.images.prepare(&self.reference, digest).await
    }

    /// Nothing but the layout and the cache under the test's directory; no root published
    /// (for a refused image) and no staging left behind.
    fn assert_refused_cleanly(&self) {
        let mut top: Vec<_> = std::fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["cache", "layout"]);
        for sub in ["roots", "staging"] {
            let n = std::fs::read_dir(self.base.join("cache").join(sub))
                .unwrap()
                .count();
            assert_eq!(n, 0, "cache/{sub} is not empty");
        }
    }
}

fn refused(r: Result<warden_image::Root, ImageError>) -> String {
    match r {
        Err(ImageError::Refused(m)) => m,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(root) => panic!(
            "expected a refusal, got a root at {}",
            root.rootfs.display()
        ),
    }
}

#[tokio::test]
async fn a_good_image_unpacks_with_whiteouts_links_and_its_config() {
    let (c, digest) = case(
        &[
            &[
                E::Dir("usr/", 0o755),
                E::Dir("usr/bin/", 0o755),
                E::File("usr/bin/tool", 0o755, b"#!/bin/sh\necho one\n"),
                E::Symlink("bin", "usr/bin"),
                E::Hardlink("usr/bin/tool2", "usr/bin/tool"),
                E::Dir("etc/", 0o755),
                E::File("etc/old", 0o644, b"old"),
                E::Dir("opt/", 0o755),
                E::File("opt/lower", 0o644, b"lower"),
                E::File("usr/bin/su", 0o4755, b"setuid"),
                E::Char("dev/null"),
                E::File("/abs", 0o644, b"absolute name"),
            ],
            &[
                E::File("etc/.wh.old", 0o644, b""),
                E::File("opt/.wh..wh..opq", 0o644, b""),
                E::File("opt/upper", 0o644, b"upper"),
                E::File("usr/bin/tool", 0o755, b"#!/bin/sh\necho two\n"),
                E::Dir("ro/", 0o555),
                E::File("ro/inside", 0o444, b"x"),
            ],
        ],
        ImagesConfig::default(),
    );
    let resolved = c.images.resolve(&c.reference).await.unwrap();
    assert_eq!(resolved, digest);
    let root = c.prepare(&digest).await.unwrap();
    let r = &root.rootfs;
    assert_eq!(
        std::fs::read(r.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho two\n"
    );
    assert_eq!(
        std::fs::read_link(r.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    // The hard link shares the first layer's file (replaced since, so now its own inode).
    assert_eq!(
        std::fs::read(r.join("usr/bin/tool2")).unwrap(),
        b"#!/bin/sh\necho one\n"
    );
    assert!(!r.join("etc/old").exists(), "the whiteout removed it");
    assert!(
        !r.join("opt/lower").exists(),
        "the opaque directory hid the lower layer"
    );
    assert_eq!(std::fs::read(r.join("opt/upper")).unwrap(), b"upper");
    let su = std::fs::metadata(r.join("usr/bin/su")).unwrap();
    assert_eq!(
        su.permissions().mode() & 0o7777,
        0o755,
        "setuid bit cleared"
    );
    assert!(!r.join("dev/null").exists(), "device node dropped");
    assert_eq!(std::fs::read(r.join("abs")).unwrap(), b"absolute name");
    assert_eq!(
        std::fs::metadata(r.join("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    assert_eq!(root.info.unpacked.devices_dropped, 1);
    assert_eq!(root.info.unpacked.special_bits_cleared, 1);
    assert_eq!(root.info.unpacked.absolute_names, 1);
    assert_eq!(root.info.env, ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    assert_eq!(root.info.working_dir.as_deref(), Some("/srv"));
    assert_eq!(root.info.user.as_deref(), Some("1000"));
    // Owned by whoever unpacked it, never by the image's ids.
    let me = rustix::process::geteuid().as_raw();
    assert_eq!(su.uid(), me);
    // A second prepare finds it in the cache (same root, nothing staged).
    let again = c.prepare(&digest).await.unwrap();
    assert_eq!(again.rootfs, root.rootfs);
    assert_eq!(
        std::fs::read_dir(c.base.join("cache/staging"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn dot_dot_names_are_refused() {
    let (c, d) = case(
        &[&[E::File("../../etc/cron.d/x", 0o644, b"* * * * * root id")]],
        ImagesConfig::default(),
    );
    let m = refused(c.prepare(&d).await);
    assert!(m.contains("leaves the image's root"), "{m}");
    c.assert_refused_cleanly();
    assert!(!c.base.parent().unwrap().join("etc/cron.d/x").exists());
    // A hard link through '..' likewise.
    let (c, d) = case(
        &[&[E::Hardlink("x", "../../../etc/shadow")]],
        ImagesConfig::default(),
    );
    let m = refused(c.prepare(&d).await);
    assert!(m.contains("leaves the image's root"), "{m}");
    c.assert_refused_cleanly();
}

#[tokio::test]
async fn a_file_through_an_absolute_symlink_stays_inside_the_root() {
    // `link -> /etc`, then `link/cron.d/NAME`: a naive unpacker writes the host's /etc. Here
    // the link is resolved inside the root, as the job would see it.
    let name = format!("warden-hostile-{}", std::process::id());
    let file = format!("link/cron.d/{name}");
    let (c, d) = case(
        &[&[
            E::Dir("etc/", 0o755),
            E::Dir("etc/cron.d/", 0o755),
            E::Symlink("link", "/etc"),
            E::File(&file, 0o644, b"owned"),
            // A chain up through '..' in the target, and a file written through it.
            E::Symlink("up", "../../../../../../.."),
            E::File("up/tmp-escape", 0o644, b"x"),
        ]],
        ImagesConfig::default(),
    );
    let root = c.prepare(&d).await.unwrap();
    assert!(!Path::new("/etc/cron.d").join(&name).exists());
    assert!(!Path::new("/tmp-escape").exists());
    assert!(
        std::fs::symlink_metadata(root.rootfs.join("link"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(root.rootfs.join("etc/cron.d").join(&name)).unwrap(),
        b"owned"
    );
    assert_eq!(std::fs::read(root.rootfs.join("tmp-escape")).unwrap(), b"x");
    let all = walk(&c.base);
    assert!(
        all.iter()
            .all(|p| p.starts_with(c.base.join("cache")) || p.starts_with(c.base.join("layout")))
    );
    // `etc -> /etc` is a loop inside the root, and a link to a directory the image does not
    // have leads nowhere: a file through either is refused, and nothing is written.
    for (link, target) in [("etc", "/etc"), ("gone", "/nonexistent")] {
        let through = format!("{link}/x");
        let (c, d) = case(
            &[&[E::Symlink(link, target), E::File(&through, 0o644, b"x")]],
            ImagesConfig::default(),
        );
        let m = refused(c.prepare(&d).await);
        assert!(m.contains(&format!("entry \"{through}\"")), "{m}");
        c.assert_refused_cleanly();
    }
}

/// Every path under `dir`, without following links.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[tokio::test]
async fn a_hard_link_to_a_host_file_is_refused() {
    let (c, d) = case(
        &[&[E::Hardlink("shadow", "/etc/shadow")]],
        ImagesConfig::default(),
    );
    let m = refused(c.prepare(&d).await);
    assert!(m.contains("which is not a file in the image"), "{m}");
    c.assert_refused_cleanly();
}

#[tokio::test]
async fn a_whiteout_of_the_root_is_refused() {
    for name in [".wh..", ".wh.", "a/.wh..."] {
        let (c, d) = case(&[&[E::File(name, 0o644, b"")]], ImagesConfig::default());
        let m = refused(c.prepare(&d).await);
        assert!(m.contains("whiteout of the image's root"), "{name}: {m}");
        c.assert_refused_cleanly();
    }
}

#[tokio::test]
async fn a_ten_gigabyte_sparse_entry_is_refused_before_it_is_written() {
    let (c, d) = case(&[&[E::Sparse("huge", 10 << 30)]], ImagesConfig::default());
    let m = refused(c.prepare(&d).await);
    assert!(m.contains("more than 8589934592 bytes"), "{m}");
    c.assert_refused_cleanly();
}

#[tokio::test]
async fn a_layer_with_a_million_entries_is_refused_at_the_cap() {
    // Generated as it is read: the unpacker stops at the cap, long before the millionth.
    struct Many {
        next: u64,
        buf: Vec<u8>,
        pos: usize,
    }
    impl Read for Many {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
                if self.next == 1_000_000 {
                    self.buf.extend_from_slice(&[0; 1024]);
                    self.next += 1;
                } else if self.next > 1_000_000 {
                    return Ok(0);
                } else {
                    let mut h = header(
                        &format!("f{}", self.next),
                        tar::EntryType::Regular,
                        0o644,
                        0,
                    );
                    h.set_cksum();
                    self.buf.extend_from_slice(h.as_bytes());
                    self.next += 1;
                }
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let caps = warden_image::Caps {
        max_entries: 20_000,
        ..Default::default()
    };
    let mut u = warden_image::unpack::Unpacker::new(tmp.path(), caps).unwrap();
    let many = Many {
        next: 0,
        buf: Vec::new(),
        pos: 0,
    };
    let err = u.layer(many).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the image has more than 20000 entries; raise images.max_entries"
    );
    // Through the cache too, with the default cap, on a real (compressed) layout: 500,001
    // empty files would be 500,001 files; the cap is the answer, so a small one shows it.
    let files: Vec<String> = (0..3000).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = files.iter().map(|f| E::File(f, 0o644, b"")).collect();
    let (c, d) = case(
        &[&entries],
        ImagesConfig {
            max_entries: Positive(2000),
            ..ImagesConfig::default()
        },
    );
    let m = refused(c.prepare(&d).await);
    assert!(m.contains("more than 2000 entries"), "{m}");
    c.assert_refused_cleanly();
}

#[tokio::test]
async fn a_layer_that_does_not_match_its_digest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = gzip(&tar_of(&[E::File("a", 0o644, b"a")]));
    let evil = gzip(&tar_of(&[E::File("a", 0o644, b"b")]));
    assert_eq!(good.len(), evil.len());
    // The manifest names the good layer's digest; the blob under that name is the evil one.
    let d = layout(
        &tmp.path().join("layout"),
        std::slice::from_ref(&good),
        None,
    );
    std::fs::write(
        tmp.path().join("layout/blobs/sha256").join(sha(&good)),
        &evil,
    )
    .unwrap();
    let images = Images::open(
        tmp.path().join("cache"),
        ImagesConfig::default(),
        Default::default(),
    )
    .unwrap();
    let r: ImageRef = format!("oci:{}", tmp.path().join("layout").display())
        .parse()
        .unwrap();
    let m = refused(images.prepare(&r, &d).await);
    assert!(m.contains("does not match its digest"), "{m}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("cache/roots"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("cache/staging"))
            .unwrap()
            .count(),
        0
    );
    // Longer than its descriptor says: refused as soon as it is.
    let longer = gzip(&tar_of(&[E::File("a", 0o644, b"a much longer evil file")]));
    std::fs::write(
        tmp.path().join("layout/blobs/sha256").join(sha(&good)),
        &longer,
    )
    .unwrap();
    let m = refused(images.prepare(&r, &d).await);
    assert!(m.contains("longer than the"), "{m}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("cache/roots"))
            .unwrap()
            .count(),
        0
    );
    // A manifest whose own bytes were changed is refused by the same check.
    let manifest = tmp.path().join("layout/blobs/sha256").join(d.hex());
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.push(b' ');
    std::fs::write(&manifest, bytes).unwrap();
    let m = refused(images.prepare(&r, &d).await);
    assert!(
        m.contains("the manifest") && m.contains("does not match its digest"),
        "{m}"
    );
}

#[tokio::test]
async fn a_manifest_pointing_at_a_missing_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = gzip(&tar_of(&[E::File("a", 0o644, b"a")]));
    let d = layout(
        &tmp.path().join("layout"),
        &[layer],
        Some((0, "b".repeat(64))),
    );
    let images = Images::open(
        tmp.path().join("cache"),
        ImagesConfig::default(),
        Default::default(),
    )
    .unwrap();
    let r: ImageRef = format!("oci:{}:t", tmp.path().join("layout").display())
        .parse()
        .unwrap();
    let m = refused(images.prepare(&r, &d).await);
    assert!(
        m.contains(&format!("has no blob sha256:{}", "b".repeat(64))),
        "{m}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("cache/roots"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn the_cache_evicts_the_least_recently_used_root_not_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![1u8; 600 << 10];
    let mut refs = Vec::new();
    for i in 0..3 {
        let dir = tmp.path().join(format!("layout{i}"));
        let name = format!("f{i}");
        let d = layout(&dir, &[gzip(&tar_of(&[E::File(&name, 0o644, &big)]))], None);
        refs.push((
            format!("oci:{}", dir.display())
                .parse::<ImageRef>()
                .unwrap(),
            d,
        ));
    }
    let images = Images::open(
        tmp.path().join("cache"),
        ImagesConfig {
            cache_mb: Positive(1),
            ..ImagesConfig::default()
        },
        Default::default(),
    )
    .unwrap();
    let roots = |images: &Images| {
        let _ = images;
        let mut v: Vec<String> = std::fs::read_dir(tmp.path().join("cache/roots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // Image 0 stays in use; image 1 is dropped after use. Adding image 2 (over the 1 MiB
    // budget) evicts 1, never 0.
    let held = images.prepare(&refs[0].0, &refs[0].1).await.unwrap();
    drop(images.prepare(&refs[1].0, &refs[1].1).await.unwrap());
    let _two = images.prepare(&refs[2].0, &refs[2].1).await.unwrap();
    let mut want = vec![refs[0].1.hex().to_string(), refs[2].1.hex().to_string()];
    want.sort();
    assert_eq!(roots(&images), want);
    assert!(held.rootfs.join("f0").exists());
}
