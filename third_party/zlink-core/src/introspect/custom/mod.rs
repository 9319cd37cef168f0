//! Custom type definitions for Varlink IDL.
//!
//! This module contains definitions for custom types in Varlink IDL, including
//! object types (struct-like with named fields) and enum types (with named variants).
