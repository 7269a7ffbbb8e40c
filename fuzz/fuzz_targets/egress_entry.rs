//! An egress allowlist entry: parsed or refused with a message; a parsed entry prints as an
//! entry that parses back to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match warden_core::config::parse_rule(text) {
        Ok(rule) => {
            let shown = rule.to_string();
            let again = warden_core::config::parse_rule(&shown)
                .unwrap_or_else(|e| panic!("{shown:?} does not parse back: {e}"));
            assert_eq!(again, rule);
        }
        Err(e) => assert!(e.starts_with("egress entry")),
    }
});
