//! Integration tests of the service, in one binary (one link instead of many).

mod common;
mod console;
mod e2e;
mod faults;
mod first_start;
mod hardening;
mod joiner;
mod leader;
mod lifecycle;
mod media;
mod readiness;
mod reply_api;
mod responder;
mod restart;
mod sandbox;
mod sessions;
mod store;
mod tokens;
mod transcribe;
