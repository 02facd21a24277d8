//! The real thing: `spawn_file` on tokio with inotify, a writer thread appending at full
//! speed like a daemon, every rotation case, exact sequences. Waits are bounded by
//! timeouts on conditions (never fixed sleeps for correctness), so a loaded machine only
//! makes them slower.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fwagent::follow::{
    Event, FollowOptions, SourceHandle, SourceId, SourceStats, StartAt, spawn_file,
};
use tokio::sync::{mpsc, oneshot};

use crate::util::*;

const END: &str = "END";
/// Generous: on a loaded 2-core machine a run can be slow, never wrong.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Grace long enough that the writer's late lines to the old fd (written right after the
/// rotation) are always inside it, even on a loaded machine.
fn live_opts() -> FollowOptions {
    FollowOptions {
        rotate_grace: Duration::from_secs(1),
        ..FollowOptions::default()
    }
}

struct Running {
    rx: mpsc::Receiver<Event>,
    stop: Option<oneshot::Sender<()>>,
    handle: SourceHandle,
}

fn start(path: &Path, start: StartAt, opts: FollowOptions, cap: usize) -> Running {
    let (tx, rx) = mpsc::channel(cap);
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = spawn_file(
        SourceId(3),
        path.to_path_buf(),
        start,
        opts,
        tx,
        async move {
            let _ = stopped.await;
        },
    );
    Running {
        rx,
        stop: Some(stop),
        handle,
    }
}

impl Running {
    /// Waits for the first event: the follower has opened the file (an empty batch that
    /// carries its position) — from then on, appends are seen.
    async fn opened(&mut self) {
        let ev = tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .expect("follower opened the file")
            .expect("channel open");
        assert!(matches!(ev, Event::Batch(_)), "{ev:?}");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.handle.task)
            .await
            .expect("task ends after shutdown")
            .expect("task did not panic");
    }
}

/// Runs `script` on a writer thread (it must end by writing END), collects until END and
/// compares with what the writer says it wrote. The script gets the follower's counters to
/// wait on before its next rotation (see `caught_up`).
async fn run_case(path: PathBuf, script: impl FnOnce(&mut Writer, &SourceStats) + Send + 'static) {
    let mut w = Writer::open(&path);
    let mut r = start(&path, StartAt::Beginning, live_opts(), 64);
    r.opened().await;
    let stats = r.handle.stats.clone();
    let writer = std::thread::spawn(move || {
        script(&mut w, &stats);
        w.raw(format!("{END}\n").as_bytes());
        w.expected()
    });
    let (got, _) = collect_until(&mut r.rx, END, TIMEOUT).await;
    let want = writer.join().expect("writer thread");
    assert_lines(&got, &want);
    r.stop().await;
}

