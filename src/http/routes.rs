//! The route table: every path the server answers, used by the app builder and by the
//! trailing-slash redirect (`rest-api.md` §1.7).

/// Route patterns; `{x}` matches one segment, `{x:.*}` the rest of the path.
pub const PATTERNS: &[&str] = &[
    "/",
    "/health",
    "/openapi.json",
    "/docs",
    "/api/v0/algorithm/all",
    "/api/v0/algorithm/{algorithm_name}/{algorithm_major_version}",
    "/api/v0/algorithm/{algorithm_name}/{algorithm_major_version}/export",
    "/api/v0/deploy/local",
    "/api/v0/deploy/local-async",
    "/api/v0/deploy/{deploy_id}",
    "/api/v0/deploy/algorithm/{algorithm_id}",
    "/api/v0/execute-algorithm",
    "/api/v0/execute-algorithm/all",
    "/api/v0/execute-algorithm/{execution_id}",
    "/api/v0/executions/{id}",
    "/api/v0/executions/{id}/stop",
    "/api/v0/sample",
    "/api/v0/sample/all",
    "/api/v0/sample/{sample_id}",
    "/api/v0/checkpoint/all",
    "/api/v0/checkpoint/{checkpoint_id}",
    "/api/v0/train-algorithm",
    "/api/v0/training/{training_id}",
    "/api/v0/training/{training_id}/stop",
    "/api/v0/benchmark-algorithm",
    "/api/v0/benchmarks/{benchmark_id}",
    "/api/v0/files",
    "/api/v0/files/{id}",
    "/api/v1/files/{object_name}/upload-url",
    "/api/v1/files/{object_name}/download-url",
    "/api/v1/files/{object_name}",
    "/api/v1/presigned/{collection}/{key:.*}",
];

fn segment_match(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    let s: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, seg) in p.iter().enumerate() {
        if seg.ends_with(":.*}") {
            return s.len() > i;
        }
        let Some(actual) = s.get(i) else { return false };
        let is_param = seg.starts_with('{') && seg.ends_with('}');
        if is_param {
            if actual.is_empty() {
                return false;
            }
        } else if seg != actual {
            return false;
        }
    }
    p.len() == s.len()
}

pub fn matches_any(path: &str) -> bool {
    PATTERNS.iter().any(|p| segment_match(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(matches_any("/api/v0/files"));
        assert!(!matches_any("/api/v0/files/"));
        assert!(matches_any("/api/v0/executions/abc/stop"));
        assert!(matches_any("/"));
        assert!(!matches_any("/nope"));
    }
}
