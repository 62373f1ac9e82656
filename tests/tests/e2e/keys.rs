//! Every key verb through a real lockboxd, and invariant 1 (no plaintext on disk or in logs).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lockbox_tests::{
    Node, NodeOptions, describe_output, find_needles, json_str, leak_needles, newest_version,
};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn key_ids(list: &Value) -> BTreeSet<String> {
    list["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys array in {list}"))
        .iter()
        .map(|k| json_str(k, "key_id"))
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn string_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn origin_from_is_empty(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

#[test]
fn create_32_and_64_byte_keys_readable_in_every_format() {
    let node = Node::keyfile();
    for (args, len) in [
        (vec![], 32usize),
        (vec!["--length", "32"], 32),
        (vec!["--length", "64"], 64),
    ] {
        let mut create = vec!["key", "create"];
        create.extend_from_slice(&args);
        let v = node.ctl_json(&create);
        assert_eq!(v["created"], json!(true), "{v}");
        let id = json_str(&v, "key_id");

        let raw = node.key_raw(&id);
        assert_eq!(raw.len(), len, "raw output must be exactly the key bytes");

        let h = node.ctl_json(&["key", "get", &id, "--format", "hex"]);
        assert_eq!(json_str(&h, "key_id"), id);
        assert_eq!(json_str(&h, "format"), "hex");
        assert!(h["version"].as_u64().is_some(), "{h}");
        assert_eq!(hex::decode(json_str(&h, "key")).unwrap(), raw);

        let b = node.ctl_json(&["key", "get", &id, "--format", "base64"]);
        assert_eq!(json_str(&b, "format"), "base64");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(json_str(&b, "key"))
            .unwrap();
        assert_eq!(decoded, raw);

        // Default format is hex.
        let d = node.ctl_json(&["key", "get", &id]);
        assert_eq!(hex::decode(json_str(&d, "key")).unwrap(), raw);

        // Two keys never share random material.
        assert_ne!(raw, vec![0u8; len]);
    }
    let a = node.create_key(&[]);
    let b = node.create_key(&[]);
    assert_ne!(a, b);
    assert_ne!(node.key_raw(&a), node.key_raw(&b));

    // Bad length is refused and creates nothing.
    let before = node.status()["key_count"].as_u64().unwrap();
    node.ctl_err(&["key", "create", "--length", "48"]);
    assert_eq!(node.status()["key_count"].as_u64().unwrap(), before);
}

#[test]
fn create_with_key_id_is_idempotent() {
    let node = Node::keyfile();
    let id = "6f1c2b1e-8a53-4a8e-9d3e-1f2a3b4c5d6e";
    let args = ["key", "create", "--key-id", id, "--label", "vol=v1"];
    let first = node.ctl_json(&args);
    assert_eq!(json_str(&first, "key_id"), id);
    assert_eq!(first["created"], json!(true), "{first}");
    let bytes = node.key_bytes(id);

    let again = node.ctl_json(&args);
    assert_eq!(json_str(&again, "key_id"), id);
    assert_eq!(again["created"], json!(false), "{again}");
    assert_eq!(
        node.key_bytes(id),
        bytes,
        "a retry must not replace the material"
    );

    let list = node.ctl_json(&["key", "list"]);
    assert_eq!(key_ids(&list), set(&[id]));
    assert_eq!(node.status()["key_count"], json!(1));
}

#[test]
fn labels_and_list_filter() {
    let node = Node::keyfile();
    let a = node.create_key(&["--label", "tenant=t1", "--label", "vol=a"]);
    let b = node.create_key(&["--label", "tenant=t1", "--label", "vol=b"]);
    let c = node.create_key(&["--label", "tenant=t2", "--label", "vol=a"]);
    let d = node.create_key(&[]);

    let labels = &node.describe(&a)["labels"];
    assert_eq!(labels, &json!({"tenant": "t1", "vol": "a"}));
    assert_eq!(node.describe(&d)["labels"], json!({}));

    let all = node.ctl_json(&["key", "list"]);
    assert_eq!(key_ids(&all), set(&[&a, &b, &c, &d]));
    let t1 = node.ctl_json(&["key", "list", "--label", "tenant=t1"]);
    assert_eq!(key_ids(&t1), set(&[&a, &b]));
    let vol_a = node.ctl_json(&["key", "list", "--label", "vol=a"]);
    assert_eq!(key_ids(&vol_a), set(&[&a, &c]));
    let both = node.ctl_json(&["key", "list", "--label", "tenant=t1", "--label", "vol=a"]);
    assert_eq!(key_ids(&both), set(&[&a]));
    let none = node.ctl_json(&["key", "list", "--label", "tenant=nobody"]);
    assert_eq!(key_ids(&none), BTreeSet::new());

    // List entries are describe objects.
    let entry = t1["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == json!(a))
        .unwrap();
    assert_eq!(entry["state"], json!("active"));
    assert_eq!(entry["labels"]["vol"], json!("a"));

    // Human output: one line per key.
    let out = node.ctl_plain(&["key", "list", "--label", "tenant=t1"]);
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&a) || l.contains(&b))
        .collect();
    assert_eq!(lines.len(), 2, "one line per key expected:\n{text}");
    assert!(!text.contains(&c), "filtered-out key listed:\n{text}");
}

