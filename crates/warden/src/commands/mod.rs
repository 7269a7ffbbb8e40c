pub mod config;
pub mod job;
pub mod serve;
