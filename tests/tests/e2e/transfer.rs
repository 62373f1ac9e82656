//! Peer-to-peer transfers between real lockboxd processes over real mTLS on 127.0.0.1, each
//! authorized by a grant from a real controller: COPY, MOVE, REPLICATE + promote, idempotent
//! retries, and refusals that name their check and change nothing at either end.

#![allow(clippy::unwrap_used)]

use lockbox_tests::cluster::Cluster;

fn transfer(node: &lockbox_tests::Node, grant: &std::path::Path) -> serde_json::Value {
    node.ctl_json(&["transfer", grant.to_str().unwrap()])
}

#[test]
fn copy_move_and_replicate_end_to_end() {
    let c = Cluster::start(&["host-a", "host-b", "host-c"], "");
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);

    // COPY: both ends hold the same bytes; the source keeps its key.
    let k1 = a.create_key(&["--label", "volume=vol1", "--length", "64"]);
    let g = c.grant(&[&k1], "host-a", "host-b", "copy", "10m");
    let r = transfer(a, &g);
    assert_eq!(r["dest_node"], "host-b");
    assert_eq!(r["key_ids"][0], k1.as_str());
    assert_eq!(r["fresh"], true);
    assert_eq!(b.key_bytes(&k1), a.key_bytes(&k1));
    assert_eq!(a.describe(&k1)["state"], "active");
    let d = b.describe(&k1);
    assert_eq!(d["origin"]["kind"], "received");
    assert_eq!(d["origin"]["from_node"], "host-a");
    assert_eq!(d["labels"]["volume"], "vol1");
    assert_eq!(d["length"], 64);

    // The same grant again: the same receipt, nothing new anywhere.
    let again = transfer(a, &g);
    assert_eq!(again["fresh"], false);
    assert_eq!(again["grant_id"], r["grant_id"]);
    assert_eq!(a.status()["key_count"], 1);
    assert_eq!(b.status()["key_count"], 1);

    // MOVE: the key lands at b; a keeps a tombstone naming b and the grant.
    let k2 = a.create_key(&[]);
    let bytes = a.key_bytes(&k2);
    let g = c.grant(&[&k2], "host-a", "host-b", "move", "10m");
    let r = transfer(a, &g);
    assert_eq!(b.key_bytes(&k2), bytes);
    let t = a.describe(&k2);
    assert_eq!(t["state"], "moved", "{t}");
    assert_eq!(t["moved_to_node"], "host-b");
    assert_eq!(t["moved_by_grant"], r["grant_id"]);
    let err = a.ctl_err(&["key", "get", &k2]);
    assert!(err.contains("moved to host-b"), "{err}");

    // REPLICATE: c holds a replica it will not release until promoted.
    let k3 = a.create_key(&[]);
    let g = c.grant(&[&k3], "host-a", "host-c", "replicate", "10m");
    transfer(a, &g);
    assert_eq!(cc.describe(&k3)["state"], "replica");
    let err = cc.ctl_err(&["key", "get", &k3]);
    assert!(err.contains("replica"), "{err}");
    let p = cc.ctl_json(&["key", "promote", &k3]);
    assert_eq!(p["state"], "active");
    assert_eq!(cc.key_bytes(&k3), a.key_bytes(&k3));
    assert_eq!(a.describe(&k3)["state"], "active");

    // Both ends audited the transfers, and their chains verify.
    for n in [a, b, cc] {
        let v = n.ctl_json(&["audit", "verify"]);
        assert_eq!(v["ok"], true, "{v}");
    }
    let tail = b.ctl_json(&["audit", "tail", "-n", "50"]);
    assert!(
        tail["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "transfer-receive"),
        "{tail}"
    );
}

