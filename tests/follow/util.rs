//! Test helpers: a temp directory per test, a writer that behaves like a daemon (holds its
//! file open and appends with single writes), logrotate-style rotations, and collectors.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fwagent::follow::{Batch, Checkpoint, Event, FileTail, FollowOptions};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory removed on drop (even when the test fails).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("fwagent-follow-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The text of line `n` (unique, sortable, a realistic length).
pub fn line(n: u64) -> String {
    format!("2026-12-03 10:00:00 line {n:07} H=(client) [203.0.113.9] Rate limited")
}

/// Options for tests: small grace so rotations complete quickly in real time.
pub fn opts() -> FollowOptions {
    FollowOptions {
        rotate_grace: Duration::from_millis(300),
        ..FollowOptions::default()
    }
}

/// A daemon-like writer: one open append descriptor, one write(2) per line. Keeps, per
/// file generation, the lines written to it, so the expected reading order is known
/// (a follower reads a file to its end before the next one).
pub struct Writer {
    pub path: PathBuf,
    file: File,
    next: u64,
    /// Lines per file generation, in the order the follower must read them.
    gens: Vec<Vec<String>>,
    /// Index in `gens` of the file `file` writes to.
    cur: usize,
}

pub fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

impl Writer {
    /// Opens (creating) `path`; its current content is not part of the expectation.
    pub fn open(path: &Path) -> Self {
        Writer {
            path: path.to_path_buf(),
            file: open_append(path),
            next: 0,
            gens: vec![Vec::new()],
            cur: 0,
        }
    }

    /// Writes `k` numbered lines, each with one write.
    pub fn write(&mut self, k: usize) {
        for _ in 0..k {
            let l = line(self.next);
            self.next += 1;
            self.file
                .write_all(format!("{l}\n").as_bytes())
                .expect("write");
            self.gens[self.cur].push(l);
        }
    }

    /// Writes raw bytes (no bookkeeping).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.file.write_all(bytes).expect("write");
    }

    /// Records a line the test wrote with `raw` in pieces.
    pub fn expect_line(&mut self, l: &str) {
        self.gens[self.cur].push(l.to_string());
    }

    /// Lines written so far, in reading order.
    pub fn expected(&self) -> Vec<String> {
        self.gens.concat()
    }

    /// Drops the lines of the current generation that a test knows are lost.
    pub fn forget_current(&mut self) {
        self.gens[self.cur].clear();
    }

    /// The daemon reopens its log by path (after a rotation): a new generation begins
    /// unless the path still names the same file.
    pub fn reopen(&mut self) {
        self.file = open_append(&self.path);
        self.new_gen();
    }

    fn new_gen(&mut self) {
        self.gens.push(Vec::new());
        self.cur = self.gens.len() - 1;
    }

    /// logrotate's numbered names: `path.N` → `path.N+1` (up to 4), then `path` → `path.1`.
    pub fn shift_rotated(&self) {
        for n in (1..4).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, n + 1)).expect("shift rotated");
            }
        }
    }

    /// logrotate default: rename to `.1`, create a new empty file. The writer keeps its
    /// old descriptor until `reopen`.
    pub fn rotate_rename_create(&mut self) {
        self.shift_rotated();
        fs::rename(&self.path, rotated(&self.path, 1)).expect("rename");
        File::create(&self.path).expect("create");
    }

    /// logrotate `copytruncate`: copy to `.1`, truncate in place. The writer's O_APPEND
    /// descriptor goes on writing at the new end; its lines stay in the same generation.
    pub fn rotate_copytruncate(&mut self) {
        self.shift_rotated();
        fs::copy(&self.path, rotated(&self.path, 1)).expect("copy");
        OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open for truncate")
            .set_len(0)
            .expect("truncate");
    }

    /// Truncate in place without a copy: lines not yet read are lost by nature.
    pub fn truncate_only(&mut self) {
        OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open for truncate")
            .set_len(0)
            .expect("truncate");
    }

    /// Delete the file; the writer keeps its descriptor until `recreate_reopen`.
    pub fn delete(&mut self) {
        fs::remove_file(&self.path).expect("delete");
    }

    /// Atomic replace: a new file holding `k` fresh lines is renamed over the path. The
    /// writer keeps the old (now unlinked) descriptor until `reopen_same_gen`.
    pub fn atomic_replace(&mut self, k: usize) {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).expect("create tmp");
        let mut gen_lines = Vec::new();
        for _ in 0..k {
            let l = line(self.next);
            self.next += 1;
            f.write_all(format!("{l}\n").as_bytes()).expect("write tmp");
            gen_lines.push(l);
        }
        f.sync_all().ok();
        fs::rename(&tmp, &self.path).expect("rename over");
        // The new file's lines are read after everything still written to the old fd.
        self.gens.push(gen_lines);
    }

    /// After `atomic_replace`: the writer appends to the replacement (its generation was
    /// already opened by `atomic_replace`).
    pub fn reopen_replaced(&mut self) {
        self.file = open_append(&self.path);
        self.cur = self.gens.len() - 1;
    }
}

pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Lines of a batch as strings (tests write ASCII).
pub fn batch_lines(b: &Batch) -> Vec<String> {
    b.lines
        .iter()
        .map(|l| String::from_utf8_lossy(l.bytes).into_owned())
        .collect()
}

/// Synchronous drain: calls `next_batch` until it has nothing, returns lines and the last
/// checkpoint.
pub fn drain(tail: &mut FileTail, now: Instant) -> (Vec<String>, Option<Checkpoint>) {
    let mut out = Vec::new();
    let mut cp = None;
    for _ in 0..100_000 {
        match tail.next_batch(now) {
            Some(b) => {
                out.extend(batch_lines(&b));
                if b.checkpoint.is_some() {
                    cp = b.checkpoint.clone();
                }
            }
            None => return (out, cp),
        }
    }
    panic!("next_batch never ran dry");
}

/// Async collector: receives until a line equal to `until` (or `timeout`), returns all
/// lines before it, plus the number of batches.
pub async fn collect_until(
    rx: &mut tokio::sync::mpsc::Receiver<Event>,
    until: &str,
    timeout: Duration,
) -> (Vec<String>, usize) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut batches = 0;
    loop {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("channel closed; got {} lines", out.len()),
            Err(_) => panic!(
                "timed out waiting for {until:?}; got {} lines, last {:?}",
                out.len(),
                out.last()
            ),
        };
        match ev {
            Event::Batch(b) => {
                batches += 1;
                for l in batch_lines(&b) {
                    if l == until {
                        return (out, batches);
                    }
                    out.push(l);
                }
            }
            Event::Error { error, .. } => eprintln!("follower error: {error}"),
        }
    }
}

/// Compares sequences and, on mismatch, names the first difference (not 10,000 lines).
#[track_caller]
pub fn assert_lines(got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "line sequences differ at index {i}: got {} lines, want {}\n got[{i}..]: {:?}\nwant[{i}..]: {:?}",
        got.len(),
        want.len(),
        &got[i..got.len().min(i + 3)],
        &want[i..want.len().min(i + 3)]
    );
}
