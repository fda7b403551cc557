//! The load generator's HTTP/1.1 client: keep-alive connections, one request in flight per
//! connection, requests encoded once up front, responses framed by `Content-Length`.
//!
//! hyper's pooled client spent ~80 µs of CPU per request here (request building, URI
//! parsing, pool bookkeeping, a task per request). On a 2-core machine that CPU is taken
//! from the server being measured, so the client does only what a benchmark of our own
//! server needs: write the bytes, parse the head with httparse, read the body.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where to connect and what to prefix paths with, from `http://host:port[/prefix]`.
pub struct Endpoint {
    pub addr: SocketAddr,
    host: String,
    prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            anyhow::anyhow!(
                "--url must start with http:// (bench-http speaks plain HTTP/1.1; got {url:?})"
            )
        })?;
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let with_port = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .map_err(|e| anyhow::anyhow!("cannot resolve {host:?} from --url {url:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host:?} from --url {url:?} resolves to no address"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// The whole request, ready to write: `GET` without a body, `POST` with a JSON one.
    pub fn encode(&self, path: &str, json_body: Option<&str>) -> Vec<u8> {
        let target = if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("/{}{path}", self.prefix)
        };
        let host = &self.host;
        match json_body {
            None => format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes(),
            Some(b) => format!(
                "POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{b}",
                b.len()
            )
            .into_bytes(),
        }
    }
}

/// One keep-alive connection, (re)opened on demand.
pub struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one encoded request; returns the status and the body. After any error, the
    /// timeout included, the connection is dropped and the next call opens a new one.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<(u16, &[u8])> {
        let answer = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")));
        match answer {
            Ok((status, head, end, close)) => {
                if close {
                    self.stream = None;
                }
                Ok((status, &self.buf[head..end]))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Returns (status, body start, body end, server closes the connection).
    async fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, usize, usize, bool)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected above");
        s.write_all(request).await?;
        self.buf.clear();
        loop {
            read_more(s, &mut self.buf).await?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut headers);
            let head_len = match head.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(invalid(format!("malformed response head: {e}"))),
            };
            let status = head.code.unwrap_or(0);
            let mut length = None;
            let mut close = false;
            for h in head.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(invalid("chunked responses are not supported".into()));
                }
            }
            let length: usize =
                length.ok_or_else(|| invalid("response without Content-Length".into()))?;
            let end = head_len + length;
            while self.buf.len() < end {
                read_more(s, &mut self.buf).await?;
            }
            if self.buf.len() > end {
                return Err(invalid(
                    "bytes after the response (nothing was pipelined)".into(),
                ));
            }
            return Ok((status, head_len, end, close));
        }
    }
}

/// Reads what is available (at least one byte) onto the end of `buf`.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(8 * 1024);
    if s.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
