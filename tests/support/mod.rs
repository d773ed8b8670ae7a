//! Shared by the service tests: a real broker, the real `cep serve` binary
//! as a child process, and plain rdkafka clients to feed and read topics.

#![allow(dead_code)]

pub mod broker;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub use broker::{client, free_port, Broker};

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cep-svc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = rt
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .unwrap();
    for x in r {
        x.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
}

/// The offsets `group` has committed for `topic`'s partitions `0..n`
/// (`-1`: none).
pub fn committed(brokers: &str, group: &str, topic: &str, n: i32) -> Vec<i64> {
    let c: BaseConsumer = client(brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..n)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// A record to produce: partition, key, value.
pub struct Out<'a> {
    pub partition: Option<i32>,
    pub key: Option<&'a str>,
    pub value: &'a [u8],
}

pub fn produce(brokers: &str, topic: &str, records: &[Out]) {
    let p: BaseProducer = client(brokers).set("linger.ms", "5").create().unwrap();
    for r in records {
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(r.value);
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        if let Some(n) = r.partition {
            rec = rec.partition(n);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    p.poll(Duration::from_millis(50));
                    rec = back;
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).expect("records delivered");
}

/// A record read back.
#[derive(Clone, Debug)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("a JSON value")
    }
}

/// Reads `topic` from the beginning until `want(records so far)` holds or
/// `timeout` passes; returns what it read.
pub fn consume_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    want: impl Fn(&[Got]) -> bool,
) -> Vec<Got> {
    let c: BaseConsumer = client(brokers)
        .set("group.id", format!("reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let t0 = Instant::now();
    let partitions = loop {
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md {
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 {
                break n;
            }
        }
        assert!(t0.elapsed() < timeout, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    while !want(&got) && t0.elapsed() < timeout {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let h = h.get(i);
                    headers.insert(
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            got.push(Got {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    got
}

/// Unused-import guard for helpers that build headers.
pub fn header<'a>(h: OwnedHeaders, k: &'a str, v: &'a str) -> OwnedHeaders {
    h.insert(Header {
        key: k,
        value: Some(v),
    })
}

/// `cep serve` running as a child process in `dir`.
pub struct Serve {
    child: Child,
    pub dir: PathBuf,
    pub http: u16,
}

impl Serve {
    /// Writes `config` (with `{HTTP}` replaced by a free port) to
    /// `dir/config.toml` and starts `cep serve` there.
    pub fn start(dir: &Path, config: &str) -> Serve {
        Serve::start_with_env(dir, config, &[])
    }

    /// [`Serve::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Serve {
        Serve::start_binary(Path::new(env!("CARGO_BIN_EXE_cep")), dir, config, env)
    }

    /// [`Serve::start_with_env`] with another build of `cep` (an earlier
    /// version, for a before/after figure).
    pub fn start_binary(bin: &Path, dir: &Path, config: &str, env: &[(&str, &str)]) -> Serve {
        let http = free_port();
        let config = config.replace("{HTTP}", &http.to_string());
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stdout.log"))
            .unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        let child = Command::new(bin)
            .current_dir(dir)
            .args(["serve", "--config", "config.toml"])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("cep serve starts");
        Serve {
            child,
            dir: dir.to_path_buf(),
            http,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu(&self) -> Duration {
        broker::cpu_of(self.child.id())
    }

    /// `GET path` on the service's HTTP port: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path)
    }

    /// Waits until `/readyz` answers 200 (partitions assigned).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("cep serve exited with {s}:\n{}", self.log());
            }
            assert!(t0.elapsed() < timeout, "never ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A metric's value (summed over its label sets matching `labels`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let Some((_, text)) = self.get("/metrics") else {
            return 0.0;
        };
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, &[], "")
}

/// One HTTP/1.1 request: (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Alerts `cep replay` finds in a JSON lines file: alert id → alert.
pub fn replay(
    patterns: &Path,
    input: &Path,
    lateness: &str,
) -> BTreeMap<String, serde_json::Value> {
    let config = input.with_extension("replay.toml");
    std::fs::write(&config, "[engine]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cep"))
        .arg("replay")
        .arg("--config")
        .arg(&config)
        .arg("--patterns")
        .arg(patterns)
        .arg("--input")
        .arg(input)
        .args(["--lateness", lateness])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["alert_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}
