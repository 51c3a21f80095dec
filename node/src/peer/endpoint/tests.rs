//! The endpoint over real sockets on 127.0.0.1: members call each other; strangers,
//! impostors and clients without a certificate are refused; answers hold their permits.

use super::*;
use crate::peer::identity::ClusterCa;

fn identity(ca: &ClusterCa, id: u64) -> NodeIdentity {
    let key = NodeIdentity::new_key().expect("key");
    let cert = ca.issue(id, key.public_key_raw()).expect("issue");
    NodeIdentity::new(id, &key, cert, ca.cert().clone())
}

fn echo() -> Handler {
    Arc::new(|from: u64, body: Vec<u8>| {
        Box::pin(async move {
            let mut out = format!("from {from}: ").into_bytes();
            out.extend(body);
            Served::from(out)
        })
    })
}

const SECOND: Duration = Duration::from_secs(1);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn members_of_one_cluster_call_each_other() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let one = PeerEndpoint::bind(loopback(), &identity(&ca, 1))?;
    let two = PeerEndpoint::bind(loopback(), &identity(&ca, 2))?;
    let _served = two.serve(echo(), None, None);
    for _ in 0..3 {
        let answer = one.call(2, two.local_addr()?, b"hello".to_vec(), SECOND, None).await?;
        assert_eq!(answer, b"from 1: hello");
    }
    one.close().await;
    two.close().await;
    Ok(())
}

#[tokio::test]
async fn an_answer_holds_its_permit_until_it_is_written() -> anyhow::Result<()> {
    const ANSWER: usize = 8 * 1024 * 1024;
    let ca = ClusterCa::generate()?;
    let one = PeerEndpoint::bind(loopback(), &identity(&ca, 1))?;
    let two = PeerEndpoint::bind(loopback(), &identity(&ca, 2))?;
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let shared = permits.clone();
    let _served = two.serve(
        Arc::new(move |_, _| {
            let permits = shared.clone();
            Box::pin(async move {
                let hold = permits.acquire_owned().await.ok();
                Served { bytes: vec![7; ANSWER], hold }
            })
        }),
        None,
        None,
    );
    let connection = one.connection(2, two.local_addr()?).await?;
    let frame = codec::encode(&Envelope { from: 1, body: ByteBuf::from(Vec::new()) })?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&frame).await?;
    send.finish()?;
    // Unread, an answer larger than the stream's flow-control window cannot be all
    // written: the permit stays taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(permits.available_permits(), 0, "released before the answer was written");
    let answer = recv.read_to_end(2 * ANSWER).await?;
    assert!(answer.len() > ANSWER);
    let released = tokio::time::timeout(5 * SECOND, async {
        while permits.available_permits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(released.await.is_ok(), "the permit was not released once written");
    one.close().await;
    two.close().await;
    Ok(())
}

#[tokio::test]
async fn strangers_and_impostors_are_refused() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let member = PeerEndpoint::bind(loopback(), &identity(&ca, 2))?;
    let _served = member.serve(echo(), None, None);
    let addr = member.local_addr()?;

    // A node with a certificate from another CA cannot connect.
    let other_ca = ClusterCa::generate()?;
    let stranger = PeerEndpoint::bind(loopback(), &identity(&other_ca, 5))?;
    let refused = stranger.call(2, addr, b"let me in".to_vec(), SECOND, None).await;
    assert!(
        matches!(refused, Err(PeerError::Connect { .. }) | Err(PeerError::Stream(..))),
        "{refused:?}"
    );

    // A member claiming another node's id is refused.
    let mut impostor_identity = identity(&ca, 3);
    impostor_identity.node_id = 4;
    let impostor = PeerEndpoint::bind(loopback(), &impostor_identity)?;
    let refused = impostor.call(2, addr, b"i am 4".to_vec(), SECOND, None).await;
    assert!(matches!(refused, Err(PeerError::Refused { .. })), "{refused:?}");

    // A server whose certificate names another node is not trusted as that node.
    let one = PeerEndpoint::bind(loopback(), &identity(&ca, 1))?;
    let wrong = one.call(9, addr, b"are you 9?".to_vec(), SECOND, None).await;
    assert!(matches!(wrong, Err(PeerError::Connect { .. })), "{wrong:?}");
    Ok(())
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let member = PeerEndpoint::bind(loopback(), &identity(&ca, 2))?;
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = served.clone();
    let _serving = member.serve(
        Arc::new(move |_, _| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Served::from(Vec::new()) })
        }),
        None,
        None,
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client(loopback())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )));
    let outcome = async {
        let connection = endpoint.connect(member.local_addr()?, &node_name(2))?.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(b"anything").await?;
        send.finish()?;
        anyhow::Ok(recv.read_to_end(1024).await?)
    }
    .await;
    // TLS 1.3 lets the client finish first; the server then aborts the connection.
    assert!(outcome.is_err(), "served a client without a certificate: {outcome:?}");
    assert!(!served.load(std::sync::atomic::Ordering::SeqCst), "the handler ran");
    Ok(())
}

#[tokio::test]
async fn a_pipelining_caller_is_told_before_its_answer_returns_and_gets_it_whole()
-> anyhow::Result<()> {
    const ANSWER: usize = 8 * 1024 * 1024;
    let ca = ClusterCa::generate()?;
    let one = PeerEndpoint::bind(loopback(), &identity(&ca, 1))?;
    let two = PeerEndpoint::bind(loopback(), &identity(&ca, 2))?;
    let _served = two.serve(
        Arc::new(|_, _| {
            Box::pin(async { Served::from((0..ANSWER).map(|i| i as u8).collect::<Vec<u8>>()) })
        }),
        None,
        None,
    );
    let (tell, mut told) = tokio::sync::oneshot::channel();
    let near = NearEnd { expected: ANSWER, round_trips: 1, tell };
    let bytes = one.call(2, two.local_addr()?, Vec::new(), 10 * SECOND, Some(near)).await?;
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == i as u8), "the answer is not whole");
    assert_eq!(bytes.len(), ANSWER);
    assert_eq!(told.try_recv(), Ok(()), "never told the answer was near its end");
    one.close().await;
    two.close().await;
    Ok(())
}

#[test]
fn an_answer_is_near_its_end_when_what_is_left_would_take_a_round_trip() {
    let ms = Duration::from_millis;
    // 1 MB in 10 ms: 100 MB/s, or 100 KB per millisecond.
    assert!(near_end(100_000, 1_000_000, ms(10), ms(1)));
    assert!(!near_end(100_001, 1_000_000, ms(10), ms(1)));
    assert!(near_end(200_000, 1_000_000, ms(10), ms(2)));
    // Nothing measured yet: near only once nothing is left.
    assert!(!near_end(1, 0, Duration::ZERO, ms(100)));
    assert!(near_end(0, 0, Duration::ZERO, ms(1)));
}
