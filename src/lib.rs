//! Test and benchmark support package for the cas workspace; it has no code of its own.
