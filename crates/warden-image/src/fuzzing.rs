//! Entry points for the fuzz targets (`fuzz/`): the parsers of what a registry or an image's
//! author controls.

/// A manifest, index or image config as a registry sends it.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = crate::oci::Manifest::parse(data) {
        let _ = m.is_index() && m.for_this_platform().is_ok();
    }
    let _ = serde_json::from_slice::<crate::oci::ImageConfigFile>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<warden_core::image::ImageRef>();
    }
}

/// A layer unpacked into `base/root`; panics if anything appears in `base` beside it.
pub fn layer(base: &std::path::Path, data: &[u8]) {
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let caps = crate::Caps {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };
    let mut u = crate::unpack::Unpacker::new(&root, caps).expect("unpacker");
    let layer = crate::oci::decompress(std::io::BufReader::new(data));
    if let Ok(tar) = layer
        && u.layer(tar).is_ok()
    {
        let _ = u.finish();
    }
    let beside: Vec<_> = std::fs::read_dir(base)
        .expect("base")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        beside,
        [std::ffi::OsString::from("root")],
        "written outside the root"
    );
    crate::remove_tree(&root);
}
