//! Entry points for `fuzz/` (cargo fuzz): the parsers that read what a job sends, with the
//! properties every answer must have. Not part of warden's API.

use super::*;

/// The head of a connection: whatever it names is a lowercase name without a trailing dot.
pub fn sniff(head: &[u8]) {
    if let Some(Ok(sniff::Named::Tls(Some(n)) | sniff::Named::Http(Some(n)))) =
        sniff::classify(head)
    {
        assert!(!n.is_empty() && !n.ends_with('.'), "{n:?}");
        assert_eq!(n, n.to_ascii_lowercase());
    }
}

thread_local! {
    static DNS: (tokio::runtime::Runtime, Arc<State>) = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let policy = EgressPolicy {
            rules: vec![warden_core::config::parse_rule("198.51.100.0/24:443").unwrap()],
            max_connections: None,
            max_bytes: None,
        };
        let config = EgressGatewayConfig { resolver: Some(([127, 0, 0, 1], 9).into()) };
        let state = Arc::new(rt.block_on(async { State::new(policy, &config) }).unwrap());
        (rt, state)
    };
}

/// One datagram to the job's resolver, under a policy that names no host: nothing is ever
/// forwarded, and any reply is a well-formed refusal to the same id.
pub fn dns(query: &[u8]) {
    use hickory_proto::op::{Message, ResponseCode};
    DNS.with(|(rt, state)| {
        let Some(reply) = rt.block_on(dns::answer(state, query)) else {
            return;
        };
        let reply = Message::from_vec(&reply).expect("warden's reply parses");
        let asked = Message::from_vec(query).expect("a query that was answered parsed");
        assert_eq!(reply.id(), asked.id());
        assert!(reply.answers().is_empty(), "nothing is answered: {reply:?}");
        assert!(
            matches!(
                reply.response_code(),
                ResponseCode::NXDomain | ResponseCode::FormErr | ResponseCode::NotImp
            ),
            "{reply:?}"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, id: u16) -> Vec<u8> {
        use hickory_proto::op::{Message, Query};
        use hickory_proto::rr::{Name, RecordType};
        let mut m = Message::new();
        m.set_id(id)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    /// The fuzz harness's properties hold for the inputs a job sends most.
    #[test]
    fn the_fuzz_properties_hold_on_ordinary_input() {
        dns(&query("unlisted.test.", 7));
        dns(&query("a.b.c.d.e.f.exfil.test.", 8));
        dns(b"");
        dns(b"\x00\x01\x81\x80garbage");
        let mut two = query("x.test.", 9);
        two[5] = 2; // QDCOUNT 2 with one question: malformed
        dns(&two);
        sniff(b"GET / HTTP/1.1\r\nHost: A.Test.\r\n\r\n");
        sniff(&[0x16, 3, 1, 0, 0]);
    }
}
