//! Prometheus metrics of real daemons: `/metrics` scraped over real HTTP from two lockboxes and
//! a controller while they create, get, refuse, seal, rotate and transfer keys; `promtool check
//! metrics` accepts every scrape; counters move as the workload says; no key id, label value
//! or key byte ever appears; a non-loopback `listen` without `allow_remote` exits 78.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use lockbox_tests::cluster::{Cluster, free_port};
use lockbox_tests::{Node, NodeOptions, binaries, describe_output, run_with_timeout};

/// A GET over a plain TCP connection (HTTP/1.1) with extra header lines: the status line,
/// the headers (lowercased) and the body.
fn get(port: u16, path: &str, extra: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.into(), headers.to_ascii_lowercase(), body.into())
}

/// A scrape of `/metrics` as curl or promtool makes it (no `Accept`: the Prometheus text
/// format 0.0.4), checked by `promtool check metrics`.
fn scrape(port: u16) -> String {
    let (status, headers, body) = get(port, "/metrics", "");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let body = dechunk(&headers, body);
    promtool_check(&body);
    body
}

/// A scrape as Prometheus makes it (OpenMetrics preferred).
fn scrape_openmetrics(port: u16) -> String {
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let (status, headers, body) = get(port, "/metrics", accept);
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let body = dechunk(&headers, body);
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

fn dechunk(headers: &str, body: String) -> String {
    if !headers.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

/// `promtool check metrics` must accept the text (it exits non-zero on errors; lint
/// warnings about naming are printed but do not fail it).
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; deploy/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{text}",
        describe_output(&out)
    );
}

/// The value of the sample whose line starts with `series` (name and labels exactly as
/// encoded), or 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.split(' ').next().unwrap().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// Adds `[metrics]` on a free port to a lockbox's config and restarts it, without its saved
/// attestation (so that it asks the controller for a new one).
fn with_metrics(node: &mut Node) -> u16 {
    let port = free_port();
    node.opts_mut()
        .extra_tables
        .push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    node.write_config();
    node.stop();
    std::fs::remove_file(node.data_dir().join("attestation")).unwrap();
    node.spawn_ready();
    lockbox_tests::cluster::wait_attested(node);
    port
}

