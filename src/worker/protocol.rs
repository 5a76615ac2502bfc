//! One worker child process and the two ways of talking to it.
//!
//! A worker is a long-lived program that reads jobs and writes answers, one
//! JSON document per line, in the order the jobs came: it never has to say
//! which job an answer is for. A [`WorkerProcess`] starts one
//! ([`WorkerProcess::spawn`]), writes jobs to it ([`WorkerProcess::send`]),
//! reads its answers ([`WorkerProcess::next_line`]), and stops it. Matching
//! answers to jobs, timeouts and restarts are the supervisor's
//! (`super::supervisor`).
//!
//! # The two protocols
//!
//! - Native: a compact JSON value and `\n` on its stdin; it answers with one
//!   JSON value per line on stdout.
//! - Node: Node's own IPC channel, as `child_process.fork` sets it up: a
//!   UNIX stream socketpair whose child end is fd 3, named by
//!   `NODE_CHANNEL_FD=3`, with `NODE_CHANNEL_SERIALIZATION_MODE=json`; one
//!   compact JSON document per line each way. A worker written with
//!   `process.on('message')` / `process.send()` runs unmodified. Its stdout
//!   (`console.log`) is logged like stderr.
//!
//! Either way, an answer line that is not JSON fails the job it answers
//! (502) and the worker is replaced: its real answer may still come, so no
//! later line could be matched to its job ([`Line::NotJson`]).
//!
//! # Writing and reading apart
//!
//! Jobs go through a channel to a writer task that owns the worker's input,
//! while the caller reads the output: a worker that answers the first jobs
//! while a large one is still being written to it cannot deadlock against
//! us, each side waiting for the other to read.
//!
//! # What a worker gets, and how it ends
//!
//! A worker gets only what it needs of the peer: the environment variables
//! of [`ENV_ALLOWLIST`] (the peer's may hold secrets: `DISRUPTOR_KEY`,
//! cloud credentials), its manifest's `env`, and Node's channel variables;
//! and descriptors 0-2 (and 3, Node's channel), none of the others the peer
//! holds or inherited without close-on-exec.
//!
//! Every worker is a process-group leader, gets SIGKILL if the peer dies
//! (`PR_SET_PDEATHSIG`), and is stopped with SIGTERM to its group, a grace
//! period, then SIGKILL ([`WorkerProcess::stop`]). Dropping a
//! [`WorkerProcess`] kills its group.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::apps::{AppSpec, Protocol};

/// Largest result line accepted from a worker.
pub const MAX_RESULT_BYTES: usize = 10 * 1024 * 1024;
/// Lines of stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// Characters kept of each such line.
const STDERR_LINE_MAX: usize = 500;
/// The fd number Node expects its IPC channel on.
const NODE_CHANNEL_FD: RawFd = 3;

/// The peer's environment variables a worker gets (a name ending in `*`
/// is a prefix): where programs are, who and where the user is, language,
/// time zone and temporary directory. Everything else a worker needs, its
/// manifest's `env` sets.
pub const ENV_ALLOWLIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
];

/// Whether the peer's variable `name` passes [`ENV_ALLOWLIST`].
fn env_allowed(name: &str) -> bool {
    ENV_ALLOWLIST.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *a,
    })
}

type Reader = FramedRead<Box<dyn AsyncRead + Send + Unpin>, LinesCodec>;

