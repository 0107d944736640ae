//! Per-node generation numbers as seen by waiting long-polls.
//!
//! The store commits a change to a node's targets and hands back a [`GenerationChange`]; its
//! contents can be read only by publishing it, so a handler cannot use a change and forget to
//! wake the node's long-polls.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use uuid::Uuid;

/// A committed change to a node's targets that its long-polls have not been told about.
#[must_use = "publish it (Generations::publish), or agents waiting on the node sleep \
              through the change"]
pub(crate) struct GenerationChange<T = ()> {
    node: Uuid,
    generation: u64,
    value: T,
}

impl<T> GenerationChange<T> {
    /// `value` is whatever else the change produced (the created target).
    pub(crate) fn new(node: Uuid, generation: u64, value: T) -> Self {
        Self {
            node,
            generation,
            value,
        }
    }
}

/// A [`GenerationChange`] after it was published.
pub(crate) struct Published<T> {
    pub node: Uuid,
    pub generation: u64,
    pub value: T,
}

/// Wakes long-polls the moment a node's generation changes.
#[derive(Default)]
pub(crate) struct Generations {
    senders: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
}

impl Generations {
    pub(crate) fn subscribe(&self, node: Uuid) -> watch::Receiver<u64> {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders
            .entry(node)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub(crate) fn publish<T>(&self, change: GenerationChange<T>) -> Published<T> {
        let GenerationChange {
            node,
            generation,
            value,
        } = change;
        self.observe(node, generation);
        Published {
            node,
            generation,
            value,
        }
    }

    /// Wakes the node's long-polls for a generation committed elsewhere (by another conductor
    /// on the same database), unless they already saw it or a later one.
    pub(crate) fn observe(&self, node: Uuid, generation: u64) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        match senders.get(&node) {
            Some(tx) if tx.receiver_count() > 0 => {
                tx.send_if_modified(|seen| {
                    let newer = generation > *seen;
                    if newer {
                        *seen = generation;
                    }
                    newer
                });
            }
            // Nobody waits: drop the entry so idle nodes cost nothing.
            Some(_) => {
                senders.remove(&node);
            }
            None => {}
        }
    }

    /// The nodes that long-polls wait on now.
    pub(crate) fn watched(&self) -> Vec<Uuid> {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(node, _)| *node)
            .collect()
    }
}
