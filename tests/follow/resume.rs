//! Checkpoint/resume: stop, change the file while stopped, resume from the persisted
//! checkpoint → the exact remaining sequence, nothing read twice.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fwagent::follow::{Checkpoint, FileTail, SourceId, SourceStats, StartAt};

use crate::util::*;

const AFTER_GRACE: Duration = Duration::from_millis(301);

fn tail_at(path: &std::path::Path, start: StartAt) -> FileTail {
    FileTail::new(
        SourceId(7),
        path.to_path_buf(),
        start,
        opts(),
        Arc::new(SourceStats::default()),
    )
}

/// Runs a first follower over what is there, persists its checkpoint as JSON (as the
/// agent will) and returns the lines read and the reloaded checkpoint.
fn first_run(path: &std::path::Path) -> (Vec<String>, Checkpoint) {
    let mut t = tail_at(path, StartAt::Beginning);
    let (got, cp) = drain(&mut t, Instant::now());
    let json = serde_json::to_string(&cp.expect("a checkpoint")).unwrap();
    (got, serde_json::from_str(&json).unwrap())
}

fn resume(path: &std::path::Path, cp: Checkpoint) -> FileTail {
    tail_at(path, StartAt::Checkpoint(cp))
}

#[test]
fn checkpoint_json_shape_is_stable() {
    let d = TempDir::new("cp-json");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    w.raw(b"a\n");
    let (_, cp) = first_run(&p);
    let v: serde_json::Value = serde_json::to_value(&cp).unwrap();
    assert_eq!(v["kind"], "file");
    assert_eq!(v["offset"], 2);
    assert_eq!(v["fingerprint"]["len"], 2);
    assert!(v["dev"].is_u64() && v["ino"].is_u64());
}

#[test]
fn same_file_appended_while_stopped() {
    let d = TempDir::new("cp-same");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    w.write(10);
    let (mut got, cp) = first_run(&p);
    w.write(5);
    let mut t = resume(&p, cp);
    got.extend(drain(&mut t, Instant::now()).0);
    assert_lines(&got, &w.expected());
    // Nothing more, nothing again.
    assert!(t.next_batch(Instant::now()).is_none());
}

