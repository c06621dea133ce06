//! The rendezvous and the ring all-reduce.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Bytes that open every rendezvous message: another program connecting to the port is told
/// apart from a rank.
const MAGIC: [u8; 8] = *b"LFRING01";

/// How long a connection to the coordinator may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong between the ranks.
#[derive(Debug, Error)]
pub enum CollectiveError {
    /// Rank and world size that do not fit together.
    #[error("rank {rank} is not in a group of {world}")]
    InvalidRank {
        /// The rank.
        rank: usize,
        /// The world size.
        world: usize,
    },
    /// The coordinator's address could not be used.
    #[error("the coordinator address `{address}` cannot be used: {reason}")]
    Address {
        /// As given.
        address: String,
        /// Why.
        reason: String,
    },
    /// The group did not assemble in time.
    #[error(
        "the ranks did not meet within {}s at `{address}`: {detail}",
        timeout.as_secs()
    )]
    RendezvousTimeout {
        /// The coordinator's address.
        address: String,
        /// How long we waited.
        timeout: Duration,
        /// What was missing.
        detail: String,
    },
    /// A peer spoke something other than this protocol, or disagreed about the group.
    #[error("rendezvous at `{address}` failed: {detail}")]
    Rendezvous {
        /// The coordinator's address.
        address: String,
        /// What was wrong.
        detail: String,
    },
    /// A neighbour closed its connection or the network failed mid-operation.
    #[error(
        "rank {rank} lost its connection to rank {peer} during all-reduce {sequence}: {source}"
    )]
    Peer {
        /// This rank.
        rank: usize,
        /// The neighbour.
        peer: usize,
        /// The operation's sequence number.
        sequence: u64,
        /// The socket's error.
        source: io::Error,
    },
    /// A neighbour sent nothing for the whole message timeout.
    #[error(
        "rank {rank} waited {}s for rank {peer} in all-reduce {sequence}: is that rank still running?",
        timeout.as_secs()
    )]
    Timeout {
        /// This rank.
        rank: usize,
        /// The neighbour.
        peer: usize,
        /// The operation's sequence number.
        sequence: u64,
        /// How long it waited.
        timeout: Duration,
    },
    /// An earlier operation failed; the group cannot be used again.
    #[error("rank {rank}'s group failed in an earlier all-reduce and is closed")]
    Closed {
        /// This rank.
        rank: usize,
    },
    /// A neighbour sent a message of another operation or size.
    #[error(
        "rank {rank} got a message of all-reduce {got_sequence} ({got_len} values) from rank {peer}, expected all-reduce {sequence} ({len} values): the ranks are out of step"
    )]
    OutOfStep {
        /// This rank.
        rank: usize,
        /// The neighbour.
        peer: usize,
        /// The sequence number expected.
        sequence: u64,
        /// The length expected.
        len: usize,
        /// The sequence number received.
        got_sequence: u64,
        /// The length received.
        got_len: usize,
    },
}

/// How long the ranks wait for each other.
#[derive(Clone, Copy, Debug)]
pub struct RingOptions {
    /// For all ranks to reach the rendezvous (jobs of one step can start minutes apart on a busy
    /// cluster).
    pub rendezvous_timeout: Duration,
    /// For a neighbour's message within an operation: the slowest rank's whole training step
    /// happens between two all-reduces, so this is long; a rank that dies is noticed at once
    /// anyway (its sockets close).
    pub message_timeout: Duration,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            rendezvous_timeout: Duration::from_secs(600),
            message_timeout: Duration::from_secs(3600),
        }
    }
}

/// One rank's place in the ring: a connection to its successor and one from its predecessor.
#[derive(Debug)]
pub struct RingGroup {
    rank: usize,
    world: usize,
    /// To rank `(rank + 1) % world`.
    next: Option<TcpStream>,
    /// From rank `(rank + world - 1) % world`.
    prev: Option<TcpStream>,
    /// All-reduces done so far: the sequence number of the next.
    sequence: u64,
    /// How long a message may take.
    message_timeout: Duration,
    /// An operation failed: the streams are shut and every later call fails.
    closed: bool,
}