#[test]
fn describe_reports_every_field() {
    let node = Node::keyfile();
    let before = now_ms();
    let id = node.create_key(&["--length", "64", "--label", "pool=tank"]);
    let after = now_ms();
    let d = node.describe(&id);
    assert_eq!(json_str(&d, "key_id"), id);
    assert_eq!(d["state"], json!("active"));
    assert_eq!(d["length"], json!(64));
    assert_eq!(d["labels"], json!({"pool": "tank"}));
    let created = d["created_unix_ms"].as_u64().unwrap();
    assert!(
        created + 1000 >= before && created <= after + 1000,
        "created_unix_ms {created} not within [{before}, {after}]"
    );
    assert_eq!(d["origin"]["kind"], json!("created"), "{d}");
    assert!(origin_from_is_empty(&d["origin"]["from_key_id"]), "{d}");
    assert_eq!(d["clone_policy"], json!("same-key"), "config default");
    let current = d["current_version"].as_u64().unwrap();
    let versions = d["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{d}");
    assert_eq!(versions[0]["version"].as_u64(), Some(current));
    assert_eq!(versions[0]["state"], json!("active"));
    assert!(versions[0]["created_unix_ms"].as_u64().unwrap() >= created.saturating_sub(1000));
    assert_eq!(d["shares_material_with"], json!([]));

    // Per-key policy shows up.
    let p = node.create_key(&["--clone-policy", "new-key"]);
    assert_eq!(node.describe(&p)["clone_policy"], json!("new-key"));
    assert_eq!(node.describe(&p)["length"], json!(32));

    // Unknown id: a clear error.
    let err = node.ctl_err(&["key", "describe", "00000000-0000-4000-8000-000000000000"]);
    let lower = err.to_lowercase();
    assert!(
        lower.contains("not found") || lower.contains("unknown key"),
        "{err}"
    );
}

#[test]
fn snapshot_shares_material_under_a_new_id() {
    let node = Node::keyfile();
    let src = node.create_key(&["--length", "64"]);
    let v = node.ctl_json(&["key", "snapshot", &src]);
    let snap = json_str(&v, "key_id");
    assert_ne!(snap, src);
    assert_eq!(node.key_bytes(&snap), node.key_bytes(&src));
    let d = node.describe(&snap);
    assert_eq!(d["origin"]["kind"], json!("snapshot"), "{d}");
    assert_eq!(d["origin"]["from_key_id"], json!(src), "{d}");
    assert_eq!(d["length"], json!(64));
    assert_eq!(d["state"], json!("active"));
    assert!(string_set(&d["shares_material_with"]).contains(&src), "{d}");
    let s = node.describe(&src);
    assert!(
        string_set(&s["shares_material_with"]).contains(&snap),
        "{s}"
    );
}

