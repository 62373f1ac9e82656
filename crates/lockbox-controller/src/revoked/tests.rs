#![allow(clippy::unwrap_used)]

use super::*;

const T: u64 = 1_750_000_000_000;

fn sample() -> RevokedFile {
    let mut f = RevokedFile::new().unwrap();
    f.id = [0xab; 16];
    assert_eq!(
        f.revoke("host-b", "disk stolen (SEC-7)", "uid:1000", T),
        Ok(Outcome::Changed(1))
    );
    assert_eq!(
        f.revoke("host-a", "", "uid:0", T + 1),
        Ok(Outcome::Changed(2))
    );
    assert_eq!(
        f.revoke("host-c", " spaced  out ", "uid:0", T + 2),
        Ok(Outcome::Changed(3))
    );
    assert_eq!(
        f.unrevoke("host-c", "uid:0", T + 3),
        Ok(Outcome::Changed(4))
    );
    f
}

const SAMPLE: &str = "lockbox-controller revoked 1
id abababababababababababababababab
serial 4
revoked host-a 1750000000001 uid:0
revoked host-b 1750000000000 uid:1000 disk stolen (SEC-7)
change 1 1750000000000 uid:1000 revoke host-b disk stolen (SEC-7)
change 2 1750000000001 uid:0 revoke host-a
change 3 1750000000002 uid:0 revoke host-c  spaced  out 
change 4 1750000000003 uid:0 unrevoke host-c
end
";

#[test]
fn encodes_as_documented_and_round_trips() {
    let f = sample();
    assert_eq!(f.encode(), SAMPLE);
    assert_eq!(RevokedFile::parse(SAMPLE).unwrap(), f);
    let empty = RevokedFile {
        id: [0; 16],
        serial: 0,
        revoked: BTreeMap::new(),
        pending: Vec::new(),
    };
    assert_eq!(
        empty.encode(),
        "lockbox-controller revoked 1\nid 00000000000000000000000000000000\nserial 0\nend\n"
    );
    assert_eq!(RevokedFile::parse(&empty.encode()).unwrap(), empty);
}

