//! Per-core state lives in `runtime::core`; this module is reserved for sessions and lanes.
