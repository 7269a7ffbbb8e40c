//! `warden-outputs.json`, the file a job writes to add warnings and outputs to its record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_worker::fuzz_outputs(data);
});