#[test]
fn held_partial_line_is_reread_after_resume() {
    let d = TempDir::new("cp-partial");
    let p = d.join("log");
    let mut w = Writer::open(&p);
    w.write(3);
    w.raw(b"half");
    let (mut got, cp) = first_run(&p);
    w.raw(b" done\n");
    w.expect_line("half done");
    let mut t = resume(&p, cp);
    got.extend(drain(&mut t, Instant::now()).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn rotated_by_rename_while_stopped() {
    let d = TempDir::new("cp-rename");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    let (mut got, cp) = first_run(&p);
    w.write(5);
    w.rotate_rename_create();
    w.write(3); // daemon still on the old fd
    w.reopen();
    w.write(4);
    let mut t = resume(&p, cp);
    let now = Instant::now();
    got.extend(drain(&mut t, now).0);
    assert_eq!(got.len(), 18, "old file finished first");
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn rotated_twice_with_older_copies_around() {
    // mainlog.2 and mainlog.1 exist; the checkpointed file is mainlog.1 now.
    let d = TempDir::new("cp-rename2");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    w.rotate_rename_create();
    w.reopen();
    w.write(10);
    let mut t = tail_at(&p, StartAt::End);
    let now = Instant::now();
    drain(&mut t, now);
    w.write(6);
    let (_, cp) = drain(&mut t, now);
    let skip = w.expected().len();
    w.write(2);
    w.rotate_rename_create();
    w.reopen();
    w.write(3);
    let mut t = resume(&p, cp.unwrap());
    let mut got = drain(&mut t, now).0;
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    assert_lines(&got, &w.expected()[skip..]);
}

#[test]
fn copytruncated_while_stopped_finishes_the_copy() {
    let d = TempDir::new("cp-ct");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    let (mut got, cp) = first_run(&p);
    w.write(5);
    w.rotate_copytruncate();
    w.write(40); // longer than the old offset
    let mut t = resume(&p, cp);
    got.extend(drain(&mut t, Instant::now()).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn truncated_while_stopped_without_copy_reads_from_zero() {
    let d = TempDir::new("cp-trunc");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    let (_, cp) = first_run(&p);
    w.write(5);
    w.truncate_only();
    w.forget_current();
    w.write(2);
    let mut t = resume(&p, cp);
    assert_lines(&drain(&mut t, Instant::now()).0, &w.expected());
}

#[test]
fn renamed_away_and_not_yet_recreated() {
    let d = TempDir::new("cp-gone");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    let (mut got, cp) = first_run(&p);
    w.write(5);
    w.shift_rotated();
    fs::rename(&p, rotated(&p, 1)).unwrap();
    let mut t = resume(&p, cp);
    let now = Instant::now();
    got.extend(drain(&mut t, now).0);
    assert_lines(&got, &w.expected());
    w.reopen(); // the daemon creates the path again
    w.write(3);
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn replaced_while_stopped_by_an_unrelated_file() {
    // Deleted and recreated: whether or not the inode number is reused, the fingerprint
    // tells the new file apart and it is read from 0.
    let d = TempDir::new("cp-new");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    let (_, cp) = first_run(&p);
    w.delete();
    w.reopen();
    w.write(3);
    let mut t = resume(&p, cp);
    assert_lines(&drain(&mut t, Instant::now()).0, &w.expected()[10..]);
}

#[test]
fn checkpoint_taken_during_grace_resumes_the_old_file_once() {
    let d = TempDir::new("cp-grace");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut t = tail_at(&p, StartAt::Beginning);
    let now = Instant::now();
    w.write(10);
    let mut got = drain(&mut t, now).0;
    w.rotate_rename_create();
    w.write(4);
    let (more, cp) = drain(&mut t, now);
    got.extend(more);
    drop(t); // stopped while draining the old file
    w.write(6); // still the old fd
    w.reopen();
    w.write(5);
    let mut t = resume(&p, cp.unwrap());
    got.extend(drain(&mut t, now).0);
    got.extend(drain(&mut t, now + AFTER_GRACE).0);
    assert_lines(&got, &w.expected());
}

#[test]
fn restart_loop_never_duplicates() {
    // Stop and resume after every few appends, 50 times, with a rotation every 10th.
    let d = TempDir::new("cp-loop");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut got = Vec::new();
    let mut cp: Option<Checkpoint> = None;
    let mut now = Instant::now();
    for i in 0..50u32 {
        w.write((i as usize % 7) + 1);
        if i % 10 == 9 {
            if i % 20 == 9 {
                w.rotate_rename_create();
                w.write(2);
                w.reopen();
            } else {
                w.rotate_copytruncate();
            }
            w.write(1);
        }
        let start = cp.clone().map_or(StartAt::Beginning, StartAt::Checkpoint);
        let mut t = tail_at(&p, start);
        for _ in 0..2 {
            let (lines, c) = drain(&mut t, now);
            got.extend(lines);
            if c.is_some() {
                cp = c;
            }
            now += AFTER_GRACE;
        }
    }
    assert_lines(&got, &w.expected());
}

#[test]
fn position_only_batch_on_open_makes_start_at_end_resumable() {
    // Started at the end, stopped before any line came: the checkpoint of the open alone
    // must make the lines written while stopped readable on the next start.
    let d = TempDir::new("cp-end");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(50); // history, not to be read
    let mut t = tail_at(&p, StartAt::End);
    let b = t.next_batch(Instant::now()).expect("a position-only batch");
    assert!(b.lines.is_empty());
    let Some(Checkpoint::File(pos)) = b.checkpoint.clone() else {
        panic!("no checkpoint")
    };
    assert_eq!(pos.offset, fs::metadata(&p).unwrap().len());
    assert!(t.next_batch(Instant::now()).is_none(), "reported once");
    drop(t);
    w.forget_current();
    w.write(4);
    let mut t = resume(&p, b.checkpoint.unwrap());
    assert_lines(&drain(&mut t, Instant::now()).0, &w.expected());
}
