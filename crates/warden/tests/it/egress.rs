//! Egress allowlists, through real jobs, against a fake internet of the test's own.
//!
//! The warden under test runs in a network namespace (`wdn-h<tag>`) whose only route leads, by
//! one veth link, into another (`wdn-i<tag>`): the "internet". It holds a DNS server that logs
//! every query it receives, HTTP servers, a TLS server with a certificate of the test's CA, and
//! the forbidden destinations (the metadata address, an RFC 1918 address), each logging every
//! connection. Nothing can leave this machine even if the gateway were broken, and the
//! machine's own interfaces and routes are never touched.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warden_api::{JobStatus, JobView, SubmitJobRequest};
use warden_client::Client;

use crate::support::{Server, WARDEN, wait_job, write_config_with};

/// Everything the fake internet saw.
#[derive(Default)]
struct Seen {
    dns: Vec<String>,
    /// (server address, Host or SNI or "-")
    tcp: Vec<(SocketAddr, String)>,
    udp: Vec<SocketAddr>,
}

type Log = Arc<Mutex<Seen>>;

struct Nets {
    inet: String,
    host: String,
}

impl Nets {
    fn create(tag: u16) -> Nets {
        let (inet, host) = (format!("wdn-i{tag}"), format!("wdn-h{tag}"));
        let (vi, vh) = (format!("wdi{tag}"), format!("wdh{tag}"));
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ns in [&inet, &host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["netns", "add", ns]);
            run(&["-n", ns, "link", "set", "lo", "up"]);
        }
        run(&[
            "-n", &host, "link", "add", &vh, "type", "veth", "peer", "name", &vi, "netns", &inet,
        ]);
        run(&["-n", &host, "addr", "add", "10.99.0.2/24", "dev", &vh]);
        run(&["-n", &host, "link", "set", &vh, "up"]);
        run(&["-n", &host, "route", "add", "default", "via", "10.99.0.1"]);
        // One of warden's host's own addresses that is not in a private range.
        run(&["-n", &host, "addr", "add", "203.0.113.5/32", "dev", "lo"]);
        run(&["-n", &inet, "addr", "add", "10.99.0.1/24", "dev", &vi]);
        run(&["-n", &inet, "link", "set", &vi, "up"]);
        for a in [
            "198.51.100.10",
            "198.51.100.20",
            "169.254.169.254",
            "10.1.2.3",
        ] {
            run(&["-n", &inet, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        run(&["-n", &inet, "route", "add", "default", "dev", &vi]);
        Nets { inet, host }
    }
}

impl Drop for Nets {
    fn drop(&mut self) {
        for ns in [&self.inet, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread of its own inside network namespace `ns` (sockets it makes stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        // This thread only: sockets it makes are the namespace's.
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap()
}

/// The fake internet's sockets, made inside its namespace.
struct Sockets {
    dns: std::net::UdpSocket,
    udp: std::net::UdpSocket,
    http: Vec<std::net::TcpListener>,
    tls: std::net::TcpListener,
}

/// The DNS server: logs every question; answers the test's names, NXDOMAIN otherwise.
fn serve_dns(sock: std::net::UdpSocket, log: Log) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType, rdata};
    let zone: BTreeMap<&str, &str> = [
        ("api.test", "198.51.100.10"),
        ("other.test", "198.51.100.20"),
        ("loop.test", "127.0.0.1"),
        ("meta.test", "169.254.169.254"),
    ]
    .into();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(question) = q.queries().first() else {
                continue;
            };
            let name = question.name().to_ascii().trim_end_matches('.').to_string();
            log.lock().unwrap().dns.push(name.clone());
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(true)
                .set_recursion_available(true)
                .add_query(question.clone());
            match zone.get(name.as_str()) {
                Some(addr) if question.query_type() == RecordType::A => {
                    r.add_answer(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(rdata::A(addr.parse().unwrap())),
                    ));
                }
                Some(_) => {}
                None => {
                    r.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    });
}

/// HTTP/1.0-ish: logs (address, Host) and answers `hello from ADDR` (or 4 MiB for `/big`).
fn serve_http(listener: std::net::TcpListener, log: Log) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let local = conn.local_addr().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let mut host = "-".to_string();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some(h) = line.strip_prefix("Host:") {
                        host = h.trim().to_string();
                    }
                }
                log.lock().unwrap().tcp.push((local, host));
                let body = if first.contains("/big") {
                    vec![b'x'; 4 << 20]
                } else {
                    format!("hello from {}", local.ip()).into_bytes()
                };
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            });
        }
    });
}

