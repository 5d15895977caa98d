//! A child process whose output is read line by line while it runs.

use std::fmt;
use std::io::{BufRead as _, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// One of a child's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// Each stream's lines so far, and whether it is still open.
#[derive(Default)]
struct Output {
    lines: [Vec<String>; 2],
    closed: [bool; 2],
}

/// A started child process with its stdout and stderr piped. Two threads read the pipes to
/// the end whatever the test reads, so the child never blocks writing; the test waits for the
/// lines it wants ([`read_until`](Self::read_until)). Dereferences to the [`Child`] (`id`,
/// `kill`, `wait`, ...); dropping it kills the child if it still runs, so a failed test leaves
/// no process behind.
///
/// ```no_run
/// # async fn demo() {
/// use std::process::Command;
/// use std::time::Duration;
/// use wechat_kf_test_support::{Spawned, Stream};
///
/// let mut serve = Spawned::spawn(
///     Command::new("wechat-kf").args(["serve", "--echo", "--listen", "127.0.0.1:0"]),
/// );
/// let url = serve
///     .url_after(Stream::Stderr, "listening on ", Duration::from_secs(20))
///     .await;
/// # let _ = url;
/// # }
/// ```
pub struct Spawned {
    child: Child,
    output: Arc<Mutex<Output>>,
    /// How many lines of each stream the test has read.
    read: [usize; 2],
}

impl Spawned {
    /// Starts `command` with stdout and stderr piped (stdin as the command says); panics if it
    /// cannot start.
    pub fn spawn(command: &mut Command) -> Spawned {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
        let output = Arc::new(Mutex::new(Output::default()));
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, Stream::Stdout, output.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, Stream::Stderr, output.clone());
        }
        Spawned {
            child,
            output,
            read: [0, 0],
        }
    }

    /// Reads `stream` on from the last line read until a line satisfies `found`; the lines
    /// read, that one last. Panics, with everything the child printed, if `timeout` passes or
    /// the stream ends first (`what` names the line awaited).
    pub async fn read_until(
        &mut self,
        stream: Stream,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let i = stream.index();
        let mut lines = Vec::new();
        loop {
            let (next, closed) = {
                let output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
                (output.lines[i].get(self.read[i]).cloned(), output.closed[i])
            };
            match next {
                Some(line) => {
                    self.read[i] += 1;
                    let done = found(&line);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                None if closed => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{stream} ended (exit status {status:?}) before {what}; the output:\n{}",
                        self.transcript()
                    );
                }
                None if Instant::now() >= deadline => panic!(
                    "no {what} on {stream} within {timeout:?}; the output so far:\n{}",
                    self.transcript()
                ),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// The next line of `stream` (see [`read_until`](Self::read_until)).
    pub async fn next_line(&mut self, stream: Stream, timeout: Duration) -> String {
        let mut lines = self.read_until(stream, timeout, "a line", |_| true).await;
        lines.pop().unwrap_or_default()
    }

    /// The word that follows `marker` on the next line of `stream` containing it: the address
    /// in `wechat-kf serve: listening on http://127.0.0.1:PORT`, with marker `listening on `.
    pub async fn url_after(&mut self, stream: Stream, marker: &str, timeout: Duration) -> String {
        let what = format!("a line with {marker:?}");
        let lines = self
            .read_until(stream, timeout, &what, |l| l.contains(marker))
            .await;
        let line = lines.last().map(String::as_str).unwrap_or_default();
        line.split_once(marker)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("nothing after {marker:?} in {line:?}"))
            .to_owned()
    }

    /// Every line the child printed so far, stdout then stderr (for failure messages).
    pub fn transcript(&self) -> String {
        let output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            text.push_str(&format!("--- {stream}\n"));
            for line in &output.lines[stream.index()] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

/// Reads `pipe` to its end on a thread of its own, keeping every line (lossily decoded, so an
/// invalid byte never stops the draining).
fn drain(pipe: impl Read + Send + 'static, stream: Stream, output: Arc<Mutex<Output>>) {
    let i = stream.index();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']).to_owned();
                    let mut output = output.lock().unwrap_or_else(PoisonError::into_inner);
                    output.lines[i].push(text);
                }
            }
        }
        output.lock().unwrap_or_else(PoisonError::into_inner).closed[i] = true;
    });
}

impl Deref for Spawned {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl fmt::Debug for Spawned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawned")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Already reaped (the test waited): nothing to kill, and no pid reused by another.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Spawned {
        Spawned::spawn(Command::new("sh").args(["-c", script]).stdin(Stdio::null()))
    }

    #[tokio::test]
    async fn the_url_after_a_marker_is_read_from_either_stream() {
        let mut child = sh(
            "echo starting; echo 'x: listening on http://127.0.0.1:4242 now' >&2; \
             echo 'ready at http://[::1]:1' ; sleep 5",
        );
        let url = child
            .url_after(Stream::Stderr, "listening on ", Duration::from_secs(5))
            .await;
        assert_eq!(url, "http://127.0.0.1:4242");
        let url = child
            .url_after(Stream::Stdout, "ready at ", Duration::from_secs(5))
            .await;
        assert_eq!(url, "http://[::1]:1");
    }

    #[tokio::test]
    async fn lines_are_read_in_order_and_each_once() {
        let mut child = sh("printf 'one\\ntwo\\nthree\\n'");
        let first = child
            .read_until(Stream::Stdout, Duration::from_secs(5), "two", |l| {
                l == "two"
            })
            .await;
        assert_eq!(first, ["one", "two"]);
        assert_eq!(
            child
                .next_line(Stream::Stdout, Duration::from_secs(5))
                .await,
            "three"
        );
    }

    #[tokio::test]
    #[should_panic(expected = "ended")]
    async fn a_child_that_exits_before_the_line_fails_with_its_output() {
        let mut child = sh("echo 'fatal: no config' >&2; exit 2");
        child
            .url_after(Stream::Stderr, "listening on ", Duration::from_secs(5))
            .await;
    }

    #[tokio::test]
    async fn a_child_writing_more_than_a_pipe_holds_never_blocks() {
        // 1 MiB on stderr, far beyond a pipe's buffer, before the line awaited on stdout.
        let mut child = sh("head -c 1048576 /dev/zero | tr '\\0' x >&2; echo; echo done");
        child
            .read_until(Stream::Stdout, Duration::from_secs(20), "done", |l| {
                l == "done"
            })
            .await;
        assert!(child.wait().unwrap().success());
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_it() {
        let child = sh("sleep 30");
        let pid = child.id();
        drop(child);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!alive.success(), "pid {pid} still runs");
    }
}