#[test]
fn revoke_and_unrevoke_are_idempotent_and_validated() {
    let mut f = sample();
    let before = f.clone();
    match f.revoke("host-a", "again", "uid:1", T + 9).unwrap() {
        Outcome::AlreadyRevoked(r) => {
            assert_eq!(r.revoked_unix_ms, T + 1);
            assert_eq!(r.by, "uid:0");
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        f.unrevoke("host-z", "uid:1", T + 9),
        Ok(Outcome::NotRevoked)
    );
    assert_eq!(f, before, "a no-op changes nothing, not even the serial");

    for bad in ["", ".", "..", "a b", "a/b", "é", &"n".repeat(129)] {
        assert!(f.revoke(bad, "", "uid:0", T).is_err(), "{bad:?}");
        assert!(f.unrevoke(bad, "uid:0", T).is_err(), "{bad:?}");
    }
    assert!(f.revoke(&"n".repeat(128), "", "uid:0", T).is_ok());
    for bad in [
        "line\nbreak",
        "tab\there",
        "esc\u{1b}[31m",
        &"r".repeat(1025),
    ] {
        assert!(f.revoke("host-x", bad, "uid:0", T).is_err(), "{bad:?}");
    }
    assert!(f.revoke("host-x", &"r".repeat(1024), "uid:0", T).is_ok());
    assert!(f.revoke("host-y", "", "uid 0", T).is_err());
    assert_eq!(RevokedFile::parse(&f.encode()).unwrap(), f);
}

#[test]
fn damaged_files_are_refused_naming_the_line() {
    let line = |text: &str| RevokedFile::parse(text).unwrap_err().line;
    let swap = |from: &str, to: &str| {
        assert_eq!(SAMPLE.matches(from).count(), 1, "{from}");
        SAMPLE.replace(from, to)
    };
    // Truncated anywhere: refused (a file cut after `end` has no newline).
    for cut in 0..SAMPLE.len() {
        assert!(RevokedFile::parse(&SAMPLE[..cut]).is_err(), "cut at {cut}");
    }
    for (text, at) in [
        (swap("revoked 1\n", "revoked 2\n"), 1),
        (swap("id abab", "id ABAB"), 0),
        (swap("id abababababababababababababababab", "id abab"), 2),
        (swap("serial 4", "serial 04"), 0),
        (swap("serial 4", "serial -4"), 3),
        (swap("serial 4", "serial 3"), 9),
        (
            swap(
                "revoked host-a 1750000000001 uid:0\nrevoked host-b",
                "revoked host-b 1750000000000 uid:1000 x\nrevoked host-a",
            ),
            5,
        ),
        (
            swap(
                "revoked host-a 1750000000001 uid:0",
                "revoked host-a 1750000000001 uid:0 ",
            ),
            0,
        ),
        (
            swap(
                "revoked host-a 1750000000001",
                "revoked host-a  1750000000001",
            ),
            4,
        ),
        (
            swap(
                "revoked host-a 1750000000001",
                "revoked host/a 1750000000001",
            ),
            4,
        ),
        (
            swap("revoked host-a 1750000000001", "revoked host-a soon"),
            4,
        ),
        (swap("uid:1000 disk", "uid:1000 di\rsk"), 5),
        (swap("change 2 ", "change 1 "), 7),
        (
            swap(
                "change 4 1750000000003 uid:0 unrevoke host-c",
                "change 4 1750000000003 uid:0 unrevoke host-c why",
            ),
            9,
        ),
        (swap("unrevoke host-c", "forget host-c"), 9),
        (swap("end\n", "end\nrevoked x 1 uid:0\n"), 11),
        (swap("end\n", ""), 10),
        (swap("end\n", "END\n"), 10),
        (swap("change 2 ", "revoked host-z 1 uid:0\nchange 2 "), 7),
        (swap("change 4 ", "bogus\nchange 4 "), 9),
    ] {
        assert_eq!(line(&text), at, "{text}");
    }
    // Change serials: in order, from 1 up to the file's serial.
    assert_eq!(line(&swap("change 1 ", "change 0 ")), 6);
}

#[test]
fn pending_changes_and_the_audit_mark() {
    let mut f = sample();
    let all = f.pending.clone();
    assert_eq!(f.pending_after(&AuditMark::default()), &all[..]);
    let mark = AuditMark {
        id: f.id,
        serial: 2,
    };
    assert_eq!(f.pending_after(&mark), &all[2..]);
    // A mark for another list (the file was made again) covers none of this one's changes.
    let other = AuditMark {
        id: [1; 16],
        serial: 99,
    };
    assert_eq!(f.pending_after(&other), &all[..]);
    assert!(!f.clone().prune(&other));
    assert!(f.prune(&mark));
    assert_eq!(f.pending, &all[2..]);
    assert!(!f.prune(&mark));
    assert_eq!(AuditMark::decode(&mark.encode()), Some(mark));
    assert_eq!(AuditMark::decode(&[0; 23]), None);

    let events = change_events(&all, "test");
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].action, "revoke");
    assert_eq!(events[0].actor, "uid:1000");
    assert!(
        events[0].detail.starts_with(
            "node host-b revoked at 2025-06-15T15:06:40.000Z reason \"disk stolen (SEC-7)\" (change 1"
        ),
        "{}",
        events[0].detail
    );
    assert_eq!(events[3].action, "unrevoke");
}

#[test]
fn replay_explains_the_pending_changes() {
    let f = sample();
    let before = RevokedSet::new();
    assert_eq!(replay(&before, &f.pending), f.revoked);
    let mut edited = f.revoked.clone();
    edited.remove("host-a");
    assert_ne!(replay(&before, &f.pending), edited);
    let d = unexplained_detail(&f.revoked, &edited);
    assert!(d.contains("gone or changed: [host-a]"), "{d}");
}

// ---------------------------------------------------------------------------------------------
// files, the CLI and the running controller

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("signing.key");
        std::fs::write(&key, [0x42; 32]).unwrap();
        // As `init` writes it: the controller refuses a signing key others may read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Dir { tmp }
    }
    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
    fn key(&self) -> PathBuf {
        self.tmp.path().join("signing.key")
    }
    fn signer(&self) -> Arc<SigningIdentity> {
        Arc::new(crate::load_signing_key(&self.key()).unwrap())
    }
    fn cli(&self, r: &Request) -> CliReport {
        apply_cli(&self.data(), &self.key(), r, "uid:7", T).unwrap()
    }
    fn file(&self) -> RevokedFile {
        load(&self.data().join(FILE_NAME)).unwrap().unwrap().0
    }
    /// (action, detail) of every audit record but the checkpoints.
    fn records(&self) -> Vec<(String, String)> {
        let log = AuditLog::open(&self.data().join("audit")).unwrap();
        log.verify(self.signer().public_key()).unwrap();
        let out = log
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.event.action, e.event.detail))
            .collect();
        log.close().unwrap();
        out
    }
}

