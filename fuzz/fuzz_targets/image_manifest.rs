//! Manifests, indexes and image configs as a registry sends them, and image references.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_image::fuzzing::manifest(data);
});
