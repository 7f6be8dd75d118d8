//! Issue 15, point 9: hostile HTTP at the ingest never crashes it, never lets a request
//! hide inside another, and never commits half of anything. The real `ess serve`, an
//! authenticated client (the dev certificate) sending raw bytes inside TLS, and raw TCP
//! before TLS; after each shape the server must still take a good event.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::*;

/// A request carrying one event of type `ty` with `key`, framed by Content-Length.
fn inner_request(ty: &str, key: &str) -> String {
    let body = format!(r#"{{"type":"{ty}","idempotency_key":"{key}","payload":{{}}}}"#);
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: ess\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `bytes` on a fresh authenticated connection, closes our side (TLS close_notify),
/// and returns every response status the server wrote before closing.
fn statuses_for(app: &Appliance, bytes: &[u8]) -> Vec<u16> {
    let mut s = raw_tls(app);
    // A write may fail once the server has given up on us: that is an answer too.
    let _ = s.write_all(bytes).and_then(|()| s.flush());
    s.conn.send_close_notify();
    let _ = s.flush();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

const POST: &str = "POST /v1/events HTTP/1.1\r\nHost: ess\r\nContent-Type: application/json\r\n";

/// Shapes where a second request hides behind ambiguous or broken framing of the first.
/// None may get the hidden request answered (the server answers the first, if at all,
/// and closes).
fn smuggling_shapes(inner: &str) -> Vec<(&'static str, String)> {
    let chunked_inner = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    vec![
        (
            "CL.TE",
            format!(
                "{POST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}"
            ),
        ),
        (
            "TE.CL",
            format!("{POST}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_inner}"),
        ),
        (
            "TE obfuscated value",
            format!("{POST}Transfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n{inner}"),
        ),
        (
            "TE with a space before the colon",
            format!(
                "{POST}Transfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n{inner}"
            ),
        ),
        (
            "TE chunked then identity",
            format!(
                "{POST}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{inner}"
            ),
        ),
        (
            "TE chunked not last",
            format!("{POST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{inner}"),
        ),
        (
            "TE with a vertical tab",
            format!(
                "{POST}Transfer-Encoding:\x0bchunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n{inner}"
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "{POST}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{inner}",
                inner.len()
            ),
        ),
        (
            "Content-Length with a sign",
            format!("{POST}Content-Length: +0\r\n\r\n{inner}"),
        ),
        (
            "Content-Length in hex",
            format!("{POST}Content-Length: 0x0\r\n\r\n{inner}"),
        ),
        (
            "Content-Length list",
            format!("{POST}Content-Length: 0, {}\r\n\r\n{inner}", inner.len()),
        ),
        (
            "Content-Length too large for u64",
            format!("{POST}Content-Length: 99999999999999999999999\r\n\r\n{inner}"),
        ),
        (
            "chunk size overflow",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{inner}"),
        ),
        (
            "chunk with bare LF",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n0\n\n{inner}"),
        ),
        (
            "obs-fold continuation",
            format!(
                "{POST}X-Folded: a\r\n Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}"
            ),
        ),
        (
            "NUL in a header value",
            format!("{POST}X-Nul: a\0b\r\nContent-Length: 0\r\n\r\n{inner}"),
        ),
        (
            "bare CR in a header value",
            format!("{POST}X-Cr: a\rContent-Length: 0\r\n\r\n{inner}"),
        ),
        (
            "HTTP/1.0 with chunked",
            format!(
                "POST /v1/events HTTP/1.0\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}"
            ),
        ),
    ]
}

#[test]
fn smuggling_shapes_never_get_a_hidden_request_answered() {
    let mut app = Appliance::init();
    app.start();
    let rt = rt();
    let mut c = app.client();
    let mut report = Vec::new();
    let n_shapes = smuggling_shapes("").len();
    for i in 0..n_shapes {
        let key = format!("smuggled-{i}");
        let (name, bytes) = smuggling_shapes(&inner_request("SMUGGLED", &key)).swap_remove(i);
        let statuses = statuses_for(&app, bytes.as_bytes());
        report.push(format!("{name}: {statuses:?}"));
        assert!(
            statuses.len() <= 1,
            "{name}: the hidden request was answered too: {statuses:?}"
        );
        assert!(
            !statuses.contains(&202),
            "{name}: the outer request was taken: {statuses:?}"
        );
        assert_eq!(
            rt.block_on(c.receipt(&key)).unwrap().status,
            404,
            "{name}: the hidden event was committed"
        );
        let ok = rt
            .block_on(c.post_events(permit_event(&format!("AFTER-{i}")).to_string(), false))
            .unwrap();
        assert_eq!(ok.status, 202, "{name}: the server no longer serves");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn garbage_huge_headers_and_odd_requests_are_answered_or_closed() {
    let mut app = Appliance::init();
    app.start();
    let rt = rt();
    let mut c = app.client();
    let huge_header = format!(
        "{POST}X-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many_headers = format!(
        "{POST}{}Content-Length: 0\r\n\r\n",
        (0..10_000)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!(
        "GET /v1/events/{} HTTP/1.1\r\nHost: ess\r\n\r\n",
        "k".repeat(200_000)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("1 MiB header", huge_header.into_bytes(), &[431]),
        ("10,000 headers", many_headers.into_bytes(), &[431]),
        ("200 KB request target", long_uri.into_bytes(), &[414, 431]),
        ("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), &[400]),
        ("NUL in the method", b"P\0ST /v1/events HTTP/1.1\r\nHost: ess\r\n\r\n".to_vec(), &[400]),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[400, 505]),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), &[400, 505]),
        ("HTTP/1.1 without Host", b"POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec(), &[400]),
        ("absolute-form target", b"POST https://elsewhere.example/v1/events HTTP/1.1\r\nHost: ess\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec(), &[400]),
        // httparse reads a bare LF as a line end: the request behind is one of its own,
        // with its own framing (no ambiguity: nothing sits between client and ESS).
        (
            "bare LF line ends",
            format!("POST /v1/events HTTP/1.1\nHost: ess\nContent-Type: application/json\nContent-Length: 0\n\n{}", inner_request("LF", "bare-lf")).into_bytes(),
            &[400, 202],
        ),
        ("body cut short", format!("{POST}Content-Length: 1000\r\n\r\n[{{\"type\"").into_bytes(), &[400]),
        ("chunked body cut short", format!("{POST}Transfer-Encoding: chunked\r\n\r\n100\r\n[{{").into_bytes(), &[400]),
    ];
    for (name, bytes, allowed) in cases {
        let statuses = statuses_for(&app, &bytes);
        assert!(
            statuses.iter().all(|s| allowed.contains(s)),
            "{name}: answered {statuses:?}, allowed {allowed:?}"
        );
        let ok = rt
            .block_on(c.post_events(
                permit_event(&format!("AFTER-{}", name.len())).to_string(),
                false,
            ))
            .unwrap();
        assert_eq!(ok.status, 202, "{name}: the server no longer serves");
    }

    // Two good requests in one write (pipelining) are both taken, in order.
    let two = format!(
        "{}{}",
        inner_request("PIPELINED", "pipelined-1"),
        inner_request("PIPELINED", "pipelined-2")
    );
    assert_eq!(statuses_for(&app, two.as_bytes()), [202, 202]);

    // Garbage before TLS, and a half-closed TCP connection after a request.
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01][..],
        &[0u8; 3000][..],
    ] {
        let mut tcp = std::net::TcpStream::connect(app.ingest.unwrap()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let _ = tcp.write_all(garbage);
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        assert!(
            !String::from_utf8_lossy(&out).contains("HTTP/1.1 2"),
            "{out:?}"
        );
    }
    let mut s = raw_tls(&app);
    let req = inner_request("HALF", "half-closed");
    s.write_all(req.as_bytes()).unwrap();
    s.flush().unwrap();
    s.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_response(&mut s);
    assert_eq!(
        answer.map(|a| a.0),
        Some(202),
        "a half-closed client gets its answer"
    );

    let ok = rt
        .block_on(c.post_events(permit_event("LAST").to_string(), false))
        .unwrap();
    assert_eq!(ok.status, 202);
    assert_eq!(rt.block_on(c.receipt("pipelined-2")).unwrap().status, 200);
}

#[test]
fn tls_renegotiation_is_refused_and_the_server_goes_on() {
    let mut app = Appliance::init();
    app.start();
    // openssl's s_client renegotiates when it reads a line "R" on stdin (TLS 1.2 only).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(printf 'R\\n'; sleep 2) | openssl s_client -connect {} -tls1_2 -cert {} -key {} -CAfile {}",
            app.ingest.unwrap(),
            app.tls("client.crt").display(),
            app.tls("client.key").display(),
            app.tls("ca.crt").display(),
        ))
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("RENEGOTIATING"),
        "renegotiation was not tried: {all}"
    );
    let rt = rt();
    let ok = rt
        .block_on(
            app.client()
                .post_events(permit_event("AFTER-RENEG").to_string(), false),
        )
        .unwrap();
    assert_eq!(ok.status, 202);
}