impl RingGroup {
    /// Joins the group of `world` ranks as `rank`, meeting at `coordinator` (`host:port`), where
    /// rank 0 listens. Returns once every rank is connected to its neighbours.
    pub fn connect(
        rank: usize,
        world: usize,
        coordinator: &str,
        options: RingOptions,
    ) -> Result<Self, CollectiveError> {
        if world == 0 || rank >= world {
            return Err(CollectiveError::InvalidRank { rank, world });
        }
        if world == 1 {
            return Ok(Self {
                rank,
                world,
                next: None,
                prev: None,
                sequence: 0,
                message_timeout: options.message_timeout,
                closed: false,
            });
        }
        let address_error = |reason: String| CollectiveError::Address {
            address: coordinator.to_string(),
            reason,
        };
        let resolved: SocketAddr = coordinator
            .to_socket_addrs()
            .map_err(|e| address_error(e.to_string()))?
            .next()
            .ok_or_else(|| address_error("it resolves to no address".into()))?;
        let deadline = Instant::now() + options.rendezvous_timeout;
        let rendezvous = Rendezvous {
            address: coordinator.to_string(),
            deadline,
            timeout: options.rendezvous_timeout,
        };
        // Every rank's ring listener, on every interface of the address family the coordinator
        // is reached by: other ranks reach it from other nodes.
        let any: IpAddr = if resolved.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        let ring_listener = TcpListener::bind((any, 0))
            .map_err(|e| address_error(format!("cannot open the ring's port: {e}")))?;
        let ring_port = ring_listener
            .local_addr()
            .map_err(|e| address_error(e.to_string()))?
            .port();
        let next_address = if rank == 0 {
            let listener = TcpListener::bind((any, resolved.port()))
                .or_else(|_| TcpListener::bind(resolved))
                .map_err(|e| address_error(format!("rank 0 cannot listen there: {e}")))?;
            rendezvous.coordinate(&listener, world, ring_port)?
        } else {
            rendezvous.join(resolved, rank, world, ring_port)?
        };
        // Connect to the successor while accepting the predecessor: with every rank doing both,
        // the order does not matter.
        let (next, prev) = std::thread::scope(|scope| {
            let accept = scope.spawn(|| rendezvous.accept_predecessor(&ring_listener, rank, world));
            let next = rendezvous
                .connect_retrying(next_address)
                .and_then(|stream| {
                    let mut hello = [0u8; 16];
                    hello[..8].copy_from_slice(&MAGIC);
                    hello[8..].copy_from_slice(&(rank as u64).to_le_bytes());
                    (&stream).write_all(&hello).map_err(|e| {
                        rendezvous.failed(format!("cannot reach rank {}: {e}", (rank + 1) % world))
                    })?;
                    Ok(stream)
                });
            let prev = accept
                .join()
                .unwrap_or_else(|_| Err(rendezvous.failed("the accepting thread panicked")));
            (next, prev)
        });
        let (next, prev) = (next?, prev?);
        for stream in [&next, &prev] {
            stream.set_nodelay(true).ok();
            stream.set_read_timeout(Some(options.message_timeout)).ok();
            stream.set_write_timeout(Some(options.message_timeout)).ok();
        }
        Ok(Self {
            rank,
            world,
            next: Some(next),
            prev: Some(prev),
            sequence: 0,
            message_timeout: options.message_timeout,
            closed: false,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `values` with the element-wise sum of every rank's `values` (all ranks pass
    /// buffers of the same length; a length that differs is an [`CollectiveError::OutOfStep`]).
    /// Every rank ends with the same bits.
    pub fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        if self.closed {
            return Err(CollectiveError::Closed { rank: self.rank });
        }
        let result = self.ring_all_reduce(values);
        if result.is_err() {
            // Half-sent messages would be read as the next operation's: nothing is reused, and
            // the neighbours see the connections end at once instead of waiting.
            self.close();
        }
        result
    }

    fn close(&mut self) {
        self.closed = true;
        for stream in [&self.next, &self.prev].into_iter().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn ring_all_reduce(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let sequence = self.sequence;
        self.sequence += 1;
        let world = self.world;
        if world == 1 {
            return Ok(());
        }
        let (rank, len) = (self.rank, values.len());
        let (next_rank, prev_rank) = ((rank + 1) % world, (rank + world - 1) % world);
        let next = self
            .next
            .as_ref()
            .expect("a ring of several has neighbours");
        let prev = self
            .prev
            .as_ref()
            .expect("a ring of several has neighbours");
        let bounds: Vec<(usize, usize)> = (0..world)
            .map(|c| (c * len / world, (c + 1) * len / world))
            .collect();
        let timeout = self.message_timeout;
        let peer_error = |peer, source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CollectiveError::Timeout {
                rank,
                peer,
                sequence,
                timeout,
            },
            _ => CollectiveError::Peer {
                rank,
                peer,
                sequence,
                source,
            },
        };
        // Reduce-scatter: at step s, send chunk (rank - s) and add the predecessor's chunk
        // (rank - s - 1) into ours. After W - 1 steps chunk (rank + 1) holds the full sum.
        // All-gather: at step s, send chunk (rank + 1 - s) and take chunk (rank - s) as is.
        let mut incoming: Vec<f32> = Vec::new();
        for phase in [Phase::ReduceScatter, Phase::AllGather] {
            for step in 0..world - 1 {
                let shift = match phase {
                    Phase::ReduceScatter => 0,
                    Phase::AllGather => 1,
                };
                let send = (rank + world + shift - step % world) % world;
                let recv = (rank + world + shift - step % world - 1) % world;
                let (send_lo, send_hi) = bounds[send];
                let (recv_lo, recv_hi) = bounds[recv];
                incoming.resize(recv_hi - recv_lo, 0.0);
                let outgoing = &values[send_lo..send_hi];
                let header = Header {
                    sequence,
                    len: len as u64,
                };
                std::thread::scope(|scope| {
                    let sender = scope.spawn(|| send_chunk(next, header, outgoing));
                    let received = recv_chunk(prev, header, &mut incoming);
                    let sent = sender
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("the sending thread panicked")));
                    sent.map_err(|e| peer_error(next_rank, e))?;
                    received.map_err(|e| match e {
                        ChunkError::Io(e) => peer_error(prev_rank, e),
                        ChunkError::OutOfStep(got) => CollectiveError::OutOfStep {
                            rank,
                            peer: prev_rank,
                            sequence,
                            len,
                            got_sequence: got.sequence,
                            got_len: got.len as usize,
                        },
                    })
                })?;
                let target = &mut values[recv_lo..recv_hi];
                match phase {
                    Phase::ReduceScatter => {
                        for (t, v) in target.iter_mut().zip(&incoming) {
                            *t += v;
                        }
                    }
                    Phase::AllGather => target.copy_from_slice(&incoming),
                }
            }
        }
        Ok(())
    }

