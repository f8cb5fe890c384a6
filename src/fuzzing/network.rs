//! The network fuzzer (in progress).
