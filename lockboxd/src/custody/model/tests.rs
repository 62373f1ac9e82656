#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn material_ids_are_hex_unique_and_increase_within_a_process() {
    let ids: Vec<String> = (0..10_000).map(|_| new_material_id().unwrap()).collect();
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
    }
    // Strictly increasing as text (what sled orders by), so also all distinct.
    for pair in ids.windows(2) {
        assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
    }
    // The time-ordered half starts with the clock (ms << 16), the rest is random.
    let prefix = u64::from_str_radix(&ids[0][..16], 16).unwrap();
    assert!((prefix >> 16).abs_diff(now_ms()) < 60_000, "{}", ids[0]);
    assert_ne!(ids[0][16..], ids[1][16..]);
}

/// What every earlier release wrote: the state as `destroyed`/`replica`/`moved_to`.
fn old_record(destroyed: bool, replica: bool, moved_to: &str, policy: &str) -> String {
    format!(
        r#"{{"key_id":"k","destroyed":{destroyed},"length":32,"labels":{{"vol":"a"}},
        "created_unix_ms":7,"origin":{{"kind":"snapshot","from_key_id":"s","from_node":"",
        "grant_id":""}},"clone_policy":{policy},"current_version":1,"versions":[
        {{"version":1,"state":"active","material_id":"m","created_unix_ms":7}}],
        "replica":{replica},"moved_to":{moved_to}}}"#
    )
}

#[test]
fn key_records_of_earlier_releases_read_as_states_and_write_back_the_same_shape() {
    let moved = r#"{"node":"b","grant_id":"g"}"#;
    let cases = [
        (false, false, "null", KeyState::Active),
        (false, true, "null", KeyState::Replica),
        (true, false, "null", KeyState::Destroyed),
        (true, true, "null", KeyState::Destroyed),
        (
            true,
            false,
            moved,
            KeyState::Moved(MovedTo {
                node: "b".into(),
                grant_id: "g".into(),
            }),
        ),
    ];
    for (destroyed, replica, moved_to, want) in cases {
        let json = old_record(destroyed, replica, moved_to, r#""new-key""#);
        let meta: KeyMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(meta.state, want, "{json}");
        assert_eq!(meta.clone_policy, Some(ClonePolicy::NewKey));
        assert_eq!(meta.origin.kind, OriginKind::Snapshot);
        // Written back, it reads as the same thing, and in the fields an older release
        // reads (a downgrade keeps working).
        let written = serde_json::to_value(&meta).unwrap();
        assert_eq!(written["destroyed"], serde_json::json!(want.is_tombstone()));
        let again: KeyMeta = serde_json::from_value(written).unwrap();
        assert_eq!(again.state, want);
    }
    let none: KeyMeta = serde_json::from_str(&old_record(false, false, "null", "null")).unwrap();
    assert_eq!(none.clone_policy, None);
}

#[test]
fn a_key_record_with_an_unknown_name_is_refused_not_defaulted() {
    let bad_policy = old_record(false, false, "null", r#""anything-goes""#);
    let e = serde_json::from_str::<KeyMeta>(&bad_policy).unwrap_err();
    assert!(e.to_string().contains("anything-goes"), "{e}");
    let bad_origin = old_record(false, false, "null", "null").replace("snapshot", "forged");
    assert!(serde_json::from_str::<KeyMeta>(&bad_origin).is_err());
    let bad_state = old_record(false, false, "null", "null").replace("active", "gone");
    assert!(serde_json::from_str::<KeyMeta>(&bad_state).is_err());
}

#[test]
fn origin_kinds_parse_exactly_what_they_write() {
    for k in OriginKind::ALL {
        assert_eq!(OriginKind::parse(k.as_str()), Some(k));
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("{:?}", k.as_str()));
    }
    assert_eq!(OriginKind::parse("Created"), None);
    assert_eq!(OriginKind::parse(""), None);
}

#[test]
fn quote_cuts_long_hostile_text_and_escapes_it() {
    assert_eq!(quote("abc"), "\"abc\"");
    assert_eq!(quote("a\nb"), "\"a\\nb\"");
    let long = "x".repeat(20 << 20);
    let q = quote(&long);
    assert!(q.len() < 120, "{q}");
    assert!(
        q.ends_with(&format!("({} more bytes)", (20 << 20) - QUOTE_MAX)),
        "{q}"
    );
    // Cut on a character boundary.
    let wide = "é".repeat(100);
    assert!(quote(&wide).starts_with(&format!("{:?}", "é".repeat(QUOTE_MAX))));
}

#[test]
fn versions_read_where_their_material_is_and_refuse_contradictions() {
    let v = |json: &str| serde_json::from_str::<VersionMeta>(json);
    let shared =
        v(r#"{"version":1,"state":"active","material_id":"m","created_unix_ms":1}"#).unwrap();
    assert_eq!(shared.material, Material::Shared { id: "m".into() });
    let inline = v(
        r#"{"version":2,"state":"retired","material_id":"n","created_unix_ms":1,"inline":"AQI="}"#,
    )
    .unwrap();
    assert_eq!(
        inline.material,
        Material::Inline {
            id: "n".into(),
            sealed: vec![1, 2]
        }
    );
    let gone =
        v(r#"{"version":3,"state":"destroyed","material_id":"","created_unix_ms":1}"#).unwrap();
    assert_eq!(gone.material, Material::Shredded);
    // Written back in the same shape.
    for meta in [shared, inline, gone] {
        let again: VersionMeta =
            serde_json::from_str(&serde_json::to_string(&meta).unwrap()).unwrap();
        assert_eq!(again.material, meta.material);
    }
    // A destroyed version still naming material, or a live one naming none, is corrupt.
    for bad in [
        r#"{"version":1,"state":"destroyed","material_id":"m","created_unix_ms":1}"#,
        r#"{"version":1,"state":"destroyed","material_id":"","created_unix_ms":1,"inline":"AQI="}"#,
        r#"{"version":1,"state":"active","material_id":"","created_unix_ms":1}"#,
    ] {
        assert!(v(bad).is_err(), "{bad}");
    }
}
