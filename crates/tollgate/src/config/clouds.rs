//! The cloud providers' part of a `[[providers]]` entry: Bedrock's region and AWS
//! credentials, Vertex's project, region and Google credentials.
//!
//! - `kind = "bedrock"`: `region` (required); `base_url` defaults to
//!   `https://bedrock-runtime.{region}.amazonaws.com`. Credentials are the standard AWS
//!   variables `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for temporary credentials,
//!   `AWS_SESSION_TOKEN`.
//! - `kind = "vertex"`: `project` and `region` (required); `base_url` defaults to
//!   `https://{region}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for
//!   `global`). Credentials: `credentials_file`, a service-account JSON key (its
//!   `client_email`, `private_key` and `token_uri`), or `access_token_env`, the name of a
//!   variable holding an OAuth access token.

use super::providers::{FileProvider, ProviderKind};
use super::{ConfigError, Overrides, Secret};

/// AWS credentials (signing keys; never logged).
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// A Google service account's key.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    /// The PEM (PKCS #8) RSA private key.
    pub private_key: Secret,
    pub token_uri: String,
}

/// How a Vertex provider authenticates.
#[derive(Debug, Clone)]
pub enum GoogleAuth {
    /// OAuth tokens obtained with the service account's signed assertion.
    ServiceAccount(ServiceAccount),
    /// A token given in the environment.
    Token(Secret),
}

/// Region, project and credentials of a cloud provider (empty for other kinds).
#[derive(Debug, Clone, Default)]
pub struct Cloud {
    pub region: Option<String>,
    pub project: Option<String>,
    pub aws: Option<AwsCredentials>,
    pub google: Option<GoogleAuth>,
}

impl Cloud {
    /// The provider's public endpoint for its region.
    pub(super) fn default_base_url(&self) -> Option<String> {
        let region = self.region.as_deref()?;
        if self.project.is_some() {
            return Some(match region {
                "global" => "https://aiplatform.googleapis.com".to_string(),
                _ => format!("https://{region}-aiplatform.googleapis.com"),
            });
        }
        Some(format!("https://bedrock-runtime.{region}.amazonaws.com"))
    }

    /// The secrets the scrubber takes out of relayed text.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        let aws = self.aws.iter().flat_map(|a| {
            std::iter::once(a.secret_access_key.expose())
                .chain(a.session_token.as_ref().map(Secret::expose))
        });
        let token = self.google.iter().filter_map(|g| match g {
            GoogleAuth::Token(t) => Some(t.expose()),
            GoogleAuth::ServiceAccount(_) => None,
        });
        aws.chain(token)
    }
}

/// Reads and checks the cloud fields of provider `p`; `key` names a field of it.
pub(super) fn parse(
    p: &FileProvider,
    key: &dyn Fn(&str) -> String,
    origin: &str,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Cloud, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::at(origin, &key(field), msg);
    let kind = p.kind;
    let cloud_kind = matches!(kind, ProviderKind::Bedrock | ProviderKind::Vertex);
    for (field, set) in [
        ("region", p.region.is_some()),
        ("project", p.project.is_some()),
        ("credentials_file", p.credentials_file.is_some()),
        ("access_token_env", p.access_token_env.is_some()),
    ] {
        let allowed = match field {
            "region" => cloud_kind,
            _ => kind == ProviderKind::Vertex,
        };
        if set && !allowed {
            return Err(err(
                field,
                match field {
                    "region" => "is only for providers of kind \"bedrock\" or \"vertex\"".into(),
                    _ => "is only for providers of kind \"vertex\"".into(),
                },
            ));
        }
    }
    if !cloud_kind {
        return Ok(Cloud::default());
    }
    let Some(region) = p.region.clone() else {
        return Err(err(
            "region",
            "is required (for example \"us-east-1\")".into(),
        ));
    };
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err(
            "region",
            format!("'{region}' is not a region such as \"us-east-1\""),
        ));
    }
    let mut cloud = Cloud {
        region: Some(region),
        ..Cloud::default()
    };
    if kind == ProviderKind::Bedrock {
        cloud.aws = aws(env, overrides).map_err(|m| err("kind", m))?;
        return Ok(cloud);
    }
    let Some(project) = p.project.clone().filter(|p| !p.is_empty()) else {
        return Err(err("project", "is required for a vertex provider".into()));
    };
    cloud.project = Some(project);
    cloud.google = match (&p.credentials_file, &p.access_token_env) {
        (Some(_), Some(_)) => {
            return Err(err(
                "access_token_env",
                "give credentials_file or access_token_env, not both".into(),
            ))
        }
        (None, None) => return Err(err(
            "credentials_file",
            "a vertex provider needs credentials_file (a service-account key) or access_token_env"
                .into(),
        )),
        (Some(path), None) => match service_account(path) {
            Ok(account) => Some(GoogleAuth::ServiceAccount(account)),
            Err(_) if overrides.without_provider_secrets => None,
            Err(m) => return Err(err("credentials_file", m)),
        },
        (None, Some(var)) => match env(var).filter(|t| !t.is_empty()) {
            Some(token) => Some(GoogleAuth::Token(Secret::new(token))),
            None if overrides.without_provider_secrets => None,
            None => {
                return Err(err(
                    "access_token_env",
                    format!("environment variable {var} is not set"),
                ))
            }
        },
    };
    Ok(cloud)
}

