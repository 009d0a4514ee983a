//! TEMP STUB (replaced by the shapes branch).
#![allow(missing_docs)]
use serde_json::{json, Value};
pub struct HelloInputs<'a> { pub protocol: u32, pub conn_id: &'a str, pub methods: &'a [&'a str], pub events: &'a [&'a str], pub presence: Value, pub health: Value, pub state_version_presence: u64, pub state_version_health: u64, pub uptime_ms: i64, pub role: &'a str, pub scopes: &'a [String], pub auth_method: &'a str, pub device_token: Option<(&'a str, i64)>, pub config_path: &'a str, pub state_dir: &'a str, pub default_agent_id: &'a str, pub main_session_key: &'a str, pub auth_mode: &'a str }
pub fn hello_ok(i: &HelloInputs) -> Value { json!({"type":"hello-ok","protocol":i.protocol}) }
