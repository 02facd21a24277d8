//! Randomized action sequences (seeded, bounded) against a model of what was written, in
//! the spirit of vector's file_watcher tests: writes (whole and split lines), reads,
//! rotations of every kind with late writes to the old descriptor, and stop/resume from a
//! persisted checkpoint with a rotation while stopped. The follower must return exactly
//! the lines written, in file order, once.
//!
//! The model's one assumption, true of real rotations: the follower gets to look at the
//! file between two rotations, and the daemon reopens within the grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fwagent::follow::{Checkpoint, FileTail, SourceId, SourceStats, StartAt};

use crate::util::*;

const AFTER_GRACE: Duration = Duration::from_millis(301);

/// xorshift64*: tiny, seeded, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy)]
enum Rotation {
    RenameCreate,
    CopyTruncate,
    DeleteRecreate,
    AtomicReplace,
}

struct Sim {
    rng: Rng,
    w: Writer,
    t: Option<FileTail>,
    path: std::path::PathBuf,
    now: Instant,
    got: Vec<String>,
    cp: Option<Checkpoint>,
    log: Vec<String>,
    verbose: bool,
}

impl Sim {
    fn poll(&mut self) {
        let (lines, cp) = drain(self.t.as_mut().unwrap(), self.now);
        if self.verbose && !lines.is_empty() {
            eprintln!(
                "poll: {} lines {:?}..{:?} cp={:?}",
                lines.len(),
                lines[0].get(20..37).unwrap_or(&lines[0]),
                lines[lines.len() - 1]
                    .get(20..37)
                    .unwrap_or(&lines[lines.len() - 1]),
                cp
            );
        }
        self.got.extend(lines);
        if cp.is_some() {
            self.cp = cp;
        }
    }

    fn maybe_poll(&mut self) {
        if self.rng.chance(50) {
            self.poll();
        }
    }

    /// Time passes beyond any grace period, and the follower looks.
    fn settle(&mut self) {
        self.poll();
        self.now += AFTER_GRACE;
        self.poll();
    }

    fn write(&mut self) {
        let k = 1 + self.rng.below(20) as usize;
        self.w.write(k);
    }

    fn split_line(&mut self, n: u64) {
        let l = format!("split line {n} with a tail");
        let cut = 1 + self.rng.below(l.len() as u64 - 1) as usize;
        self.w.raw(&l.as_bytes()[..cut]);
        self.maybe_poll();
        self.w.raw(&l.as_bytes()[cut..]);
        self.w.raw(b"\n");
        self.w.expect_line(&l);
    }

    /// One rotation with the daemon's late writes to the old fd (`late` allows them).
    fn rotate(&mut self, kind: Rotation, late: bool, poll_between: bool) {
        self.log.push(format!(
            "{kind:?} at written={} read={}",
            self.w.expected().len(),
            self.got.len()
        ));
        if self.verbose {
            eprintln!("{}", self.log.last().unwrap());
        }
        let late_n = if late { self.rng.below(12) as usize } else { 0 };
        match kind {
            Rotation::RenameCreate => {
                self.w.rotate_rename_create();
                if poll_between {
                    self.maybe_poll();
                }
                self.w.write(late_n);
                if poll_between {
                    self.maybe_poll();
                }
                self.w.reopen();
            }
            Rotation::CopyTruncate => {
                self.w.rotate_copytruncate();
                if poll_between {
                    self.maybe_poll();
                }
            }
            Rotation::DeleteRecreate => {
                self.w.delete();
                self.w.write(late_n);
                if poll_between {
                    self.maybe_poll();
                }
                self.w.reopen();
            }
            Rotation::AtomicReplace => {
                let k = self.rng.below(5) as usize;
                self.w.atomic_replace(k);
                if poll_between {
                    self.maybe_poll();
                }
                self.w.write(late_n);
                self.w.reopen_replaced();
            }
        }
    }

    fn pick_rotation(&mut self) -> Rotation {
        match self.rng.below(4) {
            0 => Rotation::RenameCreate,
            1 => Rotation::CopyTruncate,
            2 => Rotation::DeleteRecreate,
            _ => Rotation::AtomicReplace,
        }
    }