/// TLS with the test CA's certificate: logs the SNI and answers `hello tls`.
fn serve_tls(listener: std::net::TcpListener, cert: &Path, key: &Path, log: Log) {
    let config = warden_server::tls::server_config(cert, key).unwrap();
    let config = Arc::new(config);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut tcp) = conn else { return };
            let (config, log) = (config.clone(), log.clone());
            std::thread::spawn(move || {
                let local = tcp.local_addr().unwrap();
                let Ok(mut tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).unwrap_or(0);
                let sni = stream.conn.server_name().unwrap_or("-").to_string();
                log.lock().unwrap().tcp.push((local, format!("tls:{sni}")));
                if n > 0 {
                    let _ =
                        stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nhello tls");
                    let _ = stream.flush();
                }
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
}

/// Each check the job runs, as one line `name=ok:<what came back>` or `name=refused:<why>`.
const SCRIPT: &str = r#"
import socket, ssl, random, string, sys
def http(addr, host, path="/"):
    s = socket.create_connection(addr, timeout=5)
    s.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, host)).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    s.close()
    if not data: raise Exception("closed without an answer")
    return data.split(b"\r\n\r\n", 1)[-1][:40].decode()
def tls(addr, sni, verify=True):
    ctx = ssl.create_default_context(cafile="/opt/testca/ca.pem") if verify else ssl._create_unverified_context()
    if not verify: ctx.check_hostname = False
    s = socket.create_connection(addr, timeout=5)
    t = ctx.wrap_socket(s, server_hostname=sni)
    t.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    data = t.recv(4096)
    return data.split(b"\r\n\r\n", 1)[-1].decode()
def resolve(name):
    return socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
def check(name, f):
    try: print("%s=ok:%s" % (name, f()), flush=True)
    except Exception as e: print("%s=refused:%s" % (name, type(e).__name__), flush=True)
api = resolve("api.test")
check("resolve_api", lambda: api)
check("http_allowed", lambda: http((api, 80), "api.test"))
check("tls_allowed", lambda: tls((api, 443), "api.test"))
check("other_port", lambda: http((api, 8080), "api.test"))
check("unlisted_name", lambda: resolve("secret.unlisted.test"))
def tunnel():
    for i in range(40):
        label = "".join(random.choice(string.ascii_lowercase) for _ in range(50))
        try:
            resolve(label + ".exfil.test")
            return "resolved " + label
        except socket.gaierror:
            pass
    raise Exception("all 40 refused")
check("dns_tunnel", tunnel)
check("ip_literal_http", lambda: http(("198.51.100.10", 80), "198.51.100.10"))
check("ip_literal_tls_no_sni", lambda: tls(("198.51.100.10", 443), None, verify=False))
check("sni_mismatch", lambda: tls((api, 443), "other.test", verify=False))
check("sni_unlisted", lambda: tls((api, 443), "evil.test", verify=False))
check("host_mismatch", lambda: http((api, 80), "other.test"))
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1)
    u.sendto(b"ping", ("198.51.100.10", 9999))
    u.sendto(b"ping", ("10.99.0.1", 9999))
    try:
        return u.recvfrom(100)
    except socket.timeout:
        raise Exception("no answer")
check("udp", udp)
check("ipv6_literal", lambda: http(("2001:db8::10", 80), "api.test"))
check("metadata", lambda: http(("169.254.169.254", 80), "169.254.169.254"))
check("metadata_by_name", lambda: http((resolve("meta.test"), 80), "meta.test"))
check("rfc1918", lambda: http(("10.1.2.3", 80), "10.1.2.3"))
check("warden_host_private", lambda: http(("10.99.0.2", 80), "api.test"))
check("warden_host_public", lambda: http(("203.0.113.5", 80), "api.test"))
check("loopback_by_name", lambda: http((resolve("loop.test"), 80), "loop.test"))
check("loopback", lambda: http(("127.0.0.1", 80), "api.test"))
"#;

