//! `cep patterns ...`: a thin client of the pattern REST API.
//!
//! Each subcommand is one request; the answer is printed as the server sent
//! it (JSON, or DOT for `graph`), diagnostics rendered as the CLI renders
//! them. Exit status 0 on a 2xx answer, 1 otherwise.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum PatternsCommand {
    /// Every running pattern with its version, mode and counters.
    List,
    /// One pattern's source and metadata.
    Get { name: String },
    /// Create or replace a pattern from a file holding exactly it.
    Put { name: String, file: PathBuf },
    /// Remove a pattern.
    Delete { name: String },
    /// Check a file without changing anything.
    Validate { file: PathBuf },
    /// Switch a pattern between `active` and `shadow`.
    Mode {
        name: String,
        #[arg(value_parser = ["active", "shadow"])]
        mode: String,
    },
    /// Read the server's patterns directory again after direct edits.
    Reload,
    /// The compiled automaton as Graphviz DOT.
    Graph { name: String },
}

/// Runs one subcommand against `server`; returns the exit status.
pub fn run(server: &str, token: Option<&str>, cmd: PatternsCommand) -> Result<i32, String> {
    let base = server.trim_end_matches('/');
    let read =
        |f: &PathBuf| std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()));
    let (method, path, body) = match &cmd {
        PatternsCommand::List => (reqwest::Method::GET, "/patterns".to_string(), None),
        PatternsCommand::Get { name } => (reqwest::Method::GET, format!("/patterns/{name}"), None),
        PatternsCommand::Put { name, file } => (
            reqwest::Method::PUT,
            format!("/patterns/{name}"),
            Some(read(file)?),
        ),
        PatternsCommand::Delete { name } => {
            (reqwest::Method::DELETE, format!("/patterns/{name}"), None)
        }
        PatternsCommand::Validate { file } => (
            reqwest::Method::POST,
            "/patterns/validate".to_string(),
            Some(read(file)?),
        ),
        PatternsCommand::Mode { name, mode } => (
            reqwest::Method::PUT,
            format!("/patterns/{name}/mode"),
            Some(serde_json::json!({ "mode": mode }).to_string()),
        ),
        PatternsCommand::Reload => (reqwest::Method::POST, "/patterns/reload".to_string(), None),
        PatternsCommand::Graph { name } => (
            reqwest::Method::GET,
            format!("/patterns/{name}/graph"),
            None,
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (status, text) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|e| format!("{base}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, text))
    })?;
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    // Diagnostics print as the CLI prints them, errors on stderr, the rest
    // on stdout as sent.
    if let Some(d) = json.as_ref().and_then(|j| j["diagnostics"].as_array()) {
        for s in d.iter().filter_map(|x| x["snippet"].as_str()) {
            eprint!("{s}");
        }
    }
    if status.is_success() {
        match &json {
            Some(j) => println!("{}", serde_json::to_string_pretty(j).expect("json")),
            None => print!("{text}"),
        }
    } else {
        match json.as_ref().and_then(|j| j["error"].as_str()) {
            Some(e) => eprintln!("{status}: {e}"),
            None => eprintln!("{status}: {text}"),
        }
    }
    let ok = status.is_success() && json.as_ref().is_none_or(|j| j["valid"] != false);
    Ok(if ok { 0 } else { 1 })
}
