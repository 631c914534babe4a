//! Parsing, validation, normalisation and round-tripping of `Target`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use headless_lb::target::Host;
use headless_lb::{Target, TargetError};
use proptest::prelude::*;

fn parse(s: &str) -> Result<Target, TargetError> {
    s.parse()
}

fn name(s: &str) -> Host {
    Host::Name(s.to_owned())
}

fn s(x: &str) -> String {
    x.to_owned()
}

// ===== malformed targets =====

#[test]
fn rejects_each_malformed_target_with_its_specific_error() {
    let label64 = "a".repeat(64);
    let long_label_target = format!("{label64}.default:80");
    // 4 labels of 63 + 3 dots = 255 bytes; trim to 254.
    let name254 = {
        let mut n = [&"a".repeat(63); 4].map(|l| l.as_str()).join(".");
        n.truncate(254);
        n
    };
    let long_name_target = format!("{name254}:80");
    let long_srv_label = format!("_http._tcp.{label64}");

    use TargetError::*;
    let cases: Vec<(&str, TargetError)> = vec![
        ("", Empty),
        (
            " web:80",
            SurroundingWhitespace {
                input: s(" web:80"),
            },
        ),
        (
            "web:80\n",
            SurroundingWhitespace {
                input: s("web:80\n"),
            },
        ),
        ("web", MissingPort { input: s("web") }),
        ("web:", MissingPort { input: s("web:") }),
        ("[::1]", MissingPort { input: s("[::1]") }),
        (
            "dns:///web",
            MissingPort {
                input: s("dns:///web"),
            },
        ),
        ("web:0", ZeroPort),
        ("10.0.0.1:0", ZeroPort),
        ("web:99999", InvalidPort { port: s("99999") }),
        ("web:65536", InvalidPort { port: s("65536") }),
        ("web:+80", InvalidPort { port: s("+80") }),
        ("web:-1", InvalidPort { port: s("-1") }),
        ("web:http", InvalidPort { port: s("http") }),
        ("web:80/path", InvalidPort { port: s("80/path") }),
        ("web:８０", InvalidPort { port: s("８０") }),
        (":80", MissingHost { input: s(":80") }),
        (
            "dns:///",
            MissingHost {
                input: s("dns:///"),
            },
        ),
        (
            "dns:///:80",
            MissingHost {
                input: s("dns:///:80"),
            },
        ),
        ("http://web:80", UnknownScheme { scheme: s("http") }),
        ("https://web:443", UnknownScheme { scheme: s("https") }),
        ("://web:80", UnknownScheme { scheme: s("") }),
        (
            "dns://web:80",
            MissingPath {
                input: s("dns://web:80"),
            },
        ),
        ("dns://", MissingPath { input: s("dns://") }),
        (
            "dns://notanip/web:80",
            InvalidNameserver {
                nameserver: s("notanip"),
            },
        ),
        (
            "dns://kube-dns:53/web:80",
            InvalidNameserver {
                nameserver: s("kube-dns:53"),
            },
        ),
        (
            "dns://1.2.3.4/web:80",
            NameserverMissingPort {
                nameserver: s("1.2.3.4"),
            },
        ),
        (
            "dns://[::1]/web:80",
            NameserverMissingPort {
                nameserver: s("[::1]"),
            },
        ),
        (
            "dns://::1/web:80",
            NameserverMissingPort {
                nameserver: s("::1"),
            },
        ),
        (
            "dns://1.2.3.4:0/web:80",
            NameserverZeroPort {
                nameserver: s("1.2.3.4:0"),
            },
        ),
        (
            "dns://1.2.3.4:99999/web:80",
            InvalidNameserver {
                nameserver: s("1.2.3.4:99999"),
            },
        ),
        (
            "_grpc._tcp.web:80",
            PortWithSrv {
                name: s("_grpc._tcp.web"),
                port: s("80"),
            },
        ),
        (
            "dns:///_grpc._tcp.web:80",
            PortWithSrv {
                name: s("_grpc._tcp.web"),
                port: s("80"),
            },
        ),
        (
            "_grpc.web",
            InvalidSrvName {
                name: s("_grpc.web"),
            },
        ),
        (
            "_grpc._tcp",
            InvalidSrvName {
                name: s("_grpc._tcp"),
            },
        ),
        (
            "_grpc._tcp.",
            InvalidSrvName {
                name: s("_grpc._tcp."),
            },
        ),
        (
            "_._tcp.web",
            InvalidSrvName {
                name: s("_._tcp.web"),
            },
        ),
        ("_grpc", InvalidSrvName { name: s("_grpc") }),
        (
            "_gr_pc._tcp.web",
            InvalidCharacter {
                ch: '_',
                label: s("_gr_pc"),
            },
        ),
        ("_-grpc._tcp.web", HyphenAtLabelEdge { label: s("_-grpc") }),
        (
            "_grpc._tcp.w_b",
            InvalidCharacter {
                ch: '_',
                label: s("w_b"),
            },
        ),
        (
            &long_srv_label,
            LabelTooLong {
                label: label64.clone(),
                len: 64,
            },
        ),
        (
            &long_label_target,
            LabelTooLong {
                label: label64.clone(),
                len: 64,
            },
        ),
        (&long_name_target, NameTooLong { len: 254 }),
        (
            "we_b:80",
            InvalidCharacter {
                ch: '_',
                label: s("we_b"),
            },
        ),
        (
            "web site:80",
            InvalidCharacter {
                ch: ' ',
                label: s("web site"),
            },
        ),
        (
            "wéb:80",
            InvalidCharacter {
                ch: 'é',
                label: s("wéb"),
            },
        ),
        (
            "web*:80",
            InvalidCharacter {
                ch: '*',
                label: s("web*"),
            },
        ),
        (
            "dns:/web:80",
            InvalidCharacter {
                ch: ':',
                label: s("dns:/web"),
            },
        ),
        ("-web:80", HyphenAtLabelEdge { label: s("-web") }),
        ("web-.default:80", HyphenAtLabelEdge { label: s("web-") }),
        ("web..x:80", EmptyLabel { name: s("web..x") }),
        (".web:80", EmptyLabel { name: s(".web") }),
        ("web..:80", EmptyLabel { name: s("web..") }),
        (".:80", EmptyLabel { name: s(".") }),
        (
            "10.0.0.300:80",
            NumericTopLabel {
                name: s("10.0.0.300"),
            },
        ),
        (
            "010.0.0.1:80",
            NumericTopLabel {
                name: s("010.0.0.1"),
            },
        ),
        ("1.2.3:80", NumericTopLabel { name: s("1.2.3") }),
        ("[::1:80", InvalidIpv6 { host: s("[::1:80") }),
        (
            "[web]:80",
            InvalidIpv6 {
                host: s("[web]:80"),
            },
        ),
        (
            "[10.0.0.1]:80",
            InvalidIpv6 {
                host: s("[10.0.0.1]:80"),
            },
        ),
        (
            "[::1]x:80",
            InvalidIpv6 {
                host: s("[::1]x:80"),
            },
        ),
        ("::1:80", UnbracketedIpv6 { host: s("::1:80") }),
        ("fe80::1", UnbracketedIpv6 { host: s("fe80::1") }),
    ];
    assert!(cases.len() >= 20);
    for (input, want) in cases {
        assert_eq!(parse(input), Err(want), "input {input:?}");
    }
}

