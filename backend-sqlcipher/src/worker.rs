//! One thread per store that owns the `rusqlite::Connection` and runs jobs sent to it.
//!
//! rusqlite is blocking. Running it on an async runtime's worker threads would stall every other
//! task on that thread for the length of each query (and of each `fsync` at commit). The worker
//! keeps all of it on a dedicated OS thread: callers send a closure over a channel and await its
//! answer on a oneshot channel, which works under any async runtime. The connection never moves
//! between threads, jobs run one at a time in the order they were sent, and dropping the storage
//! ends the thread, which closes the connection.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;

use rusqlite::Connection;
use sync_core::{Error, ErrorKind, Result};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// The handle to a store's connection thread.
#[derive(Debug)]
pub(crate) struct Worker {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    closed: Mutex<Option<oneshot::Receiver<Result<()>>>>,
}

fn closed_error() -> Error {
    Error::new(ErrorKind::Storage, "the store is closed")
}

fn stopped_error() -> Error {
    Error::internal("the store's database thread stopped unexpectedly")
}

impl Worker {
    /// Starts the thread (named `name`), runs `open` on it, and returns once the connection is
    /// open (or the error `open` returned).
    pub(crate) async fn start<F>(path: PathBuf, name: &str, open: F) -> Result<Self>
    where
        F: FnOnce() -> Result<Connection> + Send + 'static,
    {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let (closed_tx, closed_rx) = oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut conn = match open() {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when every sender is gone: the storage was closed or dropped.
                while let Ok(job) = job_rx.recv() {
                    job(&mut conn);
                }
                let result = conn.close().map_err(|(_, e)| {
                    tracing::warn!(path = %path.display(), error = %e, "closing the store failed");
                    crate::map_sql(e, "close store")
                });
                let _ = closed_tx.send(result);
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    "cannot start the store's database thread",
                )
                .with_source(e)
            })?;
        ready_rx.await.map_err(|_| stopped_error())??;
        Ok(Self {
            jobs: Mutex::new(Some(job_tx)),
            closed: Mutex::new(Some(closed_rx)),
        })
    }

    /// Runs `f` on the connection thread and returns its result.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let sender = self.sender()?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        sender.send(job).map_err(|_| closed_error())?;
        rx.await.map_err(|_| stopped_error())?
    }

    /// Sends `f` to the connection thread without waiting for it. Fails only when the worker
    /// is closed.
    pub(crate) fn submit<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce(&mut Connection) + Send + 'static,
    {
        self.sender()?.send(Box::new(f)).map_err(|_| closed_error())
    }

    /// The job channel, unless the worker is closed.
    fn sender(&self) -> Result<mpsc::Sender<Job>> {
        self.jobs
            .lock()
            .map_err(|_| Error::internal("store lock poisoned"))?
            .clone()
            .ok_or_else(closed_error)
    }

    /// Stops accepting jobs, lets the ones already sent finish, closes the connection and waits
    /// for it. Closing twice is harmless.
    pub(crate) async fn close(&self) -> Result<()> {
        let sender = self
            .jobs
            .lock()
            .map_err(|_| Error::internal("store lock poisoned"))?
            .take();
        drop(sender);
        let closed = self
            .closed
            .lock()
            .map_err(|_| Error::internal("store lock poisoned"))?
            .take();
        match closed {
            // A concurrent `call` may still hold a clone of the sender; the thread ends when it
            // is done.
            Some(rx) => rx.await.map_err(|_| stopped_error())?,
            None => Ok(()),
        }
    }
}
