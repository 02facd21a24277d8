//! Helpers shared by the integration tests.
pub mod agent;
pub mod netns;
