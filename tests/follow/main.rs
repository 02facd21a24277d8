//! Follower tests: one binary (`cargo test --test follow`).
//! - `tail`: the rotation logic step by step with a fake clock (deterministic);
//! - `resume`: checkpoints across stops, appends and rotations while stopped;
//! - `model`: seeded random action sequences against a model of what was written;
//! - `live`: the real thing — inotify, tokio, a writer thread at speed.

mod live;
mod model;
mod resume;
mod tail;
mod util;