fn revoke(node: &str) -> Request {
    Request::Revoke {
        node: node.into(),
        reason: "test".into(),
    }
}

fn unrevoke(node: &str) -> Request {
    Request::Unrevoke { node: node.into() }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn cli_without_a_controller_audits_itself_once() {
    let d = Dir::new();
    let r = d.cli(&revoke("host-a"));
    assert_eq!(r.outcome, Outcome::Changed(1));
    assert_eq!(r.audited, Audited::ByThisCommand);
    // Recorded, so dropped from the file; the revocation stays.
    let f = d.file();
    assert!(f.pending.is_empty());
    assert!(f.revoked.contains_key("host-a"));
    let path = d.data().join(FILE_NAME);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Already revoked: a no-op, nothing recorded.
    let again = d.cli(&revoke("host-a"));
    assert!(matches!(again.outcome, Outcome::AlreadyRevoked(_)));
    assert_eq!(again.audited, Audited::NothingChanged);
    assert_eq!(d.cli(&unrevoke("host-a")).outcome, Outcome::Changed(2));
    assert_eq!(d.cli(&unrevoke("host-a")).outcome, Outcome::NotRevoked);
    let records = d.records();
    let actions: Vec<&str> = records.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["revoke", "unrevoke"]);
    assert!(records[0].1.contains("node host-a revoked"), "{records:?}");

    // A controller starting now finds nothing new to record.
    let log = Arc::new(AuditLog::open(&d.data().join("audit")).unwrap());
    let rev = rt()
        .block_on(Revocations::open(&d.data(), log.clone(), d.signer()))
        .unwrap();
    drop(rev);
    log.close().unwrap();
    drop(log);
    assert_eq!(d.records().len(), 2);

    // Bad requests change nothing.
    for bad in [revoke(""), revoke("a b"), unrevoke("..")] {
        assert!(matches!(
            apply_cli(&d.data(), &d.key(), &bad, "uid:7", T),
            Err(ControllerError::Invalid(_))
        ));
    }
    let bad_reason = Request::Revoke {
        node: "host-b".into(),
        reason: "two\nlines".into(),
    };
    assert!(apply_cli(&d.data(), &d.key(), &bad_reason, "uid:7", T).is_err());
    assert!(d.file().revoked.is_empty());
}

#[test]
fn a_running_controller_records_what_the_cli_could_not() {
    let d = Dir::new();
    let rt = rt();
    std::fs::create_dir_all(d.data()).unwrap();
    let log = Arc::new(AuditLog::open(&d.data().join("audit")).unwrap());
    let rev = rt
        .block_on(Revocations::open(&d.data(), log.clone(), d.signer()))
        .unwrap();
    assert!(rt.block_on(rev.current()).unwrap().is_empty());

    // The controller holds the audit log: the CLI leaves the record to it.
    let r = d.cli(&revoke("host-a"));
    assert!(
        matches!(&r.audited, Audited::Pending(why) if why.contains("running")),
        "{r:?}"
    );
    assert_eq!(d.file().pending.len(), 1);
    let r = d.cli(&revoke("host-b"));
    assert!(matches!(r.audited, Audited::Pending(_)));

    // The next request sees both, records both (once), and tidies the file.
    let set = rt.block_on(rev.current()).unwrap();
    assert_eq!(set.keys().collect::<Vec<_>>(), ["host-a", "host-b"]);
    let set = rt.block_on(rev.current()).unwrap();
    assert_eq!(set.len(), 2);
    assert!(d.file().pending.is_empty());
    let n_records = |log: &AuditLog| {
        log.entries()
            .unwrap()
            .iter()
            .filter(|e| e.event.action == "revoke")
            .count()
    };
    assert_eq!(n_records(&log), 2);

    // A change while the directory is locked (a CLI at work) is recorded; the tidying waits.
    d.cli(&unrevoke("host-b"));
    {
        let _held = DirLock::acquire(&d.data()).unwrap();
        let set = rt.block_on(rev.current()).unwrap();
        assert_eq!(set.keys().collect::<Vec<_>>(), ["host-a"]);
    }
    assert_eq!(
        d.file().pending.len(),
        1,
        "pruned only when the lock is free"
    );
    // ...and is not recorded again when the file changes next.
    d.cli(&revoke("host-c"));
    rt.block_on(rev.current()).unwrap();
    let entries = log.entries().unwrap();
    let count = |a: &str| entries.iter().filter(|e| e.event.action == a).count();
    assert_eq!((count("revoke"), count("unrevoke")), (3, 1));
    assert_eq!(count("revocations-changed"), 0);

    // A change no `change` line explains is recorded as such.
    let path = d.data().join(FILE_NAME);
    std::fs::remove_file(&path).unwrap();
    assert!(rt.block_on(rev.current()).unwrap().is_empty());
    let entries = log.entries().unwrap();
    let odd: Vec<_> = entries
        .iter()
        .filter(|e| e.event.action == "revocations-changed")
        .collect();
    assert_eq!(odd.len(), 1);
    assert_eq!(odd[0].event.outcome, "unexplained");
    assert!(
        odd[0]
            .event
            .detail
            .contains("gone or changed: [host-a host-c]"),
        "{}",
        odd[0].event.detail
    );

    // A new file (new id): its changes are recorded although their serials restart.
    let r = d.cli(&revoke("host-d"));
    assert_eq!(r.outcome, Outcome::Changed(1));
    rt.block_on(rev.current()).unwrap();
    assert_eq!(n_records(&log), 4);

    // Damaged while running: refused by name until repaired, the old list is not used.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("end\n", "")).unwrap();
    let e = rt.block_on(rev.current()).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("damaged"),
        "{e}"
    );
    assert!(rt.block_on(rev.current()).is_err());
    std::fs::write(&path, &good).unwrap();
    assert_eq!(rt.block_on(rev.current()).unwrap().len(), 1);

    drop(rev);
    log.verify(d.signer().public_key()).unwrap();
    log.close().unwrap();
}

