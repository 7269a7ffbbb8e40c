//! `warden.yaml` from anyone who can write it: a `Config` or an error with a location, never a
//! panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = warden_core::Config::from_yaml_str(&text, "fuzz.yaml") {
        assert!(!e.to_string().is_empty());
    }
});