    /// Stop (after a settle, checkpoint persisted as JSON), change things, resume.
    fn restart(&mut self) {
        self.settle();
        let mut cp = self.cp.clone();
        self.t = None;
        self.log.push(format!(
            "restart at written={} read={} cp={:?}",
            self.w.expected().len(),
            self.got.len(),
            cp
        ));
        if self.verbose {
            eprintln!("{}", self.log.last().unwrap());
        }
        // Lines written while stopped.
        if self.rng.chance(70) {
            self.write();
        }
        if self.rng.chance(50) {
            let mut kind = self.pick_rotation();
            // Known limit: a checkpoint taken while the file was empty has no fingerprint to
            // recognise the copy by, so a copytruncate while stopped would lose the lines
            // the copy took. Not modelled.
            if matches!(kind, Rotation::CopyTruncate) && empty_fp(&cp) {
                kind = Rotation::RenameCreate;
            }
            // A deleted or replaced file cannot be read after a restart: only rotations
            // that keep the old content reachable may carry late writes.
            let late = matches!(kind, Rotation::RenameCreate | Rotation::CopyTruncate);
            if !late {
                // What was written since the checkpoint would be gone with the file.
                self.catch_up_before_destroying(cp.is_some());
                cp = self.cp.clone();
            }
            self.rotate(kind, late, false);
            if self.rng.chance(70) {
                self.write();
            }
        }
        if self.verbose {
            dump_dir(self.path.parent().unwrap());
        }
        let start = match cp {
            Some(c) => {
                let json = serde_json::to_string(&c).unwrap();
                StartAt::Checkpoint(serde_json::from_str(&json).unwrap())
            }
            None => StartAt::Beginning,
        };
        self.t = Some(FileTail::new(
            SourceId(1),
            self.path.clone(),
            start,
            opts(),
            Arc::new(SourceStats::default()),
        ));
    }

    /// Before the file is deleted or replaced while we are stopped, whatever it holds must
    /// have been read: model that by resuming briefly, reading, and stopping again (a
    /// deleted file cannot be read after the fact by anyone).
    fn catch_up_before_destroying(&mut self, have_cp: bool) {
        let start = match (&self.cp, have_cp) {
            (Some(c), true) => StartAt::Checkpoint(c.clone()),
            _ => StartAt::Beginning,
        };
        let mut t = FileTail::new(
            SourceId(1),
            self.path.clone(),
            start,
            opts(),
            Arc::new(SourceStats::default()),
        );
        let (lines, cp) = drain(&mut t, self.now);
        if self.verbose {
            eprintln!("catch-up drain: {} lines, cp={cp:?}", lines.len());
        }
        self.got.extend(lines);
        if cp.is_some() {
            self.cp = cp;
        }
    }
}

fn dump_dir(dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    v.sort_by_key(|e| e.file_name());
    for e in v {
        let m = e.metadata().unwrap();
        let c = std::fs::read(e.path()).unwrap_or_default();
        let first = String::from_utf8_lossy(&c[..c.len().min(40)]).into_owned();
        eprintln!(
            "  {:?} ino={} len={} head={first:?}",
            e.file_name(),
            m.ino(),
            m.len()
        );
    }
}

fn empty_fp(cp: &Option<Checkpoint>) -> bool {
    match cp {
        Some(Checkpoint::File(p)) => p.fingerprint.len == 0,
        _ => true,
    }
}

fn run(seed: u64, steps: usize) {
    let d = TempDir::new(&format!("model{seed}"));
    let path = d.join("mainlog");
    let w = Writer::open(&path);
    let t = FileTail::new(
        SourceId(1),
        path.clone(),
        StartAt::Beginning,
        opts(),
        Arc::new(SourceStats::default()),
    );
    let mut s = Sim {
        rng: Rng::new(seed),
        w,
        t: Some(t),
        path,
        now: Instant::now(),
        got: Vec::new(),
        cp: None,
        log: Vec::new(),
        verbose: std::env::var("FOLLOW_MODEL_SEED").is_ok(),
    };
    let mut split_n = 0;
    for _ in 0..steps {
        match s.rng.below(100) {
            0..40 => s.write(),
            40..48 => {
                split_n += 1;
                s.split_line(split_n);
            }
            48..75 => s.poll(),
            75..80 => s.now += Duration::from_millis(s.rng.below(200)),
            80..92 => {
                // The follower has looked since the previous rotation, and its grace
                // period is over: rotations are hours apart in real life.
                s.settle();
                let kind = s.pick_rotation();
                s.rotate(kind, true, true);
            }
            92..96 => s.settle(),
            _ => s.restart(),
        }
    }
    s.settle();
    let want = s.w.expected();
    if s.got != want {
        eprintln!("seed {seed}: actions {:?}", s.log);
    }
    assert_lines(&s.got, &want);
}

#[test]
fn random_action_sequences_match_the_model() {
    // Bounded: 48 seeds × 300 steps; a failing seed is printed with its rotation log.
    if let Ok(seed) = std::env::var("FOLLOW_MODEL_SEED") {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::INFO)
            .try_init();
        return run(seed.parse().unwrap(), 300);
    }
    for seed in 0..48 {
        run(seed, 300);
    }
}
