//! The cursor puller: pulls `kf/sync_msg` pages for one account until `has_more` is 0, hands
//! them out as batches or as a stream, and persists `next_cursor` only after the caller accepted
//! the batch.
//!
//! ```no_run
//! # async fn demo(client: wechat_kf::client::Client) -> Result<(), wechat_kf::client::Error> {
//! use wechat_kf::client::puller::Puller;
//!
//! let mut puller = Puller::new(client, "wkACCOUNT");
//! loop {
//!     let batch = puller.fetch().await?;
//!     for message in &batch.messages {
//!         println!("{}", message.raw());
//!     }
//!     for bad in &batch.invalid {
//!         eprintln!("undecodable item {:?}: {}", bad.msgid, bad.error);
//!     }
//!     let more = batch.has_more();
//!     batch.commit().await?; // the cursor moves only now
//!     if !more {
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once: a batch that is dropped without [`Batch::commit`] is fetched again
//! by the next [`Puller::fetch`]. Message ids of committed batches are remembered in a window
//! (default 10,000 ids) and repeats are dropped, which absorbs the duplicates that callbacks and
//! restarts cause.
//!
//! # Pages and your own transaction
//!
//! A caller that stores messages durably and de-duplicates them itself (by msgid, in its
//! database) takes whole pages with [`Puller::fetch_page`]: the page exactly as the server sent
//! it, repeats included, nothing remembered. [`Page::commit_with`] hands the cursor to a closure
//! that stores the page's items *and* that cursor in one transaction; the puller moves its
//! cursor only when the closure succeeds, so a crash or a failed transaction pulls the same page
//! again and nothing is lost or stored twice. The [`CursorStore`] is not written on this path:
//! the closure is the persistence.
//!
//! Callback tokens arrive while a pull runs: hand the newest one to
//! [`Puller::set_callback_token`] before each page. A token the server rejects (95007) is
//! forgotten and the page pulled again without it, once; [`Page::callback_token_rejection`]
//! (or [`Puller::callback_token_rejection`] when the retry failed too) reports it so the caller
//! can forget its own copy.
//!
//! ```no_run
//! # async fn demo(client: wechat_kf::client::Client) -> Result<(), wechat_kf::client::Error> {
//! use std::time::SystemTime;
//! use wechat_kf::client::puller::Puller;
//!
//! # async fn store_in_one_transaction(
//! #     _: Vec<wechat_kf::message::Message>, _: Vec<wechat_kf::message::InvalidItem>, _: Option<String>,
//! # ) -> Result<usize, wechat_kf::client::Error> { Ok(0) }
//! let stored_cursor: Option<String> = None; // read from your database
//! let mut puller = Puller::new(client, "wkACCOUNT")
//!     .start_cursor(stored_cursor.unwrap_or_default())
//!     .dedup_window(0); // your database de-duplicates by msgid
//! loop {
//!     puller.set_callback_token("TOKEN-OF-THE-LATEST-CALLBACK", SystemTime::now());
//!     let mut page = puller.fetch_page().await?;
//!     if page.callback_token_rejection().is_some() {
//!         // Forget your copy of the token; the page was pulled without it.
//!     }
//!     let more = page.has_more();
//!     let messages = std::mem::take(&mut page.messages);
//!     let invalid = std::mem::take(&mut page.invalid);
//!     // Messages and cursor commit together; the puller's cursor moves only on Ok.
//!     let stored = page
//!         .commit_with(|cursor| store_in_one_transaction(messages, invalid, cursor))
//!         .await?;
//!     println!("{stored} new");
//!     if !more {
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;

use futures::future::BoxFuture;

use super::messages::{SyncMsgRequest, VoiceFormat};
use super::{Client, ErrCode, Error};
use crate::message::{InvalidItem, Message, SyncMsgResponse};
use crate::{MsgId, OpenKfId};

/// How long a callback `Token` may be used for `sync_msg` (10 minutes).
pub const CALLBACK_TOKEN_TTL: Duration = Duration::from_secs(600);