#[test]
fn error_messages_name_the_offending_part() {
    let cases = [
        ("http://web:80", "\"http\""),
        ("web:99999", "\"99999\""),
        ("we_b:80", "'_'"),
        ("we_b:80", "\"we_b\""),
        ("web", "no port"),
        ("dns://1.2.3.4/web:80", "\"1.2.3.4\""),
        ("_grpc._tcp.web:80", "\"80\""),
    ];
    for (input, needle) in cases {
        let msg = parse(input).unwrap_err().to_string();
        assert!(
            msg.contains(needle),
            "{input:?} gave {msg:?}, no {needle:?}"
        );
    }
}

#[test]
fn new_validates_like_parsing() {
    assert_eq!(Target::new(name("web"), 0), Err(TargetError::ZeroPort));
    assert_eq!(
        Target::new(name(""), 80),
        Err(TargetError::MissingHost { input: s("") })
    );
    assert_eq!(
        Target::new(name("_grpc._tcp.web"), 80),
        Err(TargetError::InvalidCharacter {
            ch: '_',
            label: s("_grpc")
        })
    );
    assert_eq!(
        Target::new(name("web..x"), 80),
        Err(TargetError::EmptyLabel { name: s("web..x") })
    );
}

#[test]
fn new_normalises_names_and_ip_literals() {
    let t = Target::new(name("Web.Default."), 8080).unwrap();
    assert_eq!(t, parse("web.default:8080").unwrap());

    let t = Target::new(name("::1"), 80).unwrap();
    assert_eq!(t.host(), &Host::Ip(Ipv6Addr::LOCALHOST.into()));
    assert_eq!(t.to_string(), "[::1]:80");

    let t = Target::new(Host::Ip(Ipv4Addr::new(10, 0, 0, 1).into()), 80).unwrap();
    assert_eq!(t, parse("10.0.0.1:80").unwrap());
}

