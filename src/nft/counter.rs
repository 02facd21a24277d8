//! The `counter` expression: packets and bytes, as found in rule dumps (each drop rule's
//! counter) and in element dumps (the per-element counter cloned from the set expression).

use super::wire::{Attrs, be_u64};

const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads a counter from the payload of its NFTA_EXPR_DATA.
pub fn parse(data: &[u8]) -> Counter {
    let mut c = Counter::default();
    for (t, q) in Attrs::new(data) {
        match t {
            NFTA_COUNTER_BYTES => c.bytes = be_u64(q).unwrap_or(0),
            NFTA_COUNTER_PACKETS => c.packets = be_u64(q).unwrap_or(0),
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_counts() {
        let mut data = Vec::new();
        for (ty, v) in [(NFTA_COUNTER_BYTES, 252u64), (NFTA_COUNTER_PACKETS, 3)] {
            data.extend_from_slice(&12u16.to_ne_bytes());
            data.extend_from_slice(&ty.to_ne_bytes());
            data.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            parse(&data),
            Counter {
                packets: 3,
                bytes: 252
            }
        );
    }
}