    /// [`all_reduce_sum`](Self::all_reduce_sum), divided by the number of ranks.
    pub fn all_reduce_mean(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce_sum(values)?;
        let scale = 1.0 / self.world as f32;
        for v in values.iter_mut() {
            *v *= scale;
        }
        Ok(())
    }
}

impl Drop for RingGroup {
    fn drop(&mut self) {
        // Neighbours blocked on us see the connection end at once.
        self.close();
    }
}

#[derive(Clone, Copy)]
enum Phase {
    ReduceScatter,
    AllGather,
}

/// What precedes every chunk: the operation and the whole buffer's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    sequence: u64,
    len: u64,
}

impl Header {
    fn bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.sequence.to_le_bytes());
        out[8..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    fn from_bytes(bytes: [u8; 16]) -> Self {
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Self {
            sequence: word(0),
            len: word(8),
        }
    }
}

enum ChunkError {
    Io(io::Error),
    OutOfStep(Header),
}

fn send_chunk(mut stream: &TcpStream, header: Header, values: &[f32]) -> io::Result<()> {
    stream.write_all(&header.bytes())?;
    stream.write_all(bytemuck::cast_slice(values))?;
    stream.flush()
}

fn recv_chunk(
    mut stream: &TcpStream,
    expected: Header,
    into: &mut [f32],
) -> Result<(), ChunkError> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).map_err(ChunkError::Io)?;
    let got = Header::from_bytes(header);
    if got != expected {
        return Err(ChunkError::OutOfStep(got));
    }
    stream
        .read_exact(bytemuck::cast_slice_mut(into))
        .map_err(ChunkError::Io)
}

