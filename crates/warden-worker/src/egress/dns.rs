//! The job's resolver: answers names on the allowlist with the addresses the upstream resolver
//! gives (and remembers them), refuses every other name with NXDOMAIN without forwarding it,
//! and answers no other question. Messages are parsed and built with `hickory-proto`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata};
use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use warden_core::config::EgressGatewayConfig;

use super::{Decision, State};

/// Largest query read (EDNS0 sizes are larger, but a question fits in far less).
const MAX_QUERY: usize = 4096;
/// TTL of the answers: short, so that a job never outlives what it was told by much.
const TTL: u32 = 30;
/// Queries of one job being answered at once (each may wait on the upstream resolver).
const MAX_IN_FLIGHT: usize = 64;
/// Most addresses given for one name.
const MAX_ADDRS: usize = 16;

/// The resolver allowed names are looked up with.
pub(super) fn upstream(
    config: &EgressGatewayConfig,
) -> std::io::Result<hickory_resolver::TokioResolver> {
    let (resolver_config, mut opts) = match config.resolver {
        Some(addr) => (
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
            ),
            ResolverOpts::default(),
        ),
        None => match hickory_resolver::system_conf::read_system_conf() {
            Ok(system) => system,
            // No resolver configured on this host: allowed names get SERVFAIL (recorded), and
            // every other refusal works as ever.
            Err(e) => {
                tracing::warn!(error = %e, "egress gateway: no upstream resolver (/etc/resolv.conf)");
                (
                    ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::new()),
                    ResolverOpts::default(),
                )
            }
        },
    };
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.ndots = 0;
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        resolver_config,
        TokioConnectionProvider::default(),
    );
    *builder.options_mut() = opts;
    Ok(builder.build())
}

pub(super) async fn serve(state: Arc<State>, sock: UdpSocket, stop: CancellationToken) {
    let sock = Arc::new(sock);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let got = tokio::select! {
            g = sock.recv_from(&mut buf) => g,
            _ = stop.cancelled() => return,
        };
        let Ok((n, from)) = got else { continue };
        // A job that floods its resolver loses the queries over the bound, as a lossy network
        // would; its resolver library retries.
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (state, sock) = (state.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&state, &query).await {
                let _ = sock.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

/// The reply to one datagram, `None` for one that is not a query at all.
pub(super) async fn answer(state: &State, query: &[u8]) -> Option<Vec<u8>> {
    let Ok(msg) = Message::from_vec(query) else {
        // Not even a header: nothing to answer to.
        return None;
    };
    if msg.message_type() != MessageType::Query {
        return None;
    }
    let mut reply = Message::new();
    reply
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(true);
    let [question] = msg.queries() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply.to_vec().ok();
    };
    reply.add_query(question.clone());
    if msg.op_code() != OpCode::Query {
        reply.set_response_code(ResponseCode::NotImp);
        return reply.to_vec().ok();
    }
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let qtype = question.query_type();
    let decision = |allowed: bool, reason: String| Decision {
        at_ms: state.now_ms(),
        kind: "dns",
        name: Some(name.clone()),
        addr: None,
        port: warden_sandbox::DNS_PORT,
        allowed,
        reason,
        bytes_out: 0,
        bytes_in: 0,
    };
    if !state.policy.knows_name(&name) {
        state.record(decision(
            false,
            format!("{qtype} {name}: not on the allowlist (NXDOMAIN, not forwarded)"),
        ));
        reply.set_response_code(ResponseCode::NXDomain);
        return reply.to_vec().ok();
    }
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        state.record(decision(
            true,
            format!("{qtype} {name}: only addresses are answered (no data, not forwarded)"),
        ));
        return reply.to_vec().ok();
    }
    let looked_up =
        tokio::time::timeout(Duration::from_secs(8), state.resolver.lookup(&*name, qtype)).await;
    let addrs: Vec<IpAddr> = match looked_up {
        Ok(Ok(lookup)) => lookup
            .iter()
            .filter_map(|r| match r {
                RData::A(a) if qtype == RecordType::A => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) if qtype == RecordType::AAAA => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .take(MAX_ADDRS)
            .collect(),
        Ok(Err(e)) if e.is_no_records_found() => Vec::new(),
        Ok(Err(e)) => {
            state.record(decision(
                true,
                format!("{qtype} {name}: upstream failed: {e}"),
            ));
            reply.set_response_code(ResponseCode::ServFail);
            return reply.to_vec().ok();
        }
        Err(_) => {
            state.record(decision(
                true,
                format!("{qtype} {name}: upstream timed out"),
            ));
            reply.set_response_code(ResponseCode::ServFail);
            return reply.to_vec().ok();
        }
    };
    state.remember(&name, &addrs);
    for a in &addrs {
        let rdata = match a {
            IpAddr::V4(v4) => RData::A(rdata::A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(rdata::AAAA(*v6)),
        };
        reply.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
    }
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    state.record(decision(
        true,
        format!("{qtype} {name}: answered [{}]", shown.join(", ")),
    ));
    reply.to_vec().ok()
}
