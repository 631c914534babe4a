//! The pods and the DNS server of one scenario, on the pods' own runtime.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use headless_lb::testing::{DnsServer, GrpcPod, Pod};
use tokio::runtime::Runtime;

/// What the pods speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 `GET /`, answered with the pod's address.
    Http,
    /// Unary grpc.health.v1 `Check`.
    Grpc,
}

/// The pods behind one name.
pub enum Pods {
    Http(Vec<Pod>),
    Grpc(Vec<GrpcPod>),
}

/// A headless service: `n` pods on 127.0.0.x (one port) and a DNS server
/// answering `NAME` with the first `listed` of them.
pub struct Cluster {
    pub dns: DnsServer,
    pub pods: Pods,
    pub name: String,
    pub port: u16,
    pub ttl: u32,
}

/// The runtime that pods and DNS servers run on.
pub fn pods_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pods")
        .enable_all()
        .build()
        .expect("the pods' runtime")
}

/// The runtime that the client under test runs on.
pub fn client_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .expect("the client's runtime")
}

impl Cluster {
    /// Starts `n` pods at 127.0.0.`first_ip`.. and lists the first `listed` in DNS.
    pub fn start(
        rt: &Runtime,
        protocol: Protocol,
        first_ip: u8,
        n: usize,
        listed: usize,
        ttl: u32,
    ) -> std::io::Result<Cluster> {
        let name = match protocol {
            Protocol::Http => "web.default.svc.cluster.local",
            Protocol::Grpc => "grpc.default.svc.cluster.local",
        }
        .to_owned();
        rt.block_on(async {
            let ips = ips(first_ip, n);
            let pods = match protocol {
                Protocol::Http => Pods::Http(Pod::start_all(&ips).await?),
                Protocol::Grpc => Pods::Grpc(GrpcPod::start_all(&ips).await?),
            };
            let dns = DnsServer::start().await?;
            let cluster = Cluster {
                dns,
                port: pods.addr(0).port(),
                pods,
                name,
                ttl,
            };
            cluster.list(listed);
            Ok(cluster)
        })
    }

    /// What clients are given: `NAME:PORT`.
    pub fn target(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }

    /// Answers DNS queries with the first `n` pods.
    pub fn list(&self, n: usize) {
        let ips: Vec<IpAddr> = (0..n).map(|i| self.pods.addr(i).ip()).collect();
        self.dns.set_ips(&self.name, &ips, self.ttl);
    }

    /// Connections accepted by all pods so far.
    pub fn connections(&self) -> u64 {
        (0..self.pods.len()).map(|i| self.pods.connections(i)).sum()
    }

    /// Requests answered by each pod so far.
    pub fn requests(&self) -> Vec<u64> {
        (0..self.pods.len())
            .map(|i| self.pods.requests(i))
            .collect()
    }
}

/// `n` loopback addresses from 127.0.0.`first`.
pub fn ips(first: u8, n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| [127, 0, 0, first + i as u8].into())
        .collect()
}

impl Pods {
    pub fn len(&self) -> usize {
        match self {
            Pods::Http(p) => p.len(),
            Pods::Grpc(p) => p.len(),
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        match self {
            Pods::Http(p) => p[i].addr(),
            Pods::Grpc(p) => p[i].addr(),
        }
    }

    pub fn requests(&self, i: usize) -> u64 {
        match self {
            Pods::Http(p) => p[i].requests(),
            Pods::Grpc(p) => p[i].requests(),
        }
    }

    /// Connections pod `i` has accepted so far.
    pub fn connections(&self, i: usize) -> u64 {
        match self {
            Pods::Http(p) => p[i].connections(),
            Pods::Grpc(p) => p[i].connections(),
        }
    }

    pub fn set_delay(&self, i: usize, delay: Duration) {
        match self {
            Pods::Http(p) => p[i].set_delay(delay),
            Pods::Grpc(p) => p[i].set_delay(delay),
        }
    }

    /// At most `capacity` requests served at once by pod `i`; the rest queue.
    pub fn set_capacity(&self, i: usize, capacity: Option<usize>) {
        match self {
            Pods::Http(p) => p[i].set_capacity(capacity),
            Pods::Grpc(p) => p[i].set_capacity(capacity),
        }
    }

    /// Stop-the-world pauses of `pause` on pod `i`, at Poisson times `every`
    /// apart on average, on the schedule `seed` fixes (counted from now).
    pub fn set_pauses(&self, i: usize, every: Duration, pause: Duration, seed: u64) {
        match self {
            Pods::Http(p) => p[i].set_pauses_seeded(every, pause, seed),
            Pods::Grpc(p) => p[i].set_pauses_seeded(every, pause, seed),
        }
    }

    /// Pauses pod `i` has started so far.
    pub fn pauses(&self, i: usize) -> u64 {
        match self {
            Pods::Http(p) => p[i].pauses(),
            Pods::Grpc(p) => p[i].pauses(),
        }
    }

    /// Crashes pod `i`: its listener closes and its connections drop.
    pub async fn kill(&self, i: usize) {
        match self {
            Pods::Http(p) => p[i].kill().await,
            Pods::Grpc(p) => p[i].kill().await,
        }
    }
}
