//! The commands that are not about subscriptions: client publish (the publish rate, then gate
//! 3 in [`Node::publish_as`](crate::Node::publish_as)), presence, token refresh.

use herald_core::Position;
use herald_core::protocol::{ClientInfo, ErrorBody, ErrorCode};

use super::Session;
use super::limits::deadline_of;
use crate::metrics::{Gate, Source};
use crate::node::ClientPublish;
use herald_core::protocol::client_from;

impl Session {
    /// `publish`. Errors: `rate_limited`, then whatever gate 3 says.
    pub(super) async fn publish(
        &mut self,
        channel: &str,
        data: &serde_json::value::RawValue,
    ) -> Result<Position, ErrorBody> {
        let node = self.node().clone();
        if !self.publishes.take() {
            node.metrics.reject(Gate::publish, ErrorCode::RateLimited);
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} publications per second",
                    node.config.limits.publish_rate
                ),
            ));
        }
        let from = client_from(self.identity.user.as_deref(), &self.handle().id);
        let client = ClientPublish {
            identity: &self.identity,
            from: &from,
        };
        node.publish_as(Source::client, channel, data, None, Some(client))
            .await
    }

    /// `presence`: gate 2 applies, whoever may subscribe may see who is there.
    pub(super) async fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorBody> {
        let node = self.node().clone();
        let descriptor = node.authorize_subscribe(channel, &self.identity)?;
        node.presence(channel, descriptor).await
    }

    /// `refresh`: renews the identity's lifetime with a new token for the same user.
    /// Errors: `unauthorized` (the token does not verify), `forbidden` (another user).
    pub(super) fn refresh(&mut self, token: &str) -> Result<(), ErrorBody> {
        let fresh = self
            .node()
            .auth()
            .verify(token)
            .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))?;
        if fresh.user != self.identity.user {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "a refresh token must be for the same user",
            ));
        }
        self.expires = deadline_of(fresh.expires_at);
        self.identity = fresh;
        Ok(())
    }
}