#[test]
fn counters_follow_a_workload_and_the_scrape_holds_no_secret() {
    let mut c = Cluster::start(&["host-a", "host-b"], "");
    // The controller first: the lockboxes' restarts below attest with it again.
    let pc = free_port();
    c.controller
        .add_config(&format!("[metrics]\nlisten = \"127.0.0.1:{pc}\"\n"));
    let pa = with_metrics(c.node_mut("host-a"));
    let pb = with_metrics(c.node_mut("host-b"));

    let before = scrape(pa);
    assert_eq!(value(&before, "lockbox_sealed"), 0.0, "{before}");
    assert!(before.contains("lockbox_build_info{version=\""), "{before}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = value(&before, "lockbox_attestation_expiry_timestamp_seconds");
    assert!(expiry > now && expiry < now + 3700.0, "{expiry} vs {now}");

    let a = c.node("host-a");
    let label_value = "tenant-7f3a-SECRETLABEL";
    let keys: Vec<String> = (0..3)
        .map(|_| a.create_key(&["--label", &format!("owner={label_value}")]))
        .collect();
    let mut secrets = Vec::new();
    for k in &keys {
        secrets.push(a.key_bytes(k));
    }
    a.ctl_json(&["key", "destroy", &keys[2]]);
    let missing = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60";
    assert!(a.ctl_err(&["key", "get", missing]).contains("unknown key"));
    a.ctl_json(&["kek", "rotate"]);

    // A copy to host-b, and a grant host-b is not the source of (refused as wrong_source).
    let g = c.grant(&[&keys[0]], "host-a", "host-b", "copy", "10m");
    a.ctl_json(&["transfer", g.to_str().unwrap()]);
    let err = c.node("host-b").ctl_err(&["transfer", g.to_str().unwrap()]);
    assert!(err.contains("wrong source"), "{err}");
    // A grant request the controller's policy refuses (ttl over max_ttl = 15m).
    let mut args: Vec<String> = [
        "grant",
        "issue",
        "--key",
        &keys[1],
        "--from",
        "host-a",
        "--to",
        "host-b",
        "--op",
        "copy",
        "--ttl",
        "2h",
        "--reason",
        "test",
        "-o",
        "/dev/null",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(c.cinder.ctl_flags(&c.controller.url));
    let out = lockbox_tests::cluster::lockboxctl(&args);
    assert!(!out.status.success(), "{}", describe_output(&out));

    let ta = scrape(pa);
    let tb = scrape(pb);
    let tc = scrape(pc);
    let om = scrape_openmetrics(pa);
    assert!(
        om.contains("lockbox_requests_total{method=\"Lockbox/CreateKey\",code=\"OK\"} 3"),
        "{om}"
    );
    let series = |t: &str, s: &str| value(t, s);
    assert_eq!(
        series(
            &ta,
            "lockbox_requests_total{method=\"Lockbox/CreateKey\",code=\"OK\"}"
        ),
        3.0,
        "{ta}"
    );
    assert!(
        series(
            &ta,
            "lockbox_requests_total{method=\"Lockbox/GetKey\",code=\"OK\"}"
        ) >= 3.0
    );
    assert_eq!(
        series(
            &ta,
            "lockbox_requests_total{method=\"Lockbox/GetKey\",code=\"NotFound\"}"
        ),
        1.0,
        "{ta}"
    );
    assert!(
        series(
            &ta,
            "lockbox_request_duration_seconds_count{method=\"Lockbox/CreateKey\"}"
        ) >= 3.0
    );
    assert_eq!(series(&ta, "lockbox_keys{state=\"active\"}"), 2.0, "{ta}");
    assert_eq!(
        series(&ta, "lockbox_keys{state=\"destroyed\"}"),
        1.0,
        "{ta}"
    );
    assert_eq!(series(&tb, "lockbox_keys{state=\"active\"}"), 1.0, "{tb}");
    // One rotation by hand, one by the destroy (shred_rotation = "immediate", the default).
    assert_eq!(series(&ta, "lockbox_kek_rotations_total"), 2.0, "{ta}");
    assert!(series(&ta, "lockbox_audit_records_total") >= 6.0, "{ta}");
    assert!(
        series(&ta, "lockbox_store_sync_duration_seconds_count") >= 1.0,
        "{ta}"
    );
    assert!(
        series(&ta, "lockbox_store_sync_batch_size_count") >= 1.0,
        "{ta}"
    );
    assert_eq!(
        series(
            &ta,
            "lockbox_transfers_total{role=\"source\",op=\"copy\",outcome=\"ok\"}"
        ),
        1.0,
        "{ta}"
    );
    assert_eq!(
        series(
            &ta,
            "lockbox_transferred_keys_total{role=\"source\",op=\"copy\"}"
        ),
        1.0,
        "{ta}"
    );
    assert_eq!(
        series(
            &tb,
            "lockbox_transfers_total{role=\"destination\",op=\"copy\",outcome=\"ok\"}"
        ),
        1.0,
        "{tb}"
    );
    assert_eq!(
        series(
            &tb,
            "lockbox_transfers_total{role=\"source\",op=\"copy\",outcome=\"refused\"}"
        ),
        1.0,
        "{tb}"
    );
    assert_eq!(
        series(&tb, "lockbox_grants_refused_total{reason=\"wrong_source\"}"),
        1.0,
        "{tb}"
    );
    assert!(
        series(
            &tb,
            "lockbox_requests_total{method=\"Peer/Deliver\",code=\"OK\"}"
        ) >= 1.0,
        "{tb}"
    );
    assert!(
        series(
            &tc,
            "lockbox_controller_grants_total{op=\"copy\",outcome=\"issued\"}"
        ) >= 1.0,
        "{tc}"
    );
    assert_eq!(
        series(
            &tc,
            "lockbox_controller_grants_total{op=\"copy\",outcome=\"refused\"}"
        ),
        1.0,
        "{tc}"
    );
    assert_eq!(
        series(
            &tc,
            "lockbox_controller_policy_refusals_total{rule=\"max_ttl\"}"
        ),
        1.0,
        "{tc}"
    );
    assert!(
        series(&tc, "lockbox_controller_attestations_total{outcome=\"ok\"}") >= 2.0,
        "{tc}"
    );
    assert!(
        series(
            &tc,
            "lockbox_controller_requests_total{method=\"Controller/IssueGrant\",code=\"OK\"}"
        ) >= 1.0,
        "{tc}"
    );

    // Nothing of a key: its id, a label value, its bytes in any common spelling.
    for text in [&ta, &tb, &tc, &om] {
        assert!(!text.contains(label_value), "a label value leaked:\n{text}");
        for k in &keys {
            assert!(!text.contains(k.as_str()), "key id {k} leaked");
        }
        for bytes in &secrets {
            use base64::Engine as _;
            assert!(
                !text.contains(&hex::encode(bytes)),
                "key bytes (hex) leaked"
            );
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            assert!(!text.contains(&b64), "key bytes (base64) leaked");
        }
    }

    // Sealed flips with seal and unseal.
    a.ctl_json(&["seal"]);
    assert_eq!(value(&scrape(pa), "lockbox_sealed"), 1.0);
    a.ctl_json(&["unseal"]);
    assert_eq!(value(&scrape(pa), "lockbox_sealed"), 0.0);

    // Anything but GET /metrics is refused and changes nothing.
    let (status, _, _) = get(pa, "/keys", "");
    assert!(status.contains(" 404 "), "{status}");
}

#[test]
fn a_remote_metrics_listen_without_allow_remote_exits_78_naming_the_field() {
    let mut node = Node::new_uninit(NodeOptions::default());
    node.init();
    node.opts_mut().extra_tables = "[metrics]\nlisten = \"0.0.0.0:9464\"\n".into();
    node.write_config();
    exits_78_naming_allow_remote(&binaries().lockboxd, &node.config_path());

    // With allow_remote the same address is accepted (and served).
    let port = free_port();
    node.opts_mut().extra_tables =
        format!("[metrics]\nlisten = \"0.0.0.0:{port}\"\nallow_remote = true\n");
    node.write_config();
    node.spawn_ready();
    assert!(scrape(port).contains("lockbox_sealed 0"));
}

#[test]
fn the_controller_refuses_a_remote_metrics_listen_too() {
    let pki = lockbox_tests::cluster::Pki::new("example.org");
    let mut ctl = lockbox_tests::cluster::Controller::start(&pki, "ctl-1", "", "1h");
    ctl.stop();
    let mut text = std::fs::read_to_string(ctl.config_path()).unwrap();
    text.push_str("\n[metrics]\nlisten = \"10.1.2.3:9464\"\n");
    std::fs::write(ctl.config_path(), text).unwrap();
    exits_78_naming_allow_remote(&binaries().controller, ctl.config_path());
}

/// Runs `bin --config config` and expects EX_CONFIG with a message naming the field and the
/// way to allow it.
fn exits_78_naming_allow_remote(bin: &std::path::Path, config: &std::path::Path) {
    let out = run_with_timeout(
        Command::new(bin).arg("--config").arg(config),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(78), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.listen") && err.contains("allow_remote"),
        "{err}"
    );
}

/// A data dir of an earlier release has no counts by state: the first unseal counts the key
/// records once (writing the counts), and from then on the write path keeps them.
#[test]
fn key_counts_by_state_are_made_once_for_an_earlier_data_dir() {
    let mut node = Node::keyfile();
    let keys: Vec<String> = (0..4).map(|_| node.create_key(&[])).collect();
    node.ctl_json(&["key", "destroy", &keys[3]]);
    node.stop();
    {
        let store = lockbox_store::Store::open(&node.db_dir(), 1 << 20).unwrap();
        assert!(
            store
                .get(lockbox_store::Ns::Node, b"key-states")
                .unwrap()
                .is_some()
        );
        let mut batch = lockbox_store::Batch::new();
        batch.remove(lockbox_store::Ns::Node, b"key-states");
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(store.commit(batch))
            .unwrap();
    }
    let port = free_port();
    node.opts_mut().extra_tables = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    node.write_config();
    node.spawn_ready();
    let t = scrape(port);
    assert_eq!(value(&t, "lockbox_keys{state=\"active\"}"), 3.0, "{t}");
    assert_eq!(value(&t, "lockbox_keys{state=\"destroyed\"}"), 1.0, "{t}");
    let counted = |node: &Node| {
        node.log_contents()
            .matches("counted the key records by state")
            .count()
    };
    assert_eq!(counted(&node), 1, "a fresh data dir starts with its counts");
    node.create_key(&[]);
    let t = scrape(port);
    assert_eq!(value(&t, "lockbox_keys{state=\"active\"}"), 4.0, "{t}");
    // Counted once: the next start reads the counts the first unseal wrote.
    node.restart();
    let t = scrape(port);
    assert_eq!(value(&t, "lockbox_keys{state=\"active\"}"), 4.0, "{t}");
    assert_eq!(counted(&node), 1);
}
