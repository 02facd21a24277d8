//! `FileTail`: the rotation logic of one followed path, synchronous and driven by calls.
//!
//! It owns the open descriptor, the line splitter and every decision about rotation; it
//! never waits and never looks at a clock (the caller passes `now`). `spawn_file` drives it
//! from inotify wake-ups; tests drive it step by step with a fake clock.
//!
//! Each call to [`FileTail::next_batch`] does, in this order:
//! 1. no file open → open the path (start position, checkpoint resume, or 0 after a switch);
//! 2. truncation check on the open fd: size < offset, or the first bytes no longer match
//!    the fingerprint → continue from the rotated copy (`name.1`…, found by fingerprint) at
//!    the last line boundary, then the truncated file at 0;
//! 3. read up to one batch; check truncation again before handing the lines out, so bytes
//!    read from a file truncated under us are taken back and re-read from the copy;
//! 4. at EOF only: does the path still name the open file (dev, inode)? If not (renamed,
//!    deleted, replaced, symlink retargeted), keep draining the old fd until the grace period
//!    has passed, then emit its unterminated tail, close it and go on with the next file at
//!    0. The file the path names meanwhile is opened at once and held ("successor"), so a
//!    second rotation within the grace period cannot take it out of reach. A next file whose
//!    first bytes are the finished file's is that file rewritten: go on at the old offset.
//!
//! Files are known by (dev, inode) *and* by a fingerprint of their first bytes: identity
//! says which file we hold, the fingerprint says whether its content is still what we read
//! (truncation, inode reuse) and finds a rotated file among its siblings (`name.1`, …).

use std::collections::VecDeque;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tracing::{info, warn};

use super::fingerprint::{self, Fingerprint};
use super::lines::{Lines, Splitter};
use super::{Batch, Checkpoint, FilePosition, FollowOptions, SourceId, SourceStats, StartAt};

/// Read size per syscall.
const CHUNK: usize = 64 * 1024;
/// At most this many newer files are held open while an old one is drained.
const MAX_SUCCESSORS: usize = 8;
/// At most this many siblings are fingerprinted when looking for a rotated file.
const MAX_SIBLINGS: usize = 64;

/// The descriptor we read from.
struct OpenFile {
    file: File,
    /// Path it was found at (the followed path, or a sibling such as `name.1`).
    path: PathBuf,
    id: (u64, u64),
    /// Read position in the file (bytes consumed, including a held partial line).
    offset: u64,
    fp: Fingerprint,
}

/// What to do the next time the path is opened.
enum Next {
    Start(StartAt),
    Zero,
}

/// Follows one path; see the module doc for the order of operations.
pub struct FileTail {
    id: SourceId,
    path: PathBuf,
    opts: FollowOptions,
    stats: Arc<SourceStats>,
    cur: Option<OpenFile>,
    next: Next,
    splitter: Splitter,
    /// Files the path named after `cur`, oldest first, held open until their turn.
    successors: VecDeque<OpenFile>,
    /// When we first saw the path name another file than `cur` (or nothing).
    rotated_at: Option<Instant>,
    /// `cur` is a rotated copy nobody writes to: switch as soon as it is drained.
    switch_at_eof: bool,
    /// Final position of the last file we closed (checkpoint while no file is open, and
    /// the "same file rewritten by rename" check).
    last: Option<FilePosition>,
    buf: Vec<u8>,
    errors: Vec<String>,
    last_error: Option<String>,
    warned_long: bool,
    /// The position moved without a line (a file was opened): report it even with no
    /// lines, so the agent persists it — otherwise lines written while it is stopped
    /// would be measured against a stale checkpoint (or none, i.e. "start at the end").
    moved: bool,
}

