//! [`FaultyDns`]: a DNS responder that misbehaves on purpose, on raw UDP and TCP sockets.
//!
//! [`DnsServer`](super::DnsServer) is a correct server with a few error codes;
//! this one produces what correct servers never do (truncation with a dead
//! TCP side, garbage, slow answers), so it speaks the wire format itself with
//! hickory-proto instead of going through hickory-server.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use super::dns_server::bind_udp_and_tcp;
use crate::sync::lock;

/// UDP answer limit for a query without EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;
/// Largest datagram read; bigger queries do not exist in practice.
const MAX_QUERY_LEN: usize = 4096;
/// Length of the garbage sent in [`FaultyMode::Garbage`].
const GARBAGE_LEN: usize = 64;

/// What [`FaultyDns`] does with each query; switch with [`FaultyDns::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultyMode {
    /// Answer correctly (truncating over UDP when the answer does not fit).
    #[default]
    Answer,
    /// SERVFAIL.
    ServFail,
    /// NXDOMAIN with an SOA in the authority section carrying the negative TTL.
    NxDomain,
    /// No answer at all: clients time out.
    Silent,
    /// Over UDP, an empty answer with the TC bit set; over TCP, the full answer.
    Truncated,
    /// Over UDP, an empty answer with the TC bit set; TCP connections are
    /// accepted and closed at once, so the client's TCP retry fails.
    TruncatedTcpRefused,
    /// Random bytes after the query's ID: a reply that cannot be decoded.
    Garbage,
    /// Wait this long, then answer correctly.
    Delay(Duration),
}

/// A fault-injecting DNS responder on 127.0.0.1, UDP and TCP on one random port.
///
/// Answers every name with the same records, set with [`set_ips`](Self::set_ips):
/// A queries get the IPv4 ones, AAAA queries the IPv6 ones, anything else an
/// empty NOERROR answer. [`set_mode`](Self::set_mode) switches how it
/// misbehaves, at any time. Dropping it stops it, including open TCP
/// connections.
pub struct FaultyDns {
    addr: SocketAddr,
    state: Arc<State>,
    /// Dropping the sender tells every task to stop.
    _shutdown: watch::Sender<()>,
}

struct State {
    mode: Mutex<FaultyMode>,
    ips: Mutex<(Vec<IpAddr>, u32)>,
    negative_ttl: Mutex<u32>,
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
}

/// Which transport a query came in on: truncation applies to UDP only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

// ===== impl FaultyDns =====

impl FaultyDns {
    /// Starts the responder in `mode`, with no records.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(mode: FaultyMode) -> io::Result<Self> {
        let (udp, tcp) = bind_udp_and_tcp().await?;
        let addr = udp.local_addr()?;
        let state = Arc::new(State {
            mode: Mutex::new(mode),
            ips: Mutex::new((Vec::new(), 30)),
            negative_ttl: Mutex::new(5),
            udp_queries: AtomicUsize::new(0),
            tcp_queries: AtomicUsize::new(0),
        });
        let (shutdown, stopped) = watch::channel(());
        tokio::spawn(serve_udp(Arc::new(udp), state.clone(), stopped.clone()));
        tokio::spawn(serve_tcp(tcp, state.clone(), stopped));
        Ok(Self {
            addr,
            state,
            _shutdown: shutdown,
        })
    }

    /// The address clients send queries to (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how the responder answers from now on.
    pub fn set_mode(&self, mode: FaultyMode) {
        *lock(&self.state.mode) = mode;
    }

    /// The records every A/AAAA query is answered with, and their TTL.
    pub fn set_ips(&self, ips: &[IpAddr], ttl_secs: u32) {
        *lock(&self.state.ips) = (ips.to_vec(), ttl_secs);
    }

    /// The negative TTL (SOA minimum) sent with NXDOMAIN and empty answers.
    pub fn set_negative_ttl(&self, ttl_secs: u32) {
        *lock(&self.state.negative_ttl) = ttl_secs;
    }

    /// Queries received over UDP and TCP, answered or not.
    pub fn queries(&self) -> usize {
        self.udp_queries() + self.tcp_queries()
    }

    /// Queries received over UDP.
    pub fn udp_queries(&self) -> usize {
        self.state.udp_queries.load(Ordering::Relaxed)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.state.tcp_queries.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for FaultyDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyDns")
            .field("addr", &self.addr)
            .field("mode", &*lock(&self.state.mode))
            .finish_non_exhaustive()
    }
}

// ===== impl State =====

