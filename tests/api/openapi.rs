//! The OpenAPI document: generated from the routes, complete, and served with its UI.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{ADMIN_KEY, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_and_the_ui_works_offline() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    for schema in [
        "Problem",
        "StreamPage",
        "DeliveryDetail",
        "EndpointDto",
        "EventDto",
        "Overview",
        "Session",
        "BulkReplayed",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "no {schema} schema"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let publish = &doc["paths"]["/v1/events"]["post"]["responses"];
    for status in [
        "201", "400", "401", "403", "408", "413", "415", "422", "503",
    ] {
        assert!(
            publish[status].is_object(),
            "POST /v1/events documents {status}: {publish}"
        );
    }
    assert!(publish["422"]["content"]["application/problem+json"].is_object());

    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    let mut checked = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            // Every operation says what its errors look like (except the few public,
            // infallible ones).
            let responses = operation["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            let concrete = path
                .replace("{id}", &uuid::Uuid::now_v7().to_string())
                .replace("{stream}", "orders")
                .replace("{path}", "index.html");
            let concrete = if concrete.ends_with("/events") {
                format!("{concrete}?wait=0")
            } else {
                concrete
            };
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut request = app
                .request(method.clone(), &concrete, ADMIN_KEY)
                .timeout(Duration::from_secs(10));
            if method == Method::POST || method == Method::PATCH {
                request = request.json(&serde_json::json!({}));
            }
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            assert_ne!(status, 405, "{method} {concrete}: method not routed");
            let media = answer
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned();
            if !media.ends_with("json") {
                continue; // a stream, a page, the metrics text: not JSON to check
            }
            let body = answer.text().await.unwrap();
            if status == 404 {
                assert!(
                    !body.contains("no route for"),
                    "{method} {concrete} is documented but not served: {body}"
                );
            }
            // The answer is what the document says for its status and media type.
            let documented = &responses
                .get(&status.to_string())
                .unwrap_or_else(|| panic!("{method} {path}: {status} is not documented: {body}"))["content"]
                [&media]["schema"];
            assert!(
                documented.is_object(),
                "{method} {path}: no {media} schema documented for {status}"
            );
            assert_matches_schema(
                &doc,
                documented,
                &body,
                &format!("{method} {path} {status}"),
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 28,
        "{checked} answers checked against their schemas"
    );
    // 32 handlers and the two documentation routes.
    assert!(operations >= 34, "{operations} operations");

    // Served ⊆ documented: routes are registered only through utoipa_actix_web's
    // `service(...)`, which documents them; a plain actix registration would escape.
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api")).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path)
            .unwrap()
            .replace("utoipa_actix_web::", "");
        for forbidden in [".route(", "web::resource(", "web::scope("] {
            assert!(
                !source.contains(forbidden),
                "{} registers a route with {forbidden}, which the OpenAPI document would miss",
                path.display()
            );
        }
    }

    // The interactive docs come from the binary; /docs leads to them.
    let bare = app
        .client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 200);
    assert_eq!(bare.url().path(), "/docs/");
    let page = app
        .client
        .get(format!("{}/docs/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(
        !html.contains("https://"),
        "no assets from elsewhere: {html}"
    );
}

/// Validates `body` against `schema` (an operation's response schema, whose `$ref`s point
/// into the document's components), with a JSON Schema 2020-12 validator.
fn assert_matches_schema(doc: &Value, schema: &Value, body: &str, what: &str) {
    let root = serde_json::json!({ "allOf": [schema], "components": doc["components"] });
    let validator = jsonschema::validator_for(&root).unwrap();
    let instance: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{body}");
}
