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

/// Why a publish is not known to be safe in a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the publish (nack)")]
    Nacked,
    #[error("the publish was not routed to queue {0}; is it declared?")]
    Unroutable(String),
}

/// Publish persistently with `mandatory`, so an unroutable message comes back instead of
/// vanishing. The channel must be in confirm mode; await [`confirmed`] on the result.
pub async fn publish_mandatory(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: lapin::BasicProperties,
) -> Result<lapin::PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props.with_delivery_mode(2),
        )
        .await
}

/// Ok only when the broker confirmed the publish and routed it.
pub async fn confirmed(
    confirm: lapin::PublisherConfirm,
    routing_key: &str,
) -> Result<(), PublishError> {
    match confirm.await? {
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_owned())),
        lapin::Confirmation::Nack(_) => Err(PublishError::Nacked),
        lapin::Confirmation::NotRequested => {
            unreachable!("publishing channels are in confirm mode")
        }
    }
}

/// [`publish_mandatory`] and wait for [`confirmed`].
pub async fn publish_confirmed(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: lapin::BasicProperties,
) -> Result<(), PublishError> {
    confirmed(
        publish_mandatory(channel, exchange, routing_key, body, props).await?,
        routing_key,
    )
    .await
}
