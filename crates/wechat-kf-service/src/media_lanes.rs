//! Media never holds up other customers: the messages of a committed page go to the deliverer at
//! once, except a customer's messages from its first media message on, which wait for that
//! media (downloaded, converted, uploaded — or failed) in a task of that customer's own.
//!
//! Order per customer (per [`Lane`]) is kept: once a customer has a task, every later message
//! of that customer, media or not and from any later page, queues behind it in that task; the
//! task ends when its queue is empty. Messages before a customer's first media message on a
//! page are handed over with the page, before the task starts. Downloads in flight are bounded
//! by `media.concurrency` over all customers (the fetcher's semaphore). How long a message
//! waits for its media is bounded by the fetcher: 5 minutes for the download (retries
//! included), 30 s for a conversion, the object store's retries (3, within 30 s); a failure is
//! recorded and the message delivered all the same.
//!
//! Nothing is lost on shutdown or a crash: the messages are committed before they get here; at
//! the next start the missing media are downloaded ([`MediaFetcher`] backfill) before the
//! deliverer recovers the undelivered rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wechat_kf::OpenKfId;

use crate::delivery::DeliveryQueue;
use crate::media::MediaFetcher;
use crate::store::{Lane, Payload, Store, StoredMessage};

/// The one way stored rows reach the deliverer: behind their customer's media when media is
/// downloaded, else straight to the delivery queue. Shared by the pullers and the sender (the
/// session changes of its transfers).
#[derive(Clone)]
pub(crate) struct Handover {
    /// The media lanes, when media is downloaded.
    pub(crate) lanes: Option<Arc<MediaLanes>>,
    /// The deliverer's queue.
    pub(crate) queue: DeliveryQueue,
}

impl Handover {
    /// Hands stored rows of one account over, keeping each customer's order.
    pub(crate) async fn hand_over(&self, open_kfid: &OpenKfId, stored: Vec<StoredMessage>) {
        match &self.lanes {
            Some(lanes) => lanes.hand_over(open_kfid, stored).await,
            None => self.queue.push(stored).await,
        }
    }
}

/// The customers whose messages wait for media, each with its task's queue.
pub(crate) struct MediaLanes {
    fetcher: Arc<MediaFetcher>,
    store: Arc<dyn Store>,
    deliveries: DeliveryQueue,
    shutdown: CancellationToken,
    /// A lane is here while its task runs; senders and the task's exit check hold the lock,
    /// so a message is never queued to a task that has already decided to end.
    waiting: Mutex<HashMap<Lane, mpsc::UnboundedSender<Vec<StoredMessage>>>>,
    tasks: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for MediaLanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaLanes").finish_non_exhaustive()
    }
}