/// Safety margin: stop using a callback token this long before it expires, so that a page
/// requested just before expiry does not arrive after it.
const CALLBACK_TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// Whether a callback token received at `received_at` may still be used at `now`. Pure.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use wechat_kf::client::puller::callback_token_usable;
/// let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// assert!(callback_token_usable(t0, t0 + Duration::from_secs(60)));
/// assert!(!callback_token_usable(t0, t0 + Duration::from_secs(600)));
/// ```
pub fn callback_token_usable(received_at: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(received_at) {
        Ok(age) => age + CALLBACK_TOKEN_MARGIN < CALLBACK_TOKEN_TTL,
        // The clock went backwards a little: the token is fresh.
        Err(_) => true,
    }
}

/// How long to pause before asking again after `consecutive` empty pages in a row that all said
/// `has_more` (legal, but a server that keeps doing it must not be asked in a tight loop): no
/// pause for the first two, then 50 ms per empty page, at most 2 s. Pure.
///
/// ```
/// use std::time::Duration;
/// use wechat_kf::client::puller::empty_page_pause;
/// assert_eq!(empty_page_pause(2), Duration::ZERO);
/// assert_eq!(empty_page_pause(3), Duration::from_millis(150));
/// assert_eq!(empty_page_pause(1000), Duration::from_secs(2));
/// ```
pub fn empty_page_pause(consecutive: u32) -> Duration {
    if consecutive < 3 {
        return Duration::ZERO;
    }
    Duration::from_millis(50 * u64::from(consecutive)).min(Duration::from_secs(2))
}

/// Where the puller keeps `next_cursor` per account. Object-safe; implement it for durable
/// storage (the service has SQLite and Postgres stores).
pub trait CursorStore: Send + Sync + 'static {
    /// The committed cursor for `open_kfid`, if any.
    fn load<'a>(&'a self, open_kfid: &'a OpenKfId) -> BoxFuture<'a, Result<Option<String>, Error>>;

    /// Commits `cursor` for `open_kfid`.
    fn save<'a>(
        &'a self,
        open_kfid: &'a OpenKfId,
        cursor: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

/// An in-memory [`CursorStore`] (lost on restart; for tests and short-lived tools).
#[derive(Debug, Default)]
pub struct MemoryCursorStore {
    cursors: Mutex<HashMap<OpenKfId, String>>,
    saves: Mutex<Vec<(OpenKfId, String)>>,
}

impl MemoryCursorStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed cursor for `open_kfid`.
    pub fn get(&self, open_kfid: &OpenKfId) -> Option<String> {
        self.cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(open_kfid)
            .cloned()
    }

    /// Every save so far, in order (for tests that check when cursors were persisted).
    pub fn history(&self) -> Vec<(OpenKfId, String)> {
        self.saves.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl CursorStore for MemoryCursorStore {
    fn load<'a>(&'a self, open_kfid: &'a OpenKfId) -> BoxFuture<'a, Result<Option<String>, Error>> {
        let cursor = self.get(open_kfid);
        Box::pin(async move { Ok(cursor) })
    }

    fn save<'a>(
        &'a self,
        open_kfid: &'a OpenKfId,
        cursor: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(open_kfid.clone(), cursor.to_owned());
        self.saves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((open_kfid.clone(), cursor.to_owned()));
        Box::pin(async { Ok(()) })
    }
}

/// The last `capacity` msgids, for de-duplication.
#[derive(Debug)]
struct DedupWindow {
    capacity: usize,
    order: VecDeque<MsgId>,
    set: HashSet<MsgId>,
}

impl DedupWindow {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn contains(&self, msgid: &MsgId) -> bool {
        self.set.contains(msgid)
    }

