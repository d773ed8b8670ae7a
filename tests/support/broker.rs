//! A real Kafka-compatible broker for tests: tansu on a free loopback port,
//! SQLite storage in a temporary directory, stopped when dropped.
//!
//! `scripts/install-tansu.sh` installs the binary (`.ci/run` calls it); a
//! missing binary fails the test with that instruction rather than skipping
//! it.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

fn tansu() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return p.into();
    }
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("tansu").exists() {
                return d.join("tansu");
            }
        }
    }
    panic!("tansu not found: run scripts/install-tansu.sh (or set TANSU=/path/to/tansu)");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Broker {
    /// A broker with SQLite storage: committed offsets, restarts and
    /// "latest" offsets behave like Kafka.
    pub fn start() -> Broker {
        Broker::start_with("sqlite://tansu.db?maintenance_interval=5s")
    }

    /// A broker with the given storage engine URL.
    pub fn start_with(storage: &str) -> Broker {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cep-broker-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        let b = Broker { child, port, dir };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {port}; see {}",
                b.dir.join("tansu.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
