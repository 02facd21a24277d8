//! fwagent — follow daemon logs, detect offenders, ban them in the kernel over netlink.
//!
//! Map of the crate (data flows top to bottom):
//!
//! - [`follow`]  — rotation-safe log followers driven by inotify; emit complete lines and
//!   checkpoints (file identity + offset + fingerprint).
//! - [`detect`]  — rules (regex with a `host` capture), strict address parsing, windows,
//!   allow-list and local addresses; turns lines into offenders.
//! - [`nft`]     — the kernel layer: our own nftables table (`inet fwagent`), sets with
//!   per-element timeouts and counters, input/forward drop rules, all over raw nfnetlink.
//! - [`state`]   — the persistent store (redb): active bans, offence history, follower
//!   checkpoints; crash-safe, a bad file is moved aside, never fatal.
//! - [`control`] — the root-only Unix socket through which the CLI talks to a running agent.
//! - [`config`]  — the TOML configuration (embedded default, file/line/key errors).
//! - [`cli`]     — the `fwagent` command line; one file per command group.
//!
//! Nothing in this crate spawns a process: the kernel is reached through netlink only.

pub mod cli;
pub mod config;
pub mod control;
pub mod detect;
pub mod duration;
pub mod follow;
pub mod nft;
pub mod state;
