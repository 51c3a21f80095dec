//! The notification bus server: subscriptions over QUIC (ALPN `ferry-events/1`) on the
//! peer endpoint, served from the node's [`EventLog`]. Subscribers need no cluster
//! certificate; they authenticate with an API token in their first frame.

use std::sync::Arc;

use ferry_coordinator::Auth;
use ferry_coordinator::bus::{self, BusError, MAX_SUBSCRIBE_FRAME};
use ferry_protocol::event::{Subscribe, SubscribeAnswer};

use crate::events::EventLog;
use crate::peer::endpoint::ConnectionHandler;

/// Serves the bus's connections: each bidirectional stream is one subscription.
pub(crate) fn handler(events: EventLog, auth: Arc<Auth>, node_id: u64) -> ConnectionHandler {
    Arc::new(move |connection: quinn::Connection| {
        let (events, auth) = (events.clone(), auth.clone());
        Box::pin(async move {
            while let Ok((send, recv)) = connection.accept_bi().await {
                let (events, auth) = (events.clone(), auth.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(send, recv, &events, &auth, node_id).await {
                        tracing::debug!(error = %e, "an event subscription ended");
                    }
                });
            }
        })
    })
}

async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    events: &EventLog,
    auth: &Auth,
    node_id: u64,
) -> Result<(), BusError> {
    let Some(request) = bus::read_frame::<_, Subscribe>(&mut recv, MAX_SUBSCRIBE_FRAME).await?
    else {
        return Ok(());
    };
    let refuse = |status: u16, detail: String| SubscribeAnswer::Refused { status, detail };
    let Some(caller) = auth.caller(&request.token) else {
        let answer = refuse(401, "the API token is not valid".into());
        return bus::write_frame(&mut send, &answer).await;
    };
    let subscriber = caller.clone();
    let revoked = auth.revoked(&request.token, &subscriber);
    tokio::pin!(revoked);
    let mut subscription = match events.subscribe(caller, request.filter, request.from).await {
        Ok(subscription) => subscription,
        Err(e) => {
            return bus::write_frame(&mut send, &refuse(e.status(), e.to_string())).await;
        }
    };
    let accepted = SubscribeAnswer::Accepted { node: node_id, position: subscription.position() };
    bus::write_frame(&mut send, &accepted).await?;
    loop {
        // A subscriber that went away is noticed even while no event comes.
        let delivery = tokio::select! {
            next = subscription.next() => next.map_err(|e| BusError::Stream(e.to_string()))?,
            _ = send.stopped() => return Ok(()),
            // A revoked token ends its subscriptions: the subscriber's next attempt is
            // refused.
            () = &mut revoked => {
                send.reset(quinn::VarInt::from_u32(1)).ok();
                return Err(BusError::Stream("the subscription's token was revoked".into()));
            }
        };
        let Some(delivery) = delivery else {
            let _ = send.finish();
            return Ok(());
        };
        fail::fail_point!("events.send", |_| Err(BusError::Stream("failpoint events.send".into())));
        bus::write_frame(&mut send, &delivery).await?;
    }
}
