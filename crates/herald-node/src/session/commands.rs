//! The commands that are not about subscriptions: client publish (the publish rate, then gate
//! 3 in [`Node::publish_as`](crate::Node::publish_as)), presence, token refresh.

use herald_core::protocol::{ClientInfo, ErrorBody, ErrorCode};
use herald_core::{Position, Scope};

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
            client: &self.handle().id,
            transport: self.transport,
        };
        node.publish_as(Source::client, channel, data, None, Some(client))
            .await
    }

    /// `rpc`: forwarded to the method's proxy, the answer returned. Counts against the
    /// publish rate (each call costs the backend a request). Errors: `rate_limited`, then
    /// [`Node::rpc`](crate::Node::rpc)'s.
    pub(super) async fn rpc(
        &mut self,
        method: &str,
        data: &serde_json::value::RawValue,
    ) -> Result<Box<serde_json::value::RawValue>, ErrorBody> {
        let node = self.node().clone();
        if !self.publishes.take() {
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} publications and rpc calls per second",
                    node.config.limits.publish_rate
                ),
            ));
        }
        let ask = crate::proxy::RpcAsk {
            identity: &self.identity,
            client: &self.handle().id,
            transport: self.transport,
        };
        node.rpc(method, ask, data).await
    }

    /// `presence`: gate 2 applies, whoever may subscribe may see who is there. On channels
    /// decided by a token or the backend, that is whoever holds a subscription (gate 2 was
    /// passed then; a presence request carries no token, and must not cost a backend call).
    pub(super) async fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorBody> {
        let node = self.node().clone();
        let (descriptor, _) = node.resolve(channel)?;
        if matches!(descriptor.scope, Scope::Token | Scope::Proxy(_)) {
            self.forget_evicted().await;
            if !self.subscriptions.contains(channel) {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!("subscribe to {channel:?} to see its presence"),
                ));
            }
            return node.presence(channel, descriptor).await;
        }
        let descriptor = node.authorize_subscribe(channel, &self.identity)?;
        node.presence(channel, descriptor).await
    }

    /// `sub_refresh`: a new subscription token for a token-scoped subscription, before the
    /// old one runs out; its `exp` becomes the subscription's end. Errors: `not_subscribed`,
    /// `bad_request` (the channel is not token-scoped), then the token's own refusals
    /// (`unauthorized`, `forbidden`), which leave the subscription as it was.
    pub(super) async fn sub_refresh(
        &mut self,
        channel: &str,
        token: &str,
    ) -> Result<(), ErrorBody> {
        self.forget_evicted().await;
        let node = self.node().clone();
        let Some((subscribed, _)) = self.subscriptions.get(channel) else {
            return Err(ErrorBody::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ));
        };
        let subscribed = subscribed.clone();
        let (descriptor, _) = node.resolve(channel)?;
        if descriptor.scope != Scope::Token {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("{channel:?} is not token-scoped: nothing to refresh"),
            ));
        }
        let exp = node.verify_subscription_token(channel, &self.identity, Some(token))?;
        self.set_expiry(&subscribed, deadline_of(Some(exp)));
        Ok(())
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
