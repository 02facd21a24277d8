//! Rotation-safe log followers. See the crate map in lib.rs.
