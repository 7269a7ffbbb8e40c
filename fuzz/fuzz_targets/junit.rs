//! A JUnit XML report a job leaves in its artifacts (`results: {junit: [...]}`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_worker::junit::fuzzing::junit(data);
});
