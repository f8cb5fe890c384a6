//! Integration tests: real files, real crashes, the real binary.
//! One test binary; a module per feature.

mod support;

mod crash;
mod power_loss;
mod sim_device;
mod storage_model;
