//! The Kubernetes manifests in `examples/k8s/` are well-formed and agree with
//! each other: the Service is headless, the pods match its selector and named
//! port, and the load generator targets the Service's DNS name and port;
//! and they survive a rollout: the preStop sleep outlasts DNS, the grace
//! period covers preStop and echo_server's drain, the listen address is valid
//! for IPv4 and IPv6 pod IPs, the image is built locked with gRPC, no
//! `:latest`, and a `.dockerignore` keeps `target/` out of the build context.

use std::path::Path;
use std::time::Duration;

use headless_lb::RefreshPolicy;

use serde_yaml::Value;

fn load(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/k8s")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::with::singleton_map_recursive::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .collect()
}

fn one(file: &str, kind: &str) -> Value {
    let docs = load(file);
    assert_eq!(docs.len(), 1, "{file}: one document");
    let doc = docs.into_iter().next().unwrap();
    assert_eq!(doc["kind"].as_str(), Some(kind), "{file}: kind");
    assert!(doc["apiVersion"].is_string(), "{file}: apiVersion");
    assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
    doc
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn manifests_describe_a_headless_service_its_pods_and_a_client() {
    let service = one("service.yaml", "Service");
    let pods = one("echo-statefulset.yaml", "StatefulSet");
    let client = one("loadgen-deployment.yaml", "Deployment");

    let name = s(&service["metadata"]["name"]);
    let namespace = s(&service["metadata"]["namespace"]);
    assert_eq!(s(&service["spec"]["clusterIP"]), "None", "headless");
    let port = &service["spec"]["ports"][0];
    let port_name = s(&port["name"]);
    let port_number = port["port"].as_u64().expect("numeric port");

    // The pods: selected by the Service, named after it, exposing the named port.
    assert_eq!(s(&pods["spec"]["serviceName"]), name);
    let labels = &pods["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"].as_mapping().expect("selector");
    for (k, v) in selector {
        assert_eq!(&labels[k.as_str().unwrap()], v, "pod label {k:?}");
    }
    let container = &pods["spec"]["template"]["spec"]["containers"][0];
    let container_port = &container["ports"][0];
    assert_eq!(s(&container_port["name"]), port_name);
    assert_eq!(container_port["containerPort"].as_u64(), Some(port_number));
    let serve = s(&container["args"][0]);
    assert!(
        serve.contains("exec /usr/local/bin/echo_server --listen"),
        "{serve}"
    );
    // The listen address the script builds from a bare pod IP parses, for
    // both families, with the Service's port.
    for pod_ip in ["10.1.2.3", "fd00::7"] {
        let listen = rendered_listen(serve, pod_ip);
        let addr: std::net::SocketAddr = listen
            .parse()
            .unwrap_or_else(|e| panic!("POD_IP={pod_ip}: --listen {listen:?}: {e}"));
        assert_eq!(addr.ip().to_string(), pod_ip);
        assert_eq!(u64::from(addr.port()), port_number);
    }

    // The client targets the Service's cluster DNS name and port.
    let args = s(&client["spec"]["template"]["spec"]["containers"][0]["args"][0]);
    let target = format!("{name}.{namespace}.svc.cluster.local:{port_number}");
    assert!(args.contains(&format!("loadgen {target}")), "{args}");
    let parsed: headless_lb::Target = target.parse().expect("a valid target");
    assert_eq!(parsed.port(), Some(port_number as u16));
}

/// Runs the container's start script with `POD_IP` set and `exec
/// echo_server` replaced by `echo`, and returns the `--listen` value.
fn rendered_listen(script: &str, pod_ip: &str) -> String {
    let script = script.replace("exec /usr/local/bin/echo_server", "echo");
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("POD_IP", pod_ip)
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{out:?}");
    let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let at = words
        .iter()
        .position(|w| w == "--listen")
        .unwrap_or_else(|| panic!("no --listen in {words:?}"));
    words.get(at + 1).cloned().expect("a value after --listen")
}

/// The value after `flag` in a shell command line, as a number.
fn flag_value(command: &str, flag: &str) -> Option<u64> {
    let mut words = command.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next()?.parse().ok()
}

#[test]
fn pods_outlast_dns_before_sigterm_and_drain_within_the_grace_period() {
    let pods = one("echo-statefulset.yaml", "StatefulSet");
    let spec = &pods["spec"]["template"]["spec"];
    let container = &spec["containers"][0];

    // preStop: a sleep longer than DNS can keep listing a deleted pod.
    let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(s(&pre_stop[0]), "/bin/sleep", "{pre_stop:?}");
    let sleep_s: f64 = s(&pre_stop[1]).parse().expect("seconds");
    // CoreDNS's shipped Corefile: `ttl 30` and `cache 30`. The cache counts
    // the TTL down, so a client's answer is at most 30 s old when it expires;
    // the client then refreshes within the TTL (clamped to max_refresh) plus
    // its jitter; allow 2 s for the endpoint change to reach CoreDNS.
    let coredns_ttl = Duration::from_secs(30);
    let policy = RefreshPolicy::default();
    let refresh = coredns_ttl.min(policy.max_refresh).as_secs_f64() * (1.0 + policy.jitter);
    let dns_lag = refresh + 2.0;
    assert!(
        sleep_s > dns_lag,
        "preStop sleeps {sleep_s} s; DNS may list the pod for {dns_lag} s"
    );

    // The grace period covers preStop and echo_server's own drain.
    let serve = s(&container["args"][0]);
    let grace_ms = flag_value(serve, "--grace-ms").expect("echo_server --grace-ms N");
    let termination = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination as f64 > sleep_s + grace_ms as f64 / 1000.0,
        "terminationGracePeriodSeconds {termination} <= preStop {sleep_s} s + grace {grace_ms} ms"
    );
}

#[test]
fn images_are_built_locked_with_grpc_and_never_tagged_latest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/k8s")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(!text.contains(":latest"), "{path:?} names a :latest image");
    }
    // Every image the manifests run carries an explicit tag.
    for (file, kind) in [
        ("echo-statefulset.yaml", "StatefulSet"),
        ("loadgen-deployment.yaml", "Deployment"),
    ] {
        let doc = one(file, kind);
        let image = s(&doc["spec"]["template"]["spec"]["containers"][0]["image"]);
        let tag = image.rsplit_once(':').map(|(_, tag)| tag);
        assert!(
            tag.is_some_and(|t| !t.is_empty() && t != "latest" && !t.contains('/')),
            "{file}: image {image} needs an explicit tag"
        );
    }

    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
    let build = dockerfile
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("RUN cargo build"))
        .take_while(|l| !l.trim_start().starts_with("&&"))
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "--locked",
        "--release",
        "--features tonic",
        "--example echo_server",
    ] {
        assert!(
            build.contains(needle),
            "Dockerfile build lacks {needle}: {build}"
        );
    }
    for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = from.split_whitespace().nth(1).expect("FROM IMAGE");
        assert!(
            image.rsplit_once(':').is_some_and(|(_, t)| t != "latest"),
            "unpinned base image: {from}"
        );
    }

    // The build context is the repository root: its .dockerignore keeps
    // build output and history out.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore at the repository root");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/"] {
        assert!(
            entries.contains(&needed),
            ".dockerignore lacks {needed}: {entries:?}"
        );
    }
    assert!(
        !entries.iter().any(|e| *e == "Cargo.lock" || *e == "src/"),
        "--locked needs Cargo.lock and the sources: {entries:?}"
    );
}
