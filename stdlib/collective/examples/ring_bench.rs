//! Times the ring all-reduce on loopback: `cargo run --release -p lortflow-collective --example
//! ring_bench [WORLD...]`. Every rank is a thread of this process, so the ranks share the
//! machine's cores and memory bandwidth: a floor on what separate nodes pay per byte, not a
//! network's speed.

use std::time::{Duration, Instant};

use lortflow_collective::{RingGroup, RingOptions};

fn main() {
    let worlds: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("WORLD sizes are integers"))
        .collect();
    let worlds = if worlds.is_empty() {
        vec![2, 4]
    } else {
        worlds
    };
    // ResNet-32 (CIFAR, 10 classes), ResNet-50 (1000 classes), ResNet-50 on iNaturalist (8142).
    let sizes = [
        ("ResNet-32 gradient", 464_154usize),
        ("ResNet-50 gradient", 25_557_032),
        ("ResNet-50, 8142 classes", 40_192_390),
    ];
    println!("| ranks | buffer | MB | ms per all-reduce | algorithm GB/s (MB / time) |");
    println!("|---|---|---|---|---|");
    for &world in &worlds {
        for &(name, len) in &sizes {
            let rounds = if len > 1_000_000 { 3 } else { 20 };
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let address = format!("127.0.0.1:{port}");
            let times: Vec<Duration> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..world)
                    .map(|rank| {
                        let address = &address;
                        scope.spawn(move || {
                            let mut group =
                                RingGroup::connect(rank, world, address, RingOptions::default())
                                    .unwrap();
                            let mut values = vec![rank as f32; len];
                            group.all_reduce_mean(&mut values).unwrap(); // warm-up
                            let started = Instant::now();
                            for _ in 0..rounds {
                                group.all_reduce_mean(&mut values).unwrap();
                            }
                            started.elapsed() / rounds
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let slowest = times.into_iter().max().unwrap();
            let mb = (len * 4) as f64 / 1e6;
            println!(
                "| {world} | {name} | {mb:.1} | {:.1} | {:.2} |",
                slowest.as_secs_f64() * 1e3,
                mb / 1e3 / slowest.as_secs_f64()
            );
        }
    }
}
