//! An image layer (gzip or plain tar) as its author wrote it, unpacked by warden: it must
//! never write outside the root it is unpacked into.
#![no_main]

use std::sync::OnceLock;

static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let base = BASE.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    warden_image::fuzzing::layer(base.path(), data);
});