#[test]
fn a_controller_starting_records_changes_made_while_it_was_down() {
    let d = Dir::new();
    // A change whose record the CLI could not write (say the audit log was busy).
    std::fs::create_dir_all(d.data()).unwrap();
    let mut f = RevokedFile::new().unwrap();
    f.revoke("host-a", "why", "uid:7", T).unwrap();
    store(&d.data().join(FILE_NAME), &f).unwrap();

    let rt = rt();
    for _ in 0..2 {
        let log = Arc::new(AuditLog::open(&d.data().join("audit")).unwrap());
        let rev = rt
            .block_on(Revocations::open(&d.data(), log.clone(), d.signer()))
            .unwrap();
        assert!(rt.block_on(rev.current()).unwrap().contains_key("host-a"));
        drop(rev);
        log.close().unwrap();
    }
    let revokes = d
        .records()
        .into_iter()
        .filter(|(a, _)| a == "revoke")
        .count();
    assert_eq!(revokes, 1, "recorded at the first start only");
    assert!(d.file().pending.is_empty());

    // A damaged file stops the start, naming the file.
    let path = d.data().join(FILE_NAME);
    std::fs::write(&path, "lockbox-controller revoked 1\nid zz\n").unwrap();
    let log = Arc::new(AuditLog::open(&d.data().join("audit")).unwrap());
    let e = rt
        .block_on(Revocations::open(&d.data(), log.clone(), d.signer()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("line 2"),
        "{e}"
    );
    log.close().unwrap();
}

#[test]
fn audit_log_in_use_is_probed_without_opening_it() {
    let d = Dir::new();
    let audit = d.data().join("audit");
    assert!(!audit_log_in_use(&audit).unwrap());
    let log = AuditLog::open(&audit).unwrap();
    assert!(audit_log_in_use(&audit).unwrap());
    log.close().unwrap();
    drop(log);
    assert!(!audit_log_in_use(&audit).unwrap());
    // The probe holds nothing afterwards.
    let log = AuditLog::open(&audit).unwrap();
    log.close().unwrap();
}

#[test]
fn store_does_not_write_through_a_symlink_planted_at_its_temporary_name() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(format!(".{FILE_NAME}.tmp"))).unwrap();
    let path = dir.path().join(FILE_NAME);
    let f = sample();
    store(&path, &f).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(load(&path).unwrap().unwrap().0, f);
    // A leftover temporary file of a crash is replaced, too.
    std::fs::write(dir.path().join(format!(".{FILE_NAME}.tmp")), "half a list").unwrap();
    store(&path, &f).unwrap();
    assert_eq!(load(&path).unwrap().unwrap().0, f);
}

/// Only a regular file is read as the list: a symlink there (to a list, or to a device) and a
/// FIFO (which would block the controller's every request) are refused by name, at once.
#[test]
fn load_reads_only_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("elsewhere");
    store(&real, &sample()).unwrap();
    let path = dir.path().join(FILE_NAME);
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains(FILE_NAME), "{err}");
    std::fs::remove_file(&path).unwrap();

    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let started = std::time::Instant::now();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
