//! Grant verification throughput (DESIGN.md §11: `verify_grant` runs at both ends of every
//! transfer). No criterion: a plain timed loop over the real function.
//!
//! `cargo bench -p lockbox-crypto --bench grant_verify` (optionally `-- N` for N iterations).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use lockbox_crypto::*;
use lockbox_proto::v1::{GrantBody, GrantOp, SignedGrant};

const NOW: u64 = 1_750_000_000_000;

fn controller(byte: u8) -> SigningIdentity {
    SigningIdentity::from_secret(&SecretBytes::new(vec![byte; 32])).unwrap()
}

/// A grant for one key signed by the first `signers` of three controllers, all trusted.
fn grant(signers: usize) -> (SignedGrant, TrustedControllers) {
    let body = GrantBody {
        grant_id: vec![7; 16],
        key_ids: vec!["5f0c2a3e-8d7b-4c1a-9e2f-0a1b2c3d4e5f".into()],
        source_node: "node-a".into(),
        dest_node: "node-b".into(),
        op: GrantOp::Copy as i32,
        not_before_unix_ms: NOW - 1_000,
        expires_unix_ms: NOW + 300_000,
        requested_by: "spiffe://example.org/orchestrator/cinder".into(),
        issuer_key_id: "ctl-1".into(),
        reason: "volume vol-1 migration".into(),
        trust_domain: "example.org".into(),
    };
    let bytes = encode_grant_body(&body).unwrap();
    let mut trusted = TrustedControllers::new();
    let mut signatures = Vec::new();
    for i in 0..3u8 {
        let id = controller(0x10 + i);
        let key_id = format!("ctl-{}", i + 1);
        trusted.insert(key_id.clone(), id.public_key());
        if usize::from(i) < signers {
            signatures.push(sign_grant_body(&id, &key_id, &bytes));
        }
    }
    (
        SignedGrant {
            body: bytes,
            signatures,
        },
        trusted,
    )
}

fn run(label: &str, signers: usize, threshold: usize, n: u32) {
    let (signed, trusted) = grant(signers);
    let keys = vec!["5f0c2a3e-8d7b-4c1a-9e2f-0a1b2c3d4e5f".to_string()];
    let ctx = GrantContext {
        now_unix_ms: NOW,
        skew_ms: 30_000,
        threshold,
        self_node: "node-a",
        peer_node: Some("node-b"),
        side: GrantSide::Source,
        key_ids: Some(&keys),
    };
    let not_consumed = |_: &[u8; 16]| false;
    for _ in 0..n / 10 {
        verify_grant(black_box(&signed), &trusted, &ctx, &not_consumed).unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        black_box(verify_grant(black_box(&signed), &trusted, &ctx, &not_consumed).unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<28} {n} verifications in {:.3} s: {:.0} verifications/s ({:.1} µs each)",
        secs,
        f64::from(n) / secs,
        secs * 1e6 / f64::from(n),
    );
}

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    run("grant 1 signature (1-of-1)", 1, 1, n);
    run("grant 2 signatures (2-of-3)", 2, 2, n);
}
