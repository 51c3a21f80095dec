//! The router and the typed client over real endpoints on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::ClusterError;
use ferry_protocol::codec::{self, ByteBuf};
use ferry_protocol::peer::{Call, Ping, Probe, RemoteError, ReplyData, UploadPiece};
use ferry_protocol::{JobId, NodeId};

use super::*;
use crate::peer::identity::{ClusterCa, NodeIdentity};

const SECOND: Duration = Duration::from_secs(1);

struct Member {
    peers: Peers,
    router: Arc<Router>,
    endpoint: Arc<PeerEndpoint>,
}

fn member(ca: &ClusterCa, id: NodeId) -> anyhow::Result<Member> {
    let key = NodeIdentity::new_key()?;
    let identity =
        NodeIdentity::new(id, &key, ca.issue(id, key.public_key_raw())?, ca.cert().clone());
    let endpoint = PeerEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &identity)?;
    let router = Arc::new(Router::default());
    let book = Arc::new(AddressBook::default());
    let peers = Peers::new(id, endpoint.clone(), book, router.clone());
    endpoint.serve(router.handler(), None, None);
    Ok(Member { peers, router, endpoint })
}

/// Two members that know each other's address.
fn pair() -> anyhow::Result<(Member, Member)> {
    let ca = ClusterCa::generate()?;
    let (one, two) = (member(&ca, 1)?, member(&ca, 2)?);
    let addrs =
        [(1, one.endpoint.local_addr()?.to_string()), (2, two.endpoint.local_addr()?.to_string())];
    one.peers.book().update(addrs.clone().into_iter());
    two.peers.book().update(addrs.into_iter());
    Ok((one, two))
}

#[tokio::test]
async fn a_call_gets_the_answer_of_its_type() -> anyhow::Result<()> {
    let (one, two) = pair()?;
    two.router.add_handler::<UploadPiece, _, _>(|from, request| async move {
        Ok(ByteBuf::from(format!("{from}:{}:{}", request.session, request.len).into_bytes()))
    });
    let request = UploadPiece { session: "s".into(), offset: 0, from: 0, len: 7 };
    let answer = one.peers.call(2, &request, SECOND).await?;
    assert_eq!(answer.into_vec(), b"1:s:7");
    // A call to this node itself is served by its own router.
    two.router.add_handler::<Ping, _, _>(|_, Ping| async { Ok(()) });
    two.peers.call(2, &Ping, SECOND).await?;
    one.endpoint.close().await;
    two.endpoint.close().await;
    Ok(())
}

#[tokio::test]
async fn refusals_are_typed() -> anyhow::Result<()> {
    let (one, two) = pair()?;
    two.router.add_handler::<ReplyData, _, _>(|_, _| async { Err(ClusterError::NoLeader) });
    let refused = one.peers.call(2, &ReplyData { job: JobId(uuid::Uuid::nil()) }, SECOND).await;
    let Err(Error::Peer { node: 2, cause }) = refused else { panic!("{refused:?}") };
    assert!(matches!(*cause, Error::Refused(ClusterError::NoLeader)), "{cause:?}");

    // A kind the member does not serve.
    let unknown = one.peers.call(2, &Probe, SECOND).await;
    let Err(Error::Peer { cause, .. }) = unknown else { panic!("{unknown:?}") };
    assert!(matches!(*cause, Error::Remote(RemoteError::UnknownKind(ref k)) if k == "probe"));
    assert!(cause.is_transient(), "a member still starting may serve it later");

    // A member with no address.
    let nowhere = one.peers.call(9, &Ping, SECOND).await;
    assert!(matches!(nowhere, Err(Error::Peer { node: 9, .. })), "{nowhere:?}");
    one.endpoint.close().await;
    two.endpoint.close().await;
    Ok(())
}

#[tokio::test]
async fn what_cannot_be_decoded_or_encoded_is_refused_not_emptied() -> anyhow::Result<()> {
    let (one, two) = pair()?;
    // A body that is not the request its kind names.
    let frame = codec::encode(&Call { kind: "upload-piece".into(), body: ByteBuf::from(vec![1]) })?;
    two.router.add_handler::<UploadPiece, _, _>(|_, _| async {
        // An answer over the frame limit cannot be encoded.
        Ok(ByteBuf::from(vec![0; codec::FRAME_LIMIT + 1]))
    });
    let served = two.router.serve(1, &frame).await;
    let answer: std::result::Result<ByteBuf, RemoteError> = codec::decode(&served.bytes)?;
    assert!(matches!(answer, Err(RemoteError::Undecodable(_))), "{answer:?}");

    let request = UploadPiece { session: "s".into(), offset: 0, from: 0, len: 1 };
    let too_large = one.peers.call(2, &request, 5 * SECOND).await;
    let Err(Error::Peer { cause, .. }) = too_large else { panic!("{too_large:?}") };
    assert!(matches!(*cause, Error::Remote(RemoteError::Unencodable(_))), "{cause:?}");

    // Not even an envelope.
    let served = two.router.serve(1, b"garbage").await;
    let answer: std::result::Result<(), RemoteError> = codec::decode(&served.bytes)?;
    assert!(matches!(answer, Err(RemoteError::Undecodable(_))), "{answer:?}");
    one.endpoint.close().await;
    two.endpoint.close().await;
    Ok(())
}

#[tokio::test]
async fn the_address_book_resolves_names_when_called() {
    let book = AddressBook::default();
    book.update(
        [(1, "127.0.0.7:7000".to_owned()), (2, "localhost:7100".to_owned()), (3, "x:1".to_owned())]
            .into_iter(),
    );
    assert_eq!(book.get(1).await, Some(SocketAddr::from(([127, 0, 0, 7], 7000))));
    let named = book.get(2).await.expect("localhost resolves");
    assert!(named.ip().is_loopback() && named.port() == 7100, "{named}");
    assert_eq!(book.get(4).await, None, "not a member");
    assert_eq!(book.members(), vec![1, 2, 3]);
}
