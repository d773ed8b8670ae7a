//! A seeded card-transaction generator (see `gen` docs).