/// The AWS credentials of the environment.
fn aws(
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Option<AwsCredentials>, String> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Some(AwsCredentials {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
            session_token: get("AWS_SESSION_TOKEN").map(Secret::new),
        })),
        _ if overrides.without_provider_secrets => Ok(None),
        _ => Err(
            "a bedrock provider needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (and AWS_SESSION_TOKEN for temporary credentials)"
                .into(),
        ),
    }
}

/// Reads a service-account key file.
fn service_account(path: &str) -> Result<ServiceAccount, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("'{path}' is not a service-account JSON key: {e}"))?;
    let field = |name: &str| {
        json.get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let (Some(client_email), Some(private_key)) = (field("client_email"), field("private_key"))
    else {
        return Err(format!(
            "'{path}' lacks client_email or private_key (download a JSON key of the service account)"
        ));
    };
    if !private_key.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(format!(
            "the private_key of '{path}' is not a PEM PKCS #8 key"
        ));
    }
    Ok(ServiceAccount {
        client_email,
        private_key: Secret::new(private_key),
        token_uri: field("token_uri")
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".to_string()),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        Config::from_toml(
            &format!("[catalog]\nbuiltin = false\n{file}"),
            &Default::default(),
            env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn cloud_fields_are_checked_and_named() {
        let aws = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        };
        let bedrock = load(
            "[[providers]]\nname = \"b\"\nkind = \"bedrock\"\nregion = \"eu-west-3\"\n",
            &aws,
        )
        .expect("bedrock");
        assert_eq!(
            bedrock.providers[0].base_url,
            "https://bedrock-runtime.eu-west-3.amazonaws.com"
        );
        let no_region = load("[[providers]]\nname = \"b\"\nkind = \"bedrock\"\n", &aws);
        assert!(no_region.is_err_and(|e| e.contains("providers[0].region")));
        let no_keys = load(
            "[[providers]]\nname = \"b\"\nkind = \"bedrock\"\nregion = \"us-east-1\"\n",
            &|_: &str| None,
        );
        assert!(no_keys.is_err_and(|e| e.contains("AWS_SECRET_ACCESS_KEY")));
        let misplaced = load(
            "[[providers]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"http://x\"\nregion = \"us-east-1\"\n",
            &aws,
        );
        assert!(misplaced.is_err_and(|e| e.contains("providers[0].region")));
        let vertex = load(
            "[[providers]]\nname = \"v\"\nkind = \"vertex\"\nproject = \"p\"\nregion = \"us-east5\"\naccess_token_env = \"T\"\n",
            &|name: &str| (name == "T").then(|| "tok".to_string()),
        )
        .expect("vertex");
        assert_eq!(
            vertex.providers[0].base_url,
            "https://us-east5-aiplatform.googleapis.com"
        );
        let no_credentials = load(
            "[[providers]]\nname = \"v\"\nkind = \"vertex\"\nproject = \"p\"\nregion = \"us-east5\"\n",
            &aws,
        );
        assert!(no_credentials.is_err_and(|e| e.contains("credentials_file")));
        let missing_file = load(
            "[[providers]]\nname = \"v\"\nkind = \"vertex\"\nproject = \"p\"\nregion = \"us-east5\"\ncredentials_file = \"/nonexistent/sa.json\"\n",
            &aws,
        );
        assert!(missing_file.is_err_and(|e| e.contains("cannot read")));
    }
}
