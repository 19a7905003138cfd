//! `AccountApi`: calls on behalf of a signed-in user. Each handler first
//! authenticates the call from its `authorization` metadata (RFC 6750
//! §2.1: `Bearer <access token>`, checked by
//! [`AuthService::authenticate`](crate::service::AuthService::authenticate)),
//! inside the request span, so a refusal is timed, logged and counted like
//! any answer.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::{GrpcApi, observed};
use crate::proto;
use crate::proto::account_api_server::AccountApi;
use crate::proto::{
    ChangePasswordRequest, ChangePasswordResponse, DeleteAccountRequest, DeleteAccountResponse,
    GetAccountRequest, GetAccountResponse, ListSessionsRequest, ListSessionsResponse,
    RevokeSessionRequest, RevokeSessionResponse,
};
use crate::service::{Caller, ServiceError};

impl GrpcApi {
    /// Authenticates `request` by its `authorization` metadata (every value
    /// of it: more than one is refused).
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, ServiceError> {
        let values: Vec<&[u8]> = (request.metadata().get_all("authorization").iter())
            .map(|value| value.as_bytes())
            .collect();
        self.service.authenticate(&values).await
    }
}

/// A time as a `google.protobuf.Timestamp`.
fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // A leap second shows as nanos past 10^9 in chrono; a Timestamp
        // must stay below, so it is the second's last nanosecond.
        nanos: i32::try_from(at.timestamp_subsec_nanos().min(999_999_999)).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl AccountApi for GrpcApi {
    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<GetAccountResponse>, Status> {
        observed("GetAccount", self.timeout, async {
            let caller = self.caller(&request).await?;
            let account = self.service.get_account(&caller).await?;
            Ok(GetAccountResponse {
                user_id: account.id.to_string(),
                email: account.email,
                created_at: Some(timestamp(account.created_at)),
            })
        })
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        observed("ListSessions", self.timeout, async {
            let caller = self.caller(&request).await?;
            let ListSessionsRequest {
                page_size,
                page_token,
            } = request.into_inner();
            let page = self
                .service
                .list_sessions(&caller, page_size, &page_token)
                .await?;
            Ok(ListSessionsResponse {
                sessions: (page.sessions.into_iter())
                    .map(|(s, current)| proto::Session {
                        session_id: s.id.to_string(),
                        created_at: Some(timestamp(s.created_at)),
                        last_refreshed_at: s.last_refreshed_at.map(timestamp),
                        expires_at: Some(timestamp(s.expires_at)),
                        device_name: s.device_name.unwrap_or_default(),
                        user_agent: s.user_agent.unwrap_or_default(),
                        ip_address: s.ip_address.unwrap_or_default(),
                        current,
                    })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        observed("RevokeSession", self.timeout, async {
            let caller = self.caller(&request).await?;
            let RevokeSessionRequest { session_id } = request.into_inner();
            self.service.revoke_session(&caller, &session_id).await?;
            Ok(RevokeSessionResponse {})
        })
        .await
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        observed("ChangePassword", self.timeout, async {
            let caller = self.caller(&request).await?;
            let client = self.client_info(&request);
            let ChangePasswordRequest {
                current_password,
                new_password,
            } = request.into_inner();
            self.service
                .change_password(&caller, &current_password, &new_password, &client)
                .await?;
            Ok(ChangePasswordResponse {})
        })
        .await
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        observed("DeleteAccount", self.timeout, async {
            let caller = self.caller(&request).await?;
            let client = self.client_info(&request);
            let DeleteAccountRequest { password } = request.into_inner();
            self.service
                .delete_account(&caller, &password, &client)
                .await?;
            Ok(DeleteAccountResponse {})
        })
        .await
    }
}