#[test]
fn clone_same_key_shares_bytes_and_new_key_does_not() {
    let node = Node::keyfile();
    let src = node.create_key(&["--length", "64"]);
    let src_bytes = node.key_bytes(&src);

    let same = json_str(
        &node.ctl_json(&["key", "clone", &src, "--mode", "same-key"]),
        "key_id",
    );
    assert_ne!(same, src);
    assert_eq!(node.key_bytes(&same), src_bytes);
    let d = node.describe(&same);
    assert_eq!(d["origin"]["kind"], json!("clone-same-key"), "{d}");
    assert_eq!(d["origin"]["from_key_id"], json!(src), "{d}");
    assert!(string_set(&d["shares_material_with"]).contains(&src), "{d}");

    let new = json_str(
        &node.ctl_json(&["key", "clone", &src, "--mode", "new-key"]),
        "key_id",
    );
    assert_ne!(new, src);
    let new_bytes = node.key_bytes(&new);
    assert_ne!(new_bytes, src_bytes, "new-key clone must have new material");
    assert_eq!(new_bytes.len(), 64, "a clone keeps its origin's length");
    let d = node.describe(&new);
    assert_eq!(d["origin"]["kind"], json!("clone-new-key"), "{d}");
    assert_eq!(d["origin"]["from_key_id"], json!(src), "{d}");
    assert!(
        !string_set(&d["shares_material_with"]).contains(&src),
        "{d}"
    );
    // The source is unchanged.
    assert_eq!(node.key_bytes(&src), src_bytes);
}

#[test]
fn clone_policy_per_key() {
    let node = Node::keyfile();

    let deny = node.create_key(&["--clone-policy", "deny"]);
    let deny_bytes = node.key_bytes(&deny);
    let count = node.status()["key_count"].as_u64().unwrap();
    for mode in ["same-key", "new-key"] {
        let err = node.ctl_err(&["key", "clone", &deny, "--mode", mode]);
        assert!(err.contains("clone policy deny"), "{err}");
    }
    assert_eq!(
        node.status()["key_count"].as_u64().unwrap(),
        count,
        "a refused clone must create nothing"
    );
    // Snapshots are always allowed.
    let snap = json_str(&node.ctl_json(&["key", "snapshot", &deny]), "key_id");
    assert_eq!(node.key_bytes(&snap), deny_bytes);

    let nk = node.create_key(&["--clone-policy", "new-key"]);
    let err = node.ctl_err(&["key", "clone", &nk, "--mode", "same-key"]);
    assert!(err.contains("clone policy new-key"), "{err}");
    let c = json_str(
        &node.ctl_json(&["key", "clone", &nk, "--mode", "new-key"]),
        "key_id",
    );
    assert_ne!(node.key_bytes(&c), node.key_bytes(&nk));

    let sk = node.create_key(&["--clone-policy", "same-key"]);
    node.ctl_json(&["key", "clone", &sk, "--mode", "same-key"]);
    node.ctl_json(&["key", "clone", &sk, "--mode", "new-key"]);
}

#[test]
fn clone_policy_config_default_deny() {
    let node = Node::start(NodeOptions {
        clone_policy: Some("deny".into()),
        ..NodeOptions::default()
    });
    let k = node.create_key(&[]);
    assert_eq!(node.describe(&k)["clone_policy"], json!("deny"));
    for mode in ["same-key", "new-key"] {
        let err = node.ctl_err(&["key", "clone", &k, "--mode", mode]);
        assert!(err.contains("clone policy deny"), "{err}");
    }
    node.ctl_json(&["key", "snapshot", &k]);
    // A per-key override beats the config default.
    let over = node.create_key(&["--clone-policy", "same-key"]);
    let c = json_str(
        &node.ctl_json(&["key", "clone", &over, "--mode", "same-key"]),
        "key_id",
    );
    assert_eq!(node.key_bytes(&c), node.key_bytes(&over));
}

