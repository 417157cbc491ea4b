//! The test app every suite uses to play every kind of release.
fn main() {}
