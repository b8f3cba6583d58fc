//! One DNS query and its answer: over UDP (tried [`TRIES`] times within
//! the time left), again over TCP when the answer came truncated. An
//! answer counts only if it is a response with the query's id and its
//! question (a stray or spoofed datagram is skipped); one too truncated
//! to parse, yet with the query's id and the truncation bit, goes to TCP
//! at once.

use super::{DnsError, DnsOptions, TRIES, no_records};
use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use std::net::SocketAddr;
use std::time::Instant;

/// One query, answered: over UDP, again over TCP if truncated. An empty
/// answer or NXDOMAIN is [`DnsError::NoRecords`].
pub(super) async fn lookup(
    asked: &Name,
    kind: RecordType,
    opts: &DnsOptions,
    deadline: Instant,
) -> Result<Message, DnsError> {
    let server = opts.server;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(asked.clone(), kind));
    let bytes = query.to_vec().map_err(|e| DnsError::Malformed {
        server,
        why: e.to_string(),
    })?;
    let answer = match exchange_udp(&bytes, &query, opts, deadline).await? {
        Reply::Answer(m) if !m.metadata.truncation => m,
        Reply::Answer(_) | Reply::Truncated => exchange_tcp(&bytes, &query, opts, deadline).await?,
    };
    match answer.metadata.response_code {
        ResponseCode::NoError if answer.answers.iter().any(|r| r.record_type() == kind) => {
            Ok(answer)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => Err(no_records(opts, asked, kind)),
        code => Err(DnsError::Refused {
            server,
            name: asked.to_utf8(),
            kind: kind.to_string(),
            code,
        }),
    }
}

/// What came back for a query over UDP.
#[derive(Debug)]
enum Reply {
    /// Its answer (perhaps with the truncation bit).
    Answer(Message),
    /// Its answer, truncated past parsing: ask over TCP.
    Truncated,
}

/// What a datagram is to `query`.
#[derive(Debug)]
enum Datagram {
    /// Its answer.
    Answer(Message),
    /// Its answer, truncated past parsing.
    Truncated,
    /// Another query's answer, not a response, or garbage.
    Other,
}

/// Whether `m` answers `query`: a response with its id and question
/// (names compared without case, as DNS does), or an error without a
/// question (servers need not echo it in a FORMERR, NOTIMP...).
fn answers(query: &Message, m: &Message) -> bool {
    let same = |a: &Query, b: &Query| {
        a.query_type() == b.query_type()
            && a.query_class() == b.query_class()
            && a.name().eq_ignore_root(b.name())
    };
    let asked = m.queries.len() == query.queries.len()
        && m.queries
            .iter()
            .zip(&query.queries)
            .all(|(a, b)| same(a, b));
    let bare_error = m.queries.is_empty() && m.metadata.response_code != ResponseCode::NoError;
    m.metadata.message_type == MessageType::Response
        && m.metadata.id == query.metadata.id
        && (asked || bare_error)
}

/// Reads a datagram as an answer to `query`, if it is one.
fn classify(query: &Message, bytes: &[u8]) -> Datagram {
    match Message::from_vec(bytes) {
        Ok(m) if answers(query, &m) => Datagram::Answer(m),
        Ok(_) => Datagram::Other,
        Err(_) => match Header::from_bytes(bytes) {
            Ok(h)
                if h.metadata.truncation
                    && h.metadata.message_type == MessageType::Response
                    && h.metadata.id == query.metadata.id =>
            {
                Datagram::Truncated
            }
            _ => Datagram::Other,
        },
    }
}

fn io(server: SocketAddr) -> impl Fn(std::io::Error) -> DnsError {
    move |source| DnsError::Io { server, source }
}

/// Sends `bytes` (`query`) over UDP until its answer comes (up to
/// [`TRIES`] sends, spread over the time left).
async fn exchange_udp(
    bytes: &[u8],
    query: &Message,
    opts: &DnsOptions,
    deadline: Instant,
) -> Result<Reply, DnsError> {
    let server = opts.server;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = async_net::UdpSocket::bind(local)
        .await
        .map_err(io(server))?;
    socket.connect(server).await.map_err(io(server))?;
    let mut buf = vec![0u8; 65_535];
    for tries_left in (1..=TRIES).rev() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.send(bytes).await.map_err(io(server))?;
        let wait = left / tries_left;
        let got = skelpi_wire::within(wait, async {
            loop {
                // A refused port (ICMP) is an error here, as no answer.
                let n = socket.recv(&mut buf).await?;
                match classify(query, &buf[..n]) {
                    Datagram::Answer(m) => return Ok::<_, std::io::Error>(Reply::Answer(m)),
                    Datagram::Truncated => return Ok(Reply::Truncated),
                    Datagram::Other => continue,
                }
            }
        })
        .await;
        match got {
            Some(Ok(reply)) => return Ok(reply),
            None => {}
            Some(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(DnsError::Closed { server });
            }
            Some(Err(e)) => return Err(io(server)(e)),
        }
    }
    Err(DnsError::NoAnswer {
        server,
        waited: opts.timeout,
    })
}

