//! The pattern language: source text in, syntax tree out, and back.
//!
//! This is the first stage of the pipeline:
//!
//! ```text
//! source ──lexer──▶ tokens ──parser──▶ ast::File ──compiler──▶ Automaton
//!                                         │
//!                                         └──print──▶ canonical source
//! ```
//!
//! Nothing here knows about events or matching; the grammar is written down
//! in `grammar/grammar.ebnf` and explained construct by construct in
//! `grammar/reference.md`, whose examples the test suite parses.

pub mod ast;
pub mod error;
pub mod lexer;
pub mod parser;
pub mod print;

pub use error::{Diagnostic, Diagnostics};
pub use parser::{parse, parse_expr};
pub use print::print_file;