fn results(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn run(c: &Client, job_type: &str) -> (JobView, String) {
    let sub = c
        .submit(&SubmitJobRequest {
            job_type: job_type.into(),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap();
    let job = wait_job(c, &sub.job_id, Duration::from_secs(120), |j| {
        j.status.is_terminal()
    })
    .await;
    let out = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
    (job, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn egress_allowlists_close_everything_else() {
    let tag = (std::process::id() % 60000) as u16;
    let nets = Nets::create(tag);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) =
        crate::support::test_certs_for(dir.path(), "api.test", "DNS:api.test,DNS:other.test");
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(&ca, ca_dir.join("ca.pem")).unwrap();

    let log: Log = Arc::default();
    let sockets = in_netns(&nets.inet, || Sockets {
        dns: std::net::UdpSocket::bind("10.99.0.1:53").unwrap(),
        udp: std::net::UdpSocket::bind("0.0.0.0:9999").unwrap(),
        http: [
            "198.51.100.10:80",
            "198.51.100.10:8080",
            "198.51.100.20:80",
            "169.254.169.254:80",
            "10.1.2.3:80",
        ]
        .iter()
        .map(|a| std::net::TcpListener::bind(a).unwrap())
        .collect(),
        tls: std::net::TcpListener::bind("198.51.100.10:443").unwrap(),
    });
    serve_dns(sockets.dns, log.clone());
    {
        let (udp, log) = (sockets.udp, log.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                log.lock().unwrap().udp.push(from);
            }
        });
    }
    for l in sockets.http {
        serve_http(l, log.clone());
    }
    serve_tls(sockets.tls, &cert, &key, log.clone());
    // Services of warden's own host that a job must never reach.
    let own = in_netns(&nets.host, || {
        [
            std::net::TcpListener::bind("203.0.113.5:80").unwrap(),
            std::net::TcpListener::bind("10.99.0.2:80").unwrap(),
        ]
    });
    for l in own {
        serve_http(l, log.clone());
    }

    let config = write_config_with(
        dir.path(),
        &format!(
            r#"
egress: {{resolver: "10.99.0.1:53"}}
job_types:
  probe:
    argv: ["/usr/bin/python3", "-c", {script:?}]
    timeout_s: 120
    binds: [{{host: {ca_dir}, at: /opt/testca}}]
    network:
      egress: ["api.test:80", "api.test:443", "other.test:443", "meta.test:80", "loop.test:80"]
  probe_gvisor:
    argv: ["/usr/bin/python3", "-c", {script:?}]
    timeout_s: 120
    binds: [{{host: {ca_dir}, at: /opt/testca}}]
    isolation: gvisor
    network:
      egress: ["api.test:80", "api.test:443", "other.test:443", "meta.test:80", "loop.test:80"]
  few_connections:
    argv: ["/usr/bin/python3", "-c", "import socket\nfor i in range(6):\n  try: socket.create_connection(('198.51.100.10', 80), timeout=3).close()\n  except Exception as e: print(e)\nimport time; time.sleep(30)"]
    timeout_s: 60
    network: {{egress: ["198.51.100.10:80"], max_connections: 3}}
  few_bytes:
    argv: ["/usr/bin/python3", "-c", "import socket, time\ns = socket.create_connection(('198.51.100.10', 80))\ns.sendall(b'GET /big HTTP/1.0\\r\\n\\r\\n')\nwhile s.recv(65536): pass\ntime.sleep(30)"]
    timeout_s: 60
    network: {{egress: ["198.51.100.10:80"], max_bytes_mb: 1}}
  isolated:
    argv: ["/usr/bin/python3", "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))"]
    timeout_s: 30
"#,
            script = SCRIPT,
            ca_dir = ca_dir.display(),
        ),
    );
    let host_ns = format!("--net=/run/netns/{}", nets.host);
    let mut cmd = Command::new("nsenter");
    cmd.args([host_ns.as_str(), "--", WARDEN, "serve", "--config"])
        .arg(&config);
    let server = Server::start_with(cmd);
    let url = server.url.clone();
    let jobs = in_netns(&nets.host, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let c = Client::new(&url, Duration::from_secs(30), None).unwrap();
            let probe = run(&c, "probe").await;
            let probe_egress = c.artifact(&probe.0.job_id, "egress.jsonl").await.unwrap();
            let conns = run(&c, "few_connections").await;
            let bytes = run(&c, "few_bytes").await;
            let isolated = run(&c, "isolated").await;
            let gvisor = run(&c, "probe_gvisor").await;
            (probe, probe_egress, conns, bytes, isolated, gvisor)
        })
    });
    let ((probe, out), egress, (conns, _), (bytes, _), (isolated, isolated_out), gvisor) = jobs;

    assert_eq!(probe.status, JobStatus::Succeeded, "{probe:?}\n{out}");
    let r = results(&out);
    let expect = |name: &str, ok: &str| {
        let got = r
            .get(name)
            .unwrap_or_else(|| panic!("{name} not run:\n{out}"));
        assert!(got.starts_with(ok), "{name}: {got}\n{out}");
    };
    expect("resolve_api", "ok:198.51.100.10");
    expect("http_allowed", "ok:hello from 198.51.100.10");
    expect("tls_allowed", "ok:hello tls");
    for refused in [
        "other_port",
        "unlisted_name",
        "dns_tunnel",
        "ip_literal_http",
        "ip_literal_tls_no_sni",
        "sni_mismatch",
        "sni_unlisted",
        "host_mismatch",
        "udp",
        "ipv6_literal",
        "metadata",
        "metadata_by_name",
        "rfc1918",
        "warden_host_private",
        "warden_host_public",
        "loopback_by_name",
        "loopback",
    ] {
        expect(refused, "refused:");
    }
    assert_eq!(r.len(), 20, "{out}");

    let seen = log.lock().unwrap();
    // Only allowed names ever reached the DNS server: no unlisted name, no tunnel label.
    assert!(
        seen.dns
            .iter()
            .all(|n| ["api.test", "meta.test", "loop.test"].contains(&n.as_str())),
        "{:?}",
        seen.dns
    );
    assert!(seen.dns.iter().any(|n| n == "api.test"));
    // Connections that arrived anywhere: only the allowed ones, by their names.
    let arrived: Vec<String> = seen.tcp.iter().map(|(a, h)| format!("{a} {h}")).collect();
    // (The capped jobs' connections name nothing: they are allowed by address.)
    let allowed_only = arrived.iter().all(|c| {
        c == "198.51.100.10:80 api.test"
            || c == "198.51.100.10:443 tls:api.test"
            || c == "198.51.100.10:80 -"
    });
    assert!(allowed_only, "{arrived:?}");
    assert!(arrived.contains(&"198.51.100.10:443 tls:api.test".to_string()));
    assert!(
        seen.udp.is_empty(),
        "UDP reached the internet: {:?}",
        seen.udp
    );
    drop(seen);

    // Every decision is in egress.jsonl, with names, addresses, reasons and bytes.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&egress)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allowed_tcp: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|d| d["kind"] == "tcp" && d["allowed"] == true)
        .collect();
    assert!(
        allowed_tcp.iter().any(|d| d["name"] == "api.test"
            && d["port"] == 443
            && d["bytes_in"].as_u64() > Some(0)),
        "{lines:?}"
    );
    let reason_of = |addr: &str| -> String {
        lines
            .iter()
            .find(|d| d["addr"] == addr && d["allowed"] == false)
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no denial for {addr}: {lines:?}"))
    };
    assert!(reason_of("169.254.169.254").contains("metadata address"));
    assert!(reason_of("10.1.2.3").contains("RFC 1918"));
    assert!(reason_of("203.0.113.5").contains("own addresses"));
    assert!(reason_of("127.0.0.1").contains("loopback"));
    assert!(lines.iter().any(|d| d["kind"] == "dns"
        && d["name"] == "secret.unlisted.test"
        && d["allowed"] == false));
    let summary = probe.enforcement.get("egress").cloned().unwrap_or_default();
    assert!(
        summary.contains("connections allowed"),
        "{:?}",
        probe.enforcement
    );

    // Caps end the job failed: network_limit.
    for capped in [&conns, &bytes] {
        assert_eq!(capped.status, JobStatus::Failed, "{capped:?}");
        assert_eq!(
            capped.reason.as_deref(),
            Some("network_limit"),
            "{capped:?}"
        );
    }
    assert!(conns.enforcement["egress"].contains("max_connections"));
    assert!(bytes.enforcement["egress"].contains("max_bytes_mb"));

    // Under gVisor the job's sockets are the egress namespace's too: every check ends alike.
    let (gvisor, gvisor_out) = gvisor;
    assert_eq!(
        gvisor.status,
        JobStatus::Succeeded,
        "{gvisor:?}\n{gvisor_out}"
    );
    assert_eq!(gvisor.enforcement["isolation"], "gvisor");
    let ended = |r: &BTreeMap<String, String>| -> BTreeMap<String, bool> {
        r.iter()
            .map(|(k, v)| (k.clone(), v.starts_with("ok:")))
            .collect()
    };
    assert_eq!(ended(&results(&gvisor_out)), ended(&r), "{gvisor_out}");

    // network: none still sees only lo.
    assert_eq!(isolated.status, JobStatus::Succeeded, "{isolated:?}");
    assert_eq!(isolated_out.trim(), "['lo']");
    let _: IpAddr = "198.51.100.10".parse().unwrap();
}
