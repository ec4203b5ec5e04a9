//! A minimal OTLP receiver: the `opentelemetry-proto` trace and metrics
//! services over gRPC, counting what arrives and, when asked, keeping it.
//!
//! Why it is here: `glassbox bench … --otlp` needs a receiver to export to
//! (counting only), and the end-to-end telemetry tests need one that keeps
//! every request to inspect; both use this one (the tests add an OTLP/HTTP
//! route that hands its decoded bodies to the same sink).

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the receiver got. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct OtlpSink {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    keep: bool,
    spans: AtomicU64,
    metric_exports: AtomicU64,
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
}

impl OtlpSink {
    /// Counts only.
    pub fn counting() -> OtlpSink {
        OtlpSink::default()
    }

    /// Counts and keeps every request.
    pub fn keeping() -> OtlpSink {
        OtlpSink {
            inner: Arc::new(Inner {
                keep: true,
                ..Inner::default()
            }),
        }
    }

    pub fn record_traces(&self, r: ExportTraceServiceRequest) {
        let n: usize = r
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.inner.spans.fetch_add(n as u64, Ordering::Relaxed);
        if self.inner.keep
            && let Ok(mut t) = self.inner.traces.lock()
        {
            t.push(r);
        }
    }

    pub fn record_metrics(&self, r: ExportMetricsServiceRequest) {
        self.inner.metric_exports.fetch_add(1, Ordering::Relaxed);
        if self.inner.keep
            && let Ok(mut m) = self.inner.metrics.lock()
        {
            m.push(r);
        }
    }

    pub fn spans(&self) -> u64 {
        self.inner.spans.load(Ordering::Relaxed)
    }

    pub fn metric_exports(&self) -> u64 {
        self.inner.metric_exports.load(Ordering::Relaxed)
    }

    /// The trace requests kept so far (empty unless [`OtlpSink::keeping`]).
    pub fn traces(&self) -> Vec<ExportTraceServiceRequest> {
        self.inner
            .traces
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// The metrics requests kept so far (empty unless [`OtlpSink::keeping`]).
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.inner
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Serves OTLP/gRPC on `listener` until the task is dropped.
    pub fn serve_grpc(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(s.clone()))
                .add_service(MetricsServiceServer::new(s))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        })
    }
}

#[tonic::async_trait]
impl TraceService for OtlpSink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.record_traces(r.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpSink {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.record_metrics(r.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}
