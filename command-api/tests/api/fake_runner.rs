//! A data-plane stand-in for API-level tests that have no runsc: it beats in
//! Redis like a runner (so openings are placed) and accepts `OpenSession`
//! without starting anything (so sessions stay `opening`); every other call
//! is `unavailable`. The real runner, with real sandboxes, is exercised by
//! the end-to-end tests (tests/e2e/sessions.rs).

use glassbox_platform::hot::{HotState, RunnerBeat};
use glassbox_runner_api::v1::*;
use std::pin::Pin;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub struct FakeRunner;

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn no() -> Status {
    Status::unavailable("fake runner: no sandboxes here")
}

#[tonic::async_trait]
impl glassbox_runner_api::Runner for FakeRunner {
    async fn open_session(
        &self,
        _: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionReply>, Status> {
        Ok(Response::new(OpenSessionReply::default()))
    }
    type ExecStream = Stream<ExecEvent>;
    async fn exec(&self, _: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        Err(no())
    }
    async fn write_file(
        &self,
        _: Request<tonic::Streaming<WriteFileChunk>>,
    ) -> Result<Response<WriteFileReply>, Status> {
        Err(no())
    }
    type ReadFileStream = Stream<FileChunk>;
    async fn read_file(
        &self,
        _: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        Err(no())
    }
    async fn list_files(
        &self,
        _: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesReply>, Status> {
        Err(no())
    }
    async fn delete_file(
        &self,
        _: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileReply>, Status> {
        Err(no())
    }
    async fn close_session(
        &self,
        _: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionReply>, Status> {
        Ok(Response::new(CloseSessionReply::default()))
    }
    async fn set_egress(
        &self,
        _: Request<glassbox_runner_api::v1::SetEgressRequest>,
    ) -> Result<Response<glassbox_runner_api::v1::SetEgressReply>, Status> {
        Err(no())
    }
    async fn service_request(
        &self,
        _: Request<glassbox_runner_api::v1::ServiceHttpRequest>,
    ) -> Result<Response<glassbox_runner_api::v1::ServiceHttpReply>, Status> {
        Err(no())
    }
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        Err(no())
    }
}

/// Serves the fake runner and beats for it in the deployment of `db_url`
/// until `stop`.
pub async fn start(db_url: &str, stop: CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let hot = HotState::connect(
        "redis://127.0.0.1:6379",
        &glassbox_platform::hot::namespace(db_url),
    )
    .await
    .expect("redis");
    let s = stop.clone();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(glassbox_runner_api::RunnerServer::new(FakeRunner))
            .serve_with_incoming_shutdown(incoming, async move { s.cancelled().await })
            .await;
    });
    let beat = RunnerBeat {
        runner_id: "fake".into(),
        addr,
        capacity: 100_000,
        sessions: 0,
        at_ms: 0,
    };
    hot.beat(&beat, std::time::Duration::from_secs(6))
        .await
        .expect("beat");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
            let _ = hot.beat(&beat, std::time::Duration::from_secs(6)).await;
        }
    });
}