impl MediaLanes {
    /// Lanes that download with `fetcher` and hand over to `deliveries`.
    pub(crate) fn new(
        fetcher: Arc<MediaFetcher>,
        store: Arc<dyn Store>,
        deliveries: DeliveryQueue,
        shutdown: CancellationToken,
    ) -> Arc<MediaLanes> {
        Arc::new(MediaLanes {
            fetcher,
            store,
            deliveries,
            shutdown,
            waiting: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<Lane, mpsc::UnboundedSender<Vec<StoredMessage>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tasks(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a committed page's messages over: at once, or behind their customer's media.
    /// Waits only while the deliverer is behind (as a direct hand-over does).
    pub(crate) async fn hand_over(
        self: &Arc<Self>,
        open_kfid: &OpenKfId,
        stored: Vec<StoredMessage>,
    ) {
        let (now, started) = self.split(stored);
        // First what may go now, then the new tasks: a task never hands over a customer's
        // later message before its earlier ones on this page.
        self.deliveries.push(now).await;
        let mut tasks = self.tasks();
        while tasks.try_join_next().is_some() {}
        for (lane, queue) in started {
            let lanes = self.clone();
            let open_kfid = open_kfid.clone();
            tasks.spawn(async move { lanes.run(open_kfid, lane, queue).await });
        }
    }

    /// Splits a page into what goes now and what waits; queues the latter to running tasks or
    /// to new ones, whose queues are returned (their tasks not started yet).
    #[allow(clippy::type_complexity)]
    fn split(
        &self,
        stored: Vec<StoredMessage>,
    ) -> (
        Vec<StoredMessage>,
        Vec<(Lane, mpsc::UnboundedReceiver<Vec<StoredMessage>>)>,
    ) {
        let mut now = Vec::new();
        let mut held: Vec<(Lane, Vec<StoredMessage>)> = Vec::new();
        let mut waiting = self.waiting();
        for message in stored {
            if let Some((_, group)) = held.iter_mut().find(|(lane, _)| *lane == message.lane) {
                group.push(message);
            } else if waiting.contains_key(&message.lane) || self.has_media(&message) {
                held.push((message.lane.clone(), vec![message]));
            } else {
                now.push(message);
            }
        }
        let mut started = Vec::new();
        for (lane, group) in held {
            let group = match waiting.get(&lane) {
                Some(queue) => match queue.send(group) {
                    Ok(()) => continue,
                    // The task is gone (shutdown): start another, which ends at once too.
                    Err(mpsc::error::SendError(group)) => group,
                },
                None => group,
            };
            let (queue, receiver) = mpsc::unbounded_channel();
            let _ = queue.send(group);
            waiting.insert(lane.clone(), queue);
            started.push((lane, receiver));
        }
        (now, started)
    }

    fn has_media(&self, message: &StoredMessage) -> bool {
        matches!(&message.payload, Some(Payload::Message(m)) if self.fetcher.job(m).is_some())
    }

    /// A customer's task: each queued group in turn, media first, then handed over; ends when
    /// nothing more is queued.
    async fn run(
        &self,
        open_kfid: OpenKfId,
        lane: Lane,
        mut queue: mpsc::UnboundedReceiver<Vec<StoredMessage>>,
    ) {
        loop {
            let group = match queue.try_recv() {
                Ok(group) => group,
                Err(_) => {
                    let mut waiting = self.waiting();
                    // Checked again under the lock that senders hold.
                    match queue.try_recv() {
                        Ok(group) => group,
                        Err(_) => {
                            waiting.remove(&lane);
                            return;
                        }
                    }
                }
            };
            let ready = tokio::select! {
                group = self.fetch(&open_kfid, group) => group,
                // Committed already: the downloads are redone at the next start.
                () = self.shutdown.cancelled() => return,
            };
            tokio::select! {
                () = self.deliveries.push(ready) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Downloads a group's media (concurrently, within the fetcher's bound), stores the
    /// records and puts them on the messages.
    async fn fetch(
        &self,
        open_kfid: &OpenKfId,
        mut group: Vec<StoredMessage>,
    ) -> Vec<StoredMessage> {
        let jobs = group.iter().filter_map(|m| match &m.payload {
            Some(Payload::Message(message)) => self.fetcher.job(message).map(|job| (m.seq, job)),
            _ => None,
        });
        let records: Vec<(i64, String)> =
            futures::future::join_all(jobs.map(|(seq, job)| async move {
                (seq, self.fetcher.fetch(open_kfid, &job).await.to_string())
            }))
            .await;
        if records.is_empty() {
            return group;
        }
        if let Err(e) = self.store.record_media(records.clone()).await {
            tracing::warn!(open_kfid = open_kfid.as_str(), error = %e, "cannot store media records; delivering them anyway");
        }
        let records: HashMap<i64, Arc<str>> = records
            .into_iter()
            .map(|(seq, json)| (seq, Arc::from(json)))
            .collect();
        for m in group.iter_mut() {
            if let Some(record) = records.get(&m.seq) {
                m.media = Some(record.clone());
            }
        }
        group
    }

    /// Waits for every task to end (after shutdown was signalled).
    pub(crate) async fn join(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks());
        while tasks.join_next().await.is_some() {}
    }

    /// Stops every task at once.
    pub(crate) async fn abort(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks());
        tasks.shutdown().await;
    }
}