/// Sends `bytes` (`query`) over TCP (two-byte length first) and reads
/// its answer.
async fn exchange_tcp(
    bytes: &[u8],
    query: &Message,
    opts: &DnsOptions,
    deadline: Instant,
) -> Result<Message, DnsError> {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let server = opts.server;
    let left = deadline.saturating_duration_since(Instant::now());
    let exchange = async {
        let mut stream = async_net::TcpStream::connect(server).await?;
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(bytes).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = skelpi_wire::within(left, exchange)
        .await
        .ok_or(DnsError::NoAnswer {
            server,
            waited: opts.timeout,
        })?
        .map_err(io(server))?;
    match Message::from_vec(&answer) {
        Ok(m) if answers(query, &m) => Ok(m),
        Ok(_) => Err(DnsError::Malformed {
            server,
            why: "its TCP answer is not to the question asked".into(),
        }),
        Err(e) => Err(DnsError::Malformed {
            server,
            why: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::PTR,
        ));
        q
    }

    fn response_to(q: &Message) -> Message {
        let mut m = q.clone();
        m.metadata.message_type = MessageType::Response;
        m
    }

    #[test]
    fn only_a_response_to_the_question_asked_is_its_answer() {
        let q = query("_skelpi._tcp.lab.test.");
        let bytes = |m: &Message| m.to_vec().unwrap();
        let answer = response_to(&q);
        assert!(matches!(classify(&q, &bytes(&answer)), Datagram::Answer(_)));
        // Names compare without case.
        let mut upper = response_to(&query("_SKELPI._tcp.Lab.Test."));
        upper.metadata.id = q.metadata.id;
        assert!(matches!(classify(&q, &bytes(&upper)), Datagram::Answer(_)));
        // The same id for another name, or another type: not its answer.
        let mut other = response_to(&query("_skelpi._tcp.elsewhere.test."));
        other.metadata.id = q.metadata.id;
        assert!(matches!(classify(&q, &bytes(&other)), Datagram::Other));
        let mut srv = q.clone();
        srv.queries[0].set_query_type(RecordType::SRV);
        let srv = response_to(&srv);
        assert!(matches!(classify(&q, &bytes(&srv)), Datagram::Other));
        // Its own query echoed back (not a response), another id, garbage.
        assert!(matches!(classify(&q, &bytes(&q)), Datagram::Other));
        let mut stray = answer.clone();
        stray.metadata.id = q.metadata.id.wrapping_add(1);
        assert!(matches!(classify(&q, &bytes(&stray)), Datagram::Other));
        assert!(matches!(classify(&q, b"\x01\x02"), Datagram::Other));
        // An error without the question is its answer; a success is not.
        let mut bare = answer.clone();
        bare.queries.clear();
        assert!(matches!(classify(&q, &bytes(&bare)), Datagram::Other));
        bare.metadata.response_code = ResponseCode::NotImp;
        assert!(matches!(classify(&q, &bytes(&bare)), Datagram::Answer(_)));
    }

    #[test]
    fn an_answer_truncated_past_parsing_goes_to_tcp_at_once() {
        let q = query("_skelpi._tcp.lab.test.");
        let mut cut = response_to(&q);
        cut.metadata.truncation = true;
        let whole = cut.to_vec().unwrap();
        // The header says one question; the datagram ends inside it.
        let cut_short = &whole[..whole.len() - 3];
        assert!(Message::from_vec(cut_short).is_err());
        assert!(matches!(classify(&q, cut_short), Datagram::Truncated));
        // Without the truncation bit it is garbage, and waited past.
        let mut plain = response_to(&q);
        plain.metadata.truncation = false;
        let plain = plain.to_vec().unwrap();
        assert!(matches!(
            classify(&q, &plain[..plain.len() - 3]),
            Datagram::Other
        ));
    }
}
