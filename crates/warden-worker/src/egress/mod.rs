//! The egress gateway: the only way out of a job with a `network: {egress: [...]}` policy.
//!
//! The job's network namespace has no interface but `lo`, and a `local` route for every
//! address (`warden_sandbox::net`): whatever it connects to lands on a socket of its own
//! namespace. Its init hands warden the sockets that listen there — UDP on port 53 and TCP on
//! each port the allowlist names — before the job starts, and this gateway serves them from
//! warden's own network namespace:
//!
//! - **DNS** ([`dns`]): names on the allowlist are resolved upstream and answered (A and AAAA);
//!   every other name gets NXDOMAIN and is never forwarded; other query types get no data.
//!   The addresses given out are remembered per name: they are the only addresses a
//!   connection by that name may go to.
//! - **TCP**: the accepted socket's own address is the destination the job chose. A CIDR entry
//!   allows it outright; otherwise the always-denied ranges (loopback, link-local with the
//!   metadata address, RFC 1918, ULA, …) are refused, and the name is read on the wire
//!   ([`sniff`]): a TLS ClientHello's SNI or an HTTP request's Host must be allowed on that
//!   port *and* be a name the resolver gave that address for. A protocol that names nothing
//!   passes only to an address resolved for a name allowed on that port.
//!
//! Every decision is recorded ([`Decision`]): written to `egress.jsonl` in the job's artifacts
//! and summarised in its record. Caps (`max_connections`, `max_bytes_mb`) end the job
//! `failed: network_limit`.

mod dns;
#[doc(hidden)]
pub mod fuzzing;
mod relay;
mod sniff;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use warden_core::config::{EgressGatewayConfig, EgressPolicy, always_denied};

/// At most this many decisions are kept per job (a flood of queries is counted, not listed).
const MAX_DECISIONS: usize = 10_000;
/// How long a connection may take to name itself (TLS ClientHello, HTTP request head).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the upstream connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One decision of the gateway, as `egress.jsonl` has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Milliseconds since the gateway started.
    pub at_ms: u64,
    /// `dns` or `tcp`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    pub port: u16,
    pub allowed: bool,
    pub reason: String,
    /// Bytes from the job to the destination, and back.
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// What the gateway saw, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub allowed: u64,
    pub denied: u64,
    pub dns_answered: u64,
    pub dns_refused: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Decisions not listed (over [`MAX_DECISIONS`]).
    pub unlisted: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections allowed, {} denied; DNS {} answered, {} refused; {} bytes out, {} in",
            self.allowed,
            self.denied,
            self.dns_answered,
            self.dns_refused,
            self.bytes_out,
            self.bytes_in
        )
    }
}

pub(crate) struct State {
    policy: EgressPolicy,
    resolver: hickory_resolver::TokioResolver,
    started: Instant,
    /// Names by address: what the resolver gave this job.
    resolved: Mutex<HashMap<IpAddr, BTreeSet<String>>>,
    decisions: Mutex<(Vec<Decision>, u64)>,
    summary: Mutex<Summary>,
    connections: AtomicU64,
    bytes: AtomicU64,
    /// Cancelled when a cap is reached: the job is killed and ends `failed: network_limit`.
    pub(crate) limit: CancellationToken,
    limit_reason: Mutex<Option<String>>,
}

/// A job's gateway, serving until dropped or [`Gateway::finish`]ed.
pub struct Gateway {
    state: Arc<State>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Serves `sockets` (from `RunningJob::take_gateway`) under `policy`.
    pub fn start(
        policy: EgressPolicy,
        sockets: Vec<OwnedFd>,
        config: &EgressGatewayConfig,
    ) -> std::io::Result<Gateway> {
        let state = Arc::new(State::new(policy, config)?);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for fd in sockets {
            let kind = rustix::net::sockopt::socket_type(fd.as_fd())?;
            if kind == rustix::net::SocketType::DGRAM {
                let sock = std::net::UdpSocket::from(fd);
                sock.set_nonblocking(true)?;
                let sock = UdpSocket::from_std(sock)?;
                tasks.push(tokio::spawn(dns::serve(state.clone(), sock, stop.clone())));
            } else {
                let sock = std::net::TcpListener::from(fd);
                sock.set_nonblocking(true)?;
                let sock = TcpListener::from_std(sock)?;
                tasks.push(tokio::spawn(accept(state.clone(), sock, stop.clone())));
            }
        }
        Ok(Gateway { state, stop, tasks })
    }

