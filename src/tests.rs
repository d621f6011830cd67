//! `#[pg_test]`s: what fits inside one (rolled-back) transaction with the library preloaded.
use pgrx::prelude::*;

#[pg_test]
fn version_matches_crate() {
    assert_eq!(
        Spi::get_one::<String>("SELECT pg_tviews_version()")
            .unwrap()
            .unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}
