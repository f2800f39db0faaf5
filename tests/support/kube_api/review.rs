//! The test API server's TokenReview (`authentication.k8s.io/v1`): a token the test
//! allowed is authenticated as its ServiceAccount for the audiences asked (the API server's
//! own when none are), any other is not, with the real server's error text and `201`.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::http::{json_response, status, Body};
use super::Inner;

/// POST tokenreviews: authenticated when the test allowed the token.
pub async fn token_review(req: Request<Incoming>, inner: &Arc<Inner>) -> Response<Body> {
    let Ok(body) = req.into_body().collect().await else {
        return status(400, "BadRequest", "unreadable body");
    };
    let Ok(mut review) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    if review["kind"] != "TokenReview" || review["spec"]["token"].as_str().is_none() {
        return status(
            422,
            "Invalid",
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
        );
    }
    let token = review["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let user = inner.tokens.lock().unwrap().get(&token).cloned();
    // Audiences asked for must meet the token's; none asked means the API server's own.
    let wanted: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![super::API_AUDIENCE.to_string()],
    };
    let user = user.map(|(u, auds)| {
        let both: Vec<String> = wanted
            .iter()
            .filter(|w| auds.contains(w))
            .cloned()
            .collect();
        (u, auds, both)
    });
    review["status"] = match user {
        Some((_, auds, both)) if both.is_empty() => json!({
            "user": {},
            "error": format!("[invalid bearer token, token audiences {auds:?} is invalid for the target audiences {wanted:?}]")
        }),
        Some((u, _, both)) => {
            let ns = u.split(':').nth(2).unwrap_or_default().to_string();
            json!({ "authenticated": true, "audiences": both,
                    "user": { "username": u, "uid": "4b1c2d3e-0000-4000-8000-000000000001",
                              "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"] } })
        }
        None => {
            json!({ "user": {}, "error": "[invalid bearer token, service account token has been invalidated]" })
        }
    };
    review["metadata"] = json!({ "creationTimestamp": null });
    json_response(StatusCode::CREATED, &review)
}
