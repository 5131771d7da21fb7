//! Connecting to RabbitMQ, shared by the worker and the operator commands.

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// The broker URL without its credentials, for logs and messages.
pub fn redacted(url: &SecretString) -> String {
    match url.expose_secret().parse::<lapin::uri::AMQPUri>() {
        Ok(u) => format!(
            "{}://{}:{}/{}",
            if u.scheme == lapin::uri::AMQPScheme::AMQPS {
                "amqps"
            } else {
                "amqp"
            },
            u.authority.host,
            u.authority.port,
            u.vhost
        ),
        Err(_) => "<invalid amqp url>".into(),
    }
}

pub async fn connect(url: &SecretString, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose_secret(), props).await
}
