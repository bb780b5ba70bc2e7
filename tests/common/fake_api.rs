//! A fake HTTP API on 127.0.0.1:0 (RabbitMQ's management API, as warren's probes, quorum checks
//! and maintenance lookups ask it): each request is answered by the first route whose prefix
//! its request line starts with, else 404, and every request line is recorded for the test to
//! read. One request per connection (`connection: close`), as warren's HTTP client asks. It
//! knows nothing of warren and serves until dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One route: a request-line prefix (`"GET /api/overview "`), then the status and the body
/// answered to a request that starts with it.
pub type Route = (&'static str, u16, String);

/// A running fake API; stops serving when dropped.
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The request lines (`GET /api/overview HTTP/1.1`) read so far, in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
    /// The accept loop, aborted on drop (a dropped `JoinHandle` alone would leave it running).
    task: JoinHandle<()>,
}

impl FakeApi {
    /// Serves `routes` on 127.0.0.1:0.
    pub async fn start(routes: Vec<Route>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        let record = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // A connection of its own, so one client that sends nothing holds up no other.
                tokio::spawn(answer(stream, routes.clone(), record.clone()));
            }
        });
        FakeApi {
            addr,
            requests,
            task,
        }
    }

    /// The request lines read so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head, records its request line and answers it by `routes`.
async fn answer(mut stream: TcpStream, routes: Arc<Vec<Route>>, record: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let (status, body) = routes
        .iter()
        .find(|(prefix, _, _)| line.starts_with(prefix))
        .map_or((404, ""), |(_, status, body)| (*status, body.as_str()));
    record.lock().unwrap().push(line);
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
