//! The cost of one time sample in the estimator with a full window (64 polls): the filter,
//! the outlier rule, the regression and the all-pairs hard drift interval.

use clockd::estimator::{BoundTerms, Estimator, EstimatorConfig, Sample, Stamps};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn sample(k: i64) -> Sample {
    let t = 1_767_225_600_000_000_000 + k * 20_000_000;
    let delay = 2_000 + (k * 7919 % 13) * 100;
    let stamps = Stamps {
        t1: t - 5_000_000,
        t2: t + delay / 2,
        t3: t + delay / 2 + 5_000,
        t4: t - 5_000_000 + delay + 5_000,
    };
    Sample::new(k as u64, stamps, BoundTerms::default()).expect("valid stamps")
}

fn estimator(c: &mut Criterion) {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    for k in 0..64 {
        estimator.add(sample(k));
    }
    let mut k = 64;
    let mut group = c.benchmark_group("clock");
    group.throughput(Throughput::Elements(1));
    group.bench_function("estimator_add_full_window", |b| {
        b.iter(|| {
            k += 1;
            std::hint::black_box(estimator.add(sample(k)));
            std::hint::black_box(estimator.estimate_at(sample(k).stamps.t4));
        })
    });
    group.finish();
}

criterion_group!(benches, estimator);
criterion_main!(benches);
