//! Writes that must not be lost: files replaced atomically (checkpoints,
//! pattern files), lines appended and synced (file sink, dead letters), and
//! retrying until a write succeeds, for destinations that may come back.
//!
//! The writes block (fsync can take many milliseconds); async callers run
//! them through [`blocking`] so that the runtime's worker threads, which
//! also serve the HTTP API and the pipeline, never wait on a disk.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Replaces `path` with `bytes` atomically: temporary file, fsync, rename,
/// fsync of the directory. A crash leaves the old content or the new.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp~");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Appends each of `lines` plus a newline to `path` in one write, then
/// syncs the data.
pub fn append_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l);
        buf.push(b'\n');
    }
    f.write_all(&buf)?;
    f.sync_data()
}

/// Runs blocking file I/O on the runtime's blocking pool.
pub async fn blocking<T, F>(f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 10 s and
/// logging each failure as `what`; `on_retry` runs before each wait (a
/// metric).
pub async fn until_ok<F, Fut>(what: &str, mut on_retry: impl FnMut(), mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = attempt().await {
        on_retry();
        tracing::error!(error = %e, "retrying {what}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_and_appends_accumulate() {
        let dir = std::env::temp_dir().join(format!("cep-durable-{}", std::process::id()));
        let f = dir.join("a/b.txt");
        write_atomically(&f, b"one").unwrap();
        write_atomically(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!f.with_extension("tmp~").exists());
        let log = dir.join("log.jsonl");
        append_lines(&log, [&b"x"[..], b"y"].into_iter()).unwrap();
        append_lines(&log, std::iter::once(&b"z"[..])).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\ny\nz\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_until_the_write_succeeds() {
        let mut tries = 0;
        let mut retries = 0;
        until_ok(
            "a test write",
            || retries += 1,
            || {
                tries += 1;
                let ok = tries >= 3;
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("down".to_string())
                    }
                }
            },
        )
        .await;
        assert_eq!((tries, retries), (3, 2));
    }
}
