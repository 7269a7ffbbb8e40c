//! The head of a job's connection as the egress gateway reads it (TLS ClientHello, HTTP request).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_worker::egress::fuzzing::sniff(data);
});
