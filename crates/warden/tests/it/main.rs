//! warden's integration tests: the real binary, the real store, real processes.

mod api;
mod backup;
mod cli;
mod cluster;
mod deploy;
mod e2e;
mod egress;
mod gvisor;
mod hostile;
mod hostile_escapes;
mod hostile_repo;
mod images;
mod metrics;
mod openapi;
mod perimeter;
mod pipelines;
mod private_repo;
mod repo;
mod results;
mod retention;
mod review;
mod rootless;
mod suites;
mod support;
mod ui;
