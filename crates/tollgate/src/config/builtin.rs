//! The built-in catalog (`builtin.toml`): for each provider kind whose key is in the
//! environment (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`,
//! `AWS_ACCESS_KEY_ID` for Bedrock), a provider of
//! that kind and the models it offers today with their prices, so that `tollgate serve`
//! needs no config file. A config file's `[[providers]]` of the same name replaces the
//! built-in provider (and its models are then the file's alone); its `[[models]]` of the
//! same id replace built-in models, the others are added; `[catalog] builtin = false`
//! turns it all off.

use serde::Deserialize;

use super::catalog::FileModel;
use super::providers::{FileProvider, ProviderKind};
use super::ConfigError;

const CATALOG: &str = include_str!("builtin.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Builtin {
    kinds: Vec<Kind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kind {
    name: String,
    kind: ProviderKind,
    key_env: String,
    base_url_env: String,
    /// Absent for Bedrock: the region's endpoint.
    base_url: Option<String>,
    models: Vec<FileModel>,
}

/// The `[catalog]` section.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCatalog {
    builtin: Option<bool>,
}

/// Adds the built-in providers whose keys are set, and their models that the file does
/// not define, to the file's.
pub(super) fn extend(
    section: &FileCatalog,
    providers: &mut Vec<FileProvider>,
    models: &mut Vec<FileModel>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if section.builtin == Some(false) {
        return Ok(());
    }
    let builtin: Builtin =
        toml::from_str(CATALOG).map_err(|e| ConfigError::new("built-in catalog", e.to_string()))?;
    for kind in builtin.kinds {
        if providers.iter().any(|p| p.name() == kind.name) {
            continue;
        }
        if env(&kind.key_env).is_none_or(|k| k.is_empty()) {
            continue;
        }
        let base_url = env(&kind.base_url_env)
            .filter(|u| !u.is_empty())
            .or(kind.base_url);
        let mut provider = FileProvider::builtin(&kind.name, kind.kind, base_url, &kind.key_env);
        if kind.kind == ProviderKind::Bedrock {
            let region = env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".to_string());
            provider = provider.with_region(Some(region));
        }
        providers.push(provider);
        for model in kind.models {
            if !models.iter().any(|m| m.id() == model.id()) {
                models.push(model.on_provider(&kind.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_model_has_complete_prices_and_a_dated_source() {
        assert!(CATALOG.contains("2025-10") && CATALOG.contains("https://ai.google.dev"));
        let env = |name: &str| {
            matches!(
                name,
                "OPENAI_API_KEY"
                    | "ANTHROPIC_API_KEY"
                    | "GEMINI_API_KEY"
                    | "AWS_ACCESS_KEY_ID"
                    | "AWS_SECRET_ACCESS_KEY"
            )
            .then(|| "k".to_string())
        };
        let config = crate::config::Config::from_toml("", &Default::default(), &env)
            .expect("the built-in catalog is a valid catalog");
        assert_eq!(config.providers.len(), 4);
        assert!(config.models.len() >= 21);
        let bedrock = &config.providers[3];
        assert_eq!(
            bedrock.base_url,
            "https://bedrock-runtime.us-east-1.amazonaws.com"
        );
        assert!(bedrock.api_key.is_none() && bedrock.cloud.aws.is_some());
        let nova = config.model("bedrock/nova-pro").expect("nova");
        assert_eq!(nova.deployments[0].upstream_model, "amazon.nova-pro-v1:0");
        let sonnet = config.model("claude-sonnet-4-5").expect("sonnet");
        assert_eq!(
            sonnet.pricing.output.map(|p| p.usd_per_unit().to_string()),
            Some("0.000015".into())
        );
        let off = crate::config::Config::from_toml(
            "[catalog]\nbuiltin = false\n",
            &Default::default(),
            &env,
        )
        .expect("config");
        assert!(off.models.is_empty() && off.providers.is_empty());
    }

    #[test]
    fn the_file_overrides_and_extends_and_a_key_alone_brings_its_kind() {
        let env = |name: &str| match name {
            "OPENAI_API_KEY" => Some("k".to_string()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:9/v1".to_string()),
            _ => None,
        };
        let file = "[[models]]\nid = \"gpt-4.1\"\nprovider = \"openai\"\nendpoints = [\"chat.completions\"]\npricing = { input = \"9\", output = \"9\" }\n\
[[models]]\nid = \"my-alias\"\nprovider = \"openai\"\nupstream_model = \"gpt-4.1-mini\"\nendpoints = [\"chat.completions\"]\npricing = { input = \"1\", output = \"1\" }\n";
        let config =
            crate::config::Config::from_toml(file, &Default::default(), &env).expect("config");
        assert_eq!(config.providers.len(), 1);
        assert_eq!(config.providers[0].base_url, "http://127.0.0.1:9/v1");
        assert!(config.model("claude-sonnet-4-5").is_none());
        assert!(config.model("my-alias").is_some());
        assert!(config.model("gpt-4o-mini").is_some());
        let overridden = config.model("gpt-4.1").expect("gpt-4.1");
        assert_eq!(overridden.endpoints.len(), 1);
        // A file provider named like a built-in kind replaces it, and its models.
        let file = "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://vllm:8000/v1\"\n";
        let config =
            crate::config::Config::from_toml(file, &Default::default(), &env).expect("config");
        assert!(config.models.is_empty());
    }
}
