//! Kernel features that differ between the kernels users run (Debian 12's 6.1 … current),
//! probed at runtime, and the switch that forces the old-kernel paths for tests.
//!
//! | feature          | kernel | without it                                              |
//! |------------------|--------|---------------------------------------------------------|
//! | `persist`        | 6.9    | never take table ownership (an owned table would die    |
//! |                  |        | with the agent's socket)                                |
//! | `destroy`        | 6.3    | DELSETELEM; on ENOENT retry without the missing keys    |
//! | `timeout_update` | 6.10   | refresh = delete + add in one batch (counter restarts)  |
//! | `set_count`      | recent | count elements by dumping the set                      |

use std::fmt;

/// What the running kernel supports. `Features::default()` is the most capable set; the
/// probe turns off what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Features {
    /// NFT_TABLE_F_PERSIST: an owned table survives its owner (6.9+).
    pub persist: bool,
    /// DESTROYTABLE/DESTROYSETELEM: deleting a missing object is not an error (6.3+).
    pub destroy: bool,
    /// NEWSETELEM on an existing element updates its timeout, keeping its counter (6.10+).
    pub timeout_update: bool,
    /// GETSET reports the element count (NFTA_SET_COUNT).
    pub set_count: bool,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            persist: true,
            destroy: true,
            timeout_update: true,
            set_count: true,
        }
    }
}

impl Features {
    /// What Debian 12's 6.1 kernel offers.
    pub const LINUX_6_1: Features = Features {
        persist: false,
        destroy: false,
        timeout_update: false,
        set_count: false,
    };

    /// Name of the environment variable read by [`Features::apply_compat_env`].
    pub const COMPAT_ENV: &'static str = "FWAGENT_KERNEL_COMPAT";

    /// Turns features off by name: a comma-separated list of `nopersist`, `nodestroy`,
    /// `noupdate`, `nocount`, or `6.1` for all of them. Features can only be taken away:
    /// forcing one on that the kernel lacks would fail later anyway.
    pub fn with_compat(mut self, spec: &str) -> Result<Features, String> {
        for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "nopersist" => self.persist = false,
                "nodestroy" => self.destroy = false,
                "noupdate" => self.timeout_update = false,
                "nocount" => self.set_count = false,
                "6.1" | "all" => self = Features::LINUX_6_1,
                other => {
                    return Err(format!(
                        "unknown kernel compat flag {other:?} (known: nopersist, nodestroy, \
                         noupdate, nocount, 6.1)"
                    ));
                }
            }
        }
        Ok(self)
    }

    /// Applies `FWAGENT_KERNEL_COMPAT` when set.
    pub fn apply_compat_env(self) -> Result<Features, String> {
        match std::env::var(Self::COMPAT_ENV) {
            Ok(v) => self
                .with_compat(&v)
                .map_err(|e| format!("{}: {e}", Self::COMPAT_ENV)),
            Err(_) => Ok(self),
        }
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "persist={} destroy={} timeout_update={} set_count={}",
            yes(self.persist),
            yes(self.destroy),
            yes(self.timeout_update),
            yes(self.set_count)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_flags_only_take_away() {
        let f = Features::default()
            .with_compat("nodestroy, noupdate")
            .unwrap();
        assert!(!f.destroy && !f.timeout_update && f.persist && f.set_count);
        assert_eq!(
            Features::default().with_compat("6.1").unwrap(),
            Features::LINUX_6_1
        );
        assert!(Features::default().with_compat("turbo").is_err());
        assert_eq!(
            Features::default().with_compat("").unwrap(),
            Features::default()
        );
    }
}