    fn insert(&mut self, msgid: MsgId) {
        // One hash for the membership test and the insert.
        if self.capacity == 0 || !self.set.insert(msgid.clone()) {
            return;
        }
        self.order.push_back(msgid);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// Pulls one account's messages; see the [module docs](self).
pub struct Puller {
    client: Client,
    open_kfid: OpenKfId,
    store: Arc<dyn CursorStore>,
    committed: Option<String>,
    loaded: bool,
    callback_token: Option<(String, SystemTime)>,
    /// The server's 95007 for the callback token during the latest fetch, if any.
    token_rejection: Option<Error>,
    limit: Option<u32>,
    voice_format: Option<VoiceFormat>,
    dedup: DedupWindow,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("open_kfid", &self.open_kfid)
            .field("committed", &self.committed)
            .field("has_callback_token", &self.callback_token.is_some())
            .finish_non_exhaustive()
    }
}

/// One item of a pull: a decoded message or an item that could not be decoded.
#[derive(Debug, Clone)]
pub enum PullItem {
    /// A decoded message.
    Message(Message),
    /// An item that did not decode (raw JSON kept); the cursor moves past it all the same.
    Invalid(InvalidItem),
}

/// One page, de-duplicated. Call [`commit`](Self::commit) once it has been handled; dropping it
/// instead makes the next fetch deliver it again.
#[must_use = "the cursor only moves when the batch is committed"]
pub struct Batch<'p> {
    puller: &'p mut Puller,
    /// The messages to handle, in server order, without repeats of recently committed ones.
    pub messages: Vec<Message>,
    /// Items that did not decode, with their raw JSON.
    pub invalid: Vec<InvalidItem>,
    duplicates: usize,
    next_cursor: String,
    has_more: bool,
    msgids: Vec<MsgId>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.messages.len())
            .field("invalid", &self.invalid.len())
            .field("duplicates", &self.duplicates)
            .field("next_cursor", &self.next_cursor)
            .field("has_more", &self.has_more)
            .finish()
    }
}

impl Batch<'_> {
    /// Whether the server has more right now (keep fetching, even after an empty page).
    pub fn has_more(&self) -> bool {
        self.has_more
    }

    /// The cursor that [`commit`](Self::commit) will persist (empty if the server sent none;
    /// then the old cursor is kept).
    pub fn next_cursor(&self) -> &str {
        &self.next_cursor
    }

    /// How many items were dropped as repeats of recently committed ones.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// Whether there is nothing to handle.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.invalid.is_empty()
    }

    /// Accepts the batch: persists `next_cursor` and remembers its msgids.
    pub async fn commit(self) -> Result<(), Error> {
        let commit = PendingCommit {
            next_cursor: self.next_cursor,
            msgids: self.msgids,
        };
        self.puller.apply_commit(commit).await
    }
}

/// One page exactly as the server sent it: no de-duplication, nothing remembered. Commit it with
/// [`commit_with`](Self::commit_with) (your transaction stores the items and the cursor) or
/// [`commit`](Self::commit) (the puller's [`CursorStore`]); dropping it instead makes the next
/// fetch pull it again.
///
/// The item vectors are public so that they can be moved out (`std::mem::take`) into the
/// transaction before committing.
#[must_use = "the cursor only moves when the page is committed"]
pub struct Page<'p> {
    puller: &'p mut Puller,
    /// The items that decoded, in server order, repeats included.
    pub messages: Vec<Message>,
    /// The items that did not decode, with their raw JSON and their index in the page.
    pub invalid: Vec<InvalidItem>,
    next_cursor: String,
    has_more: bool,
}

impl std::fmt::Debug for Page<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("messages", &self.messages.len())
            .field("invalid", &self.invalid.len())
            .field("next_cursor", &self.next_cursor)
            .field("has_more", &self.has_more)
            .field(
                "callback_token_rejected",
                &self.puller.token_rejection.is_some(),
            )
            .finish()
    }
}

impl Page<'_> {
    /// Whether the server has more right now (keep fetching, even after an empty page).
    pub fn has_more(&self) -> bool {
        self.has_more
    }

    /// The cursor a commit moves to; `None` when the server sent none (the old one is kept).
    pub fn next_cursor(&self) -> Option<&str> {
        (!self.next_cursor.is_empty()).then_some(self.next_cursor.as_str())
    }

    /// Whether the page has no items (left in [`messages`](Self::messages) and
    /// [`invalid`](Self::invalid)).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.invalid.is_empty()
    }

    /// The server's rejection (95007) of the callback token sent for this page, if it rejected
    /// it. The puller has forgotten the token and pulled this page without it; forget your copy.
    pub fn callback_token_rejection(&self) -> Option<&Error> {
        self.puller.token_rejection.as_ref()
    }

    /// Commits the page through your own persistence: `persist` receives the cursor to store
    /// with the page's items (`None`: keep the stored one) and should write both in one
    /// transaction. The puller's cursor moves only if it returns `Ok`; after an `Err` the next
    /// fetch pulls the same page again. Its result is returned as it is. The puller's
    /// [`CursorStore`] is not written.
    pub async fn commit_with<F, Fut, T, E>(self, persist: F) -> Result<T, E>
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let cursor = (!self.next_cursor.is_empty()).then_some(self.next_cursor);
        let value = persist(cursor.clone()).await?;
        if cursor.is_some() {
            self.puller.committed = cursor;
        }
        Ok(value)
    }

    /// Commits the page's cursor to the puller's [`CursorStore`] (for callers without a
    /// transaction of their own).
    pub async fn commit(self) -> Result<(), Error> {
        let commit = PendingCommit {
            next_cursor: self.next_cursor,
            msgids: Vec::new(),
        };
        self.puller.apply_commit(commit).await
    }
}

