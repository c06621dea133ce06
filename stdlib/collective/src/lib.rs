//! Collective communication between the processes of a data-parallel run (one process per node,
//! or per task of a Slurm job step): a rendezvous at a coordinator address, then a ring
//! all-reduce of `f32` buffers over TCP, the algorithm NCCL and Horovod use between nodes.
//!
//! ```text
//!  rank 0 ──▶ rank 1 ──▶ rank 2 ──▶ … ──▶ rank W-1 ─┐
//!    ▲                                               │
//!    └───────────────────────────────────────────────┘
//! ```
//!
//! [`RingGroup::connect`] meets the other ranks: rank 0 listens on the coordinator address, every
//! rank tells it where its own ring listener is, and rank 0 answers each with its successor's
//! address. [`RingGroup::all_reduce_sum`] splits the buffer into `W` chunks, sums them around
//! the ring (reduce-scatter, `W - 1` steps) and passes the finished chunks around again
//! (all-gather, `W - 1` steps): each rank sends and receives `2 (W - 1) / W` of the buffer,
//! whatever `W`. Every chunk is summed once, by one rank, and copied to the others, so every
//! rank ends with the same bits.
//!
//! Every message carries the operation's sequence number and the chunk's length, checked on
//! arrival: a rank that is a step ahead or behind, or sends another size, is an error, never a
//! silently wrong sum (Burn 0.21's own cross-node all-reduce reuses transfer ids,
//! tracel-ai/burn#4549). A rank that dies closes its sockets, and its neighbours fail with an
//! error naming it instead of waiting.
//!
//! No Burn, no async runtime: blocking sockets, one helper thread per operation so that a rank
//! sends and receives at once.

mod ring;

pub use ring::{CollectiveError, RingGroup, RingOptions};
