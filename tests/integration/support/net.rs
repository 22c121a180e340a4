//! Servers the tests start outside every target, and free ports for them.
use std::{
    fs::File,
    net::{TcpListener, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

use crate::{
    harness::{wait_until, Agent},
    support::process::py,
};

/// What the HTTP servers serve.
pub(crate) const HELLO: &str = "killpath-hello\n";

/// A server (or listener) the test started OUTSIDE any target, in its own
/// process group, with stdout and stderr in files. Dropping it SIGKILLs the
/// group and reaps the leader.
pub(crate) struct Server {
    child: Child,
    name: String,
    out: PathBuf,
    err: PathBuf,
}

impl Server {
    pub(crate) fn start(dir: &Path, name: &str, cmd: &[&str]) -> Server {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("server stdout file"))
            .stderr(File::create(&err).expect("server stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} {cmd:?}: {e}"));
        Server { child, name: name.to_owned(), out, err }
    }

    /// Whether the server process has exited (reaped if so).
    pub(crate) fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Lines of stdout+stderr containing `needle`.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.stdout().lines().chain(self.stderr().lines()).filter(|l| l.contains(needle)).count()
    }

    pub(crate) fn describe(&self) -> String {
        format!("server {} stdout:\n{}\nstderr:\n{}", self.name, self.stdout(), self.stderr())
    }

    /// Waits until stdout+stderr contain `needle`.
    pub(crate) fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let ok = wait_until(timeout, || self.count(needle) > 0).is_some();
        if !ok {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}) before printing {needle:?}\n{}", self.name, self.describe());
            }
        }
        ok
    }

    /// The port from a "... port N ..." line (http.server and our scripts).
    pub(crate) fn port(&mut self) -> u16 {
        assert!(self.wait_for("port ", Duration::from_secs(30)), "{} never printed its port\n{}", self.name, self.describe());
        let s = self.stdout();
        let rest = &s[s.find("port ").expect("port line") + 5..];
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or_else(|e| panic!("bad port in {s:?}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free tcp port").port()
}

pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free udp port").port()
}

pub(crate) fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// A directory with hello.txt for the HTTP servers.
pub(crate) fn www(agent: &Agent) -> PathBuf {
    let d = agent.dir.path().join("www");
    std::fs::create_dir_all(&d).expect("www dir");
    std::fs::write(d.join("hello.txt"), HELLO).expect("hello.txt");
    d
}

/// `python3 -m http.server` on `bind`, outside any target.
pub(crate) fn http_server(agent: &Agent, name: &str, bind: &str) -> (Server, u16) {
    let dir = www(agent);
    let mut s = Server::start(agent.dir.path(), name, &[py(), "-u", "-m", "http.server", "0", "--bind", bind, "--directory", dir.to_str().unwrap()]);
    let port = s.port();
    (s, port)
}
