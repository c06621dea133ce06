//! The ring all-reduce on loopback: every rank a thread, as every rank would be a process.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use lortflow_collective::{CollectiveError, RingGroup, RingOptions};

/// A port that was free a moment ago.
fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

fn quick() -> RingOptions {
    RingOptions {
        rendezvous_timeout: Duration::from_secs(20),
        message_timeout: Duration::from_secs(20),
    }
}

/// Runs `body(group, rank)` on `world` threads joined at one address; their results in rank
/// order.
fn on_ranks<T: Send>(
    world: usize,
    body: impl Fn(Result<RingGroup, CollectiveError>, usize) -> T + Sync,
) -> Vec<T> {
    let address = free_address();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (address, body) = (&address, &body);
                scope.spawn(move || body(RingGroup::connect(rank, world, address, quick()), rank))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn values(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + rank * 104_729) % 2003) as f32 - 1001.0) / 97.0)
        .collect()
}

#[test]
fn every_rank_gets_the_sum_with_the_same_bits() {
    for world in [1, 2, 3, 5] {
        for len in [0, 1, 4, 1_000, 100_003] {
            let results = on_ranks(world, |group, rank| {
                let mut group = group.unwrap();
                assert_eq!((group.rank(), group.world()), (rank, world));
                let mut mine = values(rank, len);
                group.all_reduce_sum(&mut mine).unwrap();
                mine
            });
            let inputs: Vec<Vec<f32>> = (0..world).map(|r| values(r, len)).collect();
            for i in 0..len {
                let exact: f64 = inputs.iter().map(|v| f64::from(v[i])).sum();
                let got = f64::from(results[0][i]);
                assert!(
                    (got - exact).abs() <= 1e-5 * exact.abs().max(1.0),
                    "world {world}, len {len}, [{i}]: {got} vs {exact}"
                );
            }
            for (rank, result) in results.iter().enumerate() {
                let same = result
                    .iter()
                    .zip(&results[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "world {world}, len {len}: rank {rank} differs from rank 0"
                );
            }
        }
    }
}

#[test]
fn consecutive_operations_stay_in_step_and_the_mean_divides() {
    let results = on_ranks(3, |group, rank| {
        let mut group = group.unwrap();
        let mut out = Vec::new();
        for round in 0..20 {
            let mut mine = vec![(rank + round) as f32; 7 + round];
            group.all_reduce_mean(&mut mine).unwrap();
            out.push(mine);
        }
        out
    });
    for result in &results {
        for (round, values) in result.iter().enumerate() {
            assert_eq!(
                values,
                &vec![(1 + round) as f32; 7 + round],
                "round {round}"
            );
        }
    }
}

#[test]
fn buffers_of_another_size_are_an_error_not_a_wrong_sum() {
    let results = on_ranks(2, |group, rank| {
        let mut group = group.unwrap();
        let mut mine = vec![1.0f32; 10 + rank];
        group.all_reduce_sum(&mut mine)
    });
    for result in results {
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                CollectiveError::OutOfStep { .. } | CollectiveError::Peer { .. }
            ),
            "{err}"
        );
    }
}