/// Last lines a worker wrote to stderr (and, for Node, stdout).
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    fn push(&self, line: &str) {
        let mut t = self.0.lock().expect("log tail lock");
        if t.len() == STDERR_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(crate::text::truncated(line, STDERR_LINE_MAX).into_owned());
    }

    /// The lines kept, oldest first, one per line.
    pub fn text(&self) -> String {
        let t = self.0.lock().expect("log tail lock");
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A running worker process: its input (through the writer task), its
/// output, and the tail of what it logged.
pub struct WorkerProcess {
    child: Child,
    pid: i32,
    /// Receiver: the writer task, which owns the worker's input (stdin or
    /// the IPC socket). Dropping it lets the writer finish and close the
    /// input, which well-behaved workers take as "exit".
    input: Option<mpsc::UnboundedSender<Arc<str>>>,
    output: Reader,
    protocol: Protocol,
    tail: LogTail,
    log_tasks: Vec<JoinHandle<()>>,
    app: String,
    stopped: bool,
}

impl WorkerProcess {
    /// Starts a worker for `spec`: confined (see the module's
    /// documentation), its input and output connected, its logs forwarded.
    ///
    /// Blocks for the fork and exec (`std`'s spawn waits until the child
    /// has exec'd), which stays on the calling runtime thread on purpose:
    /// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
    /// exits, and a `spawn_blocking` thread exits after a few idle seconds,
    /// which would kill the worker with it.
    pub fn spawn(spec: &AppSpec) -> io::Result<WorkerProcess> {
        let mut cmd = command(spec);
        let channel = match spec.protocol {
            Protocol::Native => {
                cmd.stdin(Stdio::piped());
                None
            }
            Protocol::Node => Some(node_channel(&mut cmd)?),
        };
        confine(
            &mut cmd,
            channel.as_ref().map(|(_, child)| child.as_raw_fd()),
        );
        let mut child = cmd.spawn()?;
        // The parent's copy of the child's end must go, or the worker never
        // sees the channel close when the peer closes its side.
        let parent_end = channel.map(|(parent, child_end)| {
            drop(child_end);
            parent
        });
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let app = spec.name.to_string();
        let tail = LogTail::default();
        let pipes = connect(&mut child, parent_end, &app, pid, &tail)?;
        tracing::info!(app = %app, pid, protocol = ?spec.protocol, "worker started");
        Ok(WorkerProcess {
            child,
            pid,
            input: Some(spawn_writer(pipes.input)),
            output: FramedRead::new(
                pipes.output,
                LinesCodec::new_with_max_length(MAX_RESULT_BYTES),
            ),
            protocol: spec.protocol,
            tail,
            log_tasks: pipes.log_tasks,
            app,
            stopped: false,
        })
    }

    /// The process id, which is also its process group's.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Queues one job (a compact JSON text without newlines) for the
    /// worker; false if its input is already closed.
    pub fn send(&self, payload: Arc<str>) -> bool {
        self.input.as_ref().is_some_and(|w| w.send(payload).is_ok())
    }

    /// The worker's next output line, classified. Cancel-safe.
    pub async fn next_line(&mut self) -> Line {
        let line = match self.output.next().await {
            None => return Line::End("its output closed".into()),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => return Line::TooLong,
            Some(Err(LinesCodecError::Io(e))) => {
                return Line::End(format!("reading its output failed: {e}"));
            }
            Some(Ok(line)) => line,
        };
        classify(line, self.protocol)
    }

    /// The app it runs, for logs.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// What to tell a caller whose job was at this worker when it died:
    /// exit status and the tail of its stderr.
    pub async fn crash_report(&mut self, what: &str) -> String {
        let status = match tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await
        {
            Ok(Ok(s)) => describe_status(s),
            Ok(Err(e)) => format!("could not be waited for: {e}"),
            Err(_) => "closed its output but is still running".into(),
        };
        // Let the log forwarders drain what the process wrote last.
        for t in &mut self.log_tasks {
            let _ = tokio::time::timeout(Duration::from_millis(200), t).await;
        }
        let tail = self.tail.text();
        if tail.is_empty() {
            format!("{} {what}: worker {status}", self.app)
        } else {
            format!(
                "{} {what}: worker {status}; its last output:\n{tail}",
                self.app
            )
        }
    }

    /// SIGTERM to the process group, `grace` to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        self.input = None; // EOF on stdin / the IPC channel closes
        signal_group(self.pid, Signal::SIGTERM);
        let exited = tokio::time::timeout(grace, self.child.wait()).await;
        if exited.is_err() {
            tracing::warn!(app = %self.app, pid = self.pid, "worker ignored SIGTERM for {grace:?}; killing it");
        }
        signal_group(self.pid, Signal::SIGKILL);
        let _ = self.child.wait().await;
        self.stopped = true;
        tracing::info!(app = %self.app, pid = self.pid, "worker stopped");
    }

    /// Kills at once (a hung worker).
    pub async fn kill(mut self) {
        signal_group(self.pid, Signal::SIGKILL);
        let _ = self.child.wait().await;
        self.stopped = true;
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if !self.stopped {
            signal_group(self.pid, Signal::SIGKILL);
        }
        for t in &self.log_tasks {
            t.abort();
        }
    }
}

/// One line of a worker's output.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A JSON value: the answer to the oldest job outstanding.
    Answer(String),
    /// Not JSON: the protocol is broken (the message says how).
    NotJson(String),
    /// Longer than [`MAX_RESULT_BYTES`].
    TooLong,
    /// Blank (native) or Node's own internal message: ignored.
    Skip,
    /// The output ended: the worker exited or can never answer.
    End(String),
}

