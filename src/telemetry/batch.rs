//! The log writer: lines are gathered in memory and one thread writes them out at most
//! [`FLUSH_EVERY`] after the first of a batch arrived.
//!
//! A busy worker writes a JSON line per event, tens of thousands a second. Handing each line
//! to a writer thread that writes it at once (tracing-appender's non-blocking writer flushes
//! whenever its queue runs empty, which at that rate is after almost every line) costs a
//! thread wake-up and a `write` per line: about 5% of the worker's CPU in `perf`. Here the
//! first line of a batch wakes the thread, which waits [`FLUSH_EVERY`] and writes everything
//! gathered meanwhile in one go. A log line reaches stderr at most 10 ms late.
//!
//! Nothing is dropped: past [`MAX_HELD`] a writing thread waits for the writer to catch up
//! (stderr blocked), as the non-blocking writer did with its queue full. The guard writes
//! what is left when it is dropped, waiting at most [`EXIT_LIMIT`] for a blocked stderr.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the first line of a batch waits for others.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// A batch this big is written at once.
const HIGH: usize = 256 * 1024;
/// Beyond this, writers wait for the batch to be written.
const MAX_HELD: usize = 8 * 1024 * 1024;
/// The longest the guard waits for the last batch at exit.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Held {
    buf: Vec<u8>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    held: Mutex<Held>,
    /// A batch started, grew past [`HIGH`], or the guard stops.
    ready: Condvar,
    /// A batch was taken: writers waiting past [`MAX_HELD`] go on.
    taken: Condvar,
}

/// Hands out writers (tracing-subscriber's `MakeWriter`) that add to the current batch.
#[derive(Clone)]
pub struct Batched(Arc<Shared>);

/// Writes what is left and stops the thread when dropped.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Start the writer thread over `out`.
pub fn batched<W: Write + Send + 'static>(out: W) -> (Batched, BatchGuard) {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, out)
        })
        .expect("the log writer thread starts");
    (
        Batched(shared.clone()),
        BatchGuard {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let lock = || shared.held.lock().unwrap_or_else(|e| e.into_inner());
    let mut spare = Vec::new();
    loop {
        let mut held = lock();
        while held.buf.is_empty() && !held.stop {
            held = shared.ready.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        if !held.stop && held.buf.len() < HIGH {
            held = shared
                .ready
                .wait_timeout_while(held, FLUSH_EVERY, |h| h.buf.len() < HIGH && !h.stop)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::swap(&mut held.buf, &mut spare);
        let stop = held.stop;
        drop(held);
        shared.taken.notify_all();
        // A log line that cannot be written has nowhere else to go.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        spare.clear();
        if stop {
            return;
        }
    }
}

/// A writer adding to the current batch.
pub struct Adder<'a>(&'a Shared);

impl Write for Adder<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = self.0;
        let mut held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.buf.len() >= MAX_HELD && !held.stop {
            held = shared.taken.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        let first = held.buf.is_empty();
        held.buf.extend_from_slice(line);
        let high = held.buf.len() >= HIGH;
        drop(held);
        if first || high {
            shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched {
    type Writer = Adder<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Adder(&self.0)
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.shared.ready.notify_one();
        self.shared.taken.notify_all();
        // A blocked stderr (a full pipe) must not keep the process from exiting.
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + EXIT_LIMIT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose content the test can read while the writer thread holds it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_soon_in_order_and_all_of_them_at_the_end() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone());
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&writer);
        w.write_all(b"first\n").unwrap();
        // Written within the batch wait, without the guard's help.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the first line never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&writer);
                    for i in 0..5_000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 4 * 5_000);
        assert_eq!(lines[0], "first");
        for t in 0..4 {
            let own: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                own,
                (0..5_000).collect::<Vec<_>>(),
                "writer {t}'s lines in order"
            );
        }
    }
}
