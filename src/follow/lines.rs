//! Lines as the follower hands them on, and the splitter that cuts a byte stream into them.
//!
//! A batch keeps all its lines in one buffer (`Lines`) rather than one `Vec` per line, so a
//! burst of 100,000 lines costs a handful of allocations. The splitter holds the unfinished
//! tail of the stream (at most `max_line` bytes), cuts overlong lines and knows the stream
//! offset where the pending line starts — the only offset a checkpoint may name.

use memchr::memchr;

/// One line without its newline. Bytes are passed through untouched (invalid UTF-8, NUL):
/// the detector decides what they mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub bytes: &'a [u8],
    /// The line was longer than the limit; `bytes` holds its first `max_line` bytes only.
    pub truncated: bool,
}

/// The lines of one batch, stored back to back in one buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    data: Vec<u8>,
    /// End offset in `data` of each line, and whether it was cut.
    spans: Vec<(usize, bool)>,
}

impl Lines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one line (without its newline).
    pub fn push(&mut self, bytes: &[u8], truncated: bool) {
        self.data.extend_from_slice(bytes);
        self.spans.push((self.data.len(), truncated));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Total bytes of all lines (newlines not counted).
    pub fn bytes_len(&self) -> usize {
        self.data.len()
    }

    pub fn get(&self, i: usize) -> Option<Line<'_>> {
        let (end, truncated) = *self.spans.get(i)?;
        let start = if i == 0 { 0 } else { self.spans[i - 1].0 };
        Some(Line {
            bytes: &self.data[start..end],
            truncated,
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Line<'_>> + '_ {
        (0..self.spans.len()).map(|i| self.get(i).expect("index in range"))
    }

    /// Drops every line after the first `len` (used to take back lines read from a file
    /// that turned out to have been truncated under us).
    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.spans.len() {
            return;
        }
        self.spans.truncate(len);
        self.data.truncate(self.spans.last().map_or(0, |s| s.0));
    }
}

/// Cuts a stream of bytes into lines. Positions are offsets in the stream (the file).
#[derive(Debug, Clone)]
pub(crate) struct Splitter {
    max_line: usize,
    /// Bytes of the pending (unterminated) line; never more than `max_line`.
    partial: Vec<u8>,
    /// The pending line already passed `max_line`: the rest up to the newline is dropped.
    overflow: bool,
    /// Drop everything up to the next newline without emitting it (we started mid-line).
    skip: bool,
    /// Stream offset of the first byte of the pending line.
    committed: u64,
    /// Stream offset just after the last byte fed.
    pos: u64,
    /// Lines cut since the last call to `take_cut`.
    cut: u64,
}

impl Splitter {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            partial: Vec::new(),
            overflow: false,
            skip: false,
            committed: 0,
            pos: 0,
            cut: 0,
        }
    }

    /// Forgets any pending line and restarts at stream offset `at`. With `skip`, the bytes
    /// up to the first newline are a fragment of a line we did not see begin.
    pub(crate) fn reset(&mut self, at: u64, skip: bool) {
        self.partial.clear();
        self.overflow = false;
        self.skip = skip;
        self.committed = at;
        self.pos = at;
    }

    /// Still dropping the fragment of a line we did not see begin.
    pub(crate) fn skipping(&self) -> bool {
        self.skip
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }

    pub(crate) fn take_cut(&mut self) -> u64 {
        std::mem::take(&mut self.cut)
    }

    /// Feeds the next bytes of the stream; complete lines go to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Lines) {
        let base = self.pos;
        self.pos += chunk.len() as u64;
        let mut rest = chunk;
        let mut consumed = 0usize;
        while let Some(i) = memchr(b'\n', rest) {
            self.end_line(&rest[..i], out);
            consumed += i + 1;
            rest = &rest[i + 1..];
            self.committed = base + consumed as u64;
        }
        self.append_partial(rest);
    }

    /// The stream has ended for good (the file was rotated away): emit the pending bytes
    /// as a last line rather than lose them.
    pub(crate) fn flush(&mut self, out: &mut Lines) {
        if !self.skip && (!self.partial.is_empty() || self.overflow) {
            let truncated = self.overflow;
            out.push(&self.partial, truncated);
            self.cut += u64::from(truncated);
        }
        self.reset(self.pos, false);
    }

    /// `seg` completes the pending line.
    fn end_line(&mut self, seg: &[u8], out: &mut Lines) {
        if self.skip {
            self.skip = false;
            return;
        }
        if self.partial.is_empty() && !self.overflow {
            // The common case: the whole line is in this chunk, copy it once.
            if seg.len() > self.max_line {
                out.push(&seg[..self.max_line], true);
                self.cut += 1;
            } else {
                out.push(seg, false);
            }
            return;
        }
        self.append_partial(seg);
        out.push(&self.partial, self.overflow);
        if self.overflow {
            self.cut += 1;
        }
        self.partial.clear();
        self.overflow = false;
    }

    /// Keeps at most `max_line` bytes of the pending line.
    fn append_partial(&mut self, bytes: &[u8]) {
        if self.skip || bytes.is_empty() {
            return;
        }
        let room = self.max_line - self.partial.len();
        if bytes.len() > room {
            self.partial.extend_from_slice(&bytes[..room]);
            self.overflow = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lines: &Lines) -> Vec<(Vec<u8>, bool)> {
        lines
            .iter()
            .map(|l| (l.bytes.to_vec(), l.truncated))
            .collect()
    }

    #[test]
    fn splits_across_chunks_and_holds_partials() {
        let mut s = Splitter::new(16);
        let mut out = Lines::new();
        s.feed(b"ab", &mut out);
        assert!(out.is_empty());
        assert_eq!(s.committed(), 0);
        s.feed(b"c\nde\n\nf", &mut out);
        assert_eq!(
            collect(&out),
            vec![
                (b"abc".to_vec(), false),
                (b"de".to_vec(), false),
                (b"".to_vec(), false)
            ]
        );
        assert_eq!(s.committed(), 8);
        s.flush(&mut out);
        assert_eq!(out.get(3).unwrap().bytes, b"f");
        assert_eq!(s.committed(), 9);
    }

    #[test]
    fn cuts_long_lines_in_one_chunk_and_across_chunks() {
        let mut s = Splitter::new(4);
        let mut out = Lines::new();
        s.feed(b"0123456789\nxy\n", &mut out);
        s.feed(b"abc", &mut out);
        s.feed(b"defgh", &mut out);
        s.feed(b"ij\nok\n", &mut out);
        assert_eq!(
            collect(&out),
            vec![
                (b"0123".to_vec(), true),
                (b"xy".to_vec(), false),
                (b"abcd".to_vec(), true),
                (b"ok".to_vec(), false)
            ]
        );
        assert_eq!(s.take_cut(), 2);
        assert_eq!(s.committed(), 28);
    }

    #[test]
    fn exact_limit_is_not_cut() {
        let mut s = Splitter::new(4);
        let mut out = Lines::new();
        s.feed(b"ab", &mut out);
        s.feed(b"cd\n", &mut out);
        s.feed(b"wxyz\n", &mut out);
        assert_eq!(
            collect(&out),
            vec![(b"abcd".to_vec(), false), (b"wxyz".to_vec(), false)]
        );
    }

    #[test]
    fn skip_drops_the_first_fragment() {
        let mut s = Splitter::new(16);
        let mut out = Lines::new();
        s.reset(100, true);
        s.feed(b"tail of old\nnew\n", &mut out);
        assert_eq!(collect(&out), vec![(b"new".to_vec(), false)]);
        assert_eq!(s.committed(), 116);
    }

    #[test]
    fn bytes_pass_through() {
        let mut s = Splitter::new(16);
        let mut out = Lines::new();
        s.feed(b"\xff\x00\xc3(\r\n", &mut out);
        assert_eq!(out.get(0).unwrap().bytes, b"\xff\x00\xc3(\r");
    }

    #[test]
    fn lines_truncate_takes_back() {
        let mut l = Lines::new();
        l.push(b"a", false);
        l.push(b"bb", false);
        l.push(b"ccc", true);
        l.truncate(1);
        assert_eq!(l.len(), 1);
        assert_eq!(l.bytes_len(), 1);
        l.push(b"d", false);
        assert_eq!(l.get(1).unwrap().bytes, b"d");
    }
}