fn classify(line: String, protocol: Protocol) -> Line {
    let trimmed = line.trim();
    if trimmed.is_empty() && protocol == Protocol::Native {
        return Line::Skip;
    }
    if protocol == Protocol::Node && trimmed.starts_with(r#"{"cmd":"NODE_"#) {
        return Line::Skip;
    }
    // Validate without building a tree; pass the text on as it is.
    match serde_json::from_str::<&serde_json::value::RawValue>(trimmed) {
        Ok(_) => Line::Answer(if trimmed.len() == line.len() {
            line
        } else {
            trimmed.to_string()
        }),
        Err(e) => {
            let shown = crate::text::truncated(trimmed, 200);
            Line::NotJson(format!(
                "worker answered a line that is not JSON ({e}): {shown:?}"
            ))
        }
    }
}

/// The task that owns a worker's input: writes each job and a newline,
/// coalescing jobs queued meanwhile into one flush. Runs apart from the
/// reading side, so a worker that answers while it still reads a large
/// job never deadlocks against us.
fn spawn_writer(mut input: Box<dyn AsyncWrite + Send + Unpin>) -> mpsc::UnboundedSender<Arc<str>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<str>>();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        while let Some(job) = rx.recv().await {
            let mut next = Some(job);
            while let Some(job) = next.take() {
                if job.len() >= 16 * 1024 {
                    if !buf.is_empty() {
                        input.write_all(&buf).await?;
                        buf.clear();
                    }
                    input.write_all(job.as_bytes()).await?;
                    input.write_all(b"\n").await?;
                } else {
                    buf.extend_from_slice(job.as_bytes());
                    buf.push(b'\n');
                }
                next = rx.try_recv().ok();
            }
            if !buf.is_empty() {
                input.write_all(&buf).await?;
                buf.clear();
            }
            input.flush().await?;
        }
        input.shutdown().await
    });
    tx
}

/// The worker's command: program, arguments and working directory from
/// `spec`; the environment of [`ENV_ALLOWLIST`] and the manifest's `env`;
/// stdout and stderr piped; a process group of its own; killed if the
/// [`Child`] is dropped.
fn command(spec: &AppSpec) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(env_allowed)))
        .envs(&spec.env)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Node's IPC channel: a socketpair, and the variables that tell Node where
/// its end is. Returns (the peer's end, the worker's end).
fn node_channel(cmd: &mut Command) -> io::Result<(UnixStream, OwnedFd)> {
    let (parent, child) = UnixStream::pair()?;
    cmd.stdin(Stdio::null())
        .env("NODE_CHANNEL_FD", NODE_CHANNEL_FD.to_string())
        .env("NODE_CHANNEL_SERIALIZATION_MODE", "json");
    Ok((parent, OwnedFd::from(child)))
}

/// What the child does between fork and exec: asks for SIGKILL when the
/// peer dies (and exits if it already has), moves Node's channel `channel`
/// onto fd 3, and marks every other descriptor from 3 up close-on-exec.
fn confine(cmd: &mut Command, channel: Option<RawFd>) {
    let peer = nix::unistd::getpid();
    let first_closed = match channel {
        Some(_) => NODE_CHANNEL_FD + 1,
        None => 3,
    };
    // SAFETY: the closure runs in the forked child of a multithreaded
    // process, where only async-signal-safe calls are allowed: it makes
    // plain syscalls (prctl, getppid, fcntl, dup2, close_range,
    // getrlimit), allocates nothing and takes no lock. An error it returns
    // is reported by std, which then ends the child with `_exit`.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The peer may have died between fork and prctl.
            if nix::unistd::getppid() != peer {
                return Err(Errno::ESRCH.into());
            }
            if let Some(fd) = channel {
                onto_channel_fd(fd)?;
            }
            cloexec_from(first_closed)
        });
    }
}

