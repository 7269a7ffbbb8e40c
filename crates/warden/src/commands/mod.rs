pub mod backup;
pub mod config;
pub mod doctor;
pub mod gc;
pub mod job;
pub mod serve;
pub mod token;
pub mod worker;
