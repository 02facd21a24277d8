//! `FileTail` driven step by step: every rotation case with a daemon-like writer, exact line
//! sequences, time passed explicitly (grace periods without sleeping).

use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fwagent::follow::{FileTail, FollowOptions, SourceId, SourceStats, StartAt};

use crate::util::*;

fn tail_at(path: &std::path::Path, start: StartAt) -> FileTail {
    FileTail::new(
        SourceId(0),
        path.to_path_buf(),
        start,
        opts(),
        Arc::new(SourceStats::default()),
    )
}

/// Past the grace period of `opts()`.
const AFTER_GRACE: Duration = Duration::from_millis(301);

#[test]
fn partial_lines_are_held_until_complete() {
    let d = TempDir::new("partial");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.raw(b"abc");
    assert_eq!(drain(&mut t, now).0, Vec::<String>::new());
    w.raw(b"def");
    assert!(t.next_batch(now).is_none());
    w.raw(b"\nxy");
    let (got, cp) = drain(&mut t, now);
    assert_eq!(got, vec!["abcdef"]);
    // The checkpoint stops at the line boundary, not after the held "xy".
    let Some(fwagent::follow::Checkpoint::File(pos)) = cp else {
        panic!("no checkpoint")
    };
    assert_eq!(pos.offset, 7);
    w.raw(b"z\n");
    assert_eq!(drain(&mut t, now).0, vec!["xyz"]);
}

#[test]
fn start_at_end_skips_history_and_a_half_written_line() {
    let d = TempDir::new("end");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    w.raw(b"old 1\nold 2 half");
    let mut t = tail_at(&p, StartAt::End);
    let now = Instant::now();
    assert!(drain(&mut t, now).0.is_empty());
    w.raw(b" rest\nnew 1\n");
    assert_eq!(drain(&mut t, now).0, vec!["new 1"]);
}

#[test]
fn rename_create_drains_old_fd_during_grace_then_reads_new_file() {
    let d = TempDir::new("rename");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let t0 = Instant::now();
    w.write(1000);
    let mut got = drain(&mut t, t0).0;
    w.write(10); // unread when the rotation happens
    w.rotate_rename_create();
    w.write(50); // the daemon has not reopened yet: still the old fd
    got.extend(drain(&mut t, t0).0);
    w.reopen();
    w.write(30);
    // Still within the grace period: the new file waits, late old lines are still read.
    w.write(0);
    got.extend(drain(&mut t, t0 + Duration::from_millis(100)).0);
    assert_eq!(got.len(), 1060);
    got.extend(drain(&mut t, t0 + AFTER_GRACE).0);
    assert_lines(&got, &w.expected());
    assert_eq!(t.stats().snapshot().rotations, 1);
}