/// In the child between fork and exec: makes `fd` the inheritable fd 3.
///
/// Raw `libc` rather than `nix`: these are bare descriptor numbers in a
/// forked child, owned by no Rust value; `nix`'s descriptor-typed calls
/// would need `BorrowedFd::borrow_raw` (unsafe too) and an `OwnedFd` from
/// `dup2_raw` that must be leaked, not closed, for no added safety.
fn onto_channel_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl and dup2 on descriptors of this (child) process.
    let failed = unsafe {
        if fd == NODE_CHANNEL_FD {
            // dup2 onto itself would keep close-on-exec set.
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
        } else {
            libc::dup2(fd, NODE_CHANNEL_FD) < 0
        }
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The worker's ends, as the peer uses them.
struct Pipes {
    /// Where jobs are written: stdin, or the peer's end of Node's channel.
    input: Box<dyn AsyncWrite + Send + Unpin>,
    /// Where answers come from: stdout, or the same channel.
    output: Box<dyn AsyncRead + Send + Unpin>,
    /// The tasks forwarding stderr (and, for Node, stdout) to the log.
    log_tasks: Vec<JoinHandle<()>>,
}

/// Takes the started child's pipes (and, for Node, the peer's end of its
/// channel) and starts forwarding what it logs to `tail` and the log.
fn connect(
    child: &mut Child,
    channel: Option<UnixStream>,
    app: &str,
    pid: i32,
    tail: &LogTail,
) -> io::Result<Pipes> {
    let forward = |stream, reader: Box<dyn AsyncRead + Send + Unpin>| {
        spawn_log_forwarder(app.to_string(), pid, stream, reader, tail.clone())
    };
    let stderr = child.stderr.take().expect("stderr piped");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut log_tasks = vec![forward("stderr", Box::new(stderr))];
    let Some(channel) = channel else {
        return Ok(Pipes {
            input: Box::new(child.stdin.take().expect("stdin piped")),
            output: Box::new(stdout),
            log_tasks,
        });
    };
    log_tasks.push(forward("stdout", Box::new(stdout)));
    channel.set_nonblocking(true)?;
    let (r, w) = tokio::net::UnixStream::from_std(channel)?.into_split();
    Ok(Pipes {
        input: Box::new(w),
        output: Box::new(r),
        log_tasks,
    })
}

/// Marks every descriptor from `first` up close-on-exec, in the child
/// between fork and exec: those the peer opened itself carry the flag
/// already, but a descriptor the peer inherited without it (from a shell,
/// a supervisor, a careless parent) would reach the worker. Marked rather
/// than closed, so that if exec fails, std's own error pipe still reports
/// why. Async-signal-safe: syscalls only, no allocation.
///
/// Raw `libc`: `nix` (0.30) has no `close_range`, its `getrlimit` needs a
/// feature this crate does not enable, and the loop works on bare numbers
/// (see [`onto_channel_fd`]).
fn cloexec_from(first: RawFd) -> io::Result<()> {
    // close_range(first, ~0, CLOSE_RANGE_CLOEXEC): one call (Linux 5.11).
    // SAFETY: plain syscall on descriptors of this (child) process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: flag each possible descriptor below the limit on open
    // files (at most 2^20 calls; fcntl on a closed number is EBADF, cheap).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = limit.rlim_cur.min(1 << 20) as RawFd;
    for fd in first..end {
        // SAFETY: fcntl on a number that may or may not be open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Sends `sig` to the worker's process group: the worker and whatever it
/// started.
fn signal_group(pid: i32, sig: Signal) {
    // Group 0 would be the peer's own: a worker whose pid is unknown is
    // never signalled that way.
    if pid > 0 {
        // It fails only if the group is gone already (ESRCH): fine.
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

/// How a process ended, in words: "exited with status 3", "was killed by
/// signal 9".
pub fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".into(),
    }
}

fn spawn_log_forwarder(
    app: String,
    pid: i32,
    stream: &'static str,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    tail: LogTail,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(64 * 1024));
        while let Some(line) = lines.next().await {
            match line {
                Ok(line) => {
                    tracing::info!(target: "worker", app = %app, pid, stream, "{line}");
                    tail.push(&line);
                }
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    tail.push("(a line longer than 64 KiB was cut)");
                }
                Err(LinesCodecError::Io(_)) => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Whatever a worker prints: no panic; an answer is valid JSON.
        #[test]
        fn worker_lines(line in prop_oneof![any::<String>(), crate::fuzz::json_text()],
                        node in any::<bool>()) {
            let protocol = if node { Protocol::Node } else { Protocol::Native };
            if let Line::Answer(a) = classify(line.clone(), protocol) {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&a).is_ok(), "{line:?}");
            }
        }
    }

    #[test]
    fn only_allowlisted_variables_pass() {
        for ok in [
            "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_TIME", "TZ", "TMPDIR",
        ] {
            assert!(env_allowed(ok), "{ok}");
        }
        for no in [
            "DISRUPTOR_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "PATHX",
            "XPATH",
            "LD_PRELOAD",
            "RUST_LOG",
            "NODE_OPTIONS",
            "",
        ] {
            assert!(!env_allowed(no), "{no}");
        }
    }

    #[test]
    fn lines_are_classified() {
        let c = |l: &str| classify(l.to_string(), Protocol::Native);
        assert!(matches!(c(r#" {"a":1} "#), Line::Answer(a) if a == r#"{"a":1}"#));
        assert!(matches!(c(""), Line::Skip));
        assert!(matches!(c("hello"), Line::NotJson(_)));
        assert!(matches!(
            classify(r#"{"cmd":"NODE_HANDLE"}"#.into(), Protocol::Node),
            Line::Skip
        ));
    }
}