struct PendingCommit {
    next_cursor: String,
    msgids: Vec<MsgId>,
}

/// A page after de-duplication.
struct Deduped {
    messages: Vec<Message>,
    invalid: Vec<InvalidItem>,
    duplicates: usize,
    next_cursor: String,
    has_more: bool,
    msgids: Vec<MsgId>,
}

impl Puller {
    /// A puller for `open_kfid` with an in-memory cursor store, no callback token, pages of up to
    /// 1000 and a de-duplication window of 10,000 msgids.
    pub fn new(client: Client, open_kfid: impl Into<OpenKfId>) -> Self {
        Self {
            client,
            open_kfid: open_kfid.into(),
            store: Arc::new(MemoryCursorStore::new()),
            committed: None,
            loaded: false,
            callback_token: None,
            token_rejection: None,
            limit: None,
            voice_format: None,
            dedup: DedupWindow::new(10_000),
        }
    }

    /// Where the cursor is loaded from and committed to.
    pub fn cursor_store(mut self, store: Arc<dyn CursorStore>) -> Self {
        self.store = store;
        self.loaded = false;
        self
    }

    /// Starts from `cursor` instead of the stored one (it is committed with the first batch).
    pub fn start_cursor(mut self, cursor: impl Into<String>) -> Self {
        let cursor = cursor.into();
        self.committed = (!cursor.is_empty()).then_some(cursor);
        self.loaded = true;
        self
    }

    /// The `Token` of the latest callback and when it arrived (see
    /// [`set_callback_token`](Self::set_callback_token)).
    pub fn callback_token(mut self, token: impl Into<String>, received_at: SystemTime) -> Self {
        self.set_callback_token(token, received_at);
        self
    }

    /// Uses the `Token` of a newer callback. It is sent with every page while it is younger
    /// than 10 minutes; afterwards, or after the server rejects it (95007), pages are pulled
    /// without a token (allowed, but rate limited more strictly). A caller that receives
    /// callbacks while it pulls calls this before each page with the newest token. A rejected
    /// token is forgotten, the page pulled again without it (once), and the rejection reported
    /// by [`callback_token_rejection`](Self::callback_token_rejection).
    pub fn set_callback_token(&mut self, token: impl Into<String>, received_at: SystemTime) {
        let token = token.into();
        self.callback_token = (!token.is_empty()).then_some((token, received_at));
    }

    /// Continues from `cursor` instead of the committed one (`None`: from the start of what the
    /// server still holds), e.g. after the server rejected the committed cursor. Nothing is
    /// written until the next commit.
    pub fn set_cursor(&mut self, cursor: Option<String>) {
        self.committed = cursor.filter(|c| !c.is_empty());
        self.loaded = true;
    }

    /// How many recently committed msgids are remembered to drop repeats (0 disables). Pages
    /// from [`fetch_page`](Self::fetch_page) bypass it.
    pub fn dedup_window(mut self, capacity: usize) -> Self {
        self.dedup = DedupWindow::new(capacity);
        self
    }

    /// Page size, 1–1000.
    pub fn page_limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Voice format for voice messages.
    pub fn voice_format(mut self, format: VoiceFormat) -> Self {
        self.voice_format = Some(format);
        self
    }

    /// The account pulled.
    pub fn open_kfid(&self) -> &OpenKfId {
        &self.open_kfid
    }

    /// The last committed cursor (`None` before the first commit when the store had none).
    pub fn committed_cursor(&self) -> Option<&str> {
        self.committed.as_deref()
    }

