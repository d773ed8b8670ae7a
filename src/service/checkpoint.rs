//! Checkpoints: the engine's state together with the offsets it belongs to.
//!
//! Why snapshots and not only committed offsets: a partial match may hold
//! events from hours ago (a 24 h window), and the reorder buffer holds
//! events the watermark has not passed. Committing offsets alone would
//! either pass those events (a restart loses the partial match) or hold the
//! commit back for the whole window (a restart re-reads hours, and events
//! the original run had already used up would change what the re-read
//! matches). A snapshot taken between two records, with the next offset of
//! every partition, restores exactly the state those offsets imply; the
//! records after them are re-read, and the alerts they produce again carry
//! the same ids.
//!
//! The order of events is what makes it safe: a checkpoint is written, and
//! its offsets committed to Kafka, only once every output produced before it
//! is acknowledged (see [`crate::service::ledger`]). The file is written to
//! a temporary name, synced and renamed, so a crash leaves either the old
//! checkpoint or the new one.
//!
//! A checkpoint is whole ([`Checkpoint`]) or the changes since the one
//! before it ([`Increment`]: the runs of the keys that changed, and the
//! small rest whole); the state topic keeps a whole one and the increments
//! after it, and a reader applies them in order
//! ([`Checkpoint::apply`]).
//!
//! A checkpoint belongs to one task: partition number `i` of every input
//! topic (see [`crate::service::task`]). It is kept in the group's state
//! topic ([`crate::service::state`]) and cached in a file of its own,
//! `checkpoint-<group>-task-<i>.json`. Whenever the group assigns a task to
//! this process, the task resumes from its checkpoint if it has one for
//! exactly the partitions assigned, else from the committed offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{Changes, Snapshot};
use crate::time::partitions::PartitionClocks;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file.
    pub format: u32,
    /// The task's checkpoint number, counting across owners (see
    /// [`crate::service::state`]).
    #[serde(default)]
    pub seq: u64,
    pub group: String,
    /// The assigned partitions (`topic/partition`) the state belongs to.
    pub partitions: BTreeSet<String>,
    /// `topic/partition` → the next offset to read, for each partition read
    /// from (the others start at their committed offset).
    pub offsets: BTreeMap<String, i64>,
    /// For repartitioned inputs: per `<partition>@<source partition>`, the
    /// highest source offset matched (see [`crate::service::repartition`]).
    #[serde(default)]
    pub origins: BTreeMap<String, i64>,
    /// Per stream: each partition's newest event time.
    pub clocks: BTreeMap<String, PartitionClocks>,
    pub engine: Snapshot,
}

pub const FORMAT: u32 = 1;

/// The changes of a task since its previous checkpoint: the offsets and
/// clocks whole, the engine's changed keys ([`Changes`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Increment {
    pub format: u32,
    pub seq: u64,
    pub partitions: BTreeSet<String>,
    pub offsets: BTreeMap<String, i64>,
    #[serde(default)]
    pub origins: BTreeMap<String, i64>,
    pub clocks: BTreeMap<String, PartitionClocks>,
    pub engine: Changes,
}

/// What a task cuts at a checkpoint: its whole state or its changes.
#[derive(Clone, Debug)]
pub enum Cut {
    Whole(Checkpoint),
    Changes(Increment),
}

impl Cut {
    pub fn seq(&self) -> u64 {
        match self {
            Cut::Whole(c) => c.seq,
            Cut::Changes(i) => i.seq,
        }
    }

    pub fn set_seq(&mut self, seq: u64) {
        match self {
            Cut::Whole(c) => c.seq = seq,
            Cut::Changes(i) => i.seq = seq,
        }
    }

    pub fn offsets(&self) -> &BTreeMap<String, i64> {
        match self {
            Cut::Whole(c) => &c.offsets,
            Cut::Changes(i) => &i.offsets,
        }
    }

    /// Serialised as the state topic stores it: the checkpoint or the
    /// increment itself, not this enum.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Cut::Whole(c) => serde_json::to_vec(c),
            Cut::Changes(i) => serde_json::to_vec(i),
        }
        .expect("a checkpoint serialises")
    }
}

impl Checkpoint {
    /// Brings this checkpoint forward by the increment cut after it.
    pub fn apply(&mut self, i: Increment) -> Result<(), String> {
        if i.seq <= self.seq {
            return Err(format!(
                "increment {} does not follow checkpoint {}",
                i.seq, self.seq
            ));
        }
        if i.partitions != self.partitions {
            return Err(format!(
                "increment {} covers other partitions than checkpoint {}",
                i.seq, self.seq
            ));
        }
        self.engine.apply(i.engine)?;
        self.seq = i.seq;
        self.offsets = i.offsets;
        self.origins = i.origins;
        self.clocks = i.clocks;
        Ok(())
    }
}

pub fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The checkpoint file of one task of a consumer group.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path, group: &str, task: i32) -> Store {
        let safe: String = group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Store {
            path: state_dir.join(format!("checkpoint-{safe}-task-{task}.json")),
        }
    }

    /// The single checkpoint file of versions before tasks: it cannot be
    /// split by task, so it is only reported.
    pub fn legacy(state_dir: &Path, group: &str) -> PathBuf {
        let name = Store::new(state_dir, group, 0).path;
        let file = name.file_name().expect("a file name").to_string_lossy();
        state_dir.join(file.replace("-task-0.json", ".json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last checkpoint written, if any. A file that cannot be read is an
    /// error: starting afresh would silently lose partial matches.
    pub fn load(&self) -> Result<Option<Checkpoint>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let c: Checkpoint = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a checkpoint: {e}", self.path.display()))?;
        if c.format != FORMAT {
            return Err(format!(
                "{}: checkpoint format {} (this build reads {FORMAT})",
                self.path.display(),
                c.format
            ));
        }
        Ok(Some(c))
    }

    /// Writes atomically (see [`crate::service::durable::write_atomically`]).
    pub fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        crate::service::durable::write_atomically(&self.path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_checkpoint_loads_back() {
        let dir = std::env::temp_dir().join(format!("cep-ckpt-{}", std::process::id()));
        let store = Store::new(&dir, "my group", 3);
        assert!(store.load().unwrap().is_none());
        let engine = crate::engine::Engine::new(vec![], Default::default()).snapshot();
        let c = Checkpoint {
            format: FORMAT,
            seq: 1,
            group: "my group".into(),
            partitions: [partition_name("t", 0)].into(),
            offsets: [(partition_name("t", 0), 42)].into(),
            origins: BTreeMap::new(),
            clocks: BTreeMap::new(),
            engine,
        };
        store.save(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert!(store.path().ends_with("checkpoint-my_group-task-3.json"));
        assert!(Store::legacy(&dir, "my group").ends_with("checkpoint-my_group.json"));
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.offsets["t/0"], 42);
        std::fs::write(store.path(), b"{").unwrap();
        assert!(store.load().unwrap_err().contains("not a checkpoint"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
