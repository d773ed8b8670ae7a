//! A task's checkpoints as the pipeline writes them: one at a time, in
//! order, each once the outputs before it are acknowledged; whole or the
//! changes since the last one, as the task's chain in the state topic asks.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::service::checkpoint::Cut;
use crate::service::metrics::Metrics;
use crate::service::source::{self, Source};
use crate::service::state::{Chain, StateTopic};
use crate::service::task::Task;

/// A task and the writing of its checkpoints.
pub(super) struct Slot {
    pub(super) task: Task,
    /// The number of the task's last checkpoint.
    pub(super) seq: u64,
    /// The task's state in the state topic (while no write is in flight).
    pub(super) chain: Chain,
    /// The next checkpoint must be whole: the pattern set changed, so
    /// changes would not apply to the chain's patterns.
    pub(super) whole_next: bool,
    /// Cut waiting for its outputs: (ledger high mark, cut).
    pub(super) pending: Option<(u64, Cut)>,
    /// The checkpoint being written, if any: whether it was committed,
    /// and the chain after it.
    pub(super) writing: Option<JoinHandle<(bool, Chain)>>,
}

impl Slot {
    /// Cuts the task's next checkpoint: whole when the chain or the
    /// pattern set asks for it, else the changes since the last one.
    pub(super) fn cut(&mut self, group: &str, whole: bool) -> Cut {
        let whole = whole || self.whole_next || self.chain.wants_whole();
        self.whole_next &= !whole;
        self.seq += 1;
        let mut c = self.task.cut(group, whole);
        c.set_seq(self.seq);
        c
    }

    /// Takes back the chain of a finished write.
    pub(super) async fn finish_write(&mut self) -> bool {
        let Some(w) = self.writing.take() else {
            return true;
        };
        let (ok, chain) = w.await.unwrap_or((false, Chain::default()));
        self.chain = chain;
        ok
    }
}

/// Where checkpoints go: the state topic, the metrics that count them.
#[derive(Clone)]
pub(super) struct CheckpointSink {
    pub(super) state: StateTopic,
    pub(super) metrics: Arc<Metrics>,
}

/// Adds `cut` to `task`'s chain in the state topic, then commits its
/// offsets: off the pipeline's thread (serialising must not stall the
/// records). Returns whether both happened (else the offsets stay where
/// they were) and the chain to continue from.
pub(super) fn persist(
    sink: CheckpointSink,
    task: i32,
    consumer: &Arc<Source>,
    cut: Cut,
    chain: Chain,
    sync: bool,
) -> JoinHandle<(bool, Chain)> {
    let consumer = consumer.clone();
    tokio::spawn(async move {
        let cut = Arc::new(cut);
        let c2 = cut.clone();
        let Ok(bytes) = tokio::task::spawn_blocking(move || c2.to_bytes()).await else {
            return (false, Chain::default());
        };
        let whole = matches!(*cut, Cut::Whole(_));
        let chain = match sink.state.save(task, cut.seq(), whole, &bytes, chain).await {
            Ok(chain) => chain,
            Err((e, chain)) => {
                tracing::error!(task, error = %e, "checkpoint not written to the state topic");
                return (false, chain);
            }
        };
        let offsets = cut.offsets().clone();
        let commit = tokio::task::spawn_blocking(move || source::commit(&consumer, &offsets, sync));
        if let Ok(Err(e)) | Err(e) = commit.await.map_err(|e| e.to_string()) {
            tracing::warn!(error = %e, "offset commit failed");
            return (false, chain);
        }
        let kind = if whole { "whole" } else { "changes" };
        sink.metrics.inc("cep_checkpoints_total", &[("kind", kind)]);
        let task = task.to_string();
        let l = [("task", task.as_str())];
        sink.metrics
            .set("cep_checkpoint_bytes", &l, bytes.len() as f64);
        sink.metrics
            .set("cep_state_bytes", &l, chain.bytes() as f64);
        (true, chain)
    })
}
