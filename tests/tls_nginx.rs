//! TLS against a server this project did not write: nginx from Debian,
//! serving HTTP/1.1 and HTTP/2 over TLS on two loopback addresses that the
//! in-process DNS server lists for the service.
//!
//! The test starts its own nginx in the foreground (`daemon off`, one
//! process) with a temporary directory for its config, certificates, pid,
//! logs and temp files, and kills it when the test ends (the [`Nginx`]
//! guard). `.ci/run` installs Debian's `nginx`; without it the test fails
//! when `CI=true`, and otherwise prints why and passes, as tests/knot.rs
//! does for Knot.

#![cfg(feature = "tls")]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use headless_lb::balance::EndpointState;
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::{DnsServer, TestCa, wait_for};
use http_body_util::BodyExt;

const SERVICE: &str = "web.default.svc.cluster.local";
/// The two "pods": nginx listens on both, on one port.
const IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 146, 1), Ipv4Addr::new(127, 0, 146, 2)];
/// Fresh ports to try when nginx cannot bind the one picked.
const START_ATTEMPTS: usize = 5;
/// How long a started nginx may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(10);
const REQUESTS: usize = 800;
const IN_FLIGHT: usize = 16;

/// The nginx binary, or `None` when a developer's machine lacks it.
///
/// # Panics
/// When it is missing and `CI=true`: CI must run this test, not skip it.
fn nginx_binary(test: &str) -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/sbin/nginx");
    let found = if fixed.is_file() {
        Some(fixed)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nginx"))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        let msg = "nginx not found; install it with `apt-get install nginx` (.ci/run does)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {msg}");
        }
        eprintln!("SKIPPED {test}: {msg}");
    }
    found
}

/// nginx's version as (major, minor, patch), from `nginx -v` (on stderr).
fn nginx_version(bin: &Path) -> (u32, u32, u32) {
    let out = Command::new(bin).arg("-v").output().expect("run nginx -v");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let version = text
        .split("nginx/")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("cannot read the version from `nginx -v`: {text:?}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// A running nginx; killed, and its directory removed, on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Starts nginx serving TLS with `cert_pem` / `key_pem` on every address
    /// of [`IPS`], on one free port, and waits until both accept. Retries on
    /// a fresh port if nginx exits (e.g. the port was taken meanwhile).
    async fn start(bin: &Path, cert_pem: &str, key_pem: &str) -> Nginx {
        let version = nginx_version(bin);
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = temp_dir(port);
            std::fs::write(dir.join("cert.pem"), cert_pem).expect("write cert");
            std::fs::write(dir.join("key.pem"), key_pem).expect("write key");
            std::fs::write(dir.join("nginx.conf"), config(&dir, port, version))
                .expect("write nginx.conf");
            let child = Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                // Where errors go before the config is read (nginx >= 1.19.5),
                // instead of the system's /var/log/nginx.
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let mut nginx = Nginx { child, dir, port };
            match nginx.wait_ready().await {
                Ok(()) => return nginx,
                Err(e) => last_failure = e, // dropping `nginx` kills it and removes its directory
            }
        }
        panic!("nginx did not start in {START_ATTEMPTS} attempts; last: {last_failure}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait nginx") {
                return Err(format!("nginx exited with {status}:\n{}", self.log()));
            }
            let mut up = 0;
            for ip in IPS {
                if tokio::net::TcpStream::connect((ip, self.port))
                    .await
                    .is_ok()
                {
                    up += 1;
                }
            }
            if up == IPS.len() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "nginx not accepting after {READY_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One process in the foreground; every path inside `dir`; TLS with HTTP/2
/// on both addresses. Each response names the address and protocol that
/// served it.
fn config(dir: &Path, port: u16, version: (u32, u32, u32)) -> String {
    let d = dir.display();
    // `http2 on;` exists from 1.25.1; before, HTTP/2 is a `listen` parameter.
    let (listen_http2, http2_on) = if version >= (1, 25, 1) {
        ("", "http2 on;")
    } else {
        (" http2", "")
    };
    let listens: String = IPS
        .iter()
        .map(|ip| format!("    listen {ip}:{port} ssl{listen_http2};\n"))
        .collect();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
{listens}    {http2_on}
    server_name {SERVICE};
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location / {{
      default_type text/plain;
      return 200 "$server_addr:$server_port $server_protocol $host";
    }}
  }}
}}
"#
    )
}

