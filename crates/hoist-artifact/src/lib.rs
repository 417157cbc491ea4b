//! Release artifacts: build, verify, unpack safely, and the content-addressed store.
