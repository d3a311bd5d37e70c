//! Peak memory of diffing two 1,000,000-entry listings with ETag digests.
//! `cargo run --release --example diff_memory` prints `key=value` fields.

use hashsync::diff::{diff, Compare};
use hashsync::engine::Control;
use hashsync::listing::{Entry, Listing};
use std::time::Instant;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Builds a sorted listing entry by entry, as a scanner or an S3 listing streams them in.
fn build(n: usize, salt: u128) -> Listing {
    let mut l = Listing::default();
    l.reserve_for(n, n * 29, n * 34);
    let per_shard = n / 1000;
    for shard in 0..1000 {
        for j in 0..per_shard {
            let i = shard * per_shard + j;
            let path = format!("shard-{shard:04}/sample-{i:07}.tar");
            // 1% of the files differ between the sides.
            let changed = if i.is_multiple_of(100) { salt } else { 0 };
            let digest = format!(
                "{:032x}-{}",
                (i as u128) * 2_654_435_761 + changed,
                1 + i % 9
            );
            l.push_sorted(Entry {
                path: &path,
                size: (i % 65536) as u64,
                mtime_ns: 0,
                digest: Some(&digest),
            })
            .expect("sorted");
        }
    }
    l
}
fn main() {
    let n = 1_000_000;
    let base = vm_hwm_kib();
    let a = build(n, 1);
    let b = build(n, 2);
    let t = Instant::now();
    let plan = diff(&a, &b, Compare::Checksum, &Control::default()).expect("diff");
    let secs = t.elapsed().as_secs_f64();
    println!("entries_per_side={n}");
    println!("to_copy={}", plan.copy.len());
    println!(
        "listing_heap_mb={:.1}",
        (a.heap_bytes() + b.heap_bytes()) as f64 / 1e6
    );
    println!("peak_rss_mb={:.1}", vm_hwm_kib() as f64 / 1024.0);
    println!("baseline_rss_mb={:.1}", base as f64 / 1024.0);
    println!("diff_seconds={secs:.3}");
}
