//! Responders: the built-in AI agents (`openai`, `dify`) that answer customers in the bot's
//! place.
#![allow(dead_code)] // wired in by the next commit

pub(crate) mod prompt;