#[test]
fn rekey_begin_and_commit() {
    let node = Node::keyfile();
    let id = node.create_key(&[]);
    let old_bytes = node.key_bytes(&id);
    let v1 = node.describe(&id)["current_version"].as_u64().unwrap();
    assert_eq!(node.key_bytes_version(&id, v1), old_bytes);

    let begun = node.ctl_json(&["key", "rekey", &id]);
    assert_eq!(json_str(&begun, "key_id"), id);
    assert_eq!(begun["state"], json!("rekeying"), "{begun}");
    let versions: Vec<u64> = begun["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    let v2 = *versions.iter().max().unwrap();
    assert!(v2 > v1, "rekey must make a newer version: {begun}");
    assert_eq!(versions.len(), 2, "{begun}");
    assert!(versions.contains(&v1) && versions.contains(&v2), "{begun}");
    assert_eq!(node.describe(&id)["state"], json!("rekeying"));

    // Both versions readable, with different material.
    let new_bytes = node.key_bytes_version(&id, v2);
    assert_eq!(new_bytes.len(), 32);
    assert_ne!(new_bytes, old_bytes);
    assert_eq!(node.key_bytes_version(&id, v1), old_bytes);

    let committed = node.ctl_json(&["key", "rekey", &id, "--commit"]);
    assert_eq!(committed["state"], json!("active"), "{committed}");
    assert_eq!(committed["current_version"].as_u64(), Some(v2));
    let state_of = |d: &Value, ver: u64| {
        d["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"].as_u64() == Some(ver))
            .map(|v| v["state"].clone())
            .unwrap_or_else(|| panic!("version {ver} missing from {d}"))
    };
    assert_eq!(state_of(&committed, v1), json!("retired"), "{committed}");
    assert_eq!(state_of(&committed, v2), json!("active"), "{committed}");
    // Retired version still readable for decryption; default is the new one.
    assert_eq!(node.key_bytes_version(&id, v1), old_bytes);
    assert_eq!(node.key_bytes_version(&id, v2), new_bytes);
    assert_eq!(node.key_bytes(&id), new_bytes);

    // A commit repeated after it took effect (a retry whose first answer was lost) reports
    // the committed state and changes nothing; on a key never rekeyed it is an error.
    let again = node.ctl_json(&["key", "rekey", &id, "--commit"]);
    assert_eq!(again["current_version"].as_u64(), Some(v2), "{again}");
    assert_eq!(again["versions"], committed["versions"], "{again}");
    let fresh = node.create_key(&[]);
    let err = node.ctl_err(&["key", "rekey", &fresh, "--commit"]);
    assert!(err.contains("no rekey in progress"), "{err}");
}

#[test]
fn destroy_keeps_shared_material_until_last_reference() {
    let node = Node::keyfile();
    let a = node.create_key(&[]);
    let bytes = node.key_bytes(&a);
    let snap = json_str(&node.ctl_json(&["key", "snapshot", &a]), "key_id");

    let r = node.ctl_json(&["key", "destroy", &a]);
    assert_eq!(r["destroyed_key_ids"], json!([a]), "{r}");
    assert_eq!(r["material_shredded"], json!(false), "{r}");
    assert_eq!(node.describe(&a)["state"], json!("destroyed"));
    let err = node.ctl_err(&["key", "get", &a]);
    assert!(!err.contains(&hex::encode(&bytes)), "{err}");
    // The sharer is untouched.
    assert_eq!(node.key_bytes(&snap), bytes);
    assert_eq!(node.describe(&snap)["state"], json!("active"));

    let r = node.ctl_json(&["key", "destroy", &snap]);
    assert_eq!(r["destroyed_key_ids"], json!([snap]), "{r}");
    assert_eq!(r["material_shredded"], json!(true), "{r}");
    node.ctl_err(&["key", "get", &snap]);
    assert_eq!(node.describe(&snap)["state"], json!("destroyed"));
}

#[test]
fn destroy_cascade_destroys_every_sharer() {
    let node = Node::keyfile();
    let a = node.create_key(&[]);
    let s = json_str(&node.ctl_json(&["key", "snapshot", &a]), "key_id");
    let c = json_str(
        &node.ctl_json(&["key", "clone", &a, "--mode", "same-key"]),
        "key_id",
    );
    let n = json_str(
        &node.ctl_json(&["key", "clone", &a, "--mode", "new-key"]),
        "key_id",
    );
    let other = node.create_key(&[]);
    let n_bytes = node.key_bytes(&n);
    let other_bytes = node.key_bytes(&other);

    let r = node.ctl_json(&["key", "destroy", &s, "--cascade"]);
    assert_eq!(
        string_set(&r["destroyed_key_ids"]),
        set(&[&a, &s, &c]),
        "{r}"
    );
    assert_eq!(r["material_shredded"], json!(true), "{r}");
    for id in [&a, &s, &c] {
        node.ctl_err(&["key", "get", id]);
        assert_eq!(node.describe(id)["state"], json!("destroyed"));
    }
    // A new-key clone has its own material and an unrelated key is untouched.
    assert_eq!(node.key_bytes(&n), n_bytes);
    assert_eq!(node.key_bytes(&other), other_bytes);
}