#[test]
fn refusals_name_the_check_and_change_nothing() {
    let c = Cluster::start(&["host-a", "host-b", "host-c"], "clock_skew = \"1s\"\n");
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let k = a.create_key(&[]);

    // A grant presented by a lockbox that is not its source.
    let g = c.grant(&[&k], "host-a", "host-b", "copy", "10m");
    let err = cc.ctl_err(&["transfer", g.to_str().unwrap()]);
    assert!(err.contains("wrong source"), "{err}");

    // A grant for a key the source does not hold.
    let other = "0b6a3f1e-8f7c-4c2e-9a51-2d7b1c4e5f60";
    let g2 = c.grant(&[other], "host-a", "host-b", "copy", "10m");
    let err = a.ctl_err(&["transfer", g2.to_str().unwrap()]);
    assert!(err.contains("unknown key"), "{err}");

    // An expired grant.
    let g3 = c.grant(&[&k], "host-a", "host-b", "copy", "1s");
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let err = a.ctl_err(&["transfer", g3.to_str().unwrap()]);
    assert!(err.contains("expired"), "{err}");

    // A destination whose TLS identity is not the node the grant names.
    let g4 = c.grant(&[&k], "host-a", "host-nowhere", "copy", "10m");
    let err = a.ctl_err(&["transfer", g4.to_str().unwrap()]);
    assert!(
        err.contains("destination unreachable") || err.contains("no address"),
        "{err}"
    );

    // Nothing changed anywhere: b never received k, and a still has it active.
    assert_eq!(b.status()["key_count"], 0);
    assert!(b.ctl_err(&["key", "describe", &k]).contains("unknown key"));
    assert_eq!(a.describe(&k)["state"], "active");

    // The original grant still works afterwards (no failure consumed it).
    let r = a.ctl_json(&["transfer", g.to_str().unwrap()]);
    assert_eq!(r["fresh"], true);
    assert_eq!(b.key_bytes(&k), a.key_bytes(&k));
}

#[test]
fn a_sealed_destination_fails_cleanly_and_the_source_keeps_its_key() {
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let k = a.create_key(&[]);
    let bytes = a.key_bytes(&k);
    let g = c.grant(&[&k], "host-a", "host-b", "move", "10m");
    b.ctl_json(&["seal"]);
    let err = a.ctl_err(&["transfer", g.to_str().unwrap()]);
    assert!(err.contains("sealed"), "{err}");
    assert_eq!(a.describe(&k)["state"], "active");
    assert_eq!(a.key_bytes(&k), bytes);
    // Unsealed, the same grant completes the move exactly once.
    b.ctl_json(&["unseal"]);
    transfer(a, &g);
    assert_eq!(b.key_bytes(&k), bytes);
    assert_eq!(a.describe(&k)["state"], "moved");
}

#[test]
fn evacuation_streams_many_keys_in_batches() {
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let mut keys = Vec::new();
    for _ in 0..1200 {
        keys.push(a.create_key(&[]));
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&refs, "host-a", "host-b", "move", "10m");
    let r = transfer(a, &g);
    assert_eq!(r["key_ids"].as_array().unwrap().len(), 1200);
    assert_eq!(b.status()["key_count"], 1200);
    assert_eq!(a.status()["key_count"], 0);
    for k in keys.iter().step_by(299) {
        assert_eq!(b.key_bytes(k).len(), 32);
        assert_eq!(a.describe(k)["state"], "moved");
    }
}

/// Past a few thousand keys both ends split the per-key work (reading, opening, sealing,
/// reference checks) over their cores: every key still arrives with its own bytes, each
/// shared material is kept or shredded by its own references, and a refusal still changes
/// nothing.
#[test]
fn a_large_evacuation_moves_every_key_with_its_own_bytes() {
    const N: usize = 5000;
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let mut keys = a.create_keys_bulk(N);
    // A snapshot that stays behind keeps its material alive at the source.
    let shared = keys[7].clone();
    let stays = a.ctl_json(&["key", "snapshot", &shared])["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sample: Vec<(String, Vec<u8>)> = keys
        .iter()
        .step_by(97)
        .map(|k| (k.clone(), a.key_bytes(k)))
        .collect();
    let stays_bytes = a.key_bytes(&stays);

    // One unknown key in the grant: refused at the source, nothing moves.
    let bogus = "00000000-0000-4000-8000-000000000000".to_string();
    let mut with_bogus: Vec<&str> = keys.iter().map(String::as_str).collect();
    with_bogus.push(&bogus);
    let g = c.grant(&with_bogus, "host-a", "host-b", "move", "10m");
    let err = a.ctl_err(&["transfer", g.to_str().unwrap()]);
    assert!(err.contains(&bogus), "{err}");
    assert_eq!(a.status()["key_count"], N as u64 + 1);
    assert_eq!(b.status()["key_count"], 0);

    keys.sort();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&refs, "host-a", "host-b", "move", "10m");
    let r = transfer(a, &g);
    assert_eq!(r["key_ids"].as_array().unwrap().len(), N);
    assert_eq!(b.status()["key_count"], N as u64);
    assert_eq!(a.status()["key_count"], 1, "only the snapshot stays");
    for (k, bytes) in &sample {
        assert_eq!(&b.key_bytes(k), bytes, "key {k}");
        assert_eq!(a.describe(k)["state"], "moved");
    }
    assert_eq!(
        a.key_bytes(&stays),
        stays_bytes,
        "a shared material was shredded"
    );
    assert_eq!(b.key_bytes(&shared), stays_bytes);
    for n in [a, b] {
        assert_eq!(n.ctl_json(&["audit", "verify"])["ok"], true);
    }
}

