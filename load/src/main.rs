//! `propensity-load`: load generation and the benchmark suite. Its commands (replay, score,
//! bench) are not built yet; this binary says so instead of pretending to measure.

fn main() {
    eprintln!(
        "propensity-load: replay, score and bench are not built yet (issue 7); nothing was measured"
    );
    std::process::exit(2);
}
