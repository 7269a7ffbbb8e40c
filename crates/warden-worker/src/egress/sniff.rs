//! Reading the name a connection asks for: the SNI of a TLS ClientHello (parsed by rustls'
//! `Acceptor`, which never answers) or the Host of an HTTP/1 request head (`httparse`). Reads
//! at most [`MAX_HEAD`] bytes; what was read is forwarded upstream unchanged if the connection
//! is allowed.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most a connection may send before it has named its destination.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// A client that says nothing this long is taken to wait for the server to speak first (SSH,
/// SMTP, MySQL): its protocol names nothing.
const SERVER_FIRST: Duration = Duration::from_millis(500);

/// What the head of a connection named.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Named {
    /// A TLS ClientHello, with its server name if it sent one.
    Tls(Option<String>),
    /// An HTTP/1 request, with its Host (port and trailing dot removed, lowercase).
    Http(Option<String>),
    /// Anything else: no name on the wire.
    Opaque,
}

/// Reads the head of `conn` into `head` until it names something, or refuses it.
pub(crate) async fn name(conn: &mut TcpStream, head: &mut Vec<u8>) -> Result<Named, String> {
    let mut buf = [0u8; 4096];
    let first = tokio::time::timeout(SERVER_FIRST, conn.read(&mut buf)).await;
    let n = match first {
        Err(_) => return Ok(Named::Opaque),
        Ok(Err(e)) => return Err(format!("reading the connection: {e}")),
        Ok(Ok(0)) => return Err("the connection closed before it sent anything".into()),
        Ok(Ok(n)) => n,
    };
    head.extend_from_slice(&buf[..n]);
    loop {
        match classify(head) {
            Some(named) => return named,
            None if head.len() >= MAX_HEAD => {
                return Err(format!(
                    "the connection sent {MAX_HEAD} bytes without a complete request head"
                ));
            }
            None => {}
        }
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the connection: {e}"))?;
        if n == 0 {
            return Err("the connection closed in the middle of its request head".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// What `head` names, `None` while more bytes are needed.
pub(crate) fn classify(head: &[u8]) -> Option<Result<Named, String>> {
    match head.first()? {
        // A TLS handshake record.
        0x16 => tls_server_name(head),
        b'A'..=b'Z' => http_host(head),
        _ => Some(Ok(Named::Opaque)),
    }
}

fn tls_server_name(head: &[u8]) -> Option<Result<Named, String>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = head;
    while !rd.is_empty() {
        if let Err(e) = acceptor.read_tls(&mut rd) {
            return Some(Err(format!("malformed TLS: {e}")));
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            let name = accepted
                .client_hello()
                .server_name()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            if name.as_deref() == Some("") {
                return Some(Err("the TLS server name names no host".into()));
            }
            Some(Ok(Named::Tls(name)))
        }
        Err((e, _)) => Some(Err(format!("malformed TLS ClientHello: {e}"))),
    }
}

fn http_host(head: &[u8]) -> Option<Result<Named, String>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let hosts: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value)
                .collect();
            match hosts.as_slice() {
                [] => Some(Ok(Named::Http(None))),
                [one] => Some(host_name(one).map(|h| Named::Http(Some(h)))),
                _ => Some(Err("HTTP request with more than one Host header".into())),
            }
        }
        // Not HTTP after all (a protocol whose first byte is a capital letter).
        Err(_) if !looks_like_http(head) => Some(Ok(Named::Opaque)),
        Err(e) => Some(Err(format!("malformed HTTP request head: {e}"))),
    }
}

fn looks_like_http(head: &[u8]) -> bool {
    const METHODS: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS.iter().any(|m| head.starts_with(m))
}

/// A Host header's name: `name[:port]` or `[v6]:port`, lowercase, without a trailing dot.
fn host_name(value: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "the Host header is not UTF-8".to_string())?
        .trim();
    let name = if let Some(rest) = text.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        text.rsplit_once(':').map_or(text, |(h, _)| h)
    };
    // A name of dots only (`Host: ...`) names no host once its root dots go.
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return Err("the Host header names no host".into());
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        // A real ClientHello, from rustls' own client.
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut config = config;
        config.enable_sni = sni.is_some();
        let name =
            rustls::pki_types::ServerName::try_from(sni.unwrap_or("x.test").to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn tls_names_come_from_the_client_hello() {
        let hello = client_hello(Some("API.Test"));
        assert_eq!(
            classify(&hello),
            Some(Ok(Named::Tls(Some("api.test".into()))))
        );
        // Byte by byte: more is needed until the hello is whole.
        for cut in [1, 5, hello.len() / 2, hello.len() - 1] {
            assert_eq!(classify(&hello[..cut]), None, "cut at {cut}");
        }
        assert_eq!(classify(&client_hello(None)), Some(Ok(Named::Tls(None))));
        // A handshake record that is not a ClientHello.
        let bogus = [0x16, 3, 1, 0, 4, 2, 0, 0, 0];
        assert!(matches!(classify(&bogus), Some(Err(_))));
    }

    #[test]
    fn http_hosts_are_read_from_the_request_head() {
        type Case<'a> = (&'a [u8], Option<Result<Named, String>>);
        let cases: &[Case<'_>] = &[
            (
                b"GET / HTTP/1.1\r\nHost: Api.Test:8080\r\n\r\n",
                Some(Ok(Named::Http(Some("api.test".into())))),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: api.test.\r\n\r\n",
                Some(Ok(Named::Http(Some("api.test".into())))),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
                Some(Ok(Named::Http(Some("2001:db8::1".into())))),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Some(Ok(Named::Http(None)))),
            (b"GET / HTTP/1.1\r\nHost: a", None),
            (
                b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
                Some(Err(
                    "HTTP request with more than one Host header".to_string()
                )),
            ),
            // Found by the fuzzer: a Host of dots only names nothing.
            (
                b"GET / HTTP/1.0\r\nHost: ...\r\n\r\n",
                Some(Err("the Host header names no host".to_string())),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
                Some(Err("the Host header names no host".to_string())),
            ),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Some(Ok(Named::Opaque))),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Some(Ok(Named::Opaque))),
        ];
        for (head, expected) in cases {
            assert_eq!(
                &classify(head),
                expected,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n"),
            Some(Err(_))
        ));
    }

    /// Garbage never panics and never names an allowed host by accident.
    #[test]
    fn garbage_heads_are_refused_or_opaque() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let mut head = Vec::with_capacity(len % 300);
            for _ in 0..len % 300 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                head.push(seed as u8);
            }
            if len % 3 == 0 && !head.is_empty() {
                head[0] = 0x16;
            }
            if let Some(Ok(Named::Tls(Some(n)) | Named::Http(Some(n)))) = classify(&head) {
                assert!(!n.is_empty());
            }
        }
    }
}