#[test]
fn a_key_can_move_back_and_a_replica_can_be_refreshed() {
    let c = Cluster::start(&["host-a", "host-b", "host-c"], "");
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let k = a.create_key(&[]);
    let bytes = a.key_bytes(&k);
    // a -> b -> a: the key comes home over its own tombstone.
    transfer(a, &c.grant(&[&k], "host-a", "host-b", "move", "10m"));
    transfer(b, &c.grant(&[&k], "host-b", "host-a", "move", "10m"));
    assert_eq!(a.describe(&k)["state"], "active");
    assert_eq!(a.key_bytes(&k), bytes);
    assert_eq!(b.describe(&k)["state"], "moved");
    assert_eq!(a.status()["key_count"], 1);
    assert_eq!(b.status()["key_count"], 0);
    // A replica goes stale after a rekey; a new REPLICATE refreshes it in place.
    transfer(a, &c.grant(&[&k], "host-a", "host-c", "replicate", "10m"));
    a.ctl_json(&["key", "rekey", &k]);
    a.ctl_json(&["key", "rekey", &k, "--commit"]);
    let fresh = a.key_bytes(&k);
    assert_ne!(fresh, bytes);
    transfer(a, &c.grant(&[&k], "host-a", "host-c", "replicate", "10m"));
    assert_eq!(cc.describe(&k)["state"], "replica");
    assert_eq!(cc.status()["key_count"], 1);
    cc.ctl_json(&["key", "promote", &k]);
    assert_eq!(cc.key_bytes(&k), fresh);
    // But a live key is never overwritten by a COPY.
    let g = c.grant(&[&k], "host-a", "host-c", "copy", "10m");
    let err = a.ctl_err(&["transfer", g.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(cc.key_bytes(&k), fresh);
}

#[test]
fn sighup_does_not_stop_a_lockbox_without_a_peer_api() {
    let node = lockbox_tests::Node::keyfile();
    let pid = node.pid().unwrap();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(node.is_running(), "lockboxd died on SIGHUP");
    assert_eq!(node.status()["sealed"], false);
}

#[test]
fn expired_grant_records_are_swept_and_a_replay_is_still_refused() {
    let mut c = Cluster::start(&["host-a", "host-b"], "clock_skew = \"1s\"\n");
    let k = c.nodes[0].create_key(&[]);
    let g = c.grant(&[&k], "host-a", "host-b", "copy", "2s");
    assert_eq!(transfer(&c.nodes[0], &g)["fresh"], true);
    // Within the window a retry is answered from the grant records.
    assert_eq!(transfer(&c.nodes[0], &g)["fresh"], false);

    // Past expiry + skew, the next sweep (one runs at start-up) deletes both ends' records.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    for name in ["host-a", "host-b"] {
        c.node_mut(name).restart();
        lockbox_tests::cluster::wait_attested(c.node(name));
    }
    for name in ["host-a", "host-b"] {
        let node = c.node(name);
        let mut swept = false;
        for _ in 0..50 {
            let tail = node.ctl_json(&["audit", "tail", "-n", "20"]);
            swept = tail.to_string().contains("prune-grants");
            if swept {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(swept, "{name} did not audit a grant sweep");
        assert!(node.ctl(&["audit", "verify"]).status.success());
    }
    // The grant is refused as expired, not run again, and nothing changed.
    let err = c.nodes[0].ctl_err(&["transfer", g.to_str().unwrap()]);
    assert!(err.contains("expired"), "{err}");
    assert_eq!(c.nodes[1].status()["key_count"], 1);
    assert_eq!(c.nodes[1].key_bytes(&k), c.nodes[0].key_bytes(&k));
}

/// Idle TCP connections that never start a TLS handshake (2,500 at a time, from one address,
/// reopened as soon as they are closed) must not keep authenticated peers out: handshakes are
/// bounded per client address and in time, so a transfer from another address completes
/// during the flood. (It once failed with the destination "unreachable" after 10 s.)
#[test]
fn a_transfer_completes_during_a_flood_of_idle_connections() {
    // This process holds the flood's sockets: raise its own descriptor limit (root).
    let pid = std::process::id().to_string();
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=16384:16384"])
        .status()
        .unwrap();
    assert!(raised.success(), "prlimit failed");
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let url = c.peer_url("host-b");
    let target: std::net::SocketAddr = url.trim_start_matches("https://").parse().unwrap();
    let key = a.create_key(&[]);
    let g = c.grant(&[&key], "host-a", "host-b", "copy", "10m");

    // The flood comes from 127.0.0.2 (another host, as far as host-b can tell): 2,500
    // connections that send nothing, each reopened (after a short pause) when host-b closes
    // it, until the transfer is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood = {
        let (stop, open) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..2_500 {
                    let (stop, open) = (stop.clone(), open.clone());
                    tasks.push(tokio::spawn(async move {
                        use std::sync::atomic::Ordering::SeqCst;
                        use tokio::io::AsyncReadExt;
                        while !stop.load(SeqCst) {
                            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                                return;
                            };
                            if socket.bind("127.0.0.2:0".parse().unwrap()).is_err() {
                                return;
                            }
                            let connect = tokio::time::timeout(
                                std::time::Duration::from_secs(2),
                                socket.connect(target),
                            );
                            if let Ok(Ok(mut conn)) = connect.await {
                                open.fetch_add(1, SeqCst);
                                // Silent until host-b closes it (or the test ends).
                                let mut buf = [0u8; 64];
                                let closed = conn.read(&mut buf);
                                let _ = tokio::time::timeout(
                                    std::time::Duration::from_secs(30),
                                    closed,
                                )
                                .await;
                                open.fetch_sub(1, SeqCst);
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    // Let the flood fill every queue host-b has.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let during = open.load(std::sync::atomic::Ordering::SeqCst);

    let started = std::time::Instant::now();
    let out = a.ctl(&["transfer", g.to_str().unwrap()]);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        out.status.success(),
        "the transfer failed during the flood ({during} flood connections open): {}",
        lockbox_tests::describe_output(&out)
    );
    flood.join().unwrap();
    assert_eq!(b.key_bytes(&key), a.key_bytes(&key));
    eprintln!("transfer during a flood ({during} flood connections open): {took:?}");
    // Not a benchmark: whether the peer waited behind the flood. A handshake slot the flood
    // holds frees only when its 10 s handshake timeout passes, so a transfer that queued
    // behind it took 7 s here (and failed at 10 s in the review); one that did not takes
    // milliseconds (16 ms here).
    assert!(
        took < std::time::Duration::from_secs(5),
        "the transfer waited behind the flood: {took:?}"
    );
}

/// Keys with many long labels travel in batches cut by size as well as by count: 140 keys with
/// 64 labels of 1 KiB each (about 9.3 MB in all) exceed one message of the destination's limit
/// (8 MiB), and still arrive, labels intact.
#[test]
fn keys_with_many_labels_travel_in_batches_cut_by_size() {
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let value = "v".repeat(1024);
    let labels: Vec<String> = (0..64).map(|i| format!("label-{i}={value}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    let keys: Vec<String> = (0..140).map(|_| a.create_key(&args)).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = c.grant(&refs, "host-a", "host-b", "copy", "10m");
    let r = transfer(a, &g);
    assert_eq!(r["key_ids"].as_array().unwrap().len(), 140, "{r}");
    for k in keys.iter().step_by(17) {
        let d = b.ctl_json(&["key", "describe", k]);
        assert_eq!(d["labels"]["label-63"], value.as_str(), "{k}");
        assert_eq!(b.key_bytes(k), a.key_bytes(k));
    }
}
