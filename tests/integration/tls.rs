//! TLS listeners (issue 20 item 2) with a CA and certificates the test
//! makes with `openssl`: kcat over SSL, confluent-kafka and kafka-python
//! over SASL_SSL with SCRAM-SHA-512 and PLAIN (a wrong password refused),
//! client certificates mapped to principals that ACLs then govern, a
//! plaintext client on a TLS port refused, and a certificate reloaded on
//! SIGHUP while an older connection goes on.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::broker_process::BrokerProcess;
use crate::kcat_smoke::kcat;
use crate::test_clients;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-secret-1";

/// A test CA and the certificates it signed, as PEM files in a directory.
struct Pki {
    dir: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    /// A CA, a server certificate for localhost and 127.0.0.1, and client
    /// certificates for `alice` and `bob` (subjects `CN=<name>,O=Example`).
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
        };
        pki.ca("ca", "/CN=Sluice Test CA");
        pki.sign("ca", "server", "/CN=localhost", "server.ext");
        pki.sign("ca", "alice", "/O=Example/CN=alice", "client.ext");
        pki.sign("ca", "bob", "/O=Example/CN=bob", "client.ext");
        pki
    }

    fn ca(&self, name: &str, subject: &str) {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.pem"),
            ],
            &self.dir,
        );
    }

    fn sign(&self, ca: &str, name: &str, subject: &str, extensions: &str) {
        self.sign_for_days(ca, name, subject, extensions, "30");
    }

    /// `sign`, valid for `days` from now (`-1`: expired yesterday).
    fn sign_for_days(&self, ca: &str, name: &str, subject: &str, extensions: &str, days: &str) {
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-days",
                days,
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}-key.pem"),
                "-CAcreateserial",
                "-extfile",
                extensions,
                "-out",
                &format!("{name}.pem"),
            ],
            &self.dir,
        );
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    /// The `[security.tls]` section for these files.
    fn tls_section(&self, client_auth: &str) -> String {
        format!(
            "[security.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
             client_auth = \"{client_auth}\"\nclient_ca = \"{}\"\n\
             principal_mapping_rules = \"RULE:^CN=([a-z]+),O=Example$/$1/,DEFAULT\"\n",
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem"),
        )
    }
}

fn start(dir: &Path, config: &str) -> BrokerProcess {
    let path = dir.join("tls.toml");
    std::fs::write(&path, config).unwrap();
    let mut command =
        BrokerProcess::command(&dir.join("data"), &["--config", path.to_str().unwrap()]);
    command.env("SLUICE_SASL_BOOTSTRAP_PASSWORD", ADMIN_PASSWORD);
    BrokerProcess::start_command(command)
}

