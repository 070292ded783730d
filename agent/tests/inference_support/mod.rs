//! What the inference API's tests share: the fixture models served, a server on a real TCP socket, a minimal
//! HTTP/1.1 client, the binary tensor data extension's encoding, and slow clients.
#![allow(dead_code, unused_imports)]
pub use std::net::SocketAddr;
pub use std::path::PathBuf;
pub use std::sync::Arc;
pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use outpost_agent::inference::{self, BearerToken, InferenceError, LoadError, ModelHandle, ServeLimits, Served};
pub use outpost_shared::manifest::SmokeTensor;
pub use outpost_shared::{Digest, Manifest, PackageLimits};
pub use serde_json::{Value, json};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::{TcpListener, TcpStream};
pub use tokio::sync::oneshot;

pub const PPOCR: &str = "ppocr-direction";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(name)
}

pub fn manifest(toml: &str) -> Manifest {
    Manifest::from_toml(&std::fs::read_to_string(fixture(toml)).unwrap(), toml).unwrap()
}

/// A fixture model and its manifest, loaded for serving (smoke test included).
pub fn served(model: &str, toml: &str) -> Arc<Served> {
    Arc::new(Served::from_parts(manifest(toml), &std::fs::read(fixture(model)).unwrap()).unwrap())
}

pub fn silero() -> Arc<Served> {
    served("silero_vad_16k_sequence.onnx", "silero-vad.toml")
}

/// ppocr-direction 2.0.0: `x: f32[N, 3, H, W]`.
pub fn ppocr() -> Arc<Served> {
    served("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml")
}

/// ppocr-direction 2.0.1: the same weights with the crop fixed to 48×192.
pub fn ppocr_fixed() -> Arc<Served> {
    served("ppocr_direction_fixed48x192.onnx", "ppocr-direction-fixed.toml")
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// A server already spawned: its address, its stop signal and its task.
    pub fn from_parts(
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    ) -> Server {
        Server { addr, stop: Some(stop), task }
    }

    pub async fn start(handle: Arc<ModelHandle>) -> Server {
        Server::start_with(handle, ServeLimits::default()).await
    }

    pub async fn start_with(handle: Arc<ModelHandle>, limits: ServeLimits) -> Server {
        Server::start_with_token(handle, limits, None).await
    }

    pub async fn start_with_token(handle: Arc<ModelHandle>, limits: ServeLimits, token: Option<BearerToken>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(inference::serve(listener, handle, limits, token, async {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), task }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        http(self.addr, "GET", path, b"").await
    }

    pub async fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        http(self.addr, "POST", path, body).await
    }

    pub async fn infer(&self, model: &str, body: &Value) -> (u16, Value) {
        self.post(&format!("/v2/models/{model}/infer"), body.to_string().as_bytes()).await
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body as JSON (`Null` when empty).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, _, body) = http_raw(addr, method, path, &[("Content-Type", "application/json")], body).await;
    let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    (status, json)
}

/// One HTTP/1.1 request on a fresh connection with extra `headers`; returns the status, the response head
/// (lower case) and the raw body.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap().to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        raw = &raw[eol + 2 + len + 2..];
    }
}

/// The OIP request for a package's smoke-test inputs.
pub fn smoke_request(served: &Served) -> Value {
    let inputs: Vec<Value> = served
        .manifest()
        .smoke_test
        .inputs
        .iter()
        .map(|t| {
            let spec = served.manifest().contract.inputs.iter().find(|s| s.name == t.name).unwrap();
            json!({
                "name": t.name,
                "shape": t.shape,
                "datatype": inference::oip_name(spec.dtype),
                "data": t.materialize(),
            })
        })
        .collect();
    json!({ "id": "smoke", "inputs": inputs })
}

pub fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| {
        panic!("no output `{name}` in {response}");
    })
}

/// Asserts every expected smoke-test output is in `response` with its shape and values within the tolerance.
pub fn assert_matches_goldens(served: &Served, response: &Value) {
    let st = &served.manifest().smoke_test;
    for expected in &st.expected {
        assert_matches(response, expected, st.tolerance, 1);
    }
}

/// Like [`assert_matches_goldens`] for one output, with the expected rows repeated `batch` times.
pub fn assert_matches(response: &Value, expected: &SmokeTensor, tolerance: f64, batch: u64) {
    let out = output(response, &expected.name);
    let mut shape = expected.shape.clone();
    shape[0] *= batch;
    assert_eq!(out["shape"], json!(shape), "{}", expected.name);
    assert_eq!(out["datatype"], "FP32");
    let got: Vec<f64> = out["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let want: Vec<f64> = (0..batch).flat_map(|_| expected.materialize()).collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tolerance, "{} element {i}: {g} vs golden {w}", expected.name);
    }
}

