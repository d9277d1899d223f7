//! Benchmark harness (issue 4); filled in later.
use anyhow::Result;
use std::path::Path;

pub fn run(_root: &Path, _args: &[&str]) -> Result<()> {
    anyhow::bail!("the benchmark harness is not written yet")
}
