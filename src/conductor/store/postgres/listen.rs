//! Generation changes made through other conductors: a LISTEN connection of this conductor's
//! own, whose notifications wake the long-polls waiting here. A notification sent while the
//! connection is down is lost, so after every (re)connect the generations of the nodes with
//! waiting long-polls are read again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use super::{CHANNEL, PgStore};
use crate::conductor::generations::Generations;
use crate::conductor::store::StoreApi;

/// The longest wait between two attempts to connect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Feeds `generations` from the database until the task is aborted, reconnecting by itself.
pub(crate) async fn follow(store: Arc<super::super::Store>, generations: Arc<Generations>) {
    let Some(pg) = store.postgres() else {
        return;
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(pg, &store, &generations, &mut backoff).await {
            Ok(()) => tracing::warn!("the database ended the LISTEN connection; reconnecting"),
            Err(e) => tracing::warn!(
                error = %e,
                "the LISTEN connection to the database failed; reconnecting"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: LISTEN, catch up, then every notification until it ends.
async fn listen(
    pg: &PgStore,
    store: &super::super::Store,
    generations: &Generations,
    backoff: &mut Duration,
) -> Result<(), super::StoreError> {
    let (client, mut connection) = pg.config.connect(pg.tls.clone()).await?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for the client's queries to be answered, too.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the LISTEN connection failed");
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    tracing::info!("listening for other conductors' generation changes");
    *backoff = Duration::from_millis(100);
    // What changed while nobody listened: the nodes someone waits for, read again.
    for node in generations.watched() {
        if let Ok(generation) = store.generation(node).await {
            generations.observe(node, generation);
        }
    }
    while let Some(payload) = notifications.recv().await {
        match parse(&payload) {
            Some((node, generation)) => generations.observe(node, generation),
            None => tracing::warn!(payload, "a generation notification could not be read"),
        }
    }
    drop(client);
    driver.abort();
    Ok(())
}

fn parse(payload: &str) -> Option<(Uuid, u64)> {
    let (node, generation) = payload.split_once(' ')?;
    Some((node.parse().ok()?, generation.parse().ok()?))
}