#[test]
fn status_reports_the_node() {
    let node = Node::start(NodeOptions {
        node_id: "host-a".into(),
        ..NodeOptions::default()
    });
    let s = node.status();
    assert_eq!(s["node_id"], json!("host-a"));
    assert_eq!(s["sealed"], json!(false));
    assert_eq!(s["unseal_method"], json!("keyfile"));
    assert!(s["kek_id"].is_u64(), "{s}");
    assert_eq!(s["key_count"], json!(0));
    assert!(!json_str(&s, "version").is_empty());
    let audit0 = s["audit_records"].as_u64().unwrap();
    for _ in 0..3 {
        node.create_key(&[]);
    }
    let s = node.status();
    assert_eq!(s["key_count"], json!(3));
    assert!(s["audit_records"].as_u64().unwrap() >= audit0 + 3, "{s}");
}

#[test]
fn kek_rotation_keeps_every_key_readable() {
    let node = Node::keyfile();
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    for len in ["32", "64", "32"] {
        let id = node.create_key(&["--length", len]);
        keys.push((id.clone(), node.key_bytes(&id)));
    }
    let snap = json_str(&node.ctl_json(&["key", "snapshot", &keys[0].0]), "key_id");
    keys.push((snap, keys[0].1.clone()));
    let rk = keys[1].0.clone();
    let old_v = node.describe(&rk)["current_version"].as_u64().unwrap();
    let begun = node.ctl_json(&["key", "rekey", &rk]);
    let new_v = newest_version(&begun);
    assert!(new_v > old_v, "{begun}");
    let rk_new = node.key_bytes_version(&rk, new_v);

    let kek_before = node.status()["kek_id"].as_u64().unwrap();
    let r = node.ctl_json(&["kek", "rotate"]);
    assert_eq!(r["old_kek_id"].as_u64(), Some(kek_before), "{r}");
    let new_kek = r["new_kek_id"].as_u64().unwrap();
    assert!(new_kek > kek_before, "{r}");
    assert!(
        r["records_resealed"].as_u64().unwrap() >= 4,
        "4 live materials at least: {r}"
    );
    assert_eq!(node.status()["kek_id"].as_u64(), Some(new_kek));

    let check = |node: &Node| {
        for (id, bytes) in &keys {
            if *id == rk {
                assert_eq!(&node.key_bytes_version(id, old_v), bytes);
            } else {
                assert_eq!(&node.key_bytes(id), bytes);
            }
        }
        assert_eq!(node.key_bytes_version(&rk, new_v), rk_new);
    };
    check(&node);

    // Rotate again, and across a restart.
    let r2 = node.ctl_json(&["kek", "rotate"]);
    assert!(r2["new_kek_id"].as_u64().unwrap() > new_kek, "{r2}");
    let mut node = node;
    node.restart();
    assert_eq!(node.status()["kek_id"], r2["new_kek_id"]);
    check(&node);
}

#[test]
fn audit_tail_shows_recent_operations() {
    let node = Node::keyfile();
    let a = node.create_key(&[]);
    let a_hex = hex::encode(node.key_bytes(&a));
    let b = node.create_key(&[]);
    node.ctl_json(&["key", "snapshot", &b]);
    node.ctl_json(&["kek", "rotate"]);
    node.ctl_json(&["key", "destroy", &a]);

    let t = node.ctl_json(&["audit", "tail", "-n", "3"]);
    let recs = t["records"].as_array().unwrap();
    assert_eq!(recs.len(), 3, "{t}");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{t}");
    for r in recs {
        for field in ["actor", "action", "outcome", "hash"] {
            assert!(r[field].is_string(), "field {field} missing: {r}");
        }
        assert!(r["time_unix_ms"].as_u64().unwrap() > 0);
        assert!(
            r.get("detail").is_some() && r.get("key_id").is_some(),
            "{r}"
        );
    }
    // The destroy of `a` is among the newest records (a shred rotation and a checkpoint may
    // follow it), after the snapshot of `b`.
    let t = node.ctl_json(&["audit", "tail", "-n", "6"]);
    let recs = t["records"].as_array().unwrap();
    let destroy = recs
        .iter()
        .rposition(|r| json_str(r, "action").to_lowercase().contains("destroy"))
        .unwrap_or_else(|| panic!("no destroy record in {t}"));
    assert_eq!(recs[destroy]["key_id"], json!(a), "{t}");
    assert_eq!(recs[destroy]["outcome"], json!("ok"), "{t}");

    let all = node.ctl_json(&["audit", "tail", "-n", "1000"]);
    let recs = all["records"].as_array().unwrap();
    assert_eq!(
        recs.len() as u64,
        node.status()["audit_records"].as_u64().unwrap(),
        "tail -n large returns every record"
    );
    let text = all.to_string();
    assert!(text.contains(&b), "create of b audited: {all}");
    assert!(
        recs.iter().any(|r| {
            let a = json_str(r, "action").to_lowercase();
            a.contains("kek") || a.contains("rotat")
        }),
        "KEK rotation is audited (invariant 9): {all}"
    );
    assert!(!text.contains(&a_hex), "key material in the audit log");
}

