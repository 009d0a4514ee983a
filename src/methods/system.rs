//! TEMP STUB (replaced by the shapes branch).
#![allow(missing_docs)]
use serde_json::{json, Value};
use crate::config::Config;
pub struct SystemView<'a> { pub now_ms: i64, pub started_at_ms: i64, pub config: &'a Config, pub host: &'a str, pub ip: &'a str, pub instance_id: &'a str, pub sessions: &'a [SessionSummary], pub sessions_path: &'a str, pub heartbeat_seconds: u64 }
pub struct SessionSummary { pub key: String, pub updated_at_ms: i64 }
pub struct ClientPresence { pub host: Option<String>, pub ip: Option<String>, pub version: String, pub platform: String, pub device_family: Option<String>, pub mode: String, pub client_id: String, pub instance_id: Option<String>, pub device_id: Option<String>, pub roles: Vec<String>, pub scopes: Vec<String>, pub connected_at_ms: i64 }
pub fn health_snapshot(_v: &SystemView) -> Value { json!({"ok":true}) }
pub fn status(_v: &SystemView) -> Value { json!({}) }
pub fn agents_list(_v: &SystemView) -> Value { json!({}) }
pub fn models_list(_v: &SystemView) -> Value { json!({"models":[]}) }
pub fn sessions_list(_v: &SystemView, _p: &Value) -> Result<Value, String> { Ok(json!({})) }
pub fn config_get(_v: &SystemView) -> Value { json!({}) }
pub fn gateway_presence_entry(_v: &SystemView) -> Value { json!({"mode":"gateway"}) }
pub fn client_presence_entry(_c: &ClientPresence, now: i64) -> Value { json!({"ts":now}) }