#[test]
fn rename_create_twice_with_numbered_siblings() {
    let d = TempDir::new("rename2");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let mut now = Instant::now();
    let mut got = Vec::new();
    for _ in 0..3 {
        w.write(200);
        got.extend(drain(&mut t, now).0);
        w.rotate_rename_create();
        w.write(20);
        got.extend(drain(&mut t, now).0);
        w.reopen();
        now += AFTER_GRACE;
        got.extend(drain(&mut t, now).0);
    }
    w.write(5);
    got.extend(drain(&mut t, now).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn copytruncate_new_content_longer_than_old_offset() {
    let d = TempDir::new("ct-long");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.write(100);
    let mut got = drain(&mut t, now).0;
    w.write(20); // unread: must come from mainlog.1
    w.rotate_copytruncate();
    w.write(300); // already well past the old offset when we look
    got.extend(drain(&mut t, now).0);
    assert_lines(&got, &w.expected());
    assert_eq!(t.stats().snapshot().truncations, 1);
}

#[test]
fn copytruncate_new_content_shorter_and_equal_to_old_offset() {
    for after in [3usize, 100] {
        let d = TempDir::new("ct-short");
        let p = d.join("mainlog");
        let mut w = Writer::open(&p);
        let mut t = tail_at(&p, StartAt::Beginning);
        let now = Instant::now();
        w.write(100);
        let mut got = drain(&mut t, now).0;
        w.rotate_copytruncate();
        // 100 lines of the same length: exactly the old offset, only the content differs.
        w.write(after);
        got.extend(drain(&mut t, now).0);
        assert_lines(&got, &w.expected());
    }
}

#[test]
fn copytruncate_between_polls_repeatedly() {
    let d = TempDir::new("ct-rep");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    let mut got = Vec::new();
    for i in 0..5 {
        w.write(50 + i * 37);
        got.extend(drain(&mut t, now).0);
        w.write(i * 11);
        w.rotate_copytruncate();
        w.write(i * 53 + 1);
        got.extend(drain(&mut t, now).0);
    }
    assert_lines(&got, &w.expected());
}

#[test]
fn truncate_without_copy_reads_the_new_content() {
    let d = TempDir::new("trunc");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.write(100);
    let mut got = drain(&mut t, now).0;
    w.write(20);
    w.truncate_only();
    let lost = w.expected()[100..120].to_vec();
    w.write(5);
    got.extend(drain(&mut t, now).0);
    let want: Vec<String> = w
        .expected()
        .into_iter()
        .filter(|l| !lost.contains(l))
        .collect();
    assert_lines(&got, &want);
}

#[test]
fn delete_and_recreate() {
    let d = TempDir::new("delete");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.write(100);
    let mut got = drain(&mut t, now).0;
    w.write(7);
    w.delete();
    w.write(13); // written to the deleted file through the open fd
    got.extend(drain(&mut t, now).0);
    w.reopen(); // creates the new file
    w.write(9);
    got.extend(drain(&mut t, now).0);
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn atomic_replace_by_rename() {
    let d = TempDir::new("replace");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.write(100);
    let mut got = drain(&mut t, now).0;
    w.write(4);
    w.atomic_replace(5);
    w.write(10); // old, unlinked fd
    got.extend(drain(&mut t, now).0);
    w.reopen_replaced();
    w.write(7);
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn rewrite_by_rename_with_same_head_continues_at_offset() {
    // A tool that rewrites the whole log (old content + more) and renames it over.
    let d = TempDir::new("rewrite");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.write(100);
    let mut got = drain(&mut t, now).0;
    let tmp = d.join("mainlog.new");
    fs::copy(&p, &tmp).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&tmp).unwrap();
    f.write_all(b"appended 1\nappended 2\n").unwrap();
    fs::rename(&tmp, &p).unwrap();
    got.extend(drain(&mut t, now).0);
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    let mut want = w.expected();
    want.extend(["appended 1".to_string(), "appended 2".to_string()]);
    assert_lines(&got, &want);
}

#[test]
fn absent_at_start_is_read_from_zero_when_it_appears() {
    for start in [StartAt::End, StartAt::Beginning] {
        let d = TempDir::new("absent");
        // Even the directory is missing at first.
        let p = d.join("sub/mainlog");
        let mut t = tail_at(&p, start);
        let now = Instant::now();
        assert!(drain(&mut t, now).0.is_empty());
        fs::create_dir(d.join("sub")).unwrap();
        let mut w = Writer::open(&p);
        w.write(25);
        assert_lines(&drain(&mut t, now).0, &w.expected());
    }
}

#[test]
fn symlinked_path_follows_target_rotation_and_retargeting() {
    let d = TempDir::new("symlink");
    fs::create_dir(d.join("real")).unwrap();
    let real = d.join("real/mainlog");
    let link = d.join("mainlog");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut w = Writer::open(&real);
    let mut t = tail_at(&link, StartAt::Beginning);
    let mut now = Instant::now();
    w.write(50);
    let mut got = drain(&mut t, now).0;
    // Rotation of the target, next to the target.
    w.rotate_rename_create();
    w.write(5);
    got.extend(drain(&mut t, now).0);
    w.reopen();
    w.write(7);
    now += AFTER_GRACE;
    got.extend(drain(&mut t, now).0);
    assert_lines(&got, &w.expected());
    // Retarget the link atomically to another file.
    let other = d.join("real/other");
    let mut w2 = Writer::open(&other);
    w2.write(3);
    let tmp = d.join("mainlog.tmp");
    std::os::unix::fs::symlink(&other, &tmp).unwrap();
    fs::rename(&tmp, &link).unwrap();
    w.write(2); // still written to the old target during the grace period
    got.extend(drain(&mut t, now).0);
    now += AFTER_GRACE;
    got.extend(drain(&mut t, now).0);
    let mut want = w.expected();
    want.extend(w2.expected());
    assert_lines(&got, &want);
    assert!(
        t.watch_paths().contains(&other),
        "the resolved target is watched: {:?}",
        t.watch_paths()
    );
}

#[test]
fn long_lines_are_cut_flagged_counted() {
    let d = TempDir::new("long");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    let limit = FollowOptions::default().max_line;
    assert!(drain(&mut t, now).0.is_empty());
    // A 40 KiB line written in pieces with reads in between, then a line of exactly the
    // limit, then one over it in a single write.
    for _ in 0..8 {
        w.raw(&[b'a'; 5000]);
        assert!(t.next_batch(now).is_none());
    }
    w.raw(b"\n");
    w.raw(&vec![b'b'; limit]);
    w.raw(b"\n");
    w.raw(&vec![b'c'; limit + 1]);
    w.raw(b"\nok\n");
    let mut lines = Vec::new();
    while let Some(b) = t.next_batch(now) {
        lines.extend(b.lines.iter().map(|l| (l.bytes.to_vec(), l.truncated)));
    }
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], (vec![b'a'; limit], true));
    assert_eq!(lines[1], (vec![b'b'; limit], false));
    assert_eq!(lines[2], (vec![b'c'; limit], true));
    assert_eq!(lines[3], (b"ok".to_vec(), false));
    let s = t.stats().snapshot();
    assert_eq!(s.lines_cut, 2);
    assert_eq!(s.lines, 4);
}

#[test]
fn invalid_utf8_and_nul_pass_through_as_bytes() {
    let d = TempDir::new("bytes");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let raw: &[u8] = b"\xff\xfe bad \x00nul\x00 \xc3\x28 \r";
    w.raw(raw);
    w.raw(b"\n\x00\n");
    let b = t.next_batch(Instant::now()).expect("a batch");
    let got: Vec<&[u8]> = b.lines.iter().map(|l| l.bytes).collect();
    assert_eq!(got, vec![raw, b"\x00"]);
}

#[test]
fn a_burst_arrives_in_few_large_batches() {
    let d = TempDir::new("burst");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    w.write(100_000);
    let mut got = Vec::new();
    let mut batches = 0;
    let o = FollowOptions::default();
    while let Some(b) = t.next_batch(Instant::now()) {
        batches += 1;
        // A batch may exceed its limit by at most one read chunk.
        assert!(b.lines.len() <= o.batch_lines + 64 * 1024);
        got.extend(batch_lines(&b));
    }
    assert_lines(&got, &w.expected());
    assert!(batches <= 20, "{batches} batches");
    let s = t.stats().snapshot();
    assert_eq!(s.lines, 100_000);
    assert_eq!(s.bytes, fs::metadata(&p).unwrap().len());
}

#[test]
fn unreadable_file_reports_one_error_and_recovers() {
    use std::os::unix::fs::PermissionsExt;
    let d = TempDir::new("perm");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    w.write(3);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::File::open(&p).is_ok() {
        // root bypasses permissions: use a FIFO-free alternative — a directory at the path.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let d2 = TempDir::new("perm-dir");
        let q = d2.join("log");
        fs::create_dir(&q).unwrap();
        let mut t = tail_at(&q, StartAt::Beginning);
        let now = Instant::now();
        assert!(t.next_batch(now).is_none());
        assert!(t.next_batch(now).is_none());
        let errs = t.take_errors();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("not a regular file"), "{errs:?}");
        fs::remove_dir(&q).unwrap();
        let mut w2 = Writer::open(&q);
        w2.write(2);
        assert_lines(&drain(&mut t, now).0, &w2.expected());
        return;
    }
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    assert!(t.next_batch(now).is_none());
    assert!(t.next_batch(now).is_none());
    assert_eq!(t.take_errors().len(), 1);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    assert_lines(&drain(&mut t, now).0, &w.expected());
}

#[test]
fn rotations_faster_than_the_grace_period_lose_no_generation() {
    // Two rename rotations before the first grace period ends: the file the path named in
    // between is held open and read after the first, before the current one.
    let d = TempDir::new("fast-rot");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let t0 = Instant::now();
    w.write(10);
    let mut got = drain(&mut t, t0).0;
    w.rotate_rename_create();
    w.reopen();
    w.write(5);
    got.extend(drain(&mut t, t0).0); // sees the new file, holds it
    w.rotate_rename_create();
    w.write(2); // late lines to the middle generation
    w.reopen();
    w.write(3);
    got.extend(drain(&mut t, t0 + Duration::from_millis(100)).0);
    got.extend(drain(&mut t, t0 + AFTER_GRACE).0);
    got.extend(drain(&mut t, t0 + AFTER_GRACE * 2).0);
    assert_lines(&got, &w.expected());
    assert_eq!(t.stats().snapshot().rotations, 2);
}