    /// Cancelled when a cap is reached.
    pub fn limit(&self) -> CancellationToken {
        self.state.limit.clone()
    }

    /// Stops serving and returns what was decided: the decisions, the summary and, when a cap
    /// ended the job, which.
    pub async fn finish(mut self) -> (Vec<Decision>, Summary, Option<String>) {
        self.stop.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let (decisions, unlisted) = std::mem::take(&mut *lock(&self.state.decisions));
        let mut summary = lock(&self.state.summary).clone();
        summary.unlisted = unlisted;
        let limit = lock(&self.state.limit_reason).clone();
        (decisions, summary, limit)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// A job's gateway state before its first decision.
    pub(crate) fn new(
        policy: EgressPolicy,
        config: &EgressGatewayConfig,
    ) -> std::io::Result<State> {
        Ok(State {
            policy,
            resolver: dns::upstream(config)?,
            started: Instant::now(),
            resolved: Mutex::default(),
            decisions: Mutex::default(),
            summary: Mutex::default(),
            connections: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            limit: CancellationToken::new(),
            limit_reason: Mutex::default(),
        })
    }

    pub(crate) fn record(&self, d: Decision) {
        {
            let mut s = lock(&self.summary);
            match (d.kind, d.allowed) {
                ("dns", true) => s.dns_answered += 1,
                ("dns", false) => s.dns_refused += 1,
                (_, true) => s.allowed += 1,
                (_, false) => s.denied += 1,
            }
            s.bytes_out += d.bytes_out;
            s.bytes_in += d.bytes_in;
        }
        let mut decisions = lock(&self.decisions);
        if decisions.0.len() < MAX_DECISIONS {
            decisions.0.push(d);
        } else {
            decisions.1 += 1;
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn remember(&self, name: &str, addrs: &[IpAddr]) {
        let mut resolved = lock(&self.resolved);
        for a in addrs {
            resolved.entry(*a).or_default().insert(name.to_string());
        }
    }

    fn names_of(&self, ip: IpAddr) -> BTreeSet<String> {
        lock(&self.resolved).get(&ip).cloned().unwrap_or_default()
    }

    fn hit_limit(&self, why: String) {
        let mut reason = lock(&self.limit_reason);
        if reason.is_none() {
            *reason = Some(why);
        }
        self.limit.cancel();
    }
}

/// Whether `ip` is an address of warden's own host: the route to it leaves from it (asked of
/// the kernel with an unconnected-until-now UDP socket; no packet is sent).
fn is_own_address(ip: IpAddr) -> bool {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let Ok(probe) = std::net::UdpSocket::bind(bind) else {
        return false;
    };
    if probe.connect(SocketAddr::new(ip, 9)).is_err() {
        return false;
    }
    probe.local_addr().is_ok_and(|local| local.ip() == ip)
}

/// An address as the policy sees it: IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

async fn accept(state: Arc<State>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.cancelled() => return,
        };
        let Ok((conn, _)) = conn else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection(&state, conn) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// What one connection is allowed to, decided before a byte goes upstream.
enum Verdict {
    Allow {
        name: Option<String>,
        reason: String,
    },
    Deny {
        name: Option<String>,
        reason: String,
    },
}

async fn connection(state: &Arc<State>, mut conn: TcpStream) {
    let Ok(dst) = conn.local_addr() else { return };
    let (ip, port) = (canonical(dst.ip()), dst.port());
    let mut head = Vec::new();
    let n = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let verdict = match state.policy.max_connections {
        Some(max) if n > max => {
            state.hit_limit(format!("more than {max} connections (max_connections)"));
            Verdict::Deny {
                name: None,
                reason: format!("max_connections {max} reached"),
            }
        }
        _ => decide(state, &mut conn, ip, port, &mut head).await,
    };
    let (allowed, name, reason, (bytes_out, bytes_in)) = match verdict {
        Verdict::Deny { name, reason } => (false, name, reason, (0, 0)),
        Verdict::Allow { name, reason } => {
            let upstream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(SocketAddr::new(ip, port)),
            )
            .await;
            match upstream {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    let _ = conn.set_nodelay(true);
                    let moved = relay::relay(state, &mut conn, &mut upstream, &head).await;
                    (true, name, reason, moved)
                }
                Ok(Err(e)) => (
                    true,
                    name,
                    format!("{reason}; upstream connect failed: {e}"),
                    (0, 0),
                ),
                Err(_) => (
                    true,
                    name,
                    format!("{reason}; upstream connect timed out"),
                    (0, 0),
                ),
            }
        }
    };
    state.record(Decision {
        at_ms: state.now_ms(),
        kind: "tcp",
        name,
        addr: Some(ip.to_string()),
        port,
        allowed,
        reason,
        bytes_out,
        bytes_in,
    });
}

/// The policy applied to a connection to `ip:port`; reads the head of the stream into `head`
/// when a name is needed.
async fn decide(
    state: &State,
    conn: &mut TcpStream,
    ip: IpAddr,
    port: u16,
    head: &mut Vec<u8>,
) -> Verdict {
    let policy = &state.policy;
    if policy.allows_net(ip, port) {
        return Verdict::Allow {
            name: None,
            reason: "address range on the allowlist".into(),
        };
    }
    if let Some(why) = always_denied(ip) {
        return Verdict::Deny {
            name: None,
            reason: format!("{why} is never reached unless a CIDR entry names it"),
        };
    }
    if is_own_address(ip) {
        return Verdict::Deny {
            name: None,
            reason: "one of this host's own addresses is never reached unless a CIDR entry \
                     names it"
                .into(),
        };
    }
    let names = state.names_of(ip);
    let allowed_here: Vec<&String> = names
        .iter()
        .filter(|n| policy.allows_name(n, port))
        .collect();
    let sniffed = tokio::time::timeout(SNIFF_TIMEOUT, sniff::name(conn, head)).await;
    let named = match sniffed {
        Err(_) => {
            return Verdict::Deny {
                name: None,
                reason: "the connection named nothing within 10 s".into(),
            };
        }
        Ok(Err(why)) => {
            return Verdict::Deny {
                name: None,
                reason: why,
            };
        }
        Ok(Ok(named)) => named,
    };
    match named {
        sniff::Named::Tls(None) => Verdict::Deny {
            name: None,
            reason: "TLS without a server name (SNI): an address alone is not allowed".into(),
        },
        sniff::Named::Http(None) => Verdict::Deny {
            name: None,
            reason: "HTTP request without a Host header".into(),
        },
        sniff::Named::Tls(Some(name)) | sniff::Named::Http(Some(name)) => {
            if !policy.allows_name(&name, port) {
                Verdict::Deny {
                    reason: format!("{name}:{port} is not on the allowlist"),
                    name: Some(name),
                }
            } else if !names.contains(&name) {
                Verdict::Deny {
                    reason: format!(
                        "{ip} is not an address warden's resolver gave this job for {name}"
                    ),
                    name: Some(name),
                }
            } else {
                Verdict::Allow {
                    reason: "name on the allowlist, checked on the wire".into(),
                    name: Some(name),
                }
            }
        }
        sniff::Named::Opaque => match allowed_here.first() {
            Some(name) => Verdict::Allow {
                name: Some((*name).clone()),
                reason: "address resolved for a name on the allowlist (protocol names nothing)"
                    .into(),
            },
            None => Verdict::Deny {
                name: None,
                reason: format!(
                    "{ip}:{port} is neither on the allowlist nor an address resolved for a name \
                     allowed on this port"
                ),
            },
        },
    }
}

/// `egress.jsonl`: one decision per line.
pub fn to_jsonl(decisions: &[Decision]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in decisions {
        if let Ok(line) = serde_json::to_vec(d) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    out
}
