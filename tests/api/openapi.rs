//! The OpenAPI document: generated from the routes, complete, and served with its UI.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_problem, spawn_app};

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

/// Every documented request body is the type the handler parses: a body the document
/// accepts is accepted, and wrong bodies are refused by the document (where a schema can
/// say so) and by Herald alike, with a `422` naming the field by its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_the_documented_types() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let created: Value = app
        .post("/v1/endpoints", &json!({"url": "https://example.com/hook"}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let event = json!({"stream": "orders", "type": "order.paid", "payload": null});
    // (method, path, a good body, a bad body, the field Herald names, whether the
    // document refuses the bad body too)
    let cases = [
        (
            Method::POST,
            "/v1/events",
            event.clone(),
            json!({"stream": "orders", "type": 5, "payload": 1}),
            "type",
            true,
        ),
        (
            Method::POST,
            "/v1/events/batch",
            json!({"events": [event.clone(), event.clone()]}),
            json!({"events": [event.clone(), {"stream": "orders", "type": "t"}]}),
            "events[1].payload",
            true,
        ),
        (
            Method::POST,
            "/v1/keys",
            json!({"role": "publisher", "description": "ci"}),
            json!({"role": "publisher", "max_held": "many"}),
            "max_held",
            true,
        ),
        (
            Method::POST,
            "/v1/endpoints",
            json!({"url": "https://example.com/b", "rate_limit": null, "headers": {"X-Team": "pay"}}),
            json!({"url": "https://example.com/b", "colour": "red"}),
            "colour",
            true,
        ),
        (
            Method::PATCH,
            "/v1/endpoints/{id}",
            json!({"ordered": true, "max_in_flight": 3}),
            json!({"headers": {"X-Team": 1}}),
            "headers.X-Team",
            true,
        ),
        (
            Method::POST,
            "/v1/endpoints/{id}/rotate-secret",
            json!({"grace": "1h"}),
            json!({"grace": 3600}),
            "grace",
            true,
        ),
        (
            Method::POST,
            "/v1/endpoints/{id}/recover",
            json!({"since": "2026-01-01T00:00:00Z"}),
            json!({"until": "2026-01-01T00:00:00Z"}),
            "since",
            true,
        ),
        (
            Method::POST,
            "/v1/endpoints/{id}/test",
            json!({"event_type": "ping", "payload": [1, 2]}),
            json!({"event_type": "ping", "paylaod": 1}),
            "paylaod",
            true,
        ),
        (
            Method::POST,
            "/v1/deliveries/replay",
            json!({"filter": {"status": "failed", "status_code": 500}, "dry_run": true}),
            json!({"filter": {"status": "failed", "colour": "red"}}),
            "filter.colour",
            false,
        ),
        (
            Method::POST,
            "/v1/sessions",
            json!({"key": ADMIN_KEY}),
            json!({"key": ["a"]}),
            "key",
            true,
        ),
    ];
    for (method, template, good, bad, field, schema_refuses) in cases {
        let path = template.replace("{id}", &id);
        let schema = &doc["paths"][template][method.as_str().to_lowercase()]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {template}: no request schema");
        let what = format!("{method} {template}");
        assert!(
            schema_errors(&doc, schema, &good).is_empty(),
            "{what}: {good} per the document: {:?}",
            schema_errors(&doc, schema, &good)
        );
        assert_eq!(
            schema_errors(&doc, schema, &bad).is_empty(),
            !schema_refuses,
            "{what}: {bad} per the document"
        );
        let answer = app
            .request(method.clone(), &path, ADMIN_KEY)
            .json(&good)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{what}: {good}: {}",
            answer.text().await.unwrap()
        );
        let answer = app
            .request(method.clone(), &path, ADMIN_KEY)
            .json(&bad)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(answer, 422, "validation").await;
        assert_eq!(problem["field"], field, "{what}: {bad}: {problem}");
    }
}

/// What a JSON Schema validator finds wrong with `instance` against `schema` (whose
/// `$ref`s point into the document's components).
fn schema_errors(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let root = json!({ "allOf": [schema], "components": doc["components"] });
    let validator = jsonschema::validator_for(&root).unwrap();
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

/// Validates `body` against `schema` (an operation's response schema, whose `$ref`s point
/// into the document's components), with a JSON Schema 2020-12 validator.
fn assert_matches_schema(doc: &Value, schema: &Value, body: &str, what: &str) {
    let instance: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    let errors = schema_errors(doc, schema, &instance);
    assert!(errors.is_empty(), "{what}: {errors:?}\n{body}");
}
