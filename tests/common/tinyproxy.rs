//! A real forward proxy (tinyproxy, installed by `scripts/ensure-test-tools.sh`) on a port of
//! 127.0.0.1, with a configuration written here: requests from 127.0.0.1 only, `CONNECT` to
//! any port (no `ConnectPort` line), optionally Basic credentials. Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

pub struct Tinyproxy {
    pub port: u16,
    credentials: Option<(String, String)>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Start on a free port, with these credentials required if any.
    pub async fn start(credentials: Option<(&str, &str)>) -> Tinyproxy {
        Self::start_on(free_port(), credentials).await
    }

    /// Start on `port`; returns once it accepts connections.
    pub async fn start_on(port: u16, credentials: Option<(&str, &str)>) -> Tinyproxy {
        let mut proxy = Tinyproxy {
            port,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        proxy.restart().await;
        proxy
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.log")
    }

    /// (Re)start the process with the same port, credentials and log.
    pub async fn restart(&mut self) {
        self.stop();
        let mut conf = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 30\nMaxClients 200\nAllow 127.0.0.1\nLogLevel Info\nLogFile \"{}\"\n",
            self.port,
            self.log_path().display()
        );
        if let Some((user, pass)) = &self.credentials {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let path = self.dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy is installed (scripts/ensure-test-tools.sh)");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(30),
            "tinyproxy accepts",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Kill the process; the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://127.0.0.1:port`, without credentials.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://user:pass@127.0.0.1:port`.
    pub fn url_with(&self, user: &str, pass: &str) -> String {
        format!("http://{user}:{pass}@127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The target of every request the proxy received (`127.0.0.1:8080` for a `CONNECT`).
    pub fn connects(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("Request (file descriptor"))
            .filter_map(|l| l.split_once(": CONNECT "))
            .filter_map(|(_, rest)| rest.split(' ').next().map(str::to_owned))
            .collect()
    }

    /// Every request line the proxy received, whatever its method.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("Request (file descriptor"))
            .map(str::to_owned)
            .collect()
    }

    /// Wait until the proxy's log shows a `CONNECT` to `target`.
    pub async fn wait_connect(&self, target: &str) {
        wait_until(
            Duration::from_secs(60),
            &format!("the proxy logs CONNECT {target}"),
            || async { self.connects().iter().any(|t| t == target) },
        )
        .await;
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