/// kcat over SSL with `extra` settings; (success, stdout, stderr).
fn kcat_ssl(
    pki: &Pki,
    address: &str,
    extra: &[&str],
    input: Option<&[u8]>,
) -> (bool, String, String) {
    let ca = format!("ssl.ca.location={}", pki.path("ca.pem"));
    let mut args = vec!["-b", address, "-X", "security.protocol=ssl", "-X", &ca];
    args.extend_from_slice(extra);
    let output = kcat(&args, input);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn metric(broker: &BrokerProcess, line_start: &str) -> f64 {
    crate::metrics::value(&broker.metrics, line_start)
}

#[derive(Debug, Deserialize)]
struct RoundTrip {
    acked: Vec<String>,
    read: Vec<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Login {
    ok: bool,
}

#[test]
fn ssl_and_sasl_ssl_listeners_carry_kcat_and_python_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let secure = crate::broker_process::free_loopback_address();
    let broker = start(
        dir.path(),
        &format!(
            "[security]\nsecurity_protocol = \"SSL\"\nsasl_bootstrap_user = \"admin\"\n\
             sasl_enabled_mechanisms = [\"SCRAM-SHA-512\", \"PLAIN\"]\n\
             [[security.listeners]]\nname = \"SECURE\"\nlisten = \"{secure}\"\n\
             security_protocol = \"SASL_SSL\"\n{}",
            pki.tls_section("none")
        ),
    );

    // kcat: 2 000 lines of ~1 KiB (several fetch responses) each way, and a
    // fetch that reads them back byte for byte.
    let lines: String = (0..2000)
        .map(|index| format!("{index:05}-{}\n", "x".repeat(1000)))
        .collect();
    let (ok, _, stderr) = kcat_ssl(
        &pki,
        &broker.address,
        &["-P", "-t", "over-tls", "-X", "acks=all"],
        Some(lines.as_bytes()),
    );
    assert!(ok, "{stderr}");
    let (ok, read, stderr) = kcat_ssl(
        &pki,
        &broker.address,
        &["-C", "-t", "over-tls", "-e", "-q"],
        None,
    );
    assert!(ok, "{stderr}");
    assert!(
        read == lines,
        "kcat read back {} bytes of {}",
        read.len(),
        lines.len()
    );

    // A client that does not speak TLS gets nothing, and the broker says why.
    let plain = kcat(&["-b", &broker.address, "-L", "-m", "3"], None);
    assert!(!plain.status.success());
    assert!(broker.wait_for_log("TLS handshake failed"));
    assert!(
        metric(
            &broker,
            "sluice_kafka_tls_handshakes_total{listener=\"SSL\",outcome=\"failed\"}"
        ) >= 1.0
    );
    // A client that does not trust the broker's CA refuses it.
    let untrusting = kcat(
        &[
            "-b",
            &broker.address,
            "-X",
            "security.protocol=ssl",
            "-X",
            "ssl.ca.location=/dev/null",
            "-L",
            "-m",
            "3",
        ],
        None,
    );
    assert!(!untrusting.status.success());

    // SASL_SSL: confluent-kafka and kafka-python log in inside TLS.
    let Some(clients) =
        test_clients::installed("ssl_and_sasl_ssl_listeners_carry_kcat_and_python_clients")
    else {
        return;
    };
    let ca = pki.path("ca.pem");
    let env = [("SLUICE_TEST_TLS_CA", ca.as_str())];
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let report: BTreeMap<String, RoundTrip> = clients
            .python_with_env(
                "sasl_clients.py",
                &[
                    "roundtrip",
                    &secure,
                    mechanism,
                    ADMIN,
                    ADMIN_PASSWORD,
                    &format!("sasl-ssl-{mechanism}"),
                    "30",
                ],
                &env,
            )
            .finish_as(Duration::from_secs(120));
        for (client, result) in &report {
            assert_eq!(result.error, None, "{client} with {mechanism}");
            assert_eq!(result.acked.len(), 30, "{client} with {mechanism}");
            let mut read = result.read.clone();
            read.sort();
            let mut acked = result.acked.clone();
            acked.sort();
            assert_eq!(read, acked, "{client} with {mechanism}");
        }
    }
    let login: Login = clients
        .python_with_env(
            "sasl_clients.py",
            &["login", &secure, "SCRAM-SHA-512", ADMIN, "wrong-password"],
            &env,
        )
        .finish_as(Duration::from_secs(60));
    assert!(!login.ok, "a wrong password logged in over SASL_SSL");
}

#[test]
fn client_certificates_name_principals_that_acls_govern() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = start(
        dir.path(),
        &format!(
            "[security]\nsecurity_protocol = \"SSL\"\nauthorizer = \"acl\"\n\
             super_users = [\"User:alice\"]\n{}",
            pki.tls_section("required")
        ),
    );
    let alice = [
        "-X",
        &format!("ssl.certificate.location={}", pki.path("alice.pem")),
        "-X",
        &format!("ssl.key.location={}", pki.path("alice-key.pem")),
    ]
    .map(String::from);
    let bob = [
        "-X",
        &format!("ssl.certificate.location={}", pki.path("bob.pem")),
        "-X",
        &format!("ssl.key.location={}", pki.path("bob-key.pem")),
    ]
    .map(String::from);
    let with = |identity: &[String], rest: &[&str]| -> Vec<String> {
        identity
            .iter()
            .cloned()
            .chain(rest.iter().map(|arg| arg.to_string()))
            .collect()
    };
    let run = |args: Vec<String>, input: Option<&[u8]>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kcat_ssl(&pki, &broker.address, &args, input)
    };
    let produce = ["-P", "-t", "certified", "-X", "message.timeout.ms=5000"];

    // alice's certificate maps to User:alice, a super user.
    let (ok, _, stderr) = run(with(&alice, &produce), Some(b"from-alice\n"));
    assert!(ok && !stderr.contains("failed"), "{stderr}");
    // bob's maps to User:bob, whom no ACL allows anything.
    let (_, _, stderr) = run(with(&bob, &produce), Some(b"from-bob\n"));
    assert!(stderr.contains("Topic authorization failed"), "{stderr}");
    // alice grants bob WRITE with `sluice acls`, over TLS with her
    // certificate.
    let sluice_as = |certificate: &str, key: &str, args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .args(["--brokers", &broker.address])
            .env("SLUICE_TLS_CA", pki.path("ca.pem"))
            .env("SLUICE_TLS_CERTIFICATE", pki.path(certificate))
            .env("SLUICE_TLS_KEY", pki.path(key))
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let grant = [
        "acls",
        "add",
        "--principal",
        "User:bob",
        "--operation",
        "WRITE",
        "--topic",
        "certified",
    ];
    let (granted, output) = sluice_as("bob.pem", "bob-key.pem", &grant);
    assert!(
        !granted && output.contains("ClusterAuthorizationFailed"),
        "bob granted himself: {output}"
    );
    let (granted, output) = sluice_as("alice.pem", "alice-key.pem", &grant);
    assert!(granted, "{output}");
    let (ok, _, stderr) = run(with(&bob, &produce), Some(b"from-bob\n"));
    assert!(
        ok && !stderr.contains("failed"),
        "bob is still refused: {stderr}"
    );

    // Without a certificate the handshake fails (client_auth = required).
    let (ok, _, _) = run(vec!["-L".to_owned(), "-m".to_owned(), "3".to_owned()], None);
    assert!(!ok, "a client without a certificate was served");
    assert!(broker.wait_for_log("TLS handshake failed"));
}

