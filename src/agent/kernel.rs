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
use std::time::Duration;

use tokio::sync::oneshot;

use crate::nft::{Applied, BanReport, Nft, NftError, Schema, Target, UnbanReport};

/// One ban as the kernel sees it: what, and for how long (`None` = permanent).
pub type KernelBan = (Target, Option<Duration>);

enum Cmd {
    Ban(Vec<KernelBan>, oneshot::Sender<Result<BanReport, NftError>>),
    Unban(Vec<Target>, oneshot::Sender<Result<UnbanReport, NftError>>),
    Apply(Schema, bool, oneshot::Sender<Result<Applied, NftError>>),
    Teardown(String, oneshot::Sender<Result<bool, NftError>>),
    Generation(oneshot::Sender<Result<u32, NftError>>),
}

/// A cloneable handle to the kernel actor.
#[derive(Clone)]
pub struct KernelHandle {
    tx: std_mpsc::Sender<Cmd>,
    schema: std::sync::Arc<std::sync::RwLock<Schema>>,
}

/// The actor has stopped (its thread panicked or the socket died for good).
fn gone<T>(_: T) -> NftError {
    NftError::Gone
}

impl KernelHandle {
    /// Opens the netlink socket and starts the actor thread.
    pub fn start(nft: Nft, schema: Schema) -> std::io::Result<KernelHandle> {
        let (tx, rx) = std_mpsc::channel();
        let shared = std::sync::Arc::new(std::sync::RwLock::new(schema));
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

    pub async fn ban(&self, bans: Vec<KernelBan>) -> Result<BanReport, NftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Ban(bans, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    pub async fn unban(&self, targets: Vec<Target>) -> Result<UnbanReport, NftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Unban(targets, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    /// Applies `schema` (creating, checking or rebuilding the table) and makes it the schema
    /// later bans use.
    pub async fn apply(&self, schema: Schema, own: bool) -> Result<Applied, NftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Apply(schema, own, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    pub async fn teardown(&self, table: String) -> Result<bool, NftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Teardown(table, tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }

    pub async fn generation(&self) -> Result<u32, NftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Generation(tx)).map_err(gone)?;
        rx.await.map_err(gone)?
    }
}

fn actor(
    mut nft: Nft,
    rx: std_mpsc::Receiver<Cmd>,
    schema: std::sync::Arc<std::sync::RwLock<Schema>>,
) {
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
                let mut replies = vec![(bans.len(), reply)];
                loop {
                    match rx.try_recv() {
                        Ok(Cmd::Ban(more, r)) => {
                            replies.push((more.len(), r));
                            bans.extend(more);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = nft.ban(&current, &bans);
                for (_, reply) in replies {
                    let _ = reply.send(result.clone());
                }
            }
            Cmd::Unban(targets, reply) => {
                let _ = reply.send(nft.unban(&current, &targets));
            }
            Cmd::Apply(new, own, reply) => {
                let result = nft.apply(&new, own);
                if result.is_ok() {
                    *schema.write().expect("schema lock") = new;
                }
                let _ = reply.send(result);
            }
            Cmd::Teardown(table, reply) => {
                let _ = reply.send(nft.teardown(&table));
            }
            Cmd::Generation(reply) => {
                let _ = reply.send(nft.generation());
            }
        }
    }
}