/// Real rotations are hours apart: the follower always gets to see one before the next.
/// At test speed that must be waited for — until it has delivered `lines` lines and
/// finished `rotations` files — or two rotations could overtake it (a documented limit).
fn caught_up(stats: &SourceStats, lines: usize, rotations: u64) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let s = stats.snapshot();
        if s.lines >= lines as u64 && s.rotations >= rotations {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "follower did not catch up: {s:?}, want {lines} lines, {rotations} rotations"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rename_create_three_times_with_late_writes() {
    let d = TempDir::new("live-rename");
    run_case(d.join("mainlog"), |w, stats| {
        for i in 0..3 {
            w.write(3000);
            w.rotate_rename_create();
            w.write(300); // the daemon has not reopened yet
            w.reopen();
            w.write(10);
            caught_up(stats, w.expected().len(), i + 1);
        }
        w.write(3000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_copytruncate_three_times() {
    let d = TempDir::new("live-ct");
    run_case(d.join("mainlog"), |w, stats| {
        for i in 0..3 {
            w.write(3000);
            w.rotate_copytruncate();
            // Shorter, then much longer than the old offset.
            w.write(if i == 1 { 10 } else { 5000 });
            caught_up(stats, w.expected().len(), 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delete_recreate() {
    let d = TempDir::new("live-delete");
    run_case(d.join("mainlog"), |w, _| {
        w.write(3000);
        w.delete();
        w.write(300);
        w.reopen();
        w.write(3000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_atomic_replace() {
    let d = TempDir::new("live-replace");
    run_case(d.join("mainlog"), |w, _| {
        w.write(3000);
        w.atomic_replace(50);
        w.write(300);
        w.reopen_replaced();
        w.write(3000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_symlinked_path() {
    let d = TempDir::new("live-symlink");
    std::fs::create_dir(d.join("real")).unwrap();
    let real = d.join("real/mainlog");
    let link = d.join("mainlog");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut w = Writer::open(&real);
    let mut r = start(&link, StartAt::Beginning, live_opts(), 64);
    r.opened().await;
    let writer = std::thread::spawn(move || {
        w.write(2000);
        w.rotate_rename_create();
        w.write(200);
        w.reopen();
        w.write(2000);
        w.raw(format!("{END}\n").as_bytes());
        w.expected()
    });
    let (got, _) = collect_until(&mut r.rx, END, TIMEOUT).await;
    assert_lines(&got, &writer.join().unwrap());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_absent_at_start_then_appears_woken_by_inotify() {
    let d = TempDir::new("live-absent");
    let p = d.join("mainlog");
    // A tick of an hour: only inotify can make the follower notice the file.
    let opts = FollowOptions {
        tick: Duration::from_secs(3600),
        ..live_opts()
    };
    let mut r = start(&p, StartAt::End, opts, 64);
    // Let the task start and register its watch (no event to wait on while absent);
    // whichever comes first, a file that appears later is read from its beginning.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let writer = std::thread::spawn(move || {
        let mut w = Writer::open(&p);
        w.write(1000);
        w.raw(format!("{END}\n").as_bytes());
        w.expected()
    });
    let (got, _) = collect_until(&mut r.rx, END, TIMEOUT).await;
    assert_lines(&got, &writer.join().unwrap());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_single_line_is_delivered_without_waiting_for_the_tick() {
    let d = TempDir::new("live-one");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    w.write(10);
    let opts = FollowOptions {
        tick: Duration::from_secs(3600),
        ..live_opts()
    };
    let mut r = start(&p, StartAt::End, opts, 64);
    r.opened().await;
    let mut lat = Vec::new();
    for i in 0..20 {
        let t0 = std::time::Instant::now();
        w.raw(format!("one {i}\n").as_bytes());
        let (got, _) = collect_until(&mut r.rx, &format!("one {i}"), TIMEOUT).await;
        lat.push(t0.elapsed());
        assert!(got.is_empty(), "{got:?}");
    }
    lat.sort();
    // Informative only (figures come from the bench): the median append→batch latency.
    eprintln!(
        "append→batch latency: median {:?}, max {:?}",
        lat[10], lat[19]
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_burst_with_a_slow_consumer_few_batches_no_loss() {
    let d = TempDir::new("live-burst");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    // Channel of 1: the follower must wait for the consumer (backpressure), not buffer.
    let mut r = start(&p, StartAt::Beginning, live_opts(), 1);
    r.opened().await;
    w.write(100_000);
    w.raw(format!("{END}\n").as_bytes());
    let (got, batches) = collect_until(&mut r.rx, END, TIMEOUT).await;
    assert_lines(&got, &w.expected());
    assert!(batches <= 40, "{batches} batches for 100,000 lines");
    let s = r.handle.stats.snapshot();
    assert_eq!(s.lines, 100_001);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stop_and_resume_from_checkpoint_across_rotation() {
    let d = TempDir::new("live-resume");
    let p = d.join("mainlog");
    let mut w = Writer::open(&p);
    let mut r = start(&p, StartAt::Beginning, live_opts(), 64);
    r.opened().await;
    w.write(2000);
    w.raw(b"MARK\n");
    w.expect_line("MARK");
    // Collect up to MARK, keeping the last checkpoint, as the agent would persist it.
    let mut got = Vec::new();
    let mut cp = None;
    'outer: loop {
        let ev = tokio::time::timeout(TIMEOUT, r.rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::Batch(b) = ev {
            let lines = batch_lines(&b);
            cp = b.checkpoint.clone().or(cp);
            for l in lines {
                let last = l == "MARK";
                got.push(l);
                if last {
                    break 'outer;
                }
            }
        }
    }
    r.stop().await;
    // While stopped: more lines, a rotation with late writes, lines in the new file.
    w.write(500);
    w.rotate_rename_create();
    w.write(100);
    w.reopen();
    w.write(500);
    w.raw(format!("{END}\n").as_bytes());
    let mut r = start(
        &p,
        StartAt::Checkpoint(cp.expect("a checkpoint")),
        live_opts(),
        64,
    );
    let (more, _) = collect_until(&mut r.rx, END, TIMEOUT).await;
    got.extend(more);
    assert_lines(&got, &w.expected());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_log_directory_removed_and_recreated() {
    let d = TempDir::new("live-dir");
    let dir = d.join("exim4");
    std::fs::create_dir(&dir).unwrap();
    let p = dir.join("mainlog");
    run_case(p, move |w, _| {
        w.write(1000);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        w.reopen();
        w.write(1000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_error_is_reported_once_then_the_file_is_followed() {
    let d = TempDir::new("live-err");
    let p = d.join("mainlog");
    std::fs::create_dir(&p).unwrap(); // not a regular file
    let mut r = start(&p, StartAt::Beginning, live_opts(), 64);
    let ev = tokio::time::timeout(TIMEOUT, r.rx.recv())
        .await
        .expect("an error event")
        .unwrap();
    match ev {
        Event::Error { source, error } => {
            assert_eq!(source, SourceId(3));
            assert!(error.contains("not a regular file"), "{error}");
            assert!(error.contains("mainlog"), "names the path: {error}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    std::fs::remove_dir(&p).unwrap();
    let mut w = Writer::open(&p);
    w.write(10);
    w.raw(format!("{END}\n").as_bytes());
    // The next events are batches only: the error was not repeated on every tick.
    let (got, _) = collect_until(&mut r.rx, END, TIMEOUT).await;
    assert_lines(&got, &w.expected());
    assert_eq!(r.handle.stats.snapshot().errors, 1);
    r.stop().await;
}
