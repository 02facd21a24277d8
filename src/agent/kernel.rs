//! The task that owns the kernel socket. Everything else holds a cloneable [`KernelHandle`]
//! and sends commands with a reply channel.
//!
//! The actor runs on its own OS thread because the netlink socket is blocking: a ban never
//! waits behind the async loop, and the loop never blocks on the kernel. Bans that queue up
//! while the kernel is busy are merged into one transaction (a burst costs one batch), while a
//! lone ban goes out at once — there is no timer that waits for more.
//!
//! Dumps (status, list) use a second socket opened per request on a blocking worker, so a
//! 100,000-element read never delays a ban.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::nft::{Applied, BanReport, Nft, NftError, Schema, Target, UnbanReport};

/// One ban as the kernel sees it: what, and for how long (`None` = permanent).
pub type KernelBan = (Target, Option<Duration>);

/// Kernel errors are shared: one failed merged transaction answers several callers.
pub type KernelError = Arc<NftError>;
type Reply<T> = oneshot::Sender<Result<T, KernelError>>;

enum Cmd {
    Ban(Vec<KernelBan>, Reply<BanReport>),
    Unban(Vec<Target>, Reply<UnbanReport>),
    Apply(Schema, bool, Reply<Applied>),
    Teardown(String, Reply<bool>),
    Generation(Reply<u32>),
}

/// A cloneable handle to the kernel actor.
#[derive(Clone)]
pub struct KernelHandle {
    tx: std_mpsc::Sender<Cmd>,
    schema: Arc<RwLock<Schema>>,
}

/// The actor has stopped (its thread panicked or every handle is gone).
fn gone<T>(_: T) -> KernelError {
    Arc::new(NftError::Invalid("the kernel task has stopped".into()))
}

impl KernelHandle {
    /// Opens the netlink socket and starts the actor thread.
    pub fn start(nft: Nft, schema: Schema) -> std::io::Result<KernelHandle> {
        let (tx, rx) = std_mpsc::channel();
        let shared = Arc::new(RwLock::new(schema));
        let schema_for_thread = shared.clone();
        std::thread::Builder::new()
            .name("fwagent-kernel".into())
            .spawn(move || actor(nft, rx, schema_for_thread))?;
        Ok(KernelHandle { tx, schema: shared })
    }

    /// The schema the actor currently applies bans to.
    pub fn schema(&self) -> Schema {
        self.schema.read().expect("schema lock").clone()
    }

    pub async fn ban(&self, bans: Vec<KernelBan>) -> Result<BanReport, KernelError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Ban(bans, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    pub async fn unban(&self, targets: Vec<Target>) -> Result<UnbanReport, KernelError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Unban(targets, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    /// Applies `schema` (creating, checking or rebuilding the table) and makes it the schema
    /// later bans use.
    pub async fn apply(&self, schema: Schema, own: bool) -> Result<Applied, KernelError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Apply(schema, own, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    pub async fn teardown(&self, table: String) -> Result<bool, KernelError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Teardown(table, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    pub async fn generation(&self) -> Result<u32, KernelError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Generation(tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }
}

fn actor(mut nft: Nft, rx: std_mpsc::Receiver<Cmd>, schema: Arc<RwLock<Schema>>) {
    let mut pending: Option<Cmd> = None;
    loop {
        let cmd = match pending.take() {
            Some(c) => c,
            None => match rx.recv() {
                Ok(c) => c,
                Err(_) => return, // every handle dropped: the agent is done
            },
        };
        let current = schema.read().expect("schema lock").clone();
        match cmd {
            Cmd::Ban(mut bans, reply) => {
                // Merge every ban already queued behind this one into the same transaction.
                let mut replies = vec![reply];
                loop {
                    match rx.try_recv() {
                        Ok(Cmd::Ban(more, r)) => {
                            replies.push(r);
                            bans.extend(more);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = nft.ban(&current, &bans).map_err(Arc::new);
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
            Cmd::Unban(targets, reply) => {
                let _ = reply.send(nft.unban(&current, &targets).map_err(Arc::new));
            }
            Cmd::Apply(new, own, reply) => {
                let result = nft.apply(&new, own).map_err(Arc::new);
                if result.is_ok() {
                    *schema.write().expect("schema lock") = new;
                }
                let _ = reply.send(result);
            }
            Cmd::Teardown(table, reply) => {
                let _ = reply.send(nft.teardown(&table).map_err(Arc::new));
            }
            Cmd::Generation(reply) => {
                let _ = reply.send(nft.generation().map_err(Arc::new));
            }
        }
    }
}
