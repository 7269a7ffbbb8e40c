//! Tokens, the audit log and the caller's identity (HTTP only: the gRPC API serves jobs).

use reqwest::Method;
use warden_api::{
    AuditResponse, CreateTokenRequest, CreateTokenResponse, TokenView, TokensResponse,
    WhoamiResponse,
};

use crate::{Client, ClientError, enc};

/// Filters for [`Client::audit`].
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub action: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl Client {
    fn http_only(&self, what: &str) -> Result<(), ClientError> {
        match &self.grpc {
            Some(g) => Err(g.unsupported(what)),
            None => Ok(()),
        }
    }

    pub async fn whoami(&self) -> Result<WhoamiResponse, ClientError> {
        self.http_only("whoami")?;
        self.json(self.request(Method::GET, "/whoami")).await
    }

    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ClientError> {
        self.http_only("token management")?;
        self.json(self.request(Method::POST, "/tokens").json(req))
            .await
    }

    pub async fn list_tokens(&self, tenant: Option<&str>) -> Result<TokensResponse, ClientError> {
        self.http_only("token management")?;
        let mut rb = self.request(Method::GET, "/tokens");
        if let Some(t) = tenant {
            rb = rb.query(&[("tenant", t)]);
        }
        self.json(rb).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, ClientError> {
        self.http_only("token management")?;
        self.json(self.request(Method::POST, &format!("/tokens/{}/revoke", enc(id))))
            .await
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<AuditResponse, ClientError> {
        self.http_only("the audit log")?;
        let mut params: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("tenant", &q.tenant),
            ("action", &q.action),
            ("cursor", &q.cursor),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        if let Some(l) = q.limit {
            params.push(("limit", l.to_string()));
        }
        self.json(self.request(Method::GET, "/audit").query(&params))
            .await
    }
}
