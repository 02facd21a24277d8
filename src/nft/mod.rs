//! The kernel layer (nftables over nfnetlink). See the crate map in lib.rs.