/// Invariant 1: after lots of activity, no encoding of any key's bytes is in any file of the
/// data dir or in the daemon's log, while running and after a clean stop.
#[test]
fn no_plaintext_on_disk_or_in_logs() {
    let mut node = Node::start(NodeOptions {
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..NodeOptions::default()
    });
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let len = if i % 3 == 0 { "64" } else { "32" };
        let id = node.create_key(&["--length", len, "--label", &format!("vol=v{i}")]);
        // Read it in every format, so the daemon has handed out each encoding.
        let raw = node.key_raw(&id);
        node.ctl_json(&["key", "get", &id, "--format", "base64"]);
        secrets.push(node.key_bytes(&id));
        assert_eq!(raw, *secrets.last().unwrap());
        ids.push(id);
    }
    for id in ids.iter().take(5) {
        node.ctl_json(&["key", "snapshot", id]);
    }
    let c = json_str(
        &node.ctl_json(&["key", "clone", &ids[6], "--mode", "new-key"]),
        "key_id",
    );
    secrets.push(node.key_bytes(&c));
    let r = node.ctl_json(&["key", "rekey", &ids[7]]);
    let v = newest_version(&r);
    assert!(v > 1, "{r}");
    secrets.push(node.key_bytes_version(&ids[7], v));
    node.ctl_json(&["key", "rekey", &ids[7], "--commit"]);
    node.ctl_json(&["kek", "rotate"]);
    node.ctl_json(&["key", "list"]);
    node.ctl_json(&["audit", "tail", "-n", "100"]);

    let mut needles = Vec::new();
    let mut owner = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        for n in leak_needles(s) {
            needles.push(n);
            owner.push(i);
        }
    }
    let scan = |node: &Node, when: &str| {
        let mut files = lockbox_tests::walk_files(&node.data_dir());
        assert!(!files.is_empty());
        files.push(node.log_path());
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let hits = find_needles(&bytes, &needles);
            assert!(
                hits.is_empty(),
                "{when}: material of key #{} found in {} ({} hits)",
                owner[hits[0]],
                f.display(),
                hits.len()
            );
        }
    };
    scan(&node, "while running");
    node.stop();
    scan(&node, "after a clean stop");
    assert!(node.log_contents().contains("ready"), "daemon logs `ready`");
}

/// Rewrites a stopped node's key records into the layout lockboxd wrote before material was
/// held inline: each version's sealed material in a shared material record, with a reference
/// record, and metadata without `inline`. The sealed material bytes are the same in both
/// layouts (bound to the material id, not to where they are kept). Returns how many
/// materials moved.
fn rewrite_in_shared_layout(node: &Node) -> usize {
    use lockbox_crypto::{Keyring, RecordKind, SecretBytes, UnsealSecret};
    use lockbox_store::{Batch, Ns};
    let store = node.open_store();
    let keyring = Keyring::decode(&std::fs::read(node.keyring_path()).unwrap()).unwrap();
    let secret = SecretBytes::new(std::fs::read(node.keyfile_path()).unwrap());
    let unsealed = keyring.unseal(UnsealSecret::Keyfile(&secret)).unwrap();
    let mut batch = Batch::new();
    let mut moved = 0;
    for r in store.iter_after(Ns::Keys, None) {
        let (id, sealed) = r.unwrap();
        let plain = unsealed.open(RecordKind::KeyMeta, &id, &sealed).unwrap();
        let mut meta: Value = serde_json::from_slice(plain.expose_secret()).unwrap();
        for v in meta["versions"].as_array_mut().unwrap() {
            let Some(inline) = v.as_object_mut().unwrap().remove("inline") else {
                continue;
            };
            let mid = json_str(v, "material_id");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(inline.as_str().unwrap())
                .unwrap();
            batch.put(Ns::Materials, mid.as_bytes(), &bytes);
            let mut reference = format!("{mid}/").into_bytes();
            reference.extend_from_slice(&id);
            batch.put(Ns::MaterialRefs, &reference, b"");
            moved += 1;
        }
        let json = serde_json::to_vec(&meta).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("inline"));
        let resealed = unsealed
            .current_kek()
            .seal(RecordKind::KeyMeta, &id, &json)
            .unwrap();
        batch.put(Ns::Keys, &id, &resealed);
    }
    store.apply(batch).unwrap();
    store.flush_blocking().unwrap();
    moved
}