fn ident(m: &Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Outcome of trying to open the followed path.
enum Opened {
    File(File, Metadata),
    Absent,
    Failed,
}

impl FileTail {
    /// A follower of `path` (made absolute; a symlink is followed on every open and
    /// re-resolved on every check). Nothing is opened before the first `next_batch`.
    pub fn new(
        id: SourceId,
        path: PathBuf,
        start: StartAt,
        opts: FollowOptions,
        stats: Arc<SourceStats>,
    ) -> Self {
        let path = std::path::absolute(&path).unwrap_or(path);
        let splitter = Splitter::new(opts.max_line);
        Self {
            id,
            path,
            opts,
            stats,
            cur: None,
            next: Next::Start(start),
            splitter,
            successors: VecDeque::new(),
            rotated_at: None,
            switch_at_eof: false,
            last: None,
            buf: vec![0; CHUNK],
            errors: Vec::new(),
            last_error: None,
            warned_long: false,
            moved: false,
        }
    }

    pub fn id(&self) -> SourceId {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &Arc<SourceStats> {
        &self.stats
    }

    /// Reads what is there now: the next batch of complete lines, or `None` when there is
    /// nothing more until the file changes (or, during a grace period, time passes).
    pub fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let mut lines = Lines::new();
        // Each round either reads, or makes one state change (open, truncation, switch);
        // a handful of rounds always suffices, the bound only guards against a livelock.
        for _ in 0..16 {
            if self.cur.is_none() && !self.open_next() {
                break;
            }
            if self.truncated() {
                self.recover_truncation();
                continue;
            }
            let before = (self.splitter.clone(), lines.len());
            let eof = self.read_into(&mut lines);
            if lines.len() > before.1 && self.truncated() {
                // Truncated between the check and the read: what we read may be new
                // content at an old offset. Take it back; the copy holds the old lines.
                lines.truncate(before.1);
                self.splitter = before.0;
                self.recover_truncation();
                continue;
            }
            if !lines.is_empty() || !eof {
                break;
            }
            if !self.check_rotation(now, &mut lines) || !lines.is_empty() {
                break;
            }
        }
        if lines.is_empty() && !self.moved {
            return None;
        }
        Some(self.finish(lines))
    }

    /// Errors met since the last call (each distinct error once, not once per retry).
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// The followed path and, when it is a symlink, the file it resolves to: the caller
    /// watches the directories of both.
    pub fn watch_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        if let Ok(real) = fs::canonicalize(&self.path)
            && real != self.path
        {
            v.push(real);
        }
        v
    }

    /// True while an old file is drained after its path moved on: the caller should wake
    /// on any change in the directory (the old file has another name now) and poll soon.
    pub fn in_grace(&self) -> bool {
        self.rotated_at.is_some() || self.switch_at_eof
    }

    /// When the grace period ends, if one is running.
    pub fn grace_deadline(&self) -> Option<Instant> {
        self.rotated_at.map(|t| t + self.opts.rotate_grace)
    }

    /// The position just after the last complete line handed out.
    pub fn position(&self) -> Option<FilePosition> {
        match &self.cur {
            Some(cur) => Some(FilePosition {
                dev: cur.id.0,
                ino: cur.id.1,
                offset: self.splitter.committed(),
                fingerprint: cur.fp,
            }),
            None => self.last,
        }
    }

    fn error(&mut self, op: &str, path: &Path, e: &io::Error) {
        let msg = format!("{op} {}: {e}", path.display());
        if self.last_error.as_deref() == Some(msg.as_str()) {
            return;
        }
        warn!(source = self.id.0, "{msg}");
        self.stats.errors.fetch_add(1, Relaxed);
        self.last_error = Some(msg.clone());
        self.errors.push(msg);
    }

    fn open_path(&mut self) -> Opened {
        let path = self.path.clone();
        match fs::metadata(&path) {
            Err(e) if is_absent(&e) => return Opened::Absent,
            Err(e) => {
                self.error("checking", &path, &e);
                return Opened::Failed;
            }
            // Never open a FIFO or device: open(2) could block the task forever.
            Ok(m) if !m.is_file() => {
                let e = io::Error::other("not a regular file");
                self.error("opening", &path, &e);
                return Opened::Failed;
            }
            Ok(_) => {}
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Opened::Absent,
            Err(e) => {
                self.error("opening", &path, &e);
                return Opened::Failed;
            }
        };
        match file.metadata() {
            Ok(m) => Opened::File(file, m),
            Err(e) => {
                self.error("checking", &path, &e);
                Opened::Failed
            }
        }
    }

    /// Makes `file` the current file, reading from `offset`; `skip` drops the fragment of
    /// a line up to the first newline.
    fn set_cur(&mut self, file: File, m: &Metadata, path: PathBuf, offset: u64, skip: bool) {
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            self.error("seeking in", &path, &e);
            return;
        }
        let fp = match fingerprint::compute(&file) {
            Ok(fp) => fp,
            Err(e) => {
                self.error("reading", &path, &e);
                return;
            }
        };
        self.splitter.reset(offset, skip);
        let id = ident(m);
        self.stats.dev.store(id.0, Relaxed);
        self.stats.ino.store(id.1, Relaxed);
        self.stats.offset.store(offset, Relaxed);
        self.warned_long = false;
        self.last_error = None;
        self.moved = true;
        self.cur = Some(OpenFile {
            file,
            path,
            id,
            offset,
            fp,
        });
    }

    /// Opens the path (or, resuming, the file a checkpoint names). True when a file is open.
    fn open_next(&mut self) -> bool {
        let opened = self.open_path();
        let next = std::mem::replace(&mut self.next, Next::Zero);
        match (next, opened) {
            // A transient error: try the same start again later.
            (next, Opened::Failed) => self.next = next,
            (Next::Start(StartAt::Checkpoint(Checkpoint::File(cp))), opened) => {
                self.resume(cp, opened);
            }
            // Absent at start: when it appears it is a new file, read it whole.
            (_, Opened::Absent) => {}
            (Next::Start(StartAt::End), Opened::File(f, m)) => {
                let end = m.len();
                let skip = end > 0 && !ends_with_newline(&f, end);
                let path = self.path.clone();
                self.set_cur(f, &m, path, end, skip);
            }
            (Next::Start(StartAt::Beginning), Opened::File(f, m)) => {
                let path = self.path.clone();
                self.set_cur(f, &m, path, 0, false);
            }
            (Next::Zero, Opened::File(f, m)) => {
                let at = self.continue_offset(&f, &m);
                let path = self.path.clone();
                self.set_cur(f, &m, path, at, false);
            }
        }
        self.cur.is_some()
    }

    /// Where to start in the file that follows the one just finished: 0, unless its first
    /// bytes are those of the finished file — then it is the same log rewritten and put in
    /// place by rename, and we go on where we were.
    fn continue_offset(&self, f: &File, m: &Metadata) -> u64 {
        if let Some(last) = self.last
            && last.fingerprint.len > 0
            && m.len() >= last.offset
            && matches!(fingerprint::check(f, last.fingerprint), Ok(Some(_)))
        {
            info!(source = self.id.0, path = %self.path.display(),
                "replacement file continues the previous one; resuming at {}", last.offset);
            return last.offset;
        }
        0
    }

    /// Resumes from a checkpoint: the same file → at the offset; the file rotated while we
    /// were down → finish it (found among the siblings), then the new file from 0.
    fn resume(&mut self, cp: FilePosition, opened: Opened) {
        let want = (cp.dev, cp.ino);
        let fits = |f: &File, m: &Metadata| {
            m.len() >= cp.offset && matches!(fingerprint::check(f, cp.fingerprint), Ok(Some(_)))
        };
        let path = self.path.clone();
        let opened = match opened {
            Opened::File(f, m) if ident(&m) == want => {
                if fits(&f, &m) {
                    self.set_cur(f, &m, path, cp.offset, false);
                    return;
                }
                // Same inode, other content: truncated (copytruncate) while we were down.
                self.stats.truncations.fetch_add(1, Relaxed);
                if let Some((cf, cm, cpath)) = self.find_sibling(want, fits) {
                    info!(source = self.id.0, copy = %cpath.display(),
                        "file was truncated while stopped; finishing its rotated copy first");
                    self.set_cur(cf, &cm, cpath, cp.offset, false);
                    self.switch_at_eof = true;
                    return;
                }
                warn!(source = self.id.0, path = %path.display(),
                    "file was truncated while stopped and no rotated copy matches; reading from the start");
                self.set_cur(f, &m, path, 0, false);
                return;
            }
            other => other,
        };
        let path_id = match &opened {
            Opened::File(_, m) => Some(ident(m)),
            _ => None,
        };
        // The checkpointed file under another name: by identity first, then by content —
        // never by an empty fingerprint, which every file matches.
        let found = self
            .find_sibling((u64::MAX, u64::MAX), |f, m| ident(m) == want && fits(f, m))
            .or_else(|| {
                if cp.fingerprint.len == 0 {
                    return None;
                }
                self.find_sibling(want, |f, m| Some(ident(m)) != path_id && fits(f, m))
            });
        if let Some((sf, sm, spath)) = found {
            info!(source = self.id.0, rotated = %spath.display(),
                "file was rotated while stopped; finishing the rotated file first");
            self.set_cur(sf, &sm, spath, cp.offset, false);
            return;
        }
        // Nothing at the path either: the file, when it appears, is read from 0.
        if let Opened::File(f, m) = opened {
            if fits(&f, &m) {
                self.set_cur(f, &m, path, cp.offset, false);
            } else {
                warn!(source = self.id.0, path = %path.display(),
                    "checkpointed file not found; reading the current file from the start");
                self.set_cur(f, &m, path, 0, false);
            }
        }
    }

    /// Looks in the directories of the path (and of its symlink target) for a file whose
    /// name extends the log's name (`name.1`, `name-20260101`…), other than `exclude`, that
    /// satisfies `pred`. The most recently modified match wins.
    fn find_sibling(
        &self,
        exclude: (u64, u64),
        pred: impl Fn(&File, &Metadata) -> bool,
    ) -> Option<(File, Metadata, PathBuf)> {
        let mut best: Option<(File, Metadata, PathBuf)> = None;
        let mut seen = 0usize;
        for p in self.watch_paths() {
            let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                continue;
            };
            let name = name.as_encoded_bytes();
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for entry in rd.flatten() {
                let en = entry.file_name();
                let eb = en.as_encoded_bytes();
                if eb.len() <= name.len() || !eb.starts_with(name) {
                    continue;
                }
                seen += 1;
                if seen > MAX_SIBLINGS {
                    break;
                }
                let sp = entry.path();
                let Ok(m) = fs::metadata(&sp) else { continue };
                if !m.is_file() || ident(&m) == exclude {
                    continue;
                }
                let Ok(f) = File::open(&sp) else { continue };
                if !pred(&f, &m) {
                    continue;
                }
                let newer = best.as_ref().is_none_or(|(_, bm, _)| {
                    (m.mtime(), m.mtime_nsec()) > (bm.mtime(), bm.mtime_nsec())
                });
                if newer {
                    best = Some((f, m, sp));
                }
            }
        }
        best
    }

    /// Whether the open file was truncated or rewritten in place. Also lets a short
    /// fingerprint grow with the file.
    fn truncated(&mut self) -> bool {
        let Some(cur) = self.cur.as_mut() else {
            return false;
        };
        let size = match cur.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                let p = cur.path.clone();
                self.error("checking", &p, &e);
                return false;
            }
        };
        if size < cur.offset {
            return true;
        }
        match fingerprint::check(&cur.file, cur.fp) {
            Ok(Some(fp)) => {
                cur.fp = fp;
                false
            }
            Ok(None) => true,
            Err(e) => {
                let p = cur.path.clone();
                self.error("reading", &p, &e);
                false
            }
        }
    }

    /// The open file was truncated. Lines between our last line boundary and the
    /// truncation are in the rotated copy if there is one: read them there first.
    fn recover_truncation(&mut self) {
        let Some(cur) = self.cur.take() else { return };
        self.stats.truncations.fetch_add(1, Relaxed);
        let at = self.splitter.committed();
        let fp = cur.fp;
        let copy = if fp.len > 0 {
            self.find_sibling(cur.id, |f, m| {
                m.len() >= at && matches!(fingerprint::check(f, fp), Ok(Some(_)))
            })
        } else {
            None
        };
        match copy {
            Some((cf, cm, cpath)) => {
                info!(source = self.id.0, path = %cur.path.display(), copy = %cpath.display(),
                    "file truncated; reading the rest of its rotated copy first");
                // Keep a pending skip: `at` may be inside a line we never saw begin.
                let skip = self.splitter.skipping();
                self.set_cur(cf, &cm, cpath, at, skip);
                self.switch_at_eof = true;
                // The truncated file is reopened by path once the copy is drained.
                self.next = Next::Zero;
                self.last = None;
            }
            None => {
                warn!(source = self.id.0, path = %cur.path.display(),
                    "file truncated and no rotated copy found; unread lines before the truncation are lost");
                let OpenFile { file, path, .. } = cur;
                match file.metadata() {
                    Ok(m) => self.set_cur(file, &m, path, 0, false),
                    Err(e) => self.error("checking", &path, &e),
                }
            }
        }
    }

    /// Reads until EOF or a full batch. Returns true at EOF (or on a read error).
    fn read_into(&mut self, lines: &mut Lines) -> bool {
        let Some(cur) = self.cur.as_mut() else {
            return true;
        };
        loop {
            if lines.len() >= self.opts.batch_lines || lines.bytes_len() >= self.opts.batch_bytes {
                return false;
            }
            match cur.file.read(&mut self.buf) {
                Ok(0) => return true,
                Ok(n) => {
                    cur.offset += n as u64;
                    self.stats.bytes.fetch_add(n as u64, Relaxed);
                    self.splitter.feed(&self.buf[..n], lines);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let p = cur.path.clone();
                    self.error("reading", &p, &e);
                    return true;
                }
            }
        }
    }

    /// At EOF: has the path moved on to another file? Returns true when the current file
    /// was closed (its unterminated tail, if any, is pushed to `lines`).
    fn check_rotation(&mut self, now: Instant, lines: &mut Lines) -> bool {
        let Some(cur_id) = self.cur.as_ref().map(|c| c.id) else {
            return false;
        };
        if !self.switch_at_eof {
            let now_at_path = match fs::metadata(&self.path) {
                Ok(m) => Some(ident(&m)),
                Err(e) if is_absent(&e) => None,
                Err(e) => {
                    let p = self.path.clone();
                    self.error("checking", &p, &e);
                    Some(cur_id)
                }
            };
            if now_at_path == Some(cur_id) {
                self.rotated_at = None;
                return false;
            }
            if let Some(id) = now_at_path {
                self.hold_successor(id);
            }
            let since = *self.rotated_at.get_or_insert(now);
            if now.saturating_duration_since(since) < self.opts.rotate_grace {
                return false;
            }
        }
        // Done with this file: whatever it holds after the last newline is all it will
        // ever hold.
        self.splitter.flush(lines);
        self.last = self.position();
        if let Some(cur) = self.cur.take() {
            info!(source = self.id.0, path = %cur.path.display(),
                "finished rotated file at offset {}", cur.offset);
        }
        self.rotated_at = None;
        self.switch_at_eof = false;
        self.stats.rotations.fetch_add(1, Relaxed);
        // Next: the oldest successor we hold, else whatever the path names when we look.
        if let Some(next) = self.successors.pop_front() {
            match next.file.metadata() {
                Ok(m) => {
                    let at = self.continue_offset(&next.file, &m);
                    self.set_cur(next.file, &m, next.path, at, false);
                }
                Err(e) => self.error("checking", &next.path, &e),
            }
        }
        true
    }

    /// The path names a new file while we still drain the old one: open it now, so that
    /// if it is rotated away too before our grace period ends, we still hold it and read
    /// it next (rotations faster than the grace period lose nothing we have seen).
    fn hold_successor(&mut self, id: (u64, u64)) {
        if self.successors.iter().any(|s| s.id == id) || self.successors.len() >= MAX_SUCCESSORS {
            return;
        }
        let Ok(file) = File::open(&self.path) else {
            return;
        };
        // The path may have changed again between stat and open: trust the descriptor.
        let Ok(m) = file.metadata() else { return };
        let id = ident(&m);
        if !m.is_file()
            || self.cur.as_ref().is_some_and(|c| c.id == id)
            || self.successors.iter().any(|s| s.id == id)
        {
            return;
        }
        self.successors.push_back(OpenFile {
            file,
            path: self.path.clone(),
            id,
            offset: 0,
            fp: Fingerprint::EMPTY,
        });
    }

    /// Wraps the lines with the checkpoint just after the last of them; updates stats.
    fn finish(&mut self, lines: Lines) -> Batch {
        self.moved = false;
        let cut = self.splitter.take_cut();
        if cut > 0 {
            self.stats.lines_cut.fetch_add(cut, Relaxed);
            if !self.warned_long {
                self.warned_long = true;
                warn!(source = self.id.0, path = %self.path.display(), limit = self.opts.max_line,
                    "lines longer than the limit are cut (further cuts in this file are only counted)");
            }
        }
        self.stats.lines.fetch_add(lines.len() as u64, Relaxed);
        let checkpoint = self.position();
        if let Some(p) = &checkpoint {
            self.stats.offset.store(p.offset, Relaxed);
        }
        Batch {
            source: self.id,
            lines,
            checkpoint: checkpoint.map(Checkpoint::File),
        }
    }
}

/// Whether the byte before `end` is a newline (starting at the end of a file whose last
/// line is unfinished, the rest of that line must not be taken for a line).
fn ends_with_newline(f: &File, end: u64) -> bool {
    let mut b = [0u8; 1];
    matches!(f.read_at(&mut b, end - 1), Ok(1) if b[0] == b'\n')
}
