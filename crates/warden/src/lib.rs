//! The command-line interface. One module per command group under `commands/`.

pub mod cli;
pub mod clientconfig;
pub mod commands;
pub mod exit;
pub mod output;
