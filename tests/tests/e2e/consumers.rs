//! Real consumers of lockbox keys (issue 5): qemu's native LUKS in qcow2 images (`qemu-img`,
//! `qemu-io`) and cryptsetup LUKS2 on image files, each keyed by a real lockboxd, with the key
//! MOVEd to another lockbox under a controller-signed grant and the volume opened there.
//!
//! No mocks: every image is made and read by the real tools. A missing tool is a failure that
//! says how to install it (`.ci/run` installs them), never a silent skip.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lockbox_tests::cluster::Cluster;
use lockbox_tests::{Node, describe_output, json_str, run_with_timeout};

/// One qemu or cryptsetup call may take this long (LUKS header creation calibrates its PBKDF
/// for about two seconds).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The pattern the tests write into the base image, and the one an overlay adds.
const BASE_PATTERN: u8 = 0xab;
const OVERLAY_PATTERN: u8 = 0xcd;

/// The absolute path of `tool`, found on `PATH` or in the sbin directories (cryptsetup lives in
/// `/usr/sbin`, which a non-login `PATH` may lack). Panics with the install command when absent.
fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(tool);
        if let Ok(m) = fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return p;
        }
    }
    panic!(
        "`{tool}` is not installed, and this test needs the real tool (no mocks, no skipping). \
         Install it with: apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
         {package}   (.ci/run does this before `cargo test`)"
    );
}

/// The consumer tools, resolved once per test.
struct Tools {
    qemu_img: PathBuf,
    qemu_io: PathBuf,
}

impl Tools {
    fn qemu() -> Tools {
        Tools {
            qemu_img: require_tool("qemu-img", "qemu-utils"),
            qemu_io: require_tool("qemu-io", "qemu-utils"),
        }
    }
}

/// Runs a tool with a deadline; returns its output whatever the exit status.
fn run(tool: &Path, args: &[String]) -> Output {
    run_with_timeout(Command::new(tool).args(args), TOOL_TIMEOUT)
}

/// Runs a tool and asserts it succeeded.
fn run_ok(tool: &Path, args: &[String]) -> Output {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}",
        tool.display(),
        describe_output(&out)
    );
    out
}

