//! One lazily opened, self-healing Redis connection with a timeout, shared by the Redis-backed
//! stores (tokens, the call budget): a broken connection is dropped and the next command
//! reconnects.

use std::future::Future;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::Error;

pub(crate) struct RedisLink {
    client: redis::Client,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl RedisLink {
    /// A link to the server at `url` (`redis://` or `rediss://`), not connected yet; 5 s timeout.
    pub(crate) fn open(url: &str) -> Result<RedisLink, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::store("invalid Redis URL", e))?;
        Ok(RedisLink {
            client,
            timeout: Duration::from_secs(5),
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// How long connecting, and each command, may take.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Error> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| Error::store("cannot connect to Redis", e))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `op` on the connection; an I/O error or timeout forgets the connection so the next
    /// call reconnects. `what` names the operation in the error.
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match op(connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
                    *self.connection.lock().await = None;
                }
                Err(Error::store(what, error))
            }
        }
    }
}