// ===== valid targets =====

struct Valid {
    input: &'static str,
    host: Host,
    port: Option<u16>,
    nameserver: Option<&'static str>,
    display: &'static str,
    authority: &'static str,
}

#[test]
fn accepts_each_valid_form_with_expected_accessors() {
    let v6 = |s: &str| Host::Ip(IpAddr::V6(s.parse().unwrap()));
    let v4 = |s: &str| Host::Ip(IpAddr::V4(s.parse().unwrap()));
    let cases = [
        Valid {
            input: "web:80",
            host: name("web"),
            port: Some(80),
            nameserver: None,
            display: "web:80",
            authority: "web:80",
        },
        Valid {
            input: "web.default.svc.cluster.local:8080",
            host: name("web.default.svc.cluster.local"),
            port: Some(8080),
            nameserver: None,
            display: "web.default.svc.cluster.local:8080",
            authority: "web.default.svc.cluster.local:8080",
        },
        Valid {
            input: "WEB.Default.SVC.cluster.local.:65535",
            host: name("web.default.svc.cluster.local"),
            port: Some(65535),
            nameserver: None,
            display: "web.default.svc.cluster.local:65535",
            authority: "web.default.svc.cluster.local:65535",
        },
        Valid {
            input: "dns:///web.default:8080",
            host: name("web.default"),
            port: Some(8080),
            nameserver: None,
            display: "dns:///web.default:8080",
            authority: "web.default:8080",
        },
        Valid {
            input: "DNS:///web:1",
            host: name("web"),
            port: Some(1),
            nameserver: None,
            display: "dns:///web:1",
            authority: "web:1",
        },
        Valid {
            input: "dns://10.96.0.10:53/web:80",
            host: name("web"),
            port: Some(80),
            nameserver: Some("10.96.0.10:53"),
            display: "dns://10.96.0.10:53/web:80",
            authority: "web:80",
        },
        Valid {
            input: "dns://[::1]:5353/web.default.svc.cluster.local:8080",
            host: name("web.default.svc.cluster.local"),
            port: Some(8080),
            nameserver: Some("[::1]:5353"),
            display: "dns://[::1]:5353/web.default.svc.cluster.local:8080",
            authority: "web.default.svc.cluster.local:8080",
        },
        Valid {
            input: "_http._tcp.web.default.svc.cluster.local",
            host: name("_http._tcp.web.default.svc.cluster.local"),
            port: None,
            nameserver: None,
            display: "_http._tcp.web.default.svc.cluster.local",
            authority: "web.default.svc.cluster.local",
        },
        Valid {
            input: "dns:///_grpc._tcp.Web.",
            host: name("_grpc._tcp.web"),
            port: None,
            nameserver: None,
            display: "dns:///_grpc._tcp.web",
            authority: "web",
        },
        Valid {
            input: "dns://127.0.0.1:5300/_grpc-web._tcp.web.default",
            host: name("_grpc-web._tcp.web.default"),
            port: None,
            nameserver: Some("127.0.0.1:5300"),
            display: "dns://127.0.0.1:5300/_grpc-web._tcp.web.default",
            authority: "web.default",
        },
        Valid {
            input: "[::1]:80",
            host: v6("::1"),
            port: Some(80),
            nameserver: None,
            display: "[::1]:80",
            authority: "[::1]:80",
        },
        Valid {
            input: "[FD00:0:0::A]:443",
            host: v6("fd00::a"),
            port: Some(443),
            nameserver: None,
            display: "[fd00::a]:443",
            authority: "[fd00::a]:443",
        },
        Valid {
            input: "10.0.0.1:8080",
            host: v4("10.0.0.1"),
            port: Some(8080),
            nameserver: None,
            display: "10.0.0.1:8080",
            authority: "10.0.0.1:8080",
        },
        Valid {
            input: "dns:///10.0.0.1:080",
            host: v4("10.0.0.1"),
            port: Some(80),
            nameserver: None,
            display: "dns:///10.0.0.1:80",
            authority: "10.0.0.1:80",
        },
        Valid {
            input: "3com.example:80",
            host: name("3com.example"),
            port: Some(80),
            nameserver: None,
            display: "3com.example:80",
            authority: "3com.example:80",
        },
        Valid {
            input: "a-b--c.x1:80",
            host: name("a-b--c.x1"),
            port: Some(80),
            nameserver: None,
            display: "a-b--c.x1:80",
            authority: "a-b--c.x1:80",
        },
    ];
    for c in cases {
        let t = parse(c.input).unwrap_or_else(|e| panic!("{:?}: {e}", c.input));
        assert_eq!(t.host(), &c.host, "host of {:?}", c.input);
        assert_eq!(t.port(), c.port, "port of {:?}", c.input);
        assert_eq!(t.is_srv(), c.port.is_none(), "is_srv of {:?}", c.input);
        let ns = c.nameserver.map(|n| n.parse::<SocketAddr>().unwrap());
        assert_eq!(t.nameserver(), ns, "nameserver of {:?}", c.input);
        assert_eq!(t.to_string(), c.display, "display of {:?}", c.input);
        assert_eq!(t.authority(), c.authority, "authority of {:?}", c.input);
        assert_eq!(parse(&t.to_string()), Ok(t), "round trip of {:?}", c.input);
    }
}

