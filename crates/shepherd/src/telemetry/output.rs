//! Where log lines go: stdout through a shared buffer that a background thread flushes every
//! 50 ms (or at once past 64 KiB), so that a busy gateway makes one write per batch of lines
//! instead of one per request. `flush()` empties it at shutdown.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT_BYTES: usize = 64 * 1024;

static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// The shared buffer, with its flushing thread started on first use.
fn buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    BUFFER.get_or_init(|| {
        let shared = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_AT_BYTES)));
        let for_thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("shepherd-log-flush".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    write_out(&for_thread);
                }
            });
        if spawned.is_err() {
            // Without the thread every line is flushed by the size rule or at shutdown only;
            // writing through directly keeps logs timely instead.
            let _ = writeln!(
                std::io::stderr(),
                "cannot start the log flusher; logging unbuffered"
            );
        }
        shared
    })
}

fn lock(shared: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    match shared.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Moves whatever is buffered to stdout.
fn write_out(shared: &Mutex<Vec<u8>>) {
    let pending = {
        let mut guard = lock(shared);
        if guard.is_empty() {
            return;
        }
        std::mem::replace(&mut *guard, Vec::with_capacity(FLUSH_AT_BYTES))
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&pending);
    let _ = stdout.flush();
}

/// Writes every buffered line to stdout now (at shutdown).
pub fn flush() {
    if let Some(shared) = BUFFER.get() {
        write_out(shared);
    }
}

/// Appends whole lines to the buffer.
pub fn append(bytes: &[u8]) {
    let _ = LineWriter { shared: buffer() }.write(bytes);
}

/// A `MakeWriter` for tracing-subscriber that appends to the shared buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedStdout;

pub struct LineWriter {
    shared: &'static Arc<Mutex<Vec<u8>>>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut guard = lock(self.shared);
            guard.extend_from_slice(bytes);
            guard.len() >= FLUSH_AT_BYTES
        };
        if full {
            write_out(self.shared);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { shared: buffer() }
    }
}
