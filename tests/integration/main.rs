//! Integration tests: real files, real crashes, the real binary.
//! One test binary; a module per feature.

mod broker_process;
mod kafka_clients;
mod support;
mod test_clients;
mod wire;

mod compat_clients;
mod consumer_groups;
mod crash;
mod damaged_data_dir;
mod disk_faults;
mod eos_clients;
mod group_protocol;
mod hardening_decoder;
mod idempotent_producer;
mod idempotent_storage;
mod io_backend;
mod kafka_admin;
mod kafka_bad_input;
mod kafka_connection_limits;
mod kafka_crash;
mod kafka_fetch;
mod kafka_pipelining;
mod kafka_poison_batches;
mod kafka_roundtrip;
mod kcat_smoke;
mod kernel_tuning;
mod load_generator;
mod metrics;
mod network_fuzz;
mod operator_warnings;
mod packaging;
mod pipeline;
mod power_loss;
mod recovery;
mod retention;
mod shard_runtime;
mod sim_device;
mod storage_model;
mod transactions_storage;
mod transactions_wire;
mod txn_clients;
mod txn_pipelines;
mod write_path;