    /// The server's rejection (95007) of the callback token during the latest fetch, if any —
    /// also when pulling again without the token failed. The token is forgotten already.
    pub fn callback_token_rejection(&self) -> Option<&Error> {
        self.token_rejection.as_ref()
    }

    /// Fetches the next page after the committed cursor, whole: no de-duplication (see the
    /// [module docs](self#pages-and-your-own-transaction)).
    pub async fn fetch_page(&mut self) -> Result<Page<'_>, Error> {
        let response = self.sync().await?;
        Ok(Page {
            puller: self,
            messages: response.msg_list,
            invalid: response.invalid,
            next_cursor: response.next_cursor,
            has_more: response.has_more,
        })
    }

    /// Fetches the next page after the committed cursor.
    pub async fn fetch(&mut self) -> Result<Batch<'_>, Error> {
        let page = self.fetch_deduped().await?;
        Ok(Batch {
            puller: self,
            messages: page.messages,
            invalid: page.invalid,
            duplicates: page.duplicates,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
            msgids: page.msgids,
        })
    }

    /// Every message and undecodable item until the server has no more (`has_more` = 0), as a
    /// stream. Each page is committed when the item after its last one is requested, i.e. once
    /// the consumer is done with the page. The stream ends after the first error.
    pub fn stream(&mut self) -> impl Stream<Item = Result<PullItem, Error>> + '_ {
        enum State {
            Fetch,
            Drain {
                items: VecDeque<PullItem>,
                commit: PendingCommit,
                has_more: bool,
            },
            Done,
        }
        futures::stream::unfold(
            (self, State::Fetch, 0u32),
            |(puller, mut state, mut empty_pages)| async move {
                loop {
                    state = match state {
                        State::Done => return None,
                        State::Fetch => match puller.fetch_deduped().await {
                            Ok(page) => {
                                if page.messages.is_empty()
                                    && page.invalid.is_empty()
                                    && page.has_more
                                {
                                    // An empty page with has_more=1 is legal; keep going, but
                                    // slow down if it repeats.
                                    empty_pages += 1;
                                    let pause = empty_page_pause(empty_pages);
                                    if !pause.is_zero() {
                                        tokio::time::sleep(pause).await;
                                    }
                                } else {
                                    empty_pages = 0;
                                }
                                let mut items: VecDeque<PullItem> = VecDeque::with_capacity(
                                    page.messages.len() + page.invalid.len(),
                                );
                                items.extend(page.messages.into_iter().map(PullItem::Message));
                                items.extend(page.invalid.into_iter().map(PullItem::Invalid));
                                State::Drain {
                                    items,
                                    commit: PendingCommit {
                                        next_cursor: page.next_cursor,
                                        msgids: page.msgids,
                                    },
                                    has_more: page.has_more,
                                }
                            }
                            Err(error) => return Some((Err(error), (puller, State::Done, 0))),
                        },
                        State::Drain {
                            mut items,
                            commit,
                            has_more,
                        } => {
                            if let Some(item) = items.pop_front() {
                                let next = State::Drain {
                                    items,
                                    commit,
                                    has_more,
                                };
                                return Some((Ok(item), (puller, next, empty_pages)));
                            }
                            if let Err(error) = puller.apply_commit(commit).await {
                                return Some((Err(error), (puller, State::Done, 0)));
                            }
                            if has_more { State::Fetch } else { State::Done }
                        }
                    };
                }
            },
        )
    }

    async fn fetch_deduped(&mut self) -> Result<Deduped, Error> {
        let response = self.sync().await?;
        Ok(self.dedup_page(response))
    }

    /// One `sync_msg` call after the committed cursor, with the callback token while it is
    /// usable; after a 95007 the token is forgotten and the call repeated once without it.
    async fn sync(&mut self) -> Result<SyncMsgResponse, Error> {
        self.token_rejection = None;
        if !self.loaded {
            self.committed = self.store.load(&self.open_kfid).await?;
            self.loaded = true;
        }
        let mut request = SyncMsgRequest::new(self.open_kfid.clone());
        if let Some(cursor) = &self.committed {
            request = request.cursor(cursor.clone());
        }
        if let Some(limit) = self.limit {
            request = request.limit(limit);
        }
        if let Some(format) = self.voice_format {
            request = request.voice_format(format);
        }
        let now = self.client.now();
        if let Some((token, received_at)) = &self.callback_token {
            if callback_token_usable(*received_at, now) {
                request = request.token(token.clone());
            } else {
                self.callback_token = None;
            }
        }
        match self.client.messages().sync(request.clone()).await {
            Err(
                rejection @ Error::Api {
                    code: ErrCode::InvalidMsgToken,
                    ..
                },
            ) if request.has_token() => {
                // The token expired or was never ours: carry on without it.
                tracing::debug!(open_kfid = %self.open_kfid, "callback token rejected (95007); pulling without it");
                self.callback_token = None;
                self.token_rejection = Some(rejection);
                self.client.messages().sync(request.without_token()).await
            }
            other => other,
        }
    }

    fn dedup_page(&self, response: SyncMsgResponse) -> Deduped {
        if self.dedup.capacity == 0 {
            // De-duplication switched off: nothing to hash or remember.
            return Deduped {
                messages: response.msg_list,
                invalid: response.invalid,
                duplicates: 0,
                next_cursor: response.next_cursor,
                has_more: response.has_more,
                msgids: Vec::new(),
            };
        }
        let mut seen: HashSet<MsgId> = HashSet::with_capacity(response.msg_list.len());
        let mut duplicates = 0;
        let mut msgids = Vec::with_capacity(response.msg_list.len() + response.invalid.len());
        let mut messages = Vec::with_capacity(response.msg_list.len());
        for message in response.msg_list {
            let msgid = message.msgid();
            if self.dedup.contains(msgid) || !seen.insert(msgid.clone()) {
                duplicates += 1;
                continue;
            }
            msgids.push(msgid.clone());
            messages.push(message);
        }
        let mut invalid = Vec::with_capacity(response.invalid.len());
        for item in response.invalid {
            if let Some(msgid) = &item.msgid {
                if self.dedup.contains(msgid) || !seen.insert(msgid.clone()) {
                    duplicates += 1;
                    continue;
                }
                msgids.push(msgid.clone());
            }
            invalid.push(item);
        }
        if duplicates > 0 {
            tracing::debug!(open_kfid = %self.open_kfid, duplicates, "dropped repeated msgids");
        }
        Deduped {
            messages,
            invalid,
            duplicates,
            next_cursor: response.next_cursor,
            has_more: response.has_more,
            msgids,
        }
    }

    async fn apply_commit(&mut self, commit: PendingCommit) -> Result<(), Error> {
        if !commit.next_cursor.is_empty()
            && self.committed.as_deref() != Some(commit.next_cursor.as_str())
        {
            self.store
                .save(&self.open_kfid, &commit.next_cursor)
                .await?;
            self.committed = Some(commit.next_cursor);
        }
        for msgid in commit.msgids {
            self.dedup.insert(msgid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_tokens_are_used_for_nine_and_a_half_minutes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(callback_token_usable(t0, t0));
        assert!(callback_token_usable(t0, t0 + Duration::from_secs(569)));
        assert!(!callback_token_usable(t0, t0 + Duration::from_secs(570)));
        assert!(callback_token_usable(t0, t0 - Duration::from_secs(5)));
    }

    #[test]
    fn empty_pages_pause_from_the_third_in_a_row_and_never_longer_than_two_seconds() {
        assert_eq!(empty_page_pause(0), Duration::ZERO);
        assert_eq!(empty_page_pause(2), Duration::ZERO);
        assert_eq!(empty_page_pause(3), Duration::from_millis(150));
        assert_eq!(empty_page_pause(4), Duration::from_millis(200));
        assert_eq!(empty_page_pause(40), Duration::from_secs(2));
        assert_eq!(empty_page_pause(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn the_dedup_window_forgets_the_oldest_ids() {
        let mut window = DedupWindow::new(2);
        window.insert(MsgId::new("a"));
        window.insert(MsgId::new("b"));
        window.insert(MsgId::new("a"));
        window.insert(MsgId::new("c"));
        assert!(!window.contains(&MsgId::new("a")));
        assert!(window.contains(&MsgId::new("b")) && window.contains(&MsgId::new("c")));
        let mut off = DedupWindow::new(0);
        off.insert(MsgId::new("a"));
        assert!(!off.contains(&MsgId::new("a")));
    }
}