#[test]
fn accepts_names_at_the_length_limits() {
    let label63 = "a".repeat(63);
    let t = parse(&format!("{label63}:80")).unwrap();
    assert_eq!(t.host(), &name(&label63));

    // 253 bytes, and 253 plus the trailing dot.
    let mut name253 = [label63.as_str(); 4].join(".");
    name253.truncate(253);
    assert_eq!(
        parse(&format!("{name253}:80")).unwrap().host(),
        &name(&name253)
    );
    assert_eq!(
        parse(&format!("{name253}.:80")).unwrap().host(),
        &name(&name253)
    );
}

#[test]
fn names_compare_case_insensitively_and_ignore_the_trailing_dot() {
    assert_eq!(parse("Web.Default:80"), parse("web.default.:80"));
    // The scheme is kept: it is part of what Display writes back.
    assert_ne!(parse("web:80"), parse("dns:///web:80"));
}

// ===== properties =====

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
}

/// The part of an SRV `_service` or `_proto` label after the `_`.
fn srv_label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,60}[a-zA-Z0-9])?"
}

/// A valid host name: up to 4 labels, the last with a letter in it, and an
/// optional trailing dot.
fn host_name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 0..4),
        "[a-zA-Z][a-zA-Z0-9-]{0,20}[a-zA-Z0-9]",
        any::<bool>(),
    )
        .prop_map(|(mut labels, top, dot)| {
            labels.push(top);
            let mut n = labels.join(".");
            if dot {
                n.push('.');
            }
            n
        })
}

