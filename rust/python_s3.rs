//! Bindings of the S3 transport ([`crate::s3`]): requests run with the interpreter lock released.

use crate::s3::sigv4::{self, Credentials};
use crate::s3::transport::{Problem, Request, Transport, TransportError};
use pyo3::exceptions::{
    PyConnectionAbortedError, PyConnectionRefusedError, PyConnectionResetError, PyOSError,
    PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use std::io::ErrorKind;
use std::path::PathBuf;

/// Built-in exceptions for a request that got no answer, as Python's own sockets raise them.
fn transport_err(e: TransportError) -> PyErr {
    let msg = e.to_string();
    if let Some(errno) = e.file_errno {
        return PyOSError::new_err((errno, msg));
    }
    match e.kind {
        ErrorKind::ConnectionRefused => PyConnectionRefusedError::new_err(msg),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => PyConnectionResetError::new_err(msg),
        ErrorKind::ConnectionAborted => PyConnectionAbortedError::new_err(msg),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => PyTimeoutError::new_err(msg),
        ErrorKind::InvalidInput => PyValueError::new_err(msg),
        _ => PyOSError::new_err(msg),
    }
}

/// `(access_key, secret_key, session_token)` from Python.
fn signing((access_key, secret_key, token): (String, String, Option<String>)) -> Credentials {
    Credentials {
        access_key,
        secret_key,
        token,
    }
}

type Answer<'py> = (u16, Vec<(String, String)>, Option<Bound<'py, PyBytes>>);

/// A keep-alive connection pool that signs and sends S3 requests.
#[pyclass(name = "S3Transport", module = "hashsync._native", frozen)]
pub(crate) struct PyS3Transport {
    inner: Transport,
}

#[pymethods]
impl PyS3Transport {
    #[new]
    #[pyo3(signature = (*, timeout, connect_timeout = None, ca_bundle = None, pool = 64, proxy = None))]
    fn new(
        timeout: f64,
        connect_timeout: Option<f64>,
        ca_bundle: Option<PathBuf>,
        pool: usize,
        proxy: Option<&str>,
    ) -> PyResult<Self> {
        let connect = connect_timeout.unwrap_or(timeout);
        let inner = Transport::new(timeout, connect, ca_bundle.as_deref(), pool, proxy).map_err(
            |e| match e.kind() {
                // A proxy URL that cannot be used: the caller's mistake, not the system's.
                std::io::ErrorKind::InvalidInput => PyValueError::new_err(e.to_string()),
                _ => PyErr::from(e),
            },
        )?;
        Ok(PyS3Transport { inner })
    }

    #[pyo3(signature = (method, url, headers, body = None, *, credentials = None, region = "us-east-1", max_body = u64::MAX))]
    #[allow(clippy::too_many_arguments)]
    fn request<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: Option<PyBackedBytes>,
        credentials: Option<(String, String, Option<String>)>,
        region: &str,
        max_body: u64,
    ) -> PyResult<Answer<'py>> {
        let credentials = credentials.map(signing);
        let body: &[u8] = body.as_deref().unwrap_or(b"");
        let answer = py
            .detach(|| {
                self.inner.exchange(&Request {
                    method,
                    url,
                    headers: &headers,
                    body,
                    credentials: credentials.as_ref(),
                    region,
                    max_body,
                })
            })
            .map_err(transport_err)?;
        let body = answer.body.map(|b| PyBytes::new(py, &b));
        Ok((answer.status, answer.headers, body))
    }

    #[pyo3(signature = (url, headers, fd, offset, end, *, credentials = None, region = "us-east-1", pinned_etag = None, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn get_into<'py>(
        &self,
        py: Python<'py>,
        url: &str,
        headers: Vec<(String, String)>,
        fd: i32,
        offset: u64,
        end: u64,
        credentials: Option<(String, String, Option<String>)>,
        region: &str,
        pinned_etag: Option<&str>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<RangeResult<'py>> {
        use std::os::fd::FromRawFd;
        let credentials = credentials.map(signing);
        if fd < 0 {
            return Err(PyValueError::new_err(format!("bad file descriptor {fd}")));
        }
        // Borrowed: the caller owns (and closes) the descriptor.
        let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        // The callback's exception (Ctrl-C included) stops the body and is raised here.
        let mut raised: Option<PyErr> = None;
        let mut report = |n: u64| -> bool {
            let Some(callback) = progress.as_ref() else {
                return true;
            };
            Python::attach(|py| match callback.call1(py, (n,)) {
                Ok(_) => true,
                Err(e) => {
                    raised = Some(e);
                    false
                }
            })
        };
        let answer = py
            .detach(|| {
                self.inner.get_into(
                    &Request {
                        method: "GET",
                        url,
                        headers: &headers,
                        body: b"",
                        credentials: credentials.as_ref(),
                        region,
                        max_body: 0,
                    },
                    &file,
                    offset,
                    end,
                    pinned_etag,
                    &mut report,
                )
            })
            .map_err(transport_err)?;
        if let Some(e) = raised {
            return Err(e);
        }
        let problem = answer.problem.map(|p| match p {
            Problem::Changed(m) => ("changed", m),
            Problem::Range(m) => ("range", m),
            Problem::Broken(m) => ("broken", m),
        });
        let error_body = answer.error_body.map(|b| PyBytes::new(py, &b));
        Ok((
            answer.status,
            answer.headers,
            answer.written,
            problem,
            error_body,
        ))
    }
}

type RangeResult<'py> = (
    u16,
    Vec<(String, String)>,
    u64,
    Option<(&'static str, String)>,
    Option<Bound<'py, PyBytes>>,
);

/// The SigV4 headers for a request (header-based signing); `when` is `YYYYMMDDTHHMMSSZ`.
#[pyfunction]
#[pyo3(signature = (method, url, headers, payload_sha256, when, credentials, region))]
pub(crate) fn sigv4_sign(
    method: &str,
    url: &str,
    headers: Vec<(String, String)>,
    payload_sha256: &str,
    when: &str,
    credentials: (String, String, Option<String>),
    region: &str,
) -> Vec<(String, String)> {
    let (access_key, secret_key, token) = credentials;
    let credentials = Credentials {
        access_key,
        secret_key,
        token,
    };
    sigv4::sign(
        method,
        url,
        &headers,
        payload_sha256,
        when,
        &credentials,
        region,
    )
}
