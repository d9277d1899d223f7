//! Text output cannot drive the terminal: an interface any user can name
//! `e<ESC>]0;x<BEL>` (a terminal title change) is printed escaped by
//! `diagnose`, live and replayed, and the fix naming it is `$'...'`-quoted.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tracer_tests::{prefix, tracer_bin, Netlab};

const HOSTILE: &str = "e\x1b]0;x\x07";
const SHOWN: &str = "e\\x1b]0;x\\x07";

/// a:eth0 (MTU 1500, 10.78.0.1) -- b:HOSTILE (MTU 1400, 10.78.0.2).
fn lab() -> Netlab {
    let mut lab = Netlab::new(&prefix("esc")).unwrap();
    lab.ns("a").unwrap();
    let b = lab.ns("b").unwrap();
    lab.veth("a", "eth0", "b", HOSTILE).unwrap();
    lab.exec(
        "a",
        "ip link set eth0 mtu 1500 && ip addr add 10.78.0.1/24 dev eth0",
    )
    .unwrap();
    for args in [
        vec!["-n", &b, "link", "set", "dev", HOSTILE, "mtu", "1400"],
        vec!["-n", &b, "addr", "add", "10.78.0.2/24", "dev", HOSTILE],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
    lab
}

/// Removes the recording however the test ends.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn no_control_bytes(what: &str, bytes: &[u8]) {
    for bad in [0x1bu8, 0x07] {
        assert!(
            !bytes.contains(&bad),
            "{what} holds byte {bad:#04x}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn text_output_escapes_an_interface_named_with_esc_and_bel() {
    let lab = lab();
    let rec = std::env::temp_dir().join(format!("{}rec.jsonl", prefix("esc")));
    let _ = std::fs::remove_file(&rec);
    let _rm = Removed(rec.clone());
    let mut child = Command::new(tracer_bin())
        .args(["diagnose", "-o", "text", "-d", "8s", "-w"])
        .arg(&rec)
        .args(["--netns", &lab.name("a"), "--netns", &lab.name("b")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr says when the probes are attached; keep every byte of it.
    let (attached, wait) = mpsc::channel();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let stderr = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut line = Vec::new();
        while err.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if line.starts_with(b"tracer: attached") {
                let _ = attached.send(());
            }
            all.append(&mut line);
        }
        all
    });
    wait.recv_timeout(Duration::from_secs(60))
        .expect("diagnose never attached");
    // Too long for b's MTU (dropped on arrival), and one to a closed port.
    lab.exec(
        "a",
        "bash -c 'for i in 1 2 3; do head -c 1450 /dev/zero > /dev/udp/10.78.0.2/5001; \
         echo x > /dev/udp/10.78.0.2/5002; sleep 0.2; done'",
    )
    .unwrap();
    let mut live = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut live).unwrap();
    let st = child.wait().unwrap();
    let live_err = stderr.join().unwrap();
    // 3: a fault was proven (the MTU mismatch).
    assert_eq!(st.code(), Some(3), "{}", String::from_utf8_lossy(&live_err));
    no_control_bytes("diagnose stdout", &live);
    no_control_bytes("diagnose stderr", &live_err);
    let text = String::from_utf8_lossy(&live);
    assert!(text.contains(SHOWN), "the name is shown escaped: {text}");
    assert!(text.contains("l2_mtu_mismatch"), "{text}");
    // The fix is still a command to paste: bash's $'...' names the device.
    let fix = format!("link set dev $'{SHOWN}' mtu 1500");
    assert!(text.contains(&fix), "{fix} not in {text}");

    // What a recording carries is escaped the same way when replayed.
    let replay = Command::new(tracer_bin())
        .args(["diagnose", "-o", "text", "--replay"])
        .arg(&rec)
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(3));
    no_control_bytes("replay stdout", &replay.stdout);
    no_control_bytes("replay stderr", &replay.stderr);
    assert!(String::from_utf8_lossy(&replay.stdout).contains(SHOWN));
    // JSON keeps the name exact (serde's \u escapes).
    let json = Command::new(tracer_bin())
        .args(["diagnose", "-o", "json", "--replay"])
        .arg(&rec)
        .output()
        .unwrap();
    let json = String::from_utf8(json.stdout).unwrap();
    assert!(json.contains(r#""ifname":"e\u001b]0;x\u0007""#), "{json}");
    drop(lab);
}

#[test]
fn the_dollar_quoted_fix_names_the_device_in_bash() {
    // What the text prints is what bash turns back into the name.
    let word = tracer::rules::fix::q(HOSTILE);
    let out = Command::new("bash")
        .args(["-c", &format!("printf %s {word}")])
        .output()
        .unwrap();
    assert_eq!(out.stdout, HOSTILE.as_bytes());
}
