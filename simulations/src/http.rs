//! The client side of the inference API: OIP v2 request bodies (JSON tensors, and the binary tensor data
//! extension as tritonclient sends it), the binary response's first value, and a minimal HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{Context, Result, ensure};
use outpost_agent::inference::oip_name;
use outpost_shared::model::{NamedTensor, TensorData};

/// Tensor data as the JSON array an OIP v2 request carries.
pub fn data_json(d: &TensorData) -> serde_json::Value {
    match d {
        TensorData::F32(v) => serde_json::json!(v),
        TensorData::F64(v) => serde_json::json!(v),
        TensorData::I8(v) => serde_json::json!(v),
        TensorData::U8(v) => serde_json::json!(v),
        TensorData::I32(v) => serde_json::json!(v),
        TensorData::I64(v) => serde_json::json!(v),
        TensorData::Bool(v) => serde_json::json!(v),
    }
}

/// The OIP v2 request body a client would send for these tensors.
pub fn oip_request(inputs: &[NamedTensor]) -> Vec<u8> {
    let inputs: Vec<serde_json::Value> = inputs
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "shape": t.shape, "datatype": oip_name(t.dtype()), "data": data_json(&t.data),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).expect("JSON of plain values")
}

/// Little-endian bytes of tensor data, as the binary tensor data extension carries them.
fn le_bytes(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U8(v) => v.clone(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
    }
}

/// What `tritonclient.http` sends by default: the OIP request as a JSON header whose inputs carry
/// `binary_data_size`, every output asked back binary (`binary_data_output`), then the tensors' bytes. Returns
/// the body and the header's length (`Inference-Header-Content-Length`).
pub fn oip_binary_request(inputs: &[NamedTensor]) -> (Vec<u8>, usize) {
    let tensors: Vec<Vec<u8>> = inputs.iter().map(|t| le_bytes(&t.data)).collect();
    let header: Vec<serde_json::Value> = inputs
        .iter()
        .zip(&tensors)
        .map(|(t, bytes)| {
            serde_json::json!({
                "name": t.name, "shape": t.shape, "datatype": oip_name(t.dtype()),
                "parameters": { "binary_data_size": bytes.len() },
            })
        })
        .collect();
    let request = serde_json::json!({ "inputs": header, "parameters": { "binary_data_output": true } });
    let mut body = serde_json::to_vec(&request).expect("JSON of plain values");
    let json_len = body.len();
    body.extend(tensors.concat());
    (body, json_len)
}

/// The first value of the first output of a binary-extension response (FP32), with the response's JSON header.
pub fn first_binary_output(body: &[u8], json_len: usize) -> Result<f64> {
    let header: serde_json::Value = serde_json::from_slice(body.get(..json_len).context("short response")?)?;
    let size = header["outputs"][0]["parameters"]["binary_data_size"].as_u64().context("binary output")?;
    ensure!(header["outputs"][0]["datatype"] == "FP32" && size >= 4, "an FP32 output: {header}");
    let bytes: [u8; 4] = body.get(json_len..json_len + 4).context("binary data")?.try_into()?;
    Ok(f64::from(f32::from_le_bytes(bytes)))
}

/// A connection over TCP or a Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
pub struct Http {
    conn: BufReader<Stream>,
}

impl Http {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Result<Http> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Http { conn: BufReader::new(Stream::Tcp(stream)) })
    }

    /// Connects to the Unix socket at `path`.
    pub fn connect_unix(path: &std::path::Path) -> Result<Http> {
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        Ok(Http { conn: BufReader::new(Stream::Unix(stream)) })
    }

    /// Connects to `addr` within `timeout`, which then bounds every read and write on the connection too.
    pub fn connect_timeout(addr: SocketAddr, timeout: std::time::Duration) -> Result<Http> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Http { conn: BufReader::new(Stream::Tcp(stream)) })
    }

    /// A complete request (head and body) to send as is; `json_len` for a body in the binary tensor data
    /// extension (the length of its JSON header).
    pub fn post_request(path: &str, body: &[u8], json_len: Option<usize>) -> Vec<u8> {
        let kind = match json_len {
            None => "Content-Type: application/json\r\n".to_owned(),
            Some(n) => format!("Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {n}\r\n"),
        };
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{kind}Content-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        req.extend_from_slice(body);
        req
    }

    /// Sends `request` and reads the response; returns the status and the body.
    pub fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>)> {
        let (status, _, body) = self.exchange_binary(request)?;
        Ok((status, body))
    }

    /// Like [`Http::exchange`], with the response's `Inference-Header-Content-Length` when it has one.
    pub fn exchange_binary(&mut self, request: &[u8]) -> Result<(u16, Option<usize>, Vec<u8>)> {
        self.conn.get_mut().write_all(request)?;
        let mut line = String::new();
        self.conn.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).context("status line")?.parse()?;
        let (mut length, mut json_len) = (None, None);
        loop {
            line.clear();
            self.conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = Some(v.trim().parse::<usize>()?);
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("inference-header-content-length")
            {
                json_len = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("response without Content-Length")?];
        self.conn.read_exact(&mut body)?;
        Ok((status, json_len, body))
    }
}