fn host_port() -> impl Strategy<Value = String> {
    prop_oneof![
        (host_name(), 1..=u16::MAX).prop_map(|(h, p)| format!("{h}:{p}")),
        (any::<Ipv4Addr>(), 1..=u16::MAX).prop_map(|(ip, p)| format!("{ip}:{p}")),
        (any::<Ipv6Addr>(), 1..=u16::MAX).prop_map(|(ip, p)| format!("[{ip}]:{p}")),
        (srv_label(), srv_label(), host_name())
            .prop_map(|(svc, proto, h)| format!("_{svc}._{proto}.{h}"))
            .prop_filter("SRV name over 253 bytes", |n| {
                n.strip_suffix('.').unwrap_or(n).len() <= 253
            }),
    ]
}

fn nameserver() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), 1..=u16::MAX).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A valid target string in any accepted form.
fn valid_target() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::option::of(nameserver())),
        host_port(),
    )
        .prop_map(|(scheme, hp)| match scheme {
            None => hp,
            Some(None) => format!("dns:///{hp}"),
            Some(Some(ns)) => format!("dns://{ns}/{hp}"),
        })
}

proptest! {
    // No regression files: a failure prints its minimal input, which belongs
    // in the tables above.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_targets_parse_and_round_trip_through_display(input in valid_target()) {
        let t = parse(&input).map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
        prop_assert_eq!(parse(&t.to_string()), Ok(t.clone()));
        prop_assert_eq!(t.is_srv(), input.contains('_'));
    }

    #[test]
    fn targets_from_new_round_trip_through_display(
        host in prop_oneof![
            host_name().prop_map(Host::Name),
            any::<IpAddr>().prop_map(Host::Ip),
        ],
        port in 1..=u16::MAX,
    ) {
        let t = Target::new(host, port).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn parsing_any_string_never_panics_and_is_idempotent(input in ".*") {
        check_idempotent(&input)?;
    }

    #[test]
    fn parsing_any_printable_string_never_panics_and_is_idempotent(input in "\\PC*") {
        check_idempotent(&input)?;
    }

    #[test]
    fn parsing_target_shaped_noise_never_panics_and_is_idempotent(
        input in "(dns|DNS|http)?(://)?(\\[?[0-9a-f:.]{0,12}\\]?(:[0-9]{0,6})?/)?_?[a-zé_.:\\[\\]-]{0,12}(:[0-9+]{0,6})?\\.?"
    ) {
        check_idempotent(&input)?;
    }

    /// Valid targets with a few characters replaced, inserted or deleted:
    /// near misses, about a sixth of which still parse, so that the idempotence
    /// check is exercised on unusual spellings too.
    #[test]
    fn parsing_mutated_valid_targets_never_panics_and_is_idempotent(
        input in valid_target(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0..3u8, prop_oneof![
                Just('.'), Just(':'), Just('/'), Just('_'), Just('-'), Just('['),
                Just(']'), Just('0'), Just('A'), Just(' '), Just('é'), any::<char>(),
            ]),
            1..4,
        ),
    ) {
        let mut chars: Vec<char> = input.chars().collect();
        for (at, op, ch) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, ch),
                1 if i < chars.len() => chars[i] = ch,
                _ if i < chars.len() => {
                    chars.remove(i);
                }
                _ => chars.push(ch),
            }
        }
        check_idempotent(&chars.into_iter().collect::<String>())?;
    }
}

fn check_idempotent(input: &str) -> Result<(), TestCaseError> {
    if let Ok(t) = parse(input) {
        let shown = t.to_string();
        prop_assert_eq!(parse(&shown), Ok(t), "{:?} displayed as {:?}", input, shown);
    }
    Ok(())
}
