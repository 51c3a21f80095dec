//! The BITS upload server, spoken to with raw requests as the spec writes them
//! (bits-spec §5): Ping, Create-Session, Fragments (in order, overlapping, with a gap),
//! Close-Session and Cancel-Session, and the refusals.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use ferry_protocol::upload::{PROTOCOL_GUID, header};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::support::raw;

struct Bits {
    url: String,
    token: &'static str,
}

impl Bits {
    async fn send(
        &self,
        packet: &str,
        extra: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, HeaderMap)> {
        let method = Method::from_bytes(b"BITS_POST")?;
        let mut request = raw()
            .request(method, &self.url)
            .bearer_auth(self.token)
            .header(header::PACKET_TYPE, packet)
            .body(body);
        for (name, value) in extra {
            request = request.header(*name, value);
        }
        let response = request.send().await?;
        Ok((response.status(), response.headers().clone()))
    }

    async fn create(&self) -> anyhow::Result<String> {
        let (status, headers) = self
            .send("Create-Session", &[(header::SUPPORTED_PROTOCOLS, PROTOCOL_GUID.into())], vec![])
            .await?;
        anyhow::ensure!(status == StatusCode::OK, "create: {status} {headers:?}");
        assert_eq!(value(&headers, header::PROTOCOL), PROTOCOL_GUID);
        assert_eq!(value(&headers, header::PACKET_TYPE), "Ack");
        assert_eq!(value(&headers, "content-length"), "0");
        Ok(value(&headers, header::SESSION_ID))
    }

    async fn fragment(
        &self,
        session: &str,
        data: &[u8],
        start: usize,
        end: usize,
    ) -> anyhow::Result<(StatusCode, HeaderMap)> {
        let range = format!("bytes {start}-{end}/{}", data.len());
        self.send(
            "Fragment",
            &[(header::SESSION_ID, session.into()), (header::CONTENT_RANGE, range)],
            data[start..=end].to_vec(),
        )
        .await
    }
}

