#![allow(clippy::unwrap_used)]
use super::*;

fn parse(s: &str) -> Result<(Config, Policy), ConfigError> {
    Config::parse(s, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let (c, p) = parse("version = 1\nnode_id = \"host-a\"\n").unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/lockbox"));
    assert_eq!(p.clone_policy, ClonePolicy::SameKey);
    assert_eq!(p.shred_rotation, ShredRotation::Immediate);
}

#[test]
fn errors_name_the_field() {
    let e = parse("version = 1\nnode_id = \"a\"\nbogus = 1\n").unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = parse("version = 1\n").unwrap_err();
    assert!(e.to_string().contains("node_id"), "{e}");
    let e = parse("version = 1\nnode_id = \"a\"\n[keys]\nclone_policy = \"maybe\"\n").unwrap_err();
    assert!(e.to_string().contains("keys.clone_policy"), "{e}");
    let e = parse("version = 1\nnode_id = \"a\"\n[keys]\nshred_rotation = 0\n").unwrap_err();
    assert!(e.to_string().contains("shred_rotation"), "{e}");
    let e = parse("version = 2\nnode_id = \"a\"\n").unwrap_err();
    assert!(e.to_string().contains("version"), "{e}");
}

#[test]
fn hardening_table_is_optional_and_checked() {
    let (_, p) = parse("version = 1\nnode_id = \"a\"\n").unwrap();
    assert_eq!(p.mlock, MlockMode::Auto);
    for (v, want) in [
        ("auto", MlockMode::Auto),
        ("required", MlockMode::Required),
        ("off", MlockMode::Off),
    ] {
        let (_, p) = parse(&format!(
            "version = 1\nnode_id = \"a\"\n[hardening]\nmlock = \"{v}\"\n"
        ))
        .unwrap();
        assert_eq!(p.mlock, want);
    }
    let e = parse("version = 1\nnode_id = \"a\"\n[hardening]\nmlock = \"always\"\n").unwrap_err();
    assert!(e.to_string().contains("hardening.mlock"), "{e}");
    let e = parse("version = 1\nnode_id = \"a\"\n[hardening]\nmlock = true\n").unwrap_err();
    assert!(e.to_string().contains("hardening.mlock"), "{e}");
    let e = parse("version = 1\nnode_id = \"a\"\n[hardening]\nswap = \"off\"\n").unwrap_err();
    assert!(e.to_string().contains("swap"), "{e}");
}

#[test]
fn batched_rotation_parses() {
    let (_, p) = parse("version = 1\nnode_id = \"a\"\n[keys]\nshred_rotation = 10\n").unwrap();
    assert_eq!(p.shred_rotation, ShredRotation::Every(10));
}

fn public_key() -> String {
    let id = lockbox_crypto::SigningIdentity::generate().unwrap();
    lockbox_crypto::encode_public_key(&id.public_key())
}

thread_local! {
    static KEY_A: String = public_key();
}

/// Two `[[controllers]]` blocks for the same public key (or the same key id).
fn two_controllers(key_b: &str, id_b: &str, extra: &str) -> String {
    let key = KEY_A.with(|k| k.clone());
    let key_b = if key_b.is_empty() {
        key.clone()
    } else {
        key_b.to_string()
    };
    format!(
        "version = 1\nnode_id = \"a\"\ngrant_threshold = 2\n{extra}\n[tls]\ncert = \"c\"\n\
         key = \"k\"\nca = \"ca\"\n[[controllers]]\nkey_id = \"ctl-1\"\n\
         public_key = \"{key}\"\nurl = \"https://c1:7400\"\n[[controllers]]\n\
         key_id = \"{id_b}\"\npublic_key = \"{key_b}\"\nurl = \"https://c2:7400\"\n"
    )
}

#[test]
fn configs_that_weaken_checks_are_refused_by_field() {
    // One controller under two key ids with a threshold of two: one signer would do.
    let e = parse(&two_controllers("", "ctl-2", "")).unwrap_err();
    assert!(e.to_string().contains("controllers.public_key"), "{e}");
    assert!(e.to_string().contains("same public key as ctl-1"), "{e}");
    let e = parse(&two_controllers("", "ctl-1", "")).unwrap_err();
    assert!(e.to_string().contains("controllers"), "{e}");
    // Two distinct controllers are fine.
    let other = public_key();
    parse(&two_controllers(&other, "ctl-2", "")).unwrap();
    // A clock skew that keeps expired grants valid for years.
    for skew in ["10years", "11m", "1day"] {
        let e = parse(&two_controllers(
            &other,
            "ctl-2",
            &format!("clock_skew = \"{skew}\""),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("clock_skew"), "{skew}: {e}");
    }
    parse(&two_controllers(&other, "ctl-2", "clock_skew = \"10m\"")).unwrap();
}
