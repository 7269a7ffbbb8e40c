//! A datagram to the job's resolver.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_worker::egress::fuzzing::dns(data);
});