/// A raw TLS client in Python: prints the subject of the broker's
/// certificate and whether an ApiVersions request is answered on a first
/// connection; after a line on stdin, asks again on that connection and on
/// a new one.
const RELOAD_PROBE: &str = r#"
import json, socket, ssl, struct, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=ca)
def connect():
    raw = socket.create_connection((host, port), timeout=10)
    conn = context.wrap_socket(raw, server_hostname="localhost")
    cn = dict(x[0] for x in conn.getpeercert()["subject"])["commonName"]
    return conn, cn
def api_versions(conn):
    body = struct.pack(">hhih", 18, 0, 7, 4) + b"test"
    conn.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", conn.recv(4))[0]
    data = b""
    while len(data) < size:
        data += conn.recv(size - len(data))
    return struct.unpack(">i", data[:4])[0] == 7 and struct.unpack(">h", data[4:6])[0] == 0
first, before = connect()
print(json.dumps({"before": before, "answered": api_versions(first)}), flush=True)
sys.stdin.readline()
second, after = connect()
print(json.dumps({"after": after, "old_answered": api_versions(first), "new_answered": api_versions(second)}), flush=True)
"#;

#[test]
fn sighup_reloads_the_certificate_and_open_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = start(
        dir.path(),
        &format!(
            "[security]\nsecurity_protocol = \"SSL\"\n{}",
            pki.tls_section("none")
        ),
    );
    let (host, port) = broker.address.rsplit_once(':').unwrap();
    let mut probe = Command::new("python3")
        .args(["-c", RELOAD_PROBE, host, port, &pki.path("ca.pem")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(probe.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["before"], "localhost");
    assert_eq!(first["answered"], true);

    // A new certificate replaces the files; a bad one first is refused and
    // the old one stays.
    std::fs::write(dir.path().join("pki/server.pem"), "not a certificate").unwrap();
    // SAFETY: kill with SIGHUP on the broker's pid.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    assert!(broker.wait_for_log("cannot reload the TLS files"));
    // An expired certificate is refused the same way.
    pki.sign_for_days("ca", "server", "/CN=expired", "server.ext", "-1");
    // SAFETY: as above.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    assert!(broker.wait_for_log("expired at"));
    // One that does not name the advertised address loads, with a warning.
    std::fs::write(
        dir.path().join("pki/elsewhere.ext"),
        "subjectAltName=DNS:elsewhere.example\n",
    )
    .unwrap();
    pki.sign("ca", "server", "/CN=elsewhere", "elsewhere.ext");
    // SAFETY: as above.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    assert!(broker.wait_for_log("does not cover these advertised names"));
    pki.sign("ca", "server", "/CN=reloaded", "server.ext");
    // SAFETY: as above.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    let reloads = || {
        broker
            .log()
            .iter()
            .filter(|line| line.contains("reloaded the TLS certificate"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reloads(), 2, "{:?}", broker.log());

    probe.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["after"], "reloaded", "{second}");
    assert_eq!(second["old_answered"], true, "{second}");
    assert_eq!(second["new_answered"], true, "{second}");
    probe.wait().unwrap();
}