pub fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"))
}

/// `request` in the binary tensor data extension: the `data` of each input named in `binary` moved after the
/// JSON object as little-endian FP32 bytes, with its `binary_data_size`. Returns the body and the JSON length.
pub fn binary_body(request: &Value, binary: &[&str]) -> (Vec<u8>, String) {
    let mut header = request.clone();
    let mut tail = Vec::new();
    for input in header["inputs"].as_array_mut().unwrap() {
        if !binary.contains(&input["name"].as_str().unwrap()) {
            continue;
        }
        let data = input.as_object_mut().unwrap().remove("data").unwrap();
        let start = tail.len();
        for v in data.as_array().unwrap() {
            tail.extend_from_slice(&(v.as_f64().unwrap() as f32).to_le_bytes());
        }
        input["parameters"] = json!({ "binary_data_size": tail.len() - start });
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len().to_string();
    body.extend_from_slice(&tail);
    (body, json_len)
}

/// A binary-extension body (`json_len` long JSON header) with its header changed by `edit`; returns the new body
/// and header length.
pub fn edit_header(body: &[u8], json_len: &str, edit: impl FnOnce(&mut Value)) -> (Vec<u8>, String) {
    let json_len: usize = json_len.parse().unwrap();
    let mut header: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    edit(&mut header);
    let mut edited = serde_json::to_vec(&header).unwrap();
    let edited_len = edited.len().to_string();
    edited.extend_from_slice(&body[json_len..]);
    (edited, edited_len)
}

pub fn input_mut<'a>(request: &'a mut Value, name: &str) -> &'a mut Value {
    request["inputs"].as_array_mut().unwrap().iter_mut().find(|i| i["name"] == name).unwrap()
}

pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// A binary-extension response as the all-JSON response it stands for: each binary output's FP32 bytes put
/// back as `data`, printed the way the server prints floats.
pub fn unbinary(head: &str, body: &[u8]) -> Value {
    let len: usize = header_value(head, "inference-header-content-length").expect("the header").parse().unwrap();
    let mut json: Value = serde_json::from_slice(&body[..len]).unwrap();
    let mut rest = &body[len..];
    for out in json["outputs"].as_array_mut().unwrap() {
        let Some(size) = out["parameters"]["binary_data_size"].as_u64() else { continue };
        assert_eq!(out["datatype"], "FP32");
        let (bytes, tail) = rest.split_at(size as usize);
        rest = tail;
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let o = out.as_object_mut().unwrap();
        o.remove("parameters");
        o.insert("data".into(), serde_json::from_str(&serde_json::to_string(&values).unwrap()).unwrap());
    }
    assert!(rest.is_empty(), "{} bytes after the last binary output", rest.len());
    json
}

/// A handle serving `model`.
pub fn handle_of(model: Arc<Served>) -> Arc<ModelHandle> {
    let handle = Arc::new(ModelHandle::new());
    handle.swap(model);
    handle
}

/// Opens a connection and sends `head` (and nothing more): a client that goes slow mid-request.
pub async fn stall_after(addr: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// A request head declaring a 1000-byte body, and the first byte of it.
pub const SLOW_BODY: &str = "POST /v2/models/silero-vad/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                         Content-Length: 1000\r\n\r\n{";

/// Reads what the server sends until it closes the connection; `None` if it is still open after `within`.
pub async fn closed_within(stream: &mut TcpStream, within: std::time::Duration) -> Option<String> {
    let mut raw = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut raw)).await {
        Ok(_) => Some(String::from_utf8_lossy(&raw).into_owned()),
        Err(_) => None,
    }
}

impl Server {
    /// A server whose active model is `model`.
    pub async fn serving(model: &Arc<Served>) -> Server {
        let handle = Arc::new(ModelHandle::new());
        handle.swap(model.clone());
        Server::start(handle).await
    }

    /// POSTs a body in the binary tensor data extension: a JSON object of `json_len` bytes, then tensor bytes.
    pub async fn infer_binary(&self, model: &str, body: &[u8], json_len: &str) -> (u16, String, Vec<u8>) {
        let headers = [("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", json_len)];
        http_raw(self.addr, "POST", &format!("/v2/models/{model}/infer"), &headers, body).await
    }
}
