//! The Kubernetes manifests in `examples/k8s/` are well-formed and agree with
//! each other: the Service is headless, the pods match its selector and named
//! port, and the load generator targets the Service's DNS name and port.

use std::path::Path;

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
        serve.contains(&format!("echo_server --listen ${{POD_IP}}:{port_number}")),
        "{serve}"
    );

    // The client targets the Service's cluster DNS name and port.
    let args = s(&client["spec"]["template"]["spec"]["containers"][0]["args"][0]);
    let target = format!("{name}.{namespace}.svc.cluster.local:{port_number}");
    assert!(args.contains(&format!("loadgen {target}")), "{args}");
    let parsed: headless_lb::Target = target.parse().expect("a valid target");
    assert_eq!(parsed.port(), Some(port_number as u16));
}
