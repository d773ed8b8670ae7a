//! `GET /openapi.json`: the HTTP API described as OpenAPI 3.1.
//!
//! Written out by hand next to the routes it describes; `tests/api.rs`
//! keeps the two in sync by calling every documented method of every
//! documented path on a running server and every undocumented one too.

use serde_json::{json, Value};

fn text_body(description: &str) -> Value {
    json!({
        "required": true,
        "description": description,
        "content": {"text/plain": {"schema": {"type": "string"}}}
    })
}

fn ok_json(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn error(description: &str) -> Value {
    ok_json(description, "Error")
}

pub fn document() -> Value {
    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let auth = json!([{"bearer": []}]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "cep serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Patterns hot-loaded into a running complex event processing service; metrics and health."
        },
        "paths": {
            "/patterns": {
                "get": {
                    "summary": "Every running pattern with version, source hash, load time, mode and counters",
                    "responses": {"200": ok_json("the patterns", "PatternList")}
                }
            },
            "/patterns/{name}": {
                "parameters": [name],
                "get": {
                    "summary": "One pattern: its source text and metadata",
                    "responses": {"200": ok_json("the pattern", "Pattern"), "404": error("no such pattern")}
                },
                "put": {
                    "summary": "Create or replace a pattern; swapped in between two events",
                    "description": "A replaced version keeps its open runs until they complete or expire and starts none (`replace=drain`, the default; listed under `draining` in GET until its last run ends), or drops them (`replace=restart`). The new version starts runs at events after the swap; alerts carry the version that produced them.",
                    "parameters": [{"name": "replace", "in": "query", "required": false, "schema": {"type": "string", "enum": ["drain", "restart"], "default": "drain"}}],
                    "security": auth,
                    "requestBody": text_body("the pattern source: exactly one `pattern NAME ... end`"),
                    "responses": {
                        "200": ok_json("the pattern's version", "Version"),
                        "400": ok_json("diagnostics; nothing changed", "Error"),
                        "401": error("no or wrong bearer token"),
                        "403": error("changes are disabled (no token configured)"),
                        "409": error("the pattern shares its file with others"),
                        "413": error("body too large"),
                        "503": error("the pipeline did not take the change; nothing changed")
                    }
                },
                "delete": {
                    "summary": "Remove a pattern",
                    "security": auth,
                    "responses": {
                        "204": {"description": "removed"},
                        "401": error("no or wrong bearer token"),
                        "403": error("changes are disabled"),
                        "404": error("no such pattern"),
                        "409": error("the pattern shares its file with others")
                    }
                }
            },
            "/patterns/{name}/mode": {
                "parameters": [name],
                "put": {
                    "summary": "Switch between active and shadow (matched and counted, never emitted); runs carry over",
                    "security": auth,
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Mode"}}}
                    },
                    "responses": {
                        "200": ok_json("the new mode", "Version"),
                        "400": error("unknown mode"),
                        "401": error("no or wrong bearer token"),
                        "404": error("no such pattern")
                    }
                }
            },
            "/patterns/{name}/graph": {
                "parameters": [name],
                "get": {
                    "summary": "The compiled automaton as Graphviz DOT",
                    "responses": {
                        "200": {"description": "DOT", "content": {"text/vnd.graphviz": {"schema": {"type": "string"}}}},
                        "404": error("no such pattern")
                    }
                }
            },
            "/patterns/validate": {
                "post": {
                    "summary": "Diagnostics for a pattern source; nothing changes",
                    "requestBody": text_body("pattern source (one or more patterns)"),
                    "responses": {"200": ok_json("valid or not, with diagnostics", "Validation")}
                }
            },
            "/patterns/reload": {
                "post": {
                    "summary": "Read the patterns directory again after direct edits; all or nothing",
                    "security": auth,
                    "responses": {
                        "200": ok_json("what changed", "Reload"),
                        "400": ok_json("diagnostics; nothing changed", "Error"),
                        "401": error("no or wrong bearer token"),
                        "409": error("a name defined twice")
                    }
                }
            },
            "/metrics": {"get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics"}}}},
            "/healthz": {"get": {"summary": "The process answers", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Partitions are assigned", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Diagnostic": {
                    "type": "object",
                    "required": ["line", "column", "end", "message", "snippet"],
                    "properties": {
                        "line": {"type": "integer"},
                        "column": {"type": "integer"},
                        "end": {"type": "object", "properties": {"line": {"type": "integer"}, "column": {"type": "integer"}}},
                        "message": {"type": "string"},
                        "hint": {"type": ["string", "null"]},
                        "snippet": {"type": "string", "description": "the source line with a caret under the span, as the CLI prints it"}
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "diagnostics": {"type": "array", "items": {"$ref": "#/components/schemas/Diagnostic"}}
                    }
                },
                "Pattern": {
                    "type": "object",
                    "required": ["name", "version", "source_hash", "loaded_at", "mode", "counters"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "source_hash": {"type": "string"},
                        "loaded_at": {"type": "string", "format": "date-time"},
                        "mode": {"enum": ["active", "shadow"]},
                        "stream": {"type": "string"},
                        "file": {"type": ["string", "null"]},
                        "source": {"type": "string"},
                        "counters": {
                            "type": "object",
                            "properties": {
                                "events": {"type": "number"},
                                "alerts": {"type": "number"},
                                "shadow_alerts": {"type": "number"},
                                "active_runs": {"type": "number"}
                            }
                        }
                    }
                },
                "PatternList": {
                    "type": "object",
                    "properties": {"patterns": {"type": "array", "items": {"$ref": "#/components/schemas/Pattern"}}}
                },
                "Version": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "version": {"type": "integer"}, "changed": {"type": "boolean"}, "mode": {"type": "string"}}
                },
                "Mode": {
                    "type": "object",
                    "required": ["mode"],
                    "properties": {"mode": {"enum": ["active", "shadow"]}}
                },
                "Validation": {
                    "type": "object",
                    "properties": {
                        "valid": {"type": "boolean"},
                        "patterns": {"type": "array", "items": {"type": "string"}},
                        "diagnostics": {"type": "array", "items": {"$ref": "#/components/schemas/Diagnostic"}}
                    }
                },
                "Reload": {
                    "type": "object",
                    "properties": {
                        "added": {"type": "array", "items": {"type": "string"}},
                        "replaced": {"type": "array", "items": {"type": "string"}},
                        "removed": {"type": "array", "items": {"type": "string"}},
                        "unchanged": {"type": "array", "items": {"type": "string"}}
                    }
                }
            }
        }
    })
}