/// A rank that goes away (a killed process closes its sockets) fails its neighbours at once
/// instead of leaving them waiting for the message timeout.
#[test]
fn a_rank_that_leaves_fails_the_others_quickly() {
    let started = Instant::now();
    let results = on_ranks(3, |group, rank| {
        let mut group = group.unwrap();
        if rank == 2 {
            drop(group);
            return None;
        }
        let mut mine = vec![1.0f32; 1 << 16];
        Some(group.all_reduce_sum(&mut mine))
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    for result in results.into_iter().take(2) {
        let err = result.unwrap().unwrap_err();
        assert!(err.to_string().contains("lost its connection"), "{err}");
    }
}

#[test]
fn ranks_that_disagree_about_the_group_are_told() {
    let address = free_address();
    let (zero, one) = std::thread::scope(|scope| {
        let zero = scope.spawn(|| RingGroup::connect(0, 2, &address, quick()));
        let one = scope.spawn(|| RingGroup::connect(1, 3, &address, quick()));
        (zero.join().unwrap(), one.join().unwrap())
    });
    let err = zero.unwrap_err().to_string();
    assert!(
        err.contains("rank 1 was started for a group of 3, rank 0 for 2"),
        "{err}"
    );
    assert!(one.is_err());
    assert!(matches!(
        RingGroup::connect(3, 3, &address, quick()),
        Err(CollectiveError::InvalidRank { rank: 3, world: 3 })
    ));
}

#[test]
fn a_rank_that_never_arrives_times_out_naming_it() {
    let address = free_address();
    let options = RingOptions {
        rendezvous_timeout: Duration::from_millis(500),
        ..quick()
    };
    let err = RingGroup::connect(0, 3, &address, options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank(s) 1, 2 never arrived"), "{err}");
}

/// Something else connecting to the coordinator's port is ignored, not taken for a rank.
#[test]
fn a_stranger_at_the_coordinator_port_is_ignored() {
    use std::io::Write;
    let address = free_address();
    let results = std::thread::scope(|scope| {
        let zero = scope.spawn(|| {
            let mut group = RingGroup::connect(0, 2, &address, quick()).unwrap();
            let mut v = vec![1.0f32, 2.0];
            group.all_reduce_sum(&mut v).unwrap();
            v
        });
        // The stranger first, while rank 0 listens.
        let stranger = loop {
            if let Ok(s) = std::net::TcpStream::connect(&address) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (&stranger)
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        drop(stranger);
        let one = scope.spawn(|| {
            let mut group = RingGroup::connect(1, 2, &address, quick()).unwrap();
            let mut v = vec![10.0f32, 20.0];
            group.all_reduce_sum(&mut v).unwrap();
            v
        });
        (zero.join().unwrap(), one.join().unwrap())
    });
    assert_eq!(results.0, [11.0, 22.0]);
    assert_eq!(results.1, [11.0, 22.0]);
}

/// A neighbour that stays connected but sends nothing is a timeout naming it; after a failed
/// operation the group refuses further ones rather than reading leftover bytes.
#[test]
fn a_silent_rank_times_out_and_a_failed_group_stays_closed() {
    let address = free_address();
    let options = RingOptions {
        message_timeout: Duration::from_millis(300),
        ..quick()
    };
    let (zero, _one) = std::thread::scope(|scope| {
        let zero = scope.spawn(|| {
            let mut group = RingGroup::connect(0, 2, &address, options).unwrap();
            let mut v = vec![1.0f32; 8];
            let first = group.all_reduce_sum(&mut v).unwrap_err();
            let second = group.all_reduce_sum(&mut v).unwrap_err();
            (first, second)
        });
        let one = scope.spawn(|| {
            let group = RingGroup::connect(1, 2, &address, options).unwrap();
            // Alive, silent, past rank 0's timeout.
            std::thread::sleep(Duration::from_millis(1_000));
            drop(group);
        });
        (zero.join().unwrap(), one.join().unwrap())
    });
    assert!(
        zero.0
            .to_string()
            .contains("waited 0s for rank 1 in all-reduce 0"),
        "{}",
        zero.0
    );
    assert!(
        matches!(zero.1, CollectiveError::Closed { rank: 0 }),
        "{}",
        zero.1
    );
}

/// A coordinator named by an IPv6 address (or a name that resolves to one) is reached.
#[test]
fn an_ipv6_coordinator_works_where_the_machine_has_ipv6() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here: this test did not run");
        return;
    };
    let address = format!("[::1]:{}", listener.local_addr().unwrap().port());
    drop(listener);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                let address = &address;
                scope.spawn(move || {
                    let mut group = RingGroup::connect(rank, 3, address, quick()).unwrap();
                    let mut v = vec![rank as f32; 5];
                    group.all_reduce_sum(&mut v).unwrap();
                    v
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for v in results {
        assert_eq!(v, [3.0; 5]);
    }
}
