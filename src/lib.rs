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
//! - [`agent`]   — `fwagent run`: the loop that joins followers, detector, kernel and store.
//! - [`control`] — the root-only Unix socket through which the CLI talks to a running agent.
//! - [`status`]  — one status snapshot (kernel counters + the agent's figures) and its views:
//!   `fwagent status [--json]`, the dashboard, `/api/status`, `/metrics` (served by
//!   `agent::web`).
//! - [`state`]   — the persistent store (redb): active bans, offence history, follower
//!   checkpoints; crash-safe, a bad file is moved aside, never fatal.
//! - [`config`]  — the TOML configuration (embedded default, file/line/key errors).
//! - [`cli`]     — the `fwagent` command line; one file per command group.
//!
//! Nothing in this crate spawns a process: the kernel is reached through netlink only.

pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod detect;
pub mod duration;
pub mod follow;
pub mod nft;
pub mod state;
pub mod status;