/// Runs a tool and asserts it failed; returns its stdout and stderr together.
fn run_fails(tool: &Path, args: &[String]) -> String {
    let out = run(tool, args);
    assert!(
        !out.status.success(),
        "{} {args:?} should have failed:\n{}",
        tool.display(),
        describe_output(&out)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `bytes` to a new file of mode 0600 (created so, never wider even for an instant).
fn write_secret(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create secret file {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// `lockboxctl key get ID --format hex` as a consumer uses it: the CLI's plain output with its
/// trailing newline stripped (qemu and cryptsetup would take the newline as part of the
/// passphrase). Checked against the `--json` form so a CLI change cannot go unnoticed.
fn hex_passphrase(node: &Node, id: &str) -> String {
    let out = node.ctl_plain(&["key", "get", id, "--format", "hex"]);
    assert!(
        out.status.success(),
        "key get {id} --format hex failed:\n{}",
        describe_output(&out)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("`key get --format hex` output does not end in a newline"));
    assert_eq!(hex, hex::encode(node.key_bytes(id)));
    assert!(!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    hex.to_owned()
}

/// Fetches a key from `node` as hex text and writes it, without a newline, to a 0600 file in
/// `dir` named `name`; returns the path (for `--object secret,id=…,file=PATH`).
fn hex_secret_file(node: &Node, id: &str, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    write_secret(&path, hex_passphrase(node, id).as_bytes());
    path
}

/// `--object secret,id=ID,file=PATH`.
fn secret_object(id: &str, file: &Path) -> [String; 2] {
    [
        "--object".into(),
        format!("secret,id={id},file={}", file.display()),
    ]
}

/// Arguments for `qemu-io`: secret objects, `--image-opts OPTS`, then each `-c CMD`.
fn qemu_io_args(secrets: &[(&str, &Path)], image_opts: &str, cmds: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (id, file) in secrets {
        args.extend(secret_object(id, file));
    }
    args.push("--image-opts".into());
    args.push(image_opts.into());
    for c in cmds {
        args.push("-c".into());
        args.push((*c).into());
    }
    args
}

/// Runs qemu-io commands that must all succeed (exit 0, no pattern mismatch reported).
fn qemu_io_ok(t: &Tools, secrets: &[(&str, &Path)], image_opts: &str, cmds: &[&str]) {
    let out = run_ok(&t.qemu_io, &qemu_io_args(secrets, image_opts, cmds));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io also prints the mismatch; check the text too, not only the exit code.
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("qemu-io:"),
        "qemu-io {cmds:?} on {image_opts} reported a failure:\n{text}"
    );
}

/// `driver=qcow2,file.filename=IMG,encrypt.key-secret=SEC`.
fn qcow2_opts(image: &Path, secret: &str) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret={secret}",
        image.display()
    )
}

/// True when `haystack` holds `run` consecutive copies of `byte`.
fn has_run_of(haystack: &[u8], byte: u8, run: usize) -> bool {
    let mut n = 0;
    for &b in haystack {
        if b == byte {
            n += 1;
            if n >= run {
                return true;
            }
        } else {
            n = 0;
        }
    }
    false
}

/// Asserts the pattern byte never appears in clear (a 4 KiB run of it) in an image file.
fn assert_ciphertext_only(image: &Path, pattern: u8) {
    let bytes = fs::read(image).unwrap();
    assert!(
        !has_run_of(&bytes, pattern, 4096),
        "{} holds a 4 KiB run of {pattern:#04x} in clear: the image is not encrypted",
        image.display()
    );
}

fn transfer(node: &Node, grant: &Path) -> serde_json::Value {
    node.ctl_json(&["transfer", grant.to_str().unwrap()])
}

/// A scratch directory for images and secret files (0700, removed at the end).
fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("lbxconsumer")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        fs::metadata(d.path()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    d
}

#[test]
fn tool_check_names_the_package_to_install() {
    let err = std::panic::catch_unwind(|| require_tool("lockbox-no-such-tool", "some-package"))
        .expect_err("a missing tool must fail the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("apt-get install -y some-package"), "{msg}");
}

/// qemu: a LUKS qcow2 image and an encrypted overlay keyed by lockbox keys, MOVEd to another
/// lockbox, opened there; then a new-key clone re-encrypted by `qemu-img convert`, which the old
/// key no longer opens.
#[test]
fn qemu_luks_image_moves_with_its_key_and_a_new_key_clone_reencrypts() {
    let t = Tools::qemu();
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (c.node("host-a"), c.node("host-b"));
    let work = scratch();
    let dir = work.path();
    let base = dir.join("vm1.qcow2");
    let overlay = dir.join("vm1-s1.qcow2");

    // host-a: a volume key, and a LUKS qcow2 image whose passphrase is its hex text.
    let key = a.create_key(&["--label", "volume=vm1"]);
    let sec_a = hex_secret_file(a, &key, dir, "a-key");
    run_ok(
        &t.qemu_img,
        &[
            vec!["create".into(), "-f".into(), "qcow2".into()],
            secret_object("sec0", &sec_a).to_vec(),
            vec![
                "-o".into(),
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10".into(),
                base.display().to_string(),
                "16M".into(),
            ],
        ]
        .concat(),
    );
    let base_opts = qcow2_opts(&base, "sec0");
    qemu_io_ok(
        &t,
        &[("sec0", &sec_a)],
        &base_opts,
        &[&format!("write -P {BASE_PATTERN:#04x} 0 1M")],
    );
    qemu_io_ok(
        &t,
        &[("sec0", &sec_a)],
        &base_opts,
        &[&format!("read -P {BASE_PATTERN:#04x} 0 1M")],
    );
    assert_ciphertext_only(&base, BASE_PATTERN);

    // A lockbox snapshot of the key (same material, its own id) keys a qcow2 overlay.
    let snap = json_str(
        &a.ctl_json(&["key", "snapshot", &key, "--label", "snapshot=s1"]),
        "key_id",
    );
    assert_ne!(snap, key);
    let sec_snap_a = hex_secret_file(a, &snap, dir, "a-snap");
    assert_eq!(fs::read(&sec_snap_a).unwrap(), fs::read(&sec_a).unwrap());
    run_ok(
        &t.qemu_img,
        &[
            vec![
                "create".into(),
                "-f".into(),
                "qcow2".into(),
                "-b".into(),
                base.display().to_string(),
                "-F".into(),
                "qcow2".into(),
            ],
            secret_object("sec1", &sec_snap_a).to_vec(),
            vec![
                "-o".into(),
                "encrypt.format=luks,encrypt.key-secret=sec1,encrypt.iter-time=10".into(),
                overlay.display().to_string(),
            ],
        ]
        .concat(),
    );
    let chain_opts = format!(
        "{},backing.encrypt.key-secret=sec0",
        qcow2_opts(&overlay, "sec1")
    );
    qemu_io_ok(
        &t,
        &[("sec0", &sec_a), ("sec1", &sec_snap_a)],
        &chain_opts,
        &[&format!("write -P {OVERLAY_PATTERN:#04x} 1M 1M")],
    );
    assert_ciphertext_only(&overlay, OVERLAY_PATTERN);

    // MOVE both layers' keys to host-b under a controller-signed grant.
    let g = c.grant(&[&key, &snap], "host-a", "host-b", "move", "10m");
    let r = transfer(a, &g);
    assert_eq!(r["dest_node"], "host-b", "{r}");
    for id in [&key, &snap] {
        assert_eq!(a.describe(id)["state"], "moved");
        let err = a.ctl_err(&["key", "get", id, "--format", "hex"]);
        assert!(err.contains("moved to host-b"), "{err}");
    }

    // host-b: the keys taken from host-b open the chain and read both patterns back.
    let b_dir = dir.join("host-b");
    fs::create_dir(&b_dir).unwrap();
    let sec_b = hex_secret_file(b, &key, &b_dir, "key");
    let sec_snap_b = hex_secret_file(b, &snap, &b_dir, "snap");
    let b_secrets = [("sec0", sec_b.as_path()), ("sec1", sec_snap_b.as_path())];
    qemu_io_ok(
        &t,
        &b_secrets,
        &chain_opts,
        &[
            &format!("read -P {BASE_PATTERN:#04x} 0 1M"),
            &format!("read -P {OVERLAY_PATTERN:#04x} 1M 1M"),
            "read -P 0x00 2M 1M",
        ],
    );
    qemu_io_ok(
        &t,
        &[("sec0", &sec_b)],
        &base_opts,
        &[&format!("read -P {BASE_PATTERN:#04x} 0 1M")],
    );
    // The check can fail: a wrong pattern is reported and exits non-zero.
    let wrong = run_fails(
        &t.qemu_io,
        &qemu_io_args(&b_secrets, &chain_opts, &["read -P 0x5a 0 1M"]),
    );
    assert!(wrong.contains("Pattern verification failed"), "{wrong}");
    // A key that is not this volume's does not open it.
    let other = b.create_key(&[]);
    let sec_other = hex_secret_file(b, &other, &b_dir, "other");
    let err = run_fails(
        &t.qemu_io,
        &qemu_io_args(
            &[("sec0", &sec_other)],
            &base_opts,
            &[&format!("read -P {BASE_PATTERN:#04x} 0 1M")],
        ),
    );
    assert!(err.contains("Invalid password"), "{err}");

    // A new-key clone on host-b: new material, and `qemu-img convert` re-encrypts (and
    // flattens) the chain into an image under the clone's key.
    let clone = json_str(
        &b.ctl_json(&[
            "key",
            "clone",
            &key,
            "--mode",
            "new-key",
            "--label",
            "volume=vm1-copy",
        ]),
        "key_id",
    );
    assert_ne!(b.key_bytes(&clone), b.key_bytes(&key));
    let origin = &b.describe(&clone)["origin"];
    assert_eq!(origin["kind"], "clone-new-key", "{origin}");
    let sec_clone = hex_secret_file(b, &clone, &b_dir, "clone");
    let copy = dir.join("vm1-copy.qcow2");
    run_ok(
        &t.qemu_img,
        &[
            vec!["convert".into()],
            secret_object("sec0", &sec_b).to_vec(),
            secret_object("sec1", &sec_snap_b).to_vec(),
            secret_object("sec2", &sec_clone).to_vec(),
            vec![
                "--image-opts".into(),
                chain_opts.clone(),
                "-O".into(),
                "qcow2".into(),
                "-o".into(),
                "encrypt.format=luks,encrypt.key-secret=sec2,encrypt.iter-time=10".into(),
                copy.display().to_string(),
            ],
        ]
        .concat(),
    );
    assert_ciphertext_only(&copy, BASE_PATTERN);
    assert_ciphertext_only(&copy, OVERLAY_PATTERN);
    let copy_opts = qcow2_opts(&copy, "sec2");
    qemu_io_ok(
        &t,
        &[("sec2", &sec_clone)],
        &copy_opts,
        &[
            &format!("read -P {BASE_PATTERN:#04x} 0 1M"),
            &format!("read -P {OVERLAY_PATTERN:#04x} 1M 1M"),
        ],
    );
    let info = run_ok(
        &t.qemu_img,
        &[
            "info".into(),
            "--output=json".into(),
            copy.display().to_string(),
        ],
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["encrypted"], true, "{info}");
    assert!(
        info.get("backing-filename").is_none(),
        "not flattened: {info}"
    );

    // The OLD key does not open the re-encrypted image: neither qemu-io nor a qemu-img that
    // reads data (`qemu-img info` would succeed: it does not unlock a keyslot).
    let err = run_fails(
        &t.qemu_io,
        &qemu_io_args(
            &[("sec2", &sec_b)],
            &copy_opts,
            &[&format!("read -P {BASE_PATTERN:#04x} 0 1M")],
        ),
    );
    assert!(err.contains("Invalid password"), "{err}");
    let err = run_fails(
        &t.qemu_img,
        &[
            vec!["compare".into()],
            secret_object("sec0", &sec_b).to_vec(),
            secret_object("sec1", &sec_snap_b).to_vec(),
            secret_object("sec2", &sec_b).to_vec(),
            vec!["--image-opts".into(), chain_opts.clone(), copy_opts.clone()],
        ]
        .concat(),
    );
    assert!(err.contains("Invalid password"), "{err}");
    // With the right keys the two images are identical.
    let same = run_ok(
        &t.qemu_img,
        &[
            vec!["compare".into()],
            secret_object("sec0", &sec_b).to_vec(),
            secret_object("sec1", &sec_snap_b).to_vec(),
            secret_object("sec2", &sec_clone).to_vec(),
            vec!["--image-opts".into(), chain_opts, copy_opts],
        ]
        .concat(),
    );
    assert!(
        String::from_utf8_lossy(&same.stdout).contains("Images are identical"),
        "{}",
        describe_output(&same)
    );
    // And the clone's key does not open the original.
    let err = run_fails(
        &t.qemu_io,
        &qemu_io_args(&[("sec0", &sec_clone)], &base_opts, &["read 0 1M"]),
    );
    assert!(err.contains("Invalid password"), "{err}");
}

/// cryptsetup: LUKS2 images formatted with a lockbox key (raw bytes in a 0600 key file, and
/// the hex text on standard input as docs/luks.md does), MOVEd to another lockbox, and opened
/// there with the key taken from it; other keys, and the hex text with its newline, fail.
#[test]
fn cryptsetup_luks2_image_opens_with_its_key_after_a_move() {
    let cryptsetup = require_tool("cryptsetup", "cryptsetup-bin");
    let c = Cluster::start(&["host-a", "host-b"], "");
    let (a, b) = (c.node("host-a"), c.node("host-b"));
    let work = scratch();
    let dir = work.path();

    let key = a.create_key(&["--label", "volume=disk1"]);
    let raw_a = a.key_raw(&key);
    assert_eq!(raw_a.len(), 32);
    assert_eq!(raw_a, a.key_bytes(&key));
    let keyfile_a = dir.join("a-key.raw");
    write_secret(&keyfile_a, &raw_a);

    // Two LUKS2 images: one keyed by the raw bytes in a key file, one by the hex text on stdin.
    // 32 MiB: a LUKS2 header takes 16 MiB.
    let disk_raw = dir.join("disk1.img");
    let disk_hex = dir.join("disk1-hex.img");
    for img in [&disk_raw, &disk_hex] {
        fs::File::create(img).unwrap().set_len(32 << 20).unwrap();
    }
    let format_args = |img: &Path, key_file: &str| -> Vec<String> {
        [
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            img.to_str().unwrap(),
            "--key-file",
            key_file,
        ]
        .map(String::from)
        .to_vec()
    };
    run_ok(
        &cryptsetup,
        &format_args(&disk_raw, keyfile_a.to_str().unwrap()),
    );
    cryptsetup_stdin(
        &cryptsetup,
        &format_args(&disk_hex, "-"),
        hex_passphrase(a, &key).as_bytes(),
        true,
    );
    let dump = run_ok(
        &cryptsetup,
        &["luksDump".into(), disk_raw.display().to_string()],
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("pbkdf2"), "{dump}");

    // MOVE the key to host-b.
    let g = c.grant(&[&key], "host-a", "host-b", "move", "10m");
    transfer(a, &g);
    assert_eq!(a.describe(&key)["state"], "moved");
    assert!(a.ctl_err(&["key", "get", &key]).contains("moved to host-b"));

    // host-b's copy of the key opens both images.
    let raw_b = b.key_raw(&key);
    assert_eq!(raw_b, raw_a);
    let keyfile_b = dir.join("b-key.raw");
    write_secret(&keyfile_b, &raw_b);
    let test_args = |img: &Path, key_file: &str| -> Vec<String> {
        [
            "open",
            "--test-passphrase",
            img.to_str().unwrap(),
            "--key-file",
            key_file,
        ]
        .map(String::from)
        .to_vec()
    };
    run_ok(
        &cryptsetup,
        &test_args(&disk_raw, keyfile_b.to_str().unwrap()),
    );
    let hex_b = hex_passphrase(b, &key);
    cryptsetup_stdin(
        &cryptsetup,
        &test_args(&disk_hex, "-"),
        hex_b.as_bytes(),
        true,
    );

    // A different lockbox key opens neither; nor does the hex text with its newline.
    let other = b.create_key(&[]);
    let keyfile_other = dir.join("b-other.raw");
    write_secret(&keyfile_other, &b.key_raw(&other));
    for img in [&disk_raw, &disk_hex] {
        let err = run_fails(
            &cryptsetup,
            &test_args(img, keyfile_other.to_str().unwrap()),
        );
        assert!(err.contains("No key available"), "{err}");
    }
    let other_hex = hex_passphrase(b, &other);
    cryptsetup_stdin(
        &cryptsetup,
        &test_args(&disk_hex, "-"),
        other_hex.as_bytes(),
        false,
    );
    let with_newline = format!("{hex_b}\n");
    cryptsetup_stdin(
        &cryptsetup,
        &test_args(&disk_hex, "-"),
        with_newline.as_bytes(),
        false,
    );
    // The raw image does not take the hex text, nor the hex image the raw bytes.
    cryptsetup_stdin(
        &cryptsetup,
        &test_args(&disk_raw, "-"),
        hex_b.as_bytes(),
        false,
    );
    run_fails(
        &cryptsetup,
        &test_args(&disk_hex, keyfile_b.to_str().unwrap()),
    );
}

/// Runs cryptsetup with `input` on standard input (for `--key-file -`); asserts it succeeded
/// or failed as `expect_ok` says.
fn cryptsetup_stdin(cryptsetup: &Path, args: &[String], input: &[u8], expect_ok: bool) {
    let mut child = Command::new(cryptsetup)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(TOOL_TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("cryptsetup {args:?} did not finish within {TOOL_TIMEOUT:?}");
        }
    };
    assert_eq!(
        out.status.success(),
        expect_ok,
        "cryptsetup {args:?} (key on stdin) should have {}:\n{}",
        if expect_ok { "succeeded" } else { "failed" },
        describe_output(&out)
    );
    if !expect_ok {
        assert_eq!(
            out.status.code(),
            Some(2),
            "cryptsetup {args:?}: expected exit code 2 (no key available):\n{}",
            describe_output(&out)
        );
    }
}