impl State {
    /// The reply to one raw query, or `None` to stay silent. Waits first in
    /// [`FaultyMode::Delay`].
    async fn reply(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let mode = *lock(&self.mode);
        if mode == FaultyMode::Silent {
            return None;
        }
        if let FaultyMode::Delay(delay) = mode {
            tokio::time::sleep(delay).await;
        }
        if mode == FaultyMode::Garbage {
            let mut bytes = query.get(..2).unwrap_or(&[0, 0]).to_vec();
            bytes.extend((0..GARBAGE_LEN).map(|_| fastrand::u8(..)));
            return Some(bytes);
        }
        // Undecodable queries get no answer, as from most servers.
        let request = Message::from_vec(query).ok()?;
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.message_type = MessageType::Response;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_queries(request.queries.iter().cloned());
        let udp_limit = match &request.edns {
            Some(edns) => usize::from(edns.max_payload()).max(CLASSIC_UDP_LIMIT),
            None => CLASSIC_UDP_LIMIT,
        };
        if let Some(req) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            response.set_edns(edns);
        }

        let truncate_udp = matches!(
            mode,
            FaultyMode::Truncated | FaultyMode::TruncatedTcpRefused
        );
        if transport == Transport::Udp && truncate_udp {
            response.metadata.truncation = true;
            return response.to_vec().ok();
        }

        match mode {
            FaultyMode::ServFail => response.metadata.response_code = ResponseCode::ServFail,
            FaultyMode::NxDomain => {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(self.soa());
            }
            _ => {
                let question = request.queries.first();
                let answers = question
                    .map(|q| self.answers(q.name(), q.query_type()))
                    .unwrap_or_default();
                if answers.is_empty() {
                    response.add_authority(self.soa());
                }
                response.add_answers(answers);
            }
        }
        let bytes = response.to_vec().ok()?;
        if transport == Transport::Udp && bytes.len() > udp_limit {
            let mut truncated = response.truncate();
            truncated.metadata.truncation = true;
            return truncated.to_vec().ok();
        }
        Some(bytes)
    }

    fn answers(&self, name: &Name, record_type: RecordType) -> Vec<Record> {
        let (ips, ttl) = lock(&self.ips).clone();
        ips.iter()
            .filter_map(|ip| match (ip, record_type) {
                (IpAddr::V4(ip), RecordType::A) => Some(RData::A(A(*ip))),
                (IpAddr::V6(ip), RecordType::AAAA) => Some(RData::AAAA(AAAA(*ip))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), ttl, rdata))
            .collect()
    }

    fn soa(&self) -> Record {
        let ttl = *lock(&self.negative_ttl);
        Record::from_rdata(
            Name::root(),
            ttl,
            RData::SOA(SOA::new(
                Name::root(),
                Name::root(),
                1,
                7200,
                1800,
                86400,
                ttl,
            )),
        )
    }
}

// ===== tasks =====

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>, mut stopped: watch::Receiver<()>) {
    let mut buf = vec![0u8; MAX_QUERY_LEN];
    loop {
        let (len, peer) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                // ICMP errors from earlier replies surface here on some
                // platforms; they do not end the server.
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        state.udp_queries.fetch_add(1, Ordering::Relaxed);
        let query = buf[..len].to_vec();
        let (socket, state, mut stopped) = (socket.clone(), state.clone(), stopped.clone());
        // One task per query, so that a delayed answer does not hold up others.
        tokio::spawn(async move {
            tokio::select! {
                reply = state.reply(&query, Transport::Udp) => {
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                }
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>, mut stopped: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        if *lock(&state.mode) == FaultyMode::TruncatedTcpRefused {
            drop(stream);
            continue;
        }
        let (state, mut stopped) = (state.clone(), stopped.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_tcp_connection(stream, &state) => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

/// Answers length-prefixed queries on one connection until the client closes it.
async fn serve_tcp_connection(mut stream: TcpStream, state: &State) -> io::Result<()> {
    loop {
        let len = stream.read_u16().await?;
        let mut query = vec![0u8; usize::from(len)];
        stream.read_exact(&mut query).await?;
        state.tcp_queries.fetch_add(1, Ordering::Relaxed);
        if *lock(&state.mode) == FaultyMode::TruncatedTcpRefused {
            return Ok(());
        }
        if let Some(reply) = state.reply(&query, Transport::Tcp).await {
            let len = u16::try_from(reply.len()).map_err(io::Error::other)?;
            stream.write_u16(len).await?;
            stream.write_all(&reply).await?;
        }
    }
}
