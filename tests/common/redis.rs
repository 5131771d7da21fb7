//! A `redis-server` of the test's own.

use std::time::Duration;

use super::{free_port, wait_until};

/// A `redis-server` of the test's own on a free port, nothing kept on disk; killed when
/// dropped (scripts/ensure-test-tools.sh installs it).
pub struct RedisServer {
    pub child: std::process::Child,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/ensure-test-tools.sh installs it)");
        let server = RedisServer { child, port };
        wait_until(Duration::from_secs(10), "redis-server answers", || async {
            server.connection().await.is_some()
        })
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        (pong == "PONG").then_some(conn)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