/// A free port on the first address, checked free on the other one too.
fn free_port() -> u16 {
    loop {
        let first = TcpListener::bind((IPS[0], 0)).expect("bind a free port");
        let port = first.local_addr().expect("local addr").port();
        if TcpListener::bind((IPS[1], port)).is_ok() {
            return port;
        }
    }
}

fn temp_dir(port: u16) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "headless-lb-nginx-{}-{port}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create nginx temp dir");
    dir
}

/// HTTP/1.1 and HTTP/2 over TLS (by ALPN: nginx speaks h2 only when ALPN
/// chose it) to both addresses: every request answered, both addresses
/// used, the protocol asked for, the service's name as `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_over_tls_spread_over_both_nginx_addresses() {
    let Some(bin) = nginx_binary("http1_and_h2_over_tls_spread_over_both_nginx_addresses") else {
        return;
    };
    let ca = TestCa::new().unwrap();
    let cert = ca.server_cert(&[SERVICE]).unwrap();
    let nginx = Nginx::start(&bin, cert.cert_pem(), cert.key_pem()).await;
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<IpAddr> = IPS.iter().map(|ip| IpAddr::V4(*ip)).collect();
    dns.set_ips(SERVICE, &ips, 1);
    let addrs: Vec<SocketAddr> = ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, nginx.port))
        .collect();

    for (protocol, server_protocol) in
        [(Protocol::Http1, "HTTP/1.1"), (Protocol::Http2, "HTTP/2.0")]
    {
        let client: Client = Client::builder()
            .nameserver(dns.addr())
            .protocol(protocol)
            .tls(ca.client_config().unwrap())
            .build(&format!("{SERVICE}:{}", nginx.port))
            .unwrap();
        wait_for(
            Duration::from_secs(10),
            &format!("{protocol:?}: both nginx addresses Ready"),
            || {
                let states: BTreeMap<_, _> = client
                    .stats()
                    .endpoints
                    .into_iter()
                    .map(|e| (e.address, e.state))
                    .collect();
                addrs
                    .iter()
                    .all(|a| states.get(a) == Some(&EndpointState::Ready))
            },
        )
        .await;

        // Requests in flight at once, so that load (pending × RTT) spreads
        // them: one at a time, P2C over two pods keeps picking the one
        // whose estimate is lower, which says nothing about TLS.
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let client = client.clone();
            workers.spawn(async move {
                let mut bodies = Vec::new();
                for _ in 0..REQUESTS / IN_FLIGHT {
                    bodies.push(match client.get("/").await {
                        Ok(rsp) if rsp.status().is_success() => {
                            match rsp.into_body().collect().await {
                                Ok(body) => {
                                    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
                                }
                                Err(e) => Err(format!("body: {e}")),
                            }
                        }
                        Ok(rsp) => Err(format!("status {}", rsp.status())),
                        Err(e) => Err(e.to_string()),
                    });
                }
                bodies
            });
        }
        let mut per_addr: BTreeMap<String, usize> = BTreeMap::new();
        let mut errors = Vec::new();
        while let Some(bodies) = workers.join_next().await {
            for body in bodies.expect("a worker panicked") {
                match body {
                    Ok(body) => {
                        let mut fields = body.split(' ');
                        let (addr, proto, host) = (fields.next(), fields.next(), fields.next());
                        assert_eq!(proto, Some(server_protocol), "{protocol:?}: {body}");
                        assert_eq!(host, Some(SERVICE), "{protocol:?}: {body}");
                        *per_addr.entry(addr.unwrap_or("").to_owned()).or_default() += 1;
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        assert!(
            errors.is_empty(),
            "{protocol:?}: {} errors: {errors:?}\nnginx log:\n{}",
            errors.len(),
            nginx.log()
        );
        for addr in &addrs {
            let n = per_addr.get(&addr.to_string()).copied().unwrap_or(0);
            assert!(
                n >= REQUESTS / 10,
                "{protocol:?}: {addr} served {n} of {REQUESTS}: {per_addr:?}"
            );
        }
        eprintln!("{protocol:?} over TLS to nginx: {per_addr:?}");
    }
}
