//! Test doubles of the dataset layer for this crate's tests and, with the `test-support`
//! feature, for other crates' tests: a loopback HTTP server standing in for a dataset mirror, and
//! CIFAR-10-shaped archives.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How the test server answers for one path.
#[derive(Clone)]
pub struct Resource {
    /// The file.
    pub bytes: Vec<u8>,
    /// Answer `Range` requests with 206; otherwise always send the whole file with 200.
    pub ranges: bool,
    /// Close the connection after this many body bytes, having announced them all.
    pub cut_after: Option<usize>,
}

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1, enough for `fetch`: GET, `Range:
/// bytes=N-`, 404 for unknown paths. It stops when dropped.
pub struct Server {
    /// `http://127.0.0.1:<port>/`.
    pub base: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(resources: HashMap<String, Resource>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &resources, &log);
                }
            }
        });
        Self {
            base,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `GET /name` lines with their `Range` header, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking `accept` so that the thread sees the flag.
        let _ = TcpStream::connect(
            self.base
                .trim_start_matches("http://")
                .trim_end_matches('/'),
        );
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    resources: &HashMap<String, Resource>,
    log: &Mutex<Vec<String>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("range:") {
            range_start = value
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
        }
    }
    log.lock().unwrap().push(match range_start {
        Some(start) => format!("GET /{path} bytes={start}-"),
        None => format!("GET /{path}"),
    });
    let mut out = stream;
    let Some(resource) = resources.get(&path) else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let len = resource.bytes.len();
    let (head, body) = match range_start {
        Some(start) if resource.ranges && start >= len => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            (head, &resource.bytes[..0])
        }
        Some(start) if resource.ranges => {
            let body = &resource.bytes[start..];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                body.len()
            );
            (head, body)
        }
        _ => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            (head, &resource.bytes[..])
        }
    };
    out.write_all(head.as_bytes())?;
    let sent = resource.cut_after.map_or(body.len(), |n| n.min(body.len()));
    out.write_all(&body[..sent])?;
    out.flush()
}

/// `bytes` served whole or from a `Range`, never cut.
pub fn resource(bytes: &[u8]) -> Resource {
    Resource {
        bytes: bytes.to_vec(),
        ranges: true,
        cut_after: None,
    }
}

/// A server of `files` by name, started.
pub fn server(files: &[(&str, Resource)]) -> Server {
    Server::start(
        files
            .iter()
            .map(|(name, r)| ((*name).to_owned(), r.clone()))
            .collect(),
    )
}

/// The MD5 checksum of `bytes` as the dataset manifests write it.
pub fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", md5::compute(bytes))
}

/// A CIFAR-10-shaped `.tar.gz` whose i-th file (five train batches, then the test batch)
/// holds one record per label of `labels(i)`, every pixel equal to i.
pub fn cifar10_archive_of(labels: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let names = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_owned()]);
    for (i, name) in names.enumerate() {
        let mut records = Vec::new();
        for label in labels(i) {
            records.push(label);
            records.extend(std::iter::repeat_n(i as u8, 3072));
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(records.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("cifar-10-batches-bin/{name}"),
                &records[..],
            )
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}
