//! A blocking client for the CLI and the end-to-end tests: the client role on its own event
//! loop thread, fed operations through a queue and answering through a channel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kv::client::{Client, ClientConfig, ClientOp, ClientTimer, Completed, Outcome};
use proto::{Addr, Message, NodeId};
use runtime::Keys;
use runtime::net::{NetDriver, NetOptions, StopHandle};
use runtime::{ConnId, Ctx, Dest, Link, Origin, Role};

/// Why a blocking call ended without an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No request left this client before the timeout: nothing was applied.
    NothingSent,
    /// A request was sent but no answer came in time: it may or may not have been applied.
    NoAnswer,
    /// The client's event loop is gone.
    Stopped(String),
}

struct Shared {
    commands: Mutex<VecDeque<ClientOp>>,
    /// Whether the outstanding operation has been sent.
    sent: AtomicBool,
}

struct ClientHost {
    client: Client,
    shared: Arc<Shared>,
    results: Sender<Completed>,
}

impl ClientHost {
    fn publish(&mut self) {
        let sent = self
            .client
            .outstanding()
            .is_some_and(|outstanding| outstanding.sent);
        self.shared.sent.store(sent, Ordering::SeqCst);
        for done in self.client.take_completed() {
            // The caller may have given up waiting; nothing else to do then.
            let _ = self.results.send(done);
        }
    }
}

impl Role for ClientHost {
    type Timer = ClientTimer;

    fn on_start(&mut self, ctx: &mut Ctx<ClientTimer>) {
        self.client.on_start(ctx);
    }

    fn on_message(&mut self, ctx: &mut Ctx<ClientTimer>, origin: &Origin, message: Message) {
        self.client.on_message(ctx, origin, message);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ClientTimer>, timer: ClientTimer) {
        self.client.on_timer(ctx, timer);
    }

    fn on_link(&mut self, ctx: &mut Ctx<ClientTimer>, to: Dest, link: Link) {
        self.client.on_link(ctx, to, link);
    }

    fn on_closed(&mut self, ctx: &mut Ctx<ClientTimer>, conn: ConnId) {
        self.client.on_closed(ctx, conn);
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<ClientTimer>) {
        let commands: Vec<ClientOp> = match self.shared.commands.lock() {
            Ok(mut queue) => queue.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for op in commands {
            self.client.submit(ctx, op);
        }
        self.publish();
    }
}

/// A client on its own event-loop thread.
pub struct BlockingClient {
    shared: Arc<Shared>,
    results: Receiver<Completed>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl BlockingClient {
    /// Starts a client of the cluster whose view service is at `view_service`.
    ///
    /// # Errors
    /// The event loop could not be set up.
    pub fn start(view_service: Addr, name: &str, keys: Keys) -> Result<BlockingClient, String> {
        BlockingClient::start_with(ClientConfig::new(view_service), name, keys)
    }

    /// Starts a client with `config`.
    ///
    /// # Errors
    /// The event loop could not be set up.
    pub fn start_with(
        config: ClientConfig,
        name: &str,
        keys: Keys,
    ) -> Result<BlockingClient, String> {
        let shared = Arc::new(Shared {
            commands: Mutex::new(VecDeque::new()),
            sent: AtomicBool::new(false),
        });
        let (results_tx, results) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let node = NodeId::new(name.to_string()).map_err(|why| format!("client name: {why}"))?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let host = ClientHost {
                client: Client::new(config),
                shared: thread_shared,
                results: results_tx,
            };
            let mut options = NetOptions::new(node);
            options.keys = keys;
            let driver = match NetDriver::new(host, options) {
                Ok(driver) => driver,
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(driver.stop_handle()));
            if let Err(error) = driver.run() {
                log::error!("client event loop: {error}");
            }
        });
        let stop = ready
            .recv()
            .map_err(|_| "client thread ended before starting".to_string())?
            .map_err(|error| format!("client event loop: {error}"))?;
        Ok(BlockingClient {
            shared,
            results,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `op` and waits up to `timeout` for its outcome.
    ///
    /// # Errors
    /// [`CallError`] when no outcome came in time, telling "nothing sent" from "unknown".
    pub fn call(&self, op: ClientOp, timeout: Duration) -> Result<Outcome, CallError> {
        match self.shared.commands.lock() {
            Ok(mut queue) => queue.push_back(op),
            Err(poisoned) => poisoned.into_inner().push_back(op),
        }
        self.shared.sent.store(false, Ordering::SeqCst);
        self.stop.wake();
        match self.results.recv_timeout(timeout) {
            Ok(done) => Ok(done.outcome),
            Err(RecvTimeoutError::Timeout) if self.shared.sent.load(Ordering::SeqCst) => {
                Err(CallError::NoAnswer)
            }
            Err(RecvTimeoutError::Timeout) => Err(CallError::NothingSent),
            Err(RecvTimeoutError::Disconnected) => {
                Err(CallError::Stopped("client event loop ended".into()))
            }
        }
    }
}

impl Drop for BlockingClient {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A role that sends one request, keeps the answer, and stops.
struct OneShot {
    to: Addr,
    request: Message,
    answer: Option<Message>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum OneShotTimer {
    Resend,
}

impl Role for OneShot {
    type Timer = OneShotTimer;

    fn on_start(&mut self, ctx: &mut Ctx<OneShotTimer>) {
        ctx.send(self.to, self.request.clone());
    }

    fn on_message(&mut self, ctx: &mut Ctx<OneShotTimer>, _origin: &Origin, message: Message) {
        self.answer = Some(message);
        ctx.stop();
    }

    fn on_timer(&mut self, ctx: &mut Ctx<OneShotTimer>, _timer: OneShotTimer) {
        ctx.send(self.to, self.request.clone());
    }

    fn on_link(&mut self, ctx: &mut Ctx<OneShotTimer>, _to: Dest, link: Link) {
        if link == Link::Down && self.answer.is_none() {
            ctx.set_timer(OneShotTimer::Resend, Duration::from_millis(100));
        }
    }
}

/// Sends `request` to `to` (retrying while it cannot connect) and waits up to `timeout`
/// for the first answer.
///
/// # Errors
/// No answer in time, or the event loop failed.
pub fn request(
    to: Addr,
    request: Message,
    timeout: Duration,
    keys: Keys,
) -> Result<Message, String> {
    let node = NodeId::new(format!("cli-{}", std::process::id())).map_err(|why| why.to_string())?;
    let role = OneShot {
        to,
        request,
        answer: None,
    };
    let mut options = NetOptions::new(node);
    options.keys = keys;
    let driver = NetDriver::new(role, options).map_err(|e| format!("event loop: {e}"))?;
    let stop = driver.stop_handle();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let timer = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            stop.stop();
        }
    });
    let role = driver.run().map_err(|e| format!("event loop: {e}"))?;
    let _ = done_tx.send(());
    let _ = timer.join();
    role.answer
        .ok_or_else(|| format!("no answer from {to} within {timeout:?}"))
}
