//! Server-side printing: kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io`
//! and prints the columns the server chose, as the real API server's printers do for these
//! kinds (a subset of their columns, same names and types).

use serde_json::{json, Value};

use super::store::Res;

fn col(name: &str, ty: &str, format: &str) -> Value {
    json!({ "name": name, "type": ty, "format": format, "description": "", "priority": 0 })
}

/// A `meta.k8s.io/v1` Table of `items`, each row with its object's metadata.
pub fn table(res: Res, items: &[Value], list_meta: Value) -> Value {
    let columns = match res {
        Res::Pods => vec![
            col("Name", "string", "name"),
            col("Ready", "string", ""),
            col("Status", "string", ""),
            col("Age", "string", ""),
        ],
        Res::Services => vec![
            col("Name", "string", "name"),
            col("Type", "string", ""),
            col("Cluster-IP", "string", ""),
            col("Port(s)", "string", ""),
            col("Age", "string", ""),
        ],
        Res::EndpointSlices => vec![
            col("Name", "string", "name"),
            col("AddressType", "string", ""),
            col("Ports", "string", ""),
            col("Endpoints", "string", ""),
            col("Age", "string", ""),
        ],
    };
    let rows: Vec<Value> = items.iter().map(|o| row(res, o)).collect();
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": columns, "rows": rows })
}

fn row(res: Res, o: &Value) -> Value {
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    let age = "1d";
    let cells = match res {
        Res::Pods => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses.iter().filter(|s| s["ready"] == true).count();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            json!([name, format!("{ready}/{total}"), o["status"]["phase"], age])
        }
        Res::Services => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            json!([
                name,
                o["spec"]["type"],
                o["spec"]["clusterIP"],
                ports.join(","),
                age
            ])
        }
        Res::EndpointSlices => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| p["port"].to_string())
                .collect();
            let eps: Vec<String> = o["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let eps = if eps.is_empty() {
                "<unset>".to_string()
            } else {
                eps.join(",")
            };
            json!([name, o["addressType"], ports.join(","), eps, age])
        }
    };
    // includeObject=Metadata, the default: the row's object is PartialObjectMetadata.
    json!({ "cells": cells, "object": { "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                         "metadata": o["metadata"] } })
}
