//! A real Kafka-compatible broker for tests: nisshi (the broker formerly
//! named tansu) on a free loopback port, SQLite storage in a temporary
//! directory, stopped when dropped. [`Broker::start_secured`] serves TLS
//! with a certificate made for the test and requires SCRAM-SHA-512 logins.
//!
//! `scripts/install-broker.sh` installs the binary (`scripts/test.sh` calls
//! it); a missing binary fails the test with that instruction rather than
//! skipping it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;

pub struct Broker {
    child: Child,
    /// The TLS front (stunnel) of a mutual-TLS broker.
    front: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    /// For a secured broker: the CA file clients trust (its own
    /// certificate: self-signed).
    pub ca: Option<PathBuf>,
}

fn nisshi() -> PathBuf {
    if let Ok(p) = std::env::var("NISSHI") {
        return p.into();
    }
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin/nisshi");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("nisshi").exists() {
                return d.join("nisshi");
            }
        }
    }
    panic!("nisshi not found: run scripts/install-broker.sh (or set NISSHI=/path/to/nisshi)");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The SQLite storage: committed offsets, restarts and "latest" offsets
/// behave like Kafka.
const SQLITE: &str = "sqlite://nisshi.db?maintenance_interval=5s";

/// Client settings of secured brokers, by bootstrap address: the harness's
/// clients (topic creation, producing, reading back) look them up, so tests
/// call them the same way for every broker.
static SECURED: Mutex<Option<HashMap<String, Settings>>> = Mutex::new(None);

/// librdkafka settings, (key, value).
type Settings = Vec<(String, String)>;

/// A client configuration for `brokers`, with the security settings of a
/// secured test broker when it is one.
pub fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    if let Some(settings) = SECURED
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(brokers))
    {
        for (k, v) in settings {
            c.set(k, v);
        }
    }
    c
}

impl Broker {
    /// A plaintext broker with SQLite storage.
    pub fn start() -> Broker {
        Broker::start_with(SQLITE)
    }

    /// A plaintext broker with the given storage engine URL.
    pub fn start_with(storage: &str) -> Broker {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cep-broker-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        Broker::spawn(port, port, dir, storage, &[], None)
    }

    /// A broker that serves only TLS (a self-signed certificate for
    /// `localhost` and `127.0.0.1`, made with the `openssl` command) and
    /// requires a SCRAM-SHA-512 login by one of `users` (name, password).
    /// The harness's clients log in as the first user.
    pub fn start_secured(users: &[(&str, &str)]) -> Broker {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cep-broker-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        let (cert, key) = self_signed(&dir, "broker");
        // Users are created over the broker's own (plaintext-only) client,
        // before authentication is turned on, on the same storage.
        let open = Broker::spawn(port, port, dir.clone(), SQLITE, &[], None);
        for (name, password) in users {
            let out = Command::new(nisshi())
                .args(["user", "create", name, password, "--broker"])
                .arg(format!("tcp://127.0.0.1:{port}"))
                .output()
                .expect("nisshi user create runs");
            assert!(
                out.status.success(),
                "nisshi user create {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = open.stop_keeping_data();
        let mut flags = vec!["--authentication".to_string()];
        flags.extend(["--cert".into(), path(&cert), "--key".into(), path(&key)]);
        let b = Broker::spawn(port, port, dir, SQLITE, &flags, Some(cert.clone()));
        let (user, password) = users[0];
        let settings = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", password),
            ("ssl.ca.location", &path(&cert)),
        ];
        register(&b.brokers(), &settings);
        b
    }

    /// A broker behind a TLS front that requires a client certificate
    /// (mutual TLS): stunnel on the advertised port checks the client's
    /// certificate against `client.pem` in the broker's directory (made
    /// with its key `client.key`, self-signed) and forwards to nisshi on a
    /// loopback port of its own. nisshi itself serves TLS but does not ask
    /// for client certificates, hence the front. The harness's clients
    /// present the client certificate.
    pub fn start_mutual_tls() -> Broker {
        let (port, inner) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("cep-broker-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        let (cert, key) = self_signed(&dir, "broker");
        let (client_cert, client_key) = self_signed(&dir, "client");
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{inner}\ncert = {}\nkey = {}\nrequireCert = yes\nverifyPeer = yes\nCAfile = {}\n",
                cert.display(),
                key.display(),
                client_cert.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("stunnel.log")).expect("stunnel log");
        let front = Command::new(stunnel())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("stunnel starts");
        let mut b = Broker::spawn(inner, port, dir, SQLITE, &[], Some(cert.clone()));
        b.front = Some(front);
        b.port = port;
        wait_listening(port, &b.dir.join("stunnel.log"));
        let settings = [
            ("security.protocol", "ssl"),
            ("ssl.ca.location", &path(&cert)),
            ("ssl.certificate.location", &path(&client_cert)),
            ("ssl.key.location", &path(&client_key)),
        ];
        register(&b.brokers(), &settings);
        b
    }

    fn spawn(
        port: u16,
        advertised: u16,
        dir: PathBuf,
        storage: &str,
        flags: &[String],
        ca: Option<PathBuf>,
    ) -> Broker {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nisshi.log"))
            .expect("broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(nisshi())
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", storage])
            .args(flags)
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nisshi starts");
        let b = Broker {
            child,
            front: None,
            port,
            dir,
            ca,
        };
        wait_listening(port, &b.dir.join("nisshi.log"));
        b
    }

    /// Stops the broker and hands back its directory, data kept.
    fn stop_keeping_data(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::take(&mut self.dir);
        std::mem::forget(self);
        dir
    }

    /// CPU time (user + system) the broker has used so far.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nisshi.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(front) = self.front.as_mut() {
            let _ = front.kill();
            let _ = front.wait();
        }
        if let Some(m) = SECURED.lock().unwrap().as_mut() {
            m.remove(&self.brokers());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until something listens on `port` (see `log` if not).
fn wait_listening(port: u16, log: &Path) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the harness's clients of `brokers` use `settings`.
fn register(brokers: &str, settings: &[(&str, &str)]) {
    SECURED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(
            brokers.to_string(),
            settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
}

/// The stunnel command (Debian's stunnel4 package; scripts/test.sh
/// installs it).
fn stunnel() -> &'static str {
    let found = |c: &str| {
        Command::new(c)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .is_ok()
    };
    if found("stunnel4") {
        "stunnel4"
    } else {
        "stunnel"
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A self-signed certificate and its key (`NAME.pem`, `NAME.key`) for
/// `localhost` and `127.0.0.1`, made by the `openssl` command.
pub fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// CPU time (user + system) process `pid` has used so far (Linux `/proc`).
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 a second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}
