//! The OpenAPI 3.0 document of the API, generated from the route table ([`super::route_docs`]):
//! every route appears with its parameters, body, security and responses.

use serde_json::{Map, Value, json};

use super::{Access, RouteDoc, route_docs};

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn operation(d: &RouteDoc) -> Value {
    let mut params: Vec<Value> = path_params(d.path)
        .into_iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(
        d.query
            .iter()
            .map(|q| json!({"name": q, "in": "query", "required": false, "schema": {"type": "string"}})),
    );
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    responses.insert(d.success.0.to_string(), json!({"description": d.success.1}));
    responses.insert("400".into(), error.clone());
    responses.insert(
        "401".into(),
        json!({"description": "missing, invalid or expired token", "content": error["content"].clone()}),
    );
    responses.insert("403".into(), json!({"description": "role too weak or token not valid for this resource", "content": error["content"].clone()}));
    responses.insert("404".into(), error);
    let security = match d.access {
        Access::Role(_) => json!([{"bearer": []}]),
        Access::DownloadToken => json!([{"downloadToken": []}]),
    };
    let mut role = match d.access {
        Access::Role(r) => format!("Needs the {r} role."),
        Access::DownloadToken => "Authorized by the URL's scoped download token.".to_owned(),
    };
    if let Some(detail) = d.detail {
        role = format!("{detail}\n\n{role}");
    }
    let mut op = json!({
        "summary": d.summary,
        "description": role,
        "tags": [d.tag],
        "operationId": format!("{}_{}", d.method.as_str().to_lowercase(), d.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
        "parameters": params,
        "security": security,
        "responses": responses,
    });
    if let Some(ct) = d.body {
        op["requestBody"] = json!({"required": true, "content": {ct: {"schema": {}}}});
    }
    op
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for d in route_docs() {
        let entry = paths.entry(d.path.to_owned()).or_insert_with(|| json!({}));
        entry[d.method.as_str().to_lowercase()] = operation(&d);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "EdgeMLOps hub API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Control plane of EdgeMLOps: devices, model registry, commands, telemetry, assets. \
                            Request and response bodies are the types of the `proto::api` module.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API token (emh_...)"},
                "downloadToken": {"type": "apiKey", "in": "query", "name": "sig",
                                  "description": "scoped expiring token of a download URL (with sub and exp)"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document_with_its_path_parameters() {
        let doc = document();
        let docs = route_docs();
        assert!(docs.len() >= 25);
        for d in &docs {
            let op = &doc["paths"][d.path][d.method.as_str().to_lowercase()];
            assert!(
                op.is_object(),
                "{} {} missing from the OpenAPI document",
                d.method,
                d.path
            );
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, path_params(d.path));
            assert!(op["security"].as_array().is_some_and(|s| !s.is_empty()));
        }
        let count: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| m.as_object().unwrap().len())
            .sum();
        assert_eq!(
            count,
            docs.len(),
            "the document has exactly the routes of the table"
        );
    }
}