fn shared_material_count(node: &Node) -> usize {
    node.open_store()
        .iter_after(lockbox_store::Ns::Materials, None)
        .count()
}

/// Keys stored in the earlier layout (material in shared records) read, snapshot, rekey,
/// destroy and survive a KEK rotation like keys in today's layout: an upgraded lockbox needs
/// no migration step.
#[test]
fn keys_stored_in_the_shared_layout_stay_usable() {
    let mut node = Node::keyfile();
    let a = node.create_key(&[]);
    let b = node.create_key(&[]);
    let c = node.create_key(&["--length", "64"]);
    let v2 = newest_version(&node.ctl_json(&["key", "rekey", &b]));
    let bytes: Vec<Vec<u8>> = [&a, &b, &c].iter().map(|k| node.key_bytes(k)).collect();
    let b2 = node.key_bytes_version(&b, v2);
    node.stop();
    assert_eq!(
        shared_material_count(&node),
        0,
        "new keys hold material inline"
    );
    assert_eq!(rewrite_in_shared_layout(&node), 4);
    assert_eq!(shared_material_count(&node), 4);

    node.spawn_ready();
    for (k, want) in [&a, &b, &c].iter().zip(&bytes) {
        assert_eq!(&node.key_bytes(k), want);
    }
    assert_eq!(node.key_bytes_version(&b, v2), b2);
    assert_eq!(node.describe(&a)["shares_material_with"], json!([]));
    let snap = json_str(&node.ctl_json(&["key", "snapshot", &a]), "key_id");
    assert_eq!(node.key_bytes(&snap), bytes[0]);
    assert_eq!(node.describe(&a)["shares_material_with"], json!([snap]));
    let r = node.ctl_json(&["key", "destroy", &c]);
    assert_eq!(r["material_shredded"], json!(true), "{r}");
    node.ctl_json(&["key", "rekey", &b, "--commit"]);
    assert_eq!(node.key_bytes(&b), b2);
    let r = node.ctl_json(&["kek", "rotate"]);
    assert!(r["records_resealed"].as_u64().unwrap() >= 3, "{r}");
    node.restart();
    assert_eq!(node.key_bytes(&a), bytes[0]);
    assert_eq!(node.key_bytes(&snap), bytes[0]);
    assert_eq!(node.key_bytes_version(&b, 1), bytes[1]);
    assert_eq!(node.key_bytes(&b), b2);
    node.ctl_err(&["key", "get", &c]);
    node.stop();
    assert_eq!(
        shared_material_count(&node),
        3,
        "a's (shared with its snapshot) and b's two versions; c's shredded"
    );
}

/// Runs `lockboxctl --socket S <args>` with stdout sent to `stdout`, and returns its exit code
/// and stderr.
fn ctl_into(node: &Node, stdout: std::process::Stdio, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(&lockbox_tests::binaries().lockboxctl)
        .arg("--socket")
        .arg(node.socket())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_lockboxctl_quietly_and_a_failed_write_is_an_error() {
    let node = Node::keyfile();
    let id = node.create_key(&["--label", "tenant=a"]);
    node.create_key(&["--label", "tenant=a"]);
    for args in [
        vec!["key", "list"],
        vec!["status"],
        vec!["key", "describe", id.as_str()],
        vec!["key", "get", id.as_str(), "--format", "raw"],
        vec!["--json", "key", "list"],
    ] {
        // The reader is gone before lockboxctl writes: `| head -0`, deterministically.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (code, stderr) = ctl_into(&node, writer.into(), &args);
        assert_eq!(
            code,
            Some(141),
            "{args:?} into a closed pipe must exit like a SIGPIPE'd tool; stderr:\n{stderr}"
        );
        assert!(stderr.is_empty(), "{args:?} printed on stderr:\n{stderr}");
    }

    // A write that fails for another reason is a failure the operator must see.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let (code, stderr) = ctl_into(&node, full.into(), &["key", "list"]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to stdout:") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