fn value(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_bits_client_uploads_with_overlaps_and_gaps_answered_by_the_spec()
-> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let bits = Bits { url: format!("{}/bits/in/data.bin", node.url()?), token: tokens::ALICE };
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let (status, headers) = bits.send("Ping", &[], vec![]).await?;
    assert_eq!((status, value(&headers, header::PACKET_TYPE)), (StatusCode::OK, "Ack".into()));

    let session = bits.create().await?;
    let (status, headers) = bits.fragment(&session, &data, 0, 99_999).await?;
    assert_eq!(
        (status, value(&headers, header::RECEIVED_CONTENT_RANGE)),
        (StatusCode::OK, "100000".into())
    );
    // Overlap: only the new tail is kept (the overlapping bytes are not rewritten).
    let (status, headers) = bits.fragment(&session, &data, 50_000, 199_999).await?;
    assert_eq!(
        (status, value(&headers, header::RECEIVED_CONTENT_RANGE)),
        (StatusCode::OK, "200000".into())
    );
    // A gap: 416 naming the next byte expected.
    let (status, headers) = bits.fragment(&session, &data, 250_000, 299_999).await?;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(value(&headers, header::RECEIVED_CONTENT_RANGE), "200000");
    assert_eq!(value(&headers, header::ERROR_CODE), "0x8020002B");
    let (status, _) = bits.fragment(&session, &data, 200_000, 299_999).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        bits.send("Close-Session", &[(header::SESSION_ID, session.clone())], vec![]).await?;
    assert_eq!(status, StatusCode::OK);
    let stored = std::fs::read(node.data_dir().join("uploads/in/data.bin"))?;
    assert!(stored == data, "the assembled file differs");

    // The session is gone; the file exists and may not be overwritten.
    let (status, headers) = bits.fragment(&session, &data, 0, 9).await?;
    assert_eq!(
        (status, value(&headers, header::ERROR_CODE)),
        (StatusCode::BAD_REQUEST, "0x8020001F".into())
    );
    let (status, _) = bits
        .send("Create-Session", &[(header::SUPPORTED_PROTOCOLS, PROTOCOL_GUID.into())], vec![])
        .await?;
    assert_eq!(status, StatusCode::CONFLICT);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_sent_ahead_waits_for_the_one_before_it() -> anyhow::Result<()> {
    // A pipelining client sends the next fragment before the last is acknowledged, on
    // another connection: the server takes it when the one before it is recorded
    // (without the gate it answered 416 at once).
    let node = Node::start(NodeOptions::queue_only()).await?;
    let bits = Bits { url: format!("{}/bits/in/ahead.bin", node.url()?), token: tokens::ALICE };
    const PART: usize = 1 << 20;
    let data: Vec<u8> = (0..3 * PART as u32).map(|i| (i * 13 % 251) as u8).collect();
    let session = bits.create().await?;
    let (status, headers) = bits.send("Ping", &[], vec![]).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value(&headers, header::FRAGMENTS_AHEAD), "4", "advertised on every Ack");

    // The first fragment's body trickles: it is in flight while the second arrives.
    let (mut trickle, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
    let first = tokio::spawn({
        let request = raw()
            .request(Method::from_bytes(b"BITS_POST")?, &bits.url)
            .bearer_auth(bits.token)
            .header(header::PACKET_TYPE, "Fragment")
            .header(header::SESSION_ID, &session)
            .header(header::CONTENT_RANGE, format!("bytes 0-{}/{}", PART - 1, data.len()))
            .header("content-length", PART.to_string())
            .body(reqwest::Body::wrap(body));
        async move { request.send().await.map(|r| (r.status(), r.headers().clone())) }
    });
    trickle.send_data(bytes::Bytes::copy_from_slice(&data[..PART / 2])).await?;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let bits = Bits { url: bits.url.clone(), token: bits.token };
        let (session, data) = (session.clone(), data.clone());
        async move { bits.fragment(&session, &data, PART, 2 * PART - 1).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second fragment was answered before the first");
    trickle.send_data(bytes::Bytes::copy_from_slice(&data[PART / 2..PART])).await?;
    drop(trickle);
    let (status, headers) = first.await??;
    assert_eq!(
        (status, value(&headers, header::RECEIVED_CONTENT_RANGE)),
        (StatusCode::OK, PART.to_string())
    );
    let (status, headers) = second.await??;
    assert_eq!(
        (status, value(&headers, header::RECEIVED_CONTENT_RANGE)),
        (StatusCode::OK, (2 * PART).to_string()),
        "the second fragment is taken after the first"
    );

    // A fragment ahead with none in flight before it is still a gap.
    let (status, headers) = bits.fragment(&session, &data, 2 * PART + 10, 3 * PART - 1).await?;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(value(&headers, header::RECEIVED_CONTENT_RANGE), (2 * PART).to_string());
    let (status, _) = bits.fragment(&session, &data, 2 * PART, 3 * PART - 1).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        bits.send("Close-Session", &[(header::SESSION_ID, session.clone())], vec![]).await?;
    assert_eq!(status, StatusCode::OK);
    let stored = std::fs::read(node.data_dir().join("uploads/in/ahead.bin"))?;
    assert!(stored == data, "the assembled file differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bits_requests_are_refused_with_the_right_code() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let url = |path: &str| Ok::<_, anyhow::Error>(format!("{}/bits/{path}", node.url()?));
    let alice = Bits { url: url("in/b.bin")?, token: tokens::ALICE };

    // Another protocol only: refused, E_INVALIDARG from the remote file.
    let other = "{00000000-0000-0000-0000-000000000000}".to_owned();
    let (status, headers) =
        alice.send("Create-Session", &[(header::SUPPORTED_PROTOCOLS, other)], vec![]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (value(&headers, header::ERROR_CODE), value(&headers, header::ERROR_CONTEXT)),
        ("0x80070057".into(), "0x5".into())
    );
    // No packet type; an unknown one.
    assert_eq!(alice.send("Gibberish", &[], vec![]).await?.0, StatusCode::BAD_REQUEST);
    // Fragment without a session id, or a range that does not match the body.
    let session = alice.create().await?;
    let data = vec![1u8; 100];
    let (status, _) = alice
        .send("Fragment", &[(header::CONTENT_RANGE, "bytes 0-99/100".into())], data.clone())
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = alice
        .send(
            "Fragment",
            &[
                (header::SESSION_ID, session.clone()),
                (header::CONTENT_RANGE, "bytes 0-49/100".into()),
            ],
            data.clone(),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "Content-Range and body disagree");
    // Another user cannot use Alice's session.
    let bob = Bits { url: url("in/b.bin")?, token: tokens::BOB };
    let (status, headers) = bob.fragment(&session, &data, 0, 99).await?;
    assert_eq!(
        (status, value(&headers, header::ERROR_CODE)),
        (StatusCode::BAD_REQUEST, "0x8020001F".into())
    );
    // Cancel discards it; nothing reaches the upload root.
    alice.fragment(&session, &data, 0, 49).await?;
    let (status, _) =
        alice.send("Cancel-Session", &[(header::SESSION_ID, session)], vec![]).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(!node.data_dir().join("uploads/in/b.bin").exists());
    // No token, or a path escaping the root, or another method.
    let anonymous = raw()
        .request(Method::from_bytes(b"BITS_POST")?, url("x")?)
        .header(header::PACKET_TYPE, "Ping")
        .send()
        .await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let escape = Bits { url: url("a%2F..%2F..%2Fetc%2Fpasswd")?, token: tokens::ALICE };
    let (status, _) = escape
        .send("Create-Session", &[(header::SUPPORTED_PROTOCOLS, PROTOCOL_GUID.into())], vec![])
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let get = raw().get(url("x")?).bearer_auth(tokens::ALICE).send().await?;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Too large (the node's maximum is lowered for the test below).
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_maximum_size_is_too_large() -> anyhow::Result<()> {
    let options = NodeOptions {
        extra_config: "[upload]\nmax_size_bytes = 1000\n".into(),
        ..NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let bits = Bits { url: format!("{}/bits/big.bin", node.url()?), token: tokens::ALICE };
    let session = bits.create().await?;
    let data = vec![0u8; 2000];
    let (status, headers) = bits.fragment(&session, &data, 0, 99).await?;
    assert_eq!(
        (status, value(&headers, header::ERROR_CODE)),
        (StatusCode::PAYLOAD_TOO_LARGE, "0x80200020".into())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_across_nodes_and_closes_on_a_third() -> anyhow::Result<()> {
    let (nodes, _) = crate::cluster::form_cluster(NodeOptions::queue_only()).await?;
    let at = |i: usize| -> anyhow::Result<Bits> {
        Ok(Bits { url: format!("{}/bits/farm/f.bin", nodes[i].url()?), token: tokens::ALICE })
    };
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    // Create on A, then fragments alternate A, B, C (a load balancer without affinity).
    let session = at(0)?.create().await?;
    let step = 250_000;
    for (n, start) in (0..data.len()).step_by(step).enumerate() {
        let end = (start + step).min(data.len()) - 1;
        let (status, headers) = at(n % 3)?.fragment(&session, &data, start, end).await?;
        assert_eq!(status, StatusCode::OK, "fragment {n}: {headers:?}");
        assert_eq!(value(&headers, header::RECEIVED_CONTENT_RANGE), (end + 1).to_string());
    }
    let (status, headers) =
        at(2)?.send("Close-Session", &[(header::SESSION_ID, session)], vec![]).await?;
    assert_eq!(status, StatusCode::OK, "{headers:?}");
    // The last fragment went to C, which gathered the pieces into its upload root.
    let stored = std::fs::read(nodes[2].data_dir().join("uploads/farm/f.bin"))?;
    assert!(stored == data, "the file gathered from three nodes differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_ends_reply_is_served_by_every_node_and_repeated_to_a_retry() -> anyhow::Result<()>
{
    let backend = ferry_tests::backend::Backend::start().await?;
    let options = NodeOptions {
        extra_config: format!(
            "[upload]\nbackend = \"by_value\"\nbackend_url = \"{}\"\n",
            backend.url()
        ),
        ..NodeOptions::queue_only()
    };
    let (nodes, _) = crate::cluster::form_cluster(options).await?;
    let at = |i: usize| -> anyhow::Result<Bits> {
        Ok(Bits { url: format!("{}/bits/in/r.bin?case=7", nodes[i].url()?), token: tokens::ALICE })
    };
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let session = at(0)?.create().await?;
    // Fragments on A, then the final one on B: B gathers, notifies, keeps the reply.
    at(0)?.fragment(&session, &data, 0, 499_999).await?;
    let (status, headers) = at(1)?.fragment(&session, &data, 500_000, 999_999).await?;
    assert_eq!(status, StatusCode::OK, "{headers:?}");
    let reply_url = value(&headers, header::REPLY_URL);
    assert!(reply_url.starts_with(&nodes[1].url()?), "{reply_url} {headers:?}");
    let notes = backend.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].original_url.as_deref(), Some(at(1)?.url.as_str()));
    // The same final fragment again, at A: the recorded outcome, no second notification.
    let (status, headers) = at(0)?.fragment(&session, &data, 999_000, 999_999).await?;
    assert_eq!(status, StatusCode::OK);
    let again = value(&headers, header::REPLY_URL);
    assert_eq!(again.rsplit('/').next(), reply_url.rsplit('/').next());
    assert_eq!(backend.notifications().len(), 1);
    // The reply, from C (fetched from B over the peer link), whole and by range.
    let on_c = reply_url.replace(&nodes[1].url()?, &nodes[2].url()?);
    let expected = ferry_tests::backend::expected_reply(&data);
    let get = |range: Option<&str>| {
        let mut request = raw().get(&on_c).bearer_auth(tokens::ALICE);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };
    let whole = get(None).await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.text().await?, expected);
    let tail = get(Some("bytes=7-")).await?;
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.text().await?, expected[7..]);
    let other = raw().get(&on_c).bearer_auth(tokens::BOB).send().await?;
    assert_eq!(other.status(), StatusCode::NOT_FOUND, "only the uploader reads the reply");
    // Close-Session releases the reply.
    let (status, _) =
        at(2)?.send("Close-Session", &[(header::SESSION_ID, session)], vec![]).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(None).await?.status(), StatusCode::NOT_FOUND);

    // A back end that names a reply URL of its own: that URL is the reply.
    backend.set_static_response_url(Some("http://replies.example/r/1".into()));
    let session = at(2)?.create().await?;
    let (_, headers) = at(2)?.fragment(&session, &data, 0, 999_999).await?;
    assert_eq!(value(&headers, header::REPLY_URL), "http://replies.example/r/1");
    Ok(())
}