/// The rendezvous' shared settings.
struct Rendezvous {
    address: String,
    deadline: Instant,
    timeout: Duration,
}

impl Rendezvous {
    fn failed(&self, detail: impl Into<String>) -> CollectiveError {
        CollectiveError::Rendezvous {
            address: self.address.clone(),
            detail: detail.into(),
        }
    }

    fn timed_out(&self, detail: impl Into<String>) -> CollectiveError {
        CollectiveError::RendezvousTimeout {
            address: self.address.clone(),
            timeout: self.timeout,
            detail: detail.into(),
        }
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// The time left, for a socket's timeout: at least a millisecond (`None` would mean no
    /// timeout at all), so a read after the deadline fails instead of waiting for ever.
    fn socket_timeout(&self) -> Duration {
        self.remaining().unwrap_or(Duration::from_millis(1))
    }

    /// Rank 0: takes every other rank's hello (rank, world, ring port), then tells each where its
    /// successor listens. Returns rank 0's own successor.
    fn coordinate(
        &self,
        listener: &TcpListener,
        world: usize,
        own_ring_port: u16,
    ) -> Result<SocketAddr, CollectiveError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| self.failed(e.to_string()))?;
        let mut ranks: Vec<Option<(TcpStream, SocketAddr)>> = (0..world).map(|_| None).collect();
        let mut waiting = world - 1;
        while waiting > 0 {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.remaining().is_none() {
                        let missing: Vec<String> = (1..world)
                            .filter(|&r| ranks[r].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(
                            self.timed_out(format!("rank(s) {} never arrived", missing.join(", ")))
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(self.failed(e.to_string())),
            };
            // A rank says hello at once; something else that connects and says nothing must not
            // hold the rendezvous up.
            let hello_timeout = self.socket_timeout().min(HELLO_TIMEOUT);
            stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(hello_timeout)))
                .map_err(|e| self.failed(e.to_string()))?;
            // Something else may connect to the port: its bytes are refused, not trusted.
            let Ok(hello) = read_hello(&stream) else {
                continue;
            };
            if hello.world != world {
                return Err(self.failed(format!(
                    "rank {} was started for a group of {}, rank 0 for {world}",
                    hello.rank, hello.world
                )));
            }
            if hello.rank == 0 || hello.rank >= world || ranks[hello.rank].is_some() {
                return Err(self.failed(format!(
                    "two processes claim rank {} (or it is outside 1..{world})",
                    hello.rank
                )));
            }
            ranks[hello.rank] = Some((stream, SocketAddr::new(peer.ip(), hello.ring_port)));
            waiting -= 1;
        }
        // Rank 0's ring listener, as the last rank reaches it: the address it reached rank 0 by.
        let own = |r: usize| -> SocketAddr {
            let (stream, _) = ranks[r].as_ref().expect("every rank has arrived");
            let local = stream
                .local_addr()
                .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
            SocketAddr::new(local, own_ring_port)
        };
        for r in 1..world {
            let next = (r + 1) % world;
            let next_address = if next == 0 {
                own(r)
            } else {
                ranks[next].as_ref().expect("every rank has arrived").1
            };
            let (stream, _) = ranks[r].as_ref().expect("every rank has arrived");
            write_address(stream, next_address)
                .map_err(|e| self.failed(format!("cannot answer rank {r}: {e}")))?;
        }
        Ok(ranks[1].as_ref().expect("every rank has arrived").1)
    }

    /// Ranks above 0: says hello to the coordinator (retrying until it listens) and returns the
    /// address of this rank's successor.
    fn join(
        &self,
        coordinator: SocketAddr,
        rank: usize,
        world: usize,
        ring_port: u16,
    ) -> Result<SocketAddr, CollectiveError> {
        let stream = self.connect_retrying(coordinator)?;
        stream
            .set_read_timeout(Some(self.socket_timeout()))
            .map_err(|e| self.failed(e.to_string()))?;
        let mut hello = Vec::with_capacity(26);
        hello.extend_from_slice(&MAGIC);
        hello.extend_from_slice(&(rank as u64).to_le_bytes());
        hello.extend_from_slice(&(world as u64).to_le_bytes());
        hello.extend_from_slice(&ring_port.to_le_bytes());
        (&stream)
            .write_all(&hello)
            .map_err(|e| self.failed(format!("cannot greet rank 0: {e}")))?;
        read_address(&stream).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                self.timed_out("rank 0 did not answer (are all the ranks started?)")
            }
            _ => self.failed(format!(
                "rank 0 closed the rendezvous without an answer ({e}); see its error"
            )),
        })
    }

    /// Connects to `address`, retrying while nothing listens there yet.
    fn connect_retrying(&self, address: SocketAddr) -> Result<TcpStream, CollectiveError> {
        loop {
            let Some(remaining) = self.remaining() else {
                return Err(self.timed_out(format!("nothing answered at {address}")));
            };
            match TcpStream::connect_timeout(&address, remaining.min(Duration::from_secs(5))) {
                Ok(stream) => return Ok(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Accepts the predecessor's ring connection; it identifies itself by its rank.
    fn accept_predecessor(
        &self,
        listener: &TcpListener,
        rank: usize,
        world: usize,
    ) -> Result<TcpStream, CollectiveError> {
        let expected = (rank + world - 1) % world;
        listener
            .set_nonblocking(true)
            .map_err(|e| self.failed(e.to_string()))?;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .and_then(|()| {
                            stream.set_read_timeout(Some(self.socket_timeout().min(HELLO_TIMEOUT)))
                        })
                        .map_err(|e| self.failed(e.to_string()))?;
                    let mut hello = [0u8; 16];
                    if (&stream).read_exact(&mut hello).is_err() || hello[..8] != MAGIC {
                        continue;
                    }
                    let from = u64::from_le_bytes(hello[8..].try_into().expect("8 bytes")) as usize;
                    if from != expected {
                        return Err(self.failed(format!(
                            "rank {rank} expected its predecessor {expected} and got rank {from}"
                        )));
                    }
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.remaining().is_none() {
                        return Err(self
                            .timed_out(format!("rank {expected} never connected to rank {rank}")));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.failed(e.to_string())),
            }
        }
    }
}

struct Hello {
    rank: usize,
    world: usize,
    ring_port: u16,
}

fn read_hello(mut stream: &TcpStream) -> io::Result<Hello> {
    let mut bytes = [0u8; 26];
    stream.read_exact(&mut bytes)?;
    if bytes[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a lortflow rank",
        ));
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Ok(Hello {
        rank: word(8) as usize,
        world: word(16) as usize,
        ring_port: u16::from_le_bytes([bytes[24], bytes[25]]),
    })
}

/// An address as 1 + 16 + 2 bytes (family, IP, port).
fn write_address(mut stream: &TcpStream, address: SocketAddr) -> io::Result<()> {
    let mut bytes = [0u8; 19];
    match address.ip() {
        IpAddr::V4(ip) => {
            bytes[0] = 4;
            bytes[1..5].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            bytes[0] = 6;
            bytes[1..17].copy_from_slice(&ip.octets());
        }
    }
    bytes[17..].copy_from_slice(&address.port().to_le_bytes());
    stream.write_all(&bytes)
}

fn read_address(mut stream: &TcpStream) -> io::Result<SocketAddr> {
    let mut bytes = [0u8; 19];
    stream.read_exact(&mut bytes)?;
    let ip = match bytes[0] {
        4 => IpAddr::from(<[u8; 4]>::try_from(&bytes[1..5]).expect("4 bytes")),
        6 => IpAddr::from(<[u8; 16]>::try_from(&bytes[1..17]).expect("16 bytes")),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad address family",
            ));
        }
    };
    Ok(SocketAddr::new(
        ip,
        u16::from_le_bytes([bytes[17], bytes[18]]),
    ))
}
